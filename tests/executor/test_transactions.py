"""chain.transaction triggers against a real anvil chain: transfers, calls, reverts, reorgs, exactly once."""

from __future__ import annotations

import pytest
from web3 import Web3

from executor.chain import ChainError
from executor.models import ChainCursor, Run
from kwala_site.dev.devchain import DEV_ACCOUNTS, contract, deploy, mine, reorg, transact, wait_for_receipt
from tests.executor.chainkit import listener_for, make_chain, publish, trigger_graph
from tests.rpcproxy import Faults, RpcProxy

OWNER = DEV_ACCOUNTS[0].address
STRANGER = DEV_ACCOUNTS[3].address
CHAIN_ID = 31337


@pytest.fixture
def vault_setup(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    vault = contract(w3, "Vault", deploy(w3, "Vault"))
    return w3, vault, make_chain(fresh_anvil)


def tx_graph(**config) -> dict:
    return trigger_graph("chain.transaction", {"chain": CHAIN_ID, **config})


def runs_of(version) -> list[Run]:
    return list(Run.objects.filter(version=version).order_by("block_number", "trigger__tx_index"))


def send_value(w3: Web3, to: str, wei: int, sender: str = STRANGER) -> str:
    return wait_for_receipt(w3, w3.eth.send_transaction({"from": sender, "to": to, "value": wei}))[
        "transactionHash"].to_0x_hex()


def send_failing(w3: Web3, call, sender: str) -> str:
    """Send a call that reverts: a gas limit given, so the node mines it instead of refusing the estimate."""
    receipt = wait_for_receipt(w3, call.transact({"from": sender, "gas": 200_000}))
    assert receipt["status"] == 0
    return receipt["transactionHash"].to_0x_hex()


def test_native_transfers_to_a_treasury_fire_with_exact_values_and_no_log(vault_setup, team, alice):
    w3, vault, chain = vault_setup
    version = publish(team, alice, tx_graph(to=[vault.address], min_value="1 ether"))
    listener = listener_for(chain)
    listener.step()
    big = 10**18 * 1234 + 1  # above 2**53 wei: must stay exact
    big_hash = send_value(w3, vault.address, big)
    send_value(w3, vault.address, 10**17)  # below the minimum
    send_value(w3, STRANGER, 5 * 10**18, sender=OWNER)  # not to the vault
    listener.step()
    listener.step()  # nothing new: no duplicate

    (run,) = runs_of(version)
    trigger = run.trigger
    assert w3.eth.get_transaction_receipt(big_hash)["logs"] == []  # only a transaction trigger sees it
    assert trigger["hash"] == big_hash and trigger["value"] == big
    assert trigger["value_ether"] == "1234.000000000000000001"
    assert trigger["from"] == STRANGER and trigger["to"] == vault.address
    assert trigger["function"] == "" and trigger["selector"] == "" and trigger["status"] == "success"
    receipt = w3.eth.get_transaction_receipt(big_hash)
    assert trigger["gas_used"] == receipt["gasUsed"] > 21_000  # receive() runs code
    assert trigger["effective_gas_price"] > 0 and trigger["block_number"] == run.block_number
    assert run.trigger_key == f"tx:{CHAIN_ID}:{run.block_hash}:{trigger['tx_index']}"


def test_admin_function_calls_match_by_selector_with_decoded_argument_filters(vault_setup, team, alice):
    w3, vault, chain = vault_setup
    watched = "0x000000000000000000000000000000000000bEEF"
    admin = publish(team, alice, tx_graph(to=[vault.address], function="transferOwnership(address newOwner)"),
                    "admin")
    to_watched = publish(team, alice, tx_graph(
        function="transferOwnership(address newOwner)",  # any contract: by selector alone
        filters=[{"arg": "newOwner", "op": "eq", "value": watched}]), "to watched")
    listener = listener_for(chain)
    listener.step()
    transact(w3, vault.functions.pause())
    transact(w3, vault.functions.transferOwnership(DEV_ACCOUNTS[1].address))
    transact(w3, vault.functions.transferOwnership(watched), sender=DEV_ACCOUNTS[1].address)
    send_failing(w3, vault.functions.transferOwnership(DEV_ACCOUNTS[2].address), DEV_ACCOUNTS[1].address)
    listener.step()

    assert [r.trigger["args"]["newOwner"] for r in runs_of(admin)] == [DEV_ACCOUNTS[1].address, watched]
    # the last call came from the old owner after the hand-over: it reverted, and status defaults to success
    (run,) = runs_of(to_watched)
    assert run.trigger["function"] == "transferOwnership" and run.trigger["args_list"] == [watched]
    assert run.trigger["selector"] == Web3.keccak(text="transferOwnership(address)")[:4].to_0x_hex()
    assert run.trigger["from"] == DEV_ACCOUNTS[1].address


def test_failed_transactions_fire_with_the_revert_reason(vault_setup, team, alice):
    w3, vault, chain = vault_setup
    failed = publish(team, alice, tx_graph(to=[vault.address], status="failed"), "failed")
    succeeded = publish(team, alice, tx_graph(to=[vault.address]), "succeeded")
    listener = listener_for(chain)
    listener.step()
    transact(w3, vault.functions.pause())
    paused_hash = send_failing(w3, vault.functions.withdraw(OWNER, 1), OWNER)
    stranger_hash = send_failing(w3, vault.functions.pause(), STRANGER)
    panic_hash = send_failing(w3, vault.functions.ratio(1, 0), STRANGER)
    listener.step()

    reasons = {r.trigger["hash"]: r.trigger["revert_reason"] for r in runs_of(failed)}
    selector = Web3.keccak(text="NotOwner(address)")[:4].to_0x_hex()
    assert reasons == {
        paused_hash: "Vault: paused",
        stranger_hash: f"custom error {selector} (data {'0' * 24}{STRANGER[2:].lower()})",
        panic_hash: "panic 0x12: division by zero",
    }
    assert all(r.trigger["status"] == "failed" for r in runs_of(failed))
    assert [r.trigger["function"] for r in runs_of(succeeded)] == [""]  # only pause() succeeded
    assert runs_of(succeeded)[0].trigger["input"] == vault.functions.pause()._encode_transaction_data()


def test_a_condition_and_confirmations_wait_for_depth_then_fire_once(vault_setup, team, alice):
    w3, vault, chain = vault_setup
    version = publish(team, alice, tx_graph(to=[vault.address], confirmations=2,
                                             condition="trigger.value > 3 * 10**18"))
    listener = listener_for(chain)
    listener.step()
    send_value(w3, vault.address, 4 * 10**18)
    send_value(w3, vault.address, 2 * 10**18)  # the condition says no
    listener.step()
    assert runs_of(version) == []  # one block deep of two
    mine(w3, 2)
    listener.step()
    other = listener_for(chain)  # a second listener over the same blocks changes nothing
    other.step()
    (run,) = runs_of(version)
    assert run.trigger["value"] == 4 * 10**18


def test_a_reorg_retracts_the_transactions_runs(vault_setup, team, alice):
    w3, vault, chain = vault_setup
    version = publish(team, alice, tx_graph(to=[vault.address]))
    listener = listener_for(chain)
    listener.step()
    send_value(w3, vault.address, 10**18)
    listener.step()
    (orphaned,) = runs_of(version)
    replacement = {"from": OWNER, "to": vault.address, "value": 7, "gas": 100_000}
    reorg(w3, 1, [(replacement, 0)])
    listener.step()  # finds the reorg and rewinds
    listener.step()  # the new branch

    runs = list(Run.objects.filter(version=version).order_by("pk"))
    assert [r.status for r in runs] == [Run.Status.CANCELLED, Run.Status.QUEUED]
    assert runs[0].pk == orphaned.pk and runs[1].trigger["value"] == 7
    assert runs[1].block_number == orphaned.block_number and runs[1].block_hash != orphaned.block_hash


def test_a_node_that_answers_blocks_without_their_transactions_is_not_believed(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    vault = contract(w3, "Vault", deploy(w3, "Vault"))
    with RpcProxy(fresh_anvil.http_url) as proxy:
        chain = make_chain(fresh_anvil, http_urls=[proxy.url], ws=False)
        version = publish(team, alice, tx_graph(to=[vault.address]))
        listener = listener_for(chain)
        listener.step()
        start = ChainCursor.objects.get(chain=chain).block_number
        send_value(w3, vault.address, 10**18)
        proxy.faults = Faults(empty_blocks=1, lag_tx_receipts=1)
        with pytest.raises(ChainError, match="without the transactions"):
            listener.step()
        assert ChainCursor.objects.get(chain=chain).block_number == start and runs_of(version) == []
        with pytest.raises(ChainError, match="no receipt"):
            listener.step()
        assert ChainCursor.objects.get(chain=chain).block_number == start
        listener.step()
        assert proxy.faults_seen("block without transactions") == 1 and proxy.faults_seen("no receipt yet") == 1
    (run,) = runs_of(version)
    assert run.trigger["value"] == 10**18


def test_a_trigger_needs_an_address_or_a_function(team, alice):
    from flows.graph import CompileError, compile_graph

    with pytest.raises(CompileError) as caught:
        compile_graph(tx_graph(min_value="ten ether", status="success"))
    messages = {(p.field, p.message) for p in caught.value.problems}
    assert ("to", "Watch an address (to or from) or a function: every transaction of a chain is too many to "
                  "start a run for") in messages
    assert ("min_value", "'ten' is not a number") in messages
    with pytest.raises(CompileError) as caught:
        compile_graph(tx_graph(to=["0x000000000000000000000000000000000000bEEF"], min_value="1 wei", max_value="0",
                               filters=[{"arg": "x", "op": "eq", "value": 1}]))
    messages = {(p.field, p.message) for p in caught.value.problems}
    assert messages == {("max_value", "The most must not be below the least"),
                        ("filters", "Argument filters need a function to decode the arguments with")}


def test_a_replay_of_a_transaction_trigger_creates_the_missed_runs_once_and_a_backtest_sends_nothing(
        vault_setup, team, alice):
    from executor.replay import replay_blocks

    w3, vault, chain = vault_setup
    first = w3.eth.block_number + 1
    sent = [send_value(w3, vault.address, amount) for amount in (5, 6, 7)]
    send_value(w3, STRANGER, 9, sender=OWNER)  # not to the vault
    last = w3.eth.block_number
    version = publish(team, alice, tx_graph(to=[vault.address], condition="trigger.value != 6"))
    result = replay_blocks(version, chain, first, last, dry_run=False)
    assert result.matched == 2 and result.logs_seen == 4
    runs = runs_of(version)
    assert [r.trigger["hash"] for r in runs] == [sent[0], sent[2]] and not any(r.dry_run for r in runs)
    assert replay_blocks(version, chain, first, last, dry_run=False).run_ids == []  # once
    dry = replay_blocks(version, chain, first, last, dry_run=True)
    assert len(dry.run_ids) == 2
    assert Run.objects.filter(version=version, dry_run=True).count() == 2 and len(runs_of(version)) == 4
