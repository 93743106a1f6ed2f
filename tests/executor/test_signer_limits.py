"""A signer's spending limits on real anvil chains: each refuses before anything is signed or sent."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from executor.models import Notification, Run, Transaction
from executor.runs.manual import start_manual_run
from flows.models import AuditEvent, Membership
from flows.teams import do_set_signer_limits
from kwala_site.dev.devchain import contract, deploy
from tests.conftest import running_workers, start_worker
from tests.executor.chainkit import make_chain
from tests.executor.conftest import edge, make_version, manual, node, steps_of, wait_for_run
from tests.executor.test_contract_steps import DEPLOYER
from tests.executor.test_recovery import signal_tree

pytestmark = pytest.mark.django_db(transaction=True)
ETHER = 10**18
GWEI = 10**9


@pytest.fixture
def receiver(w3_a):
    return deploy(w3_a, "Receiver", sender=DEPLOYER.address)


def limit(signer, alice, team, **limits) -> None:
    do_set_signer_limits(Membership.objects.get(team=team, user=alice), signer, **limits)
    signer.refresh_from_db()


def ping_flow(team, alice, address: str, *, chain_id: int = 31337, value: str = "0", payable: bool = False):
    function = "ping(string message)" + (" payable" if payable else "")
    return make_version(
        team, alice,
        [manual(), node("write", "contract.write", {
            "chain": chain_id, "address": address, "function": function, "signer": "hot", "confirmations": 0,
            "args": ["{{ trigger.payload.message }}"], "value_wei": value,
        })],
        [edge("start", "write")],
    )


def run_ping(version, alice, message: str = "gm", timeout: float = 60) -> Run:
    return wait_for_run(start_manual_run(version, {"message": message}, user=alice), timeout=timeout)


def test_a_value_over_the_signer_s_limit_is_refused_and_nothing_is_sent(
    executor_worker, chains, signer, receiver, w3_a, team, alice
):
    limit(signer, alice, team, max_value_wei=ETHER)
    version = ping_flow(team, alice, receiver, value=str(2 * ETHER), payable=True)
    nonce = w3_a.eth.get_transaction_count(signer.address, "pending")
    run = run_ping(version, alice)

    assert run.status == Run.Status.FAILED
    assert "over its limit" in steps_of(run)["write"].error and "nothing was sent" in steps_of(run)["write"].error
    assert not Transaction.objects.filter(run=run).exists()
    assert w3_a.eth.get_transaction_count(signer.address, "pending") == nonce


def test_a_fee_ceiling_below_the_chain_s_base_fee_is_refused(executor_worker, chains, signer, receiver, team, alice):
    limit(signer, alice, team, max_fee_per_gas_wei=1)
    run = run_ping(ping_flow(team, alice, receiver), alice)

    assert run.status == Run.Status.FAILED and "base fee" in steps_of(run)["write"].error
    assert not Transaction.objects.filter(run=run).exists()


def test_fees_are_offered_within_the_ceilings(executor_worker, chains, signer, receiver, w3_a, team, alice):
    base = int(w3_a.eth.get_block("latest")["baseFeePerGas"])
    ceiling = base + 2 * GWEI
    limit(signer, alice, team, max_fee_per_gas_wei=ceiling, max_priority_fee_per_gas_wei=GWEI)
    run = run_ping(ping_flow(team, alice, receiver), alice)

    assert run.status == Run.Status.SUCCEEDED, run.error
    tx = Transaction.objects.get(run=run)
    assert tx.max_fee_per_gas <= ceiling and tx.max_priority_fee_per_gas <= GWEI


def test_the_daily_budget_refuses_what_would_go_over_it_and_resets_the_next_day(
    executor_worker, chains, signer, receiver, team, alice
):
    version = ping_flow(team, alice, receiver)
    first = run_ping(version, alice, "one")
    assert first.status == Run.Status.SUCCEEDED, first.error
    one = Transaction.objects.get(run=first)
    cost = int(one.value + one.gas * one.max_fee_per_gas)
    # Room for what the first one can cost and half of a second.
    limit(signer, alice, team, daily_budget_wei=cost + cost // 2)

    second = run_ping(version, alice, "two")
    assert second.status == Run.Status.FAILED
    error = steps_of(second)["write"].error
    assert "budget for today" in error and "resets at" in error
    assert not Transaction.objects.filter(run=second).exists()

    # The next UTC day: what was signed yesterday no longer counts.
    Transaction.objects.filter(pk=one.pk).update(created_at=timezone.now() - timedelta(days=1))
    third = run_ping(version, alice, "three")
    assert third.status == Run.Status.SUCCEEDED, third.error


def test_only_team_admins_change_limits_and_each_change_is_audited(signer, alice, bob, team):
    from flows.teams import TeamError

    with pytest.raises(TeamError):
        do_set_signer_limits(Membership.objects.get(team=team, user=bob), signer, max_value_wei=1)
    limit(signer, alice, team, max_value_wei=5 * ETHER, max_replacements=2)
    event = AuditEvent.objects.get(action="signer.limits_changed")
    assert event.data["after"] == {"max_value_wei": str(5 * ETHER), "max_replacements": 2}
    assert event.data["before"] == {"max_value_wei": None, "max_replacements": 5}


def test_the_signer_page_shows_limits_and_the_day_s_spending_and_admins_set_them(signer, alice, client):
    client.force_login(alice)
    page = client.get("/team/keys/").content.decode()
    assert "No spending limit" in page and "Spending limits of hot" in page
    response = client.post(f"/team/keys/{signer.code}/limits/", {
        f"limits-{signer.code}-max_value": "1.5", f"limits-{signer.code}-daily_budget": "3",
        f"limits-{signer.code}-max_fee_gwei": "200", f"limits-{signer.code}-max_priority_gwei": "",
        f"limits-{signer.code}-max_replacements": "3",
    })
    assert response.status_code == 302
    signer.refresh_from_db()
    assert (signer.max_value_wei, signer.daily_budget_wei, signer.max_fee_per_gas_wei) == (
        15 * ETHER // 10, 3 * ETHER, 200 * GWEI)
    assert signer.max_priority_fee_per_gas_wei is None and signer.max_replacements == 3
    page = client.get("/team/keys/").content.decode()
    assert "at most 1.5 a transaction" in page and "No spending limit" not in page


def test_a_stuck_transaction_stops_being_re_sent_at_the_cap_and_raises_an_alert(
    fresh_anvil, executor_env, service_logs, signer, team, alice
):
    w3 = fresh_anvil.web3()
    address = deploy(w3, "Receiver", sender=DEPLOYER.address)
    make_chain(fresh_anvil)
    limit(signer, alice, team, max_replacements=1)
    version = ping_flow(team, alice, address)
    others = running_workers()
    worker = start_worker({**executor_env, "KWALA_TX_REPLACE_AFTER_SECONDS": "5"}, service_logs, "stuck-worker")
    for other in others:  # this worker, with its short replacement delay, takes the step
        signal_tree(other.process.pid, signal.SIGSTOP)
    try:
        w3.provider.make_request("evm_setAutomine", [False])  # nothing is mined: the transaction is stuck
        run = start_manual_run(version, {"message": "stuck"}, user=alice)
        deadline = time.monotonic() + 60
        while not Transaction.objects.filter(run=run, stuck_alerted_at__isnull=False).exists():
            assert time.monotonic() < deadline, list(Transaction.objects.filter(run=run).values("replaces"))
            time.sleep(0.2)
        # Every poll re-broadcasts the latest attempt: wait for more polls than a replacement delay takes.
        capped = Transaction.objects.get(run=run, replaces=1)
        while Transaction.objects.get(pk=capped.pk).attempts < capped.attempts + 7:
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        attempts = list(Transaction.objects.filter(run=run).order_by("replaces"))
        assert [t.replaces for t in attempts] == [0, 1]
        assert attempts[1].stuck_alerted_at is not None and attempts[0].stuck_alerted_at is None
        assert "ALERT" in str(list(steps_of(run)["write"].logs))
        # On the team's Alerts page too, once, however many polls see it stuck.
        (alert,) = Notification.objects.filter(run=run, kind=Notification.Kind.TX_STUCK)
        assert attempts[1].tx_hash in alert.message and alert.team_id == run.team_id
        w3.provider.make_request("evm_setAutomine", [True])
        w3.provider.make_request("evm_mine", [])
        run = wait_for_run(run, timeout=60)
    finally:
        for other in others:
            signal_tree(other.process.pid, signal.SIGCONT)
        worker.stop()
    assert run.status == Run.Status.SUCCEEDED, run.error
    assert contract(w3, "Receiver", address).functions.pingCount().call() == 1
