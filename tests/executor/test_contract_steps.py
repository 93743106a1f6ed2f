"""contract.read and contract.write against real anvil chains."""

from __future__ import annotations

import pytest

from executor.models import RpcEndpoint, Run, StepRun, Transaction
from executor.runs.manual import start_manual_run
from kwala_site.dev.devchain import DEV_ACCOUNTS, contract, deploy
from tests.conftest import free_port
from tests.executor.chainkit import make_chain
from tests.executor.conftest import edge, make_version, manual, node, steps_of, wait_for_run

pytestmark = pytest.mark.django_db(transaction=True)
MIRROR = "mirror(bytes32 sourceTxHash, address from, address to, uint256 value)"
SOURCE = "0x" + "ab" * 32
ALICE, BOB = DEV_ACCOUNTS[1].address, DEV_ACCOUNTS[2].address
# The executor signs with account 0; the tests deploy from account 1 so their transactions never take a nonce
# the executor has allocated.
SIGNER, DEPLOYER = DEV_ACCOUNTS[0], DEV_ACCOUNTS[1]


@pytest.fixture
def receivers(w3_a, w3_b):
    return {"a": deploy(w3_a, "Receiver", sender=DEPLOYER.address), "b": deploy(w3_b, "Receiver", sender=DEPLOYER.address)}


def write_flow(team, alice, chain_id: int, address: str):
    return make_version(
        team, alice,
        [manual(), node("write", "contract.write", {
            "chain": chain_id, "address": address, "function": MIRROR, "signer": "hot", "confirmations": 0,
            "args": ["{{ trigger.payload.source }}", ALICE, BOB, "{{ trigger.payload.value }}"],
        }),
         node("read", "contract.read", {"chain": chain_id, "address": address, "function": "mirrorCount() view returns (uint256)"})],
        [edge("start", "write"), edge("write", "read")],
    )


def test_a_write_lands_on_the_other_chain_with_the_right_arguments(
    executor_worker, chains, signer, receivers, w3_b, team, alice
):
    version = write_flow(team, alice, 31338, receivers["b"])
    run = wait_for_run(start_manual_run(version, {"source": SOURCE, "value": 10**30}, user=alice), timeout=60)

    assert run.status == Run.Status.SUCCEEDED, run.error
    last = contract(w3_b, "Receiver", receivers["b"]).functions.last().call()
    assert ("0x" + last[0].hex(), last[1], last[2], last[3], last[4]) == (SOURCE, ALICE, BOB, 10**30, signer.address)
    steps = steps_of(run)
    assert steps["read"].output["result"] == 1
    tx = Transaction.objects.get(step_run=steps["write"])
    assert (tx.chain.chain_id, tx.status, tx.tx_hash) == (31338, Transaction.Status.MINED, steps["write"].output["tx_hash"])
    assert w3_b.eth.get_transaction(tx.tx_hash)["nonce"] == tx.nonce


def test_ten_concurrent_runs_with_one_key_get_consecutive_nonces_and_all_land(
    executor_worker, chains, signer, receivers, w3_a, team, alice
):
    version = write_flow(team, alice, 31337, receivers["a"])
    start = w3_a.eth.get_transaction_count(signer.address, "pending")
    runs = [start_manual_run(version, {"source": SOURCE, "value": n}, user=alice) for n in range(10)]
    runs = [wait_for_run(run, timeout=90) for run in runs]

    assert [run.status for run in runs] == [Run.Status.SUCCEEDED] * 10, [run.error for run in runs]
    nonces = sorted(Transaction.objects.filter(run__in=runs).values_list("nonce", flat=True))
    assert nonces == list(range(start, start + 10))
    assert contract(w3_a, "Receiver", receivers["a"]).functions.mirrorCount().call() >= 10
    for tx in Transaction.objects.filter(run__in=runs):
        assert w3_a.eth.get_transaction_receipt(tx.tx_hash)["status"] == 1


def test_the_private_key_never_appears_in_run_records_or_logs(
    executor_worker, chains, signer, receivers, service_logs, client, team, alice
):
    version = write_flow(team, alice, 31337, receivers["a"])
    run = wait_for_run(start_manual_run(version, {"source": SOURCE, "value": 1}, user=alice), timeout=60)
    assert run.status == Run.Status.SUCCEEDED

    key = SIGNER.private_key[2:]
    records = [
        Run.objects.filter(pk=run.pk).values(), StepRun.objects.filter(run=run).values(),
        run.log.values(), Transaction.objects.filter(run=run).values(),
    ]
    assert all(key not in str(list(r)).lower() for r in records)
    assert all(key not in path.read_text(errors="replace").lower() for path in service_logs.glob("*.log"))
    client.force_login(alice)
    assert key not in client.get("/", follow=True).content.decode().lower()


def test_a_read_fails_over_past_a_dead_endpoint_and_records_its_health(
    executor_worker, anvil_a, receivers, team, alice
):
    dead = f"http://127.0.0.1:{free_port()}"
    make_chain(anvil_a, "anvil-a", http_urls=[dead, anvil_a.http_url], ws=False)
    version = make_version(team, alice, [
        manual(), node("read", "contract.read", {"chain": 31337, "address": receivers["a"],
                                                 "function": "mirrorCount() view returns (uint256)"}),
    ], [edge("start", "read")])
    run = wait_for_run(start_manual_run(version, {}, user=alice), timeout=60)

    assert run.status == Run.Status.SUCCEEDED, run.error
    assert isinstance(steps_of(run)["read"].output["result"], int)
    endpoint = RpcEndpoint.objects.get(url=dead)
    assert endpoint.failures >= 1 and "connection failed" in endpoint.last_error
