"""Faults real RPC providers show, injected by a real proxy in front of anvil: no event is missed silently.

The listener is driven by hand (`step()`) against a chain whose only HTTP endpoint
is tests.rpcproxy.RpcProxy; the proxy's journal shows each fault did happen.
"""

from __future__ import annotations

import threading

import pytest
from django.db import transaction
from web3 import Web3

from executor.chain import log_from_rpc
from executor.listener import PushedBlock, listen, pushed_claims
from executor.listener_health import chain_health
from executor.models import Chain, ChainCursor, Event, RpcEndpoint, Run
from executor.tasks import start_pushed_runs
from kwala_site.dev.devchain import mine, transact
from tests.executor.chainkit import BIG, deploy_zoo, event_graph, listener_for, make_chain, publish, wait_for
from tests.rpcproxy import Faults, RpcProxy

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "v3-canary-4f1d2c"


@pytest.fixture
def proxied(fresh_anvil, team, alice):
    """A zoo contract, a flow on its Big event, and a listener whose only endpoint is a fault proxy.

    Yields (w3, zoo, proxy, chain, version, listener); the listener has read the head.
    """
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    with RpcProxy(fresh_anvil.http_url) as proxy:
        # The path stands for a provider's API key: it must show nowhere.
        chain = make_chain(fresh_anvil, http_urls=[f"{proxy.url}/{API_KEY}"], ws=False)
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        listener = listener_for(chain)
        listener.step()
        yield w3, zoo, proxy, chain, version, listener


def runs_of(version) -> list[Run]:
    return list(Run.objects.filter(version=version).order_by("id"))


def step_until(listener, predicate, timeout: float = 20) -> None:
    def stepped():
        listener.step()
        return predicate()

    wait_for(stepped, timeout=timeout, interval=0.2)


def test_a_lagging_node_s_empty_logs_answer_holds_the_cursor_until_the_logs_come(proxied):
    w3, zoo, proxy, chain, version, listener = proxied
    proxy.faults = Faults(lag_logs=2, lag_receipts=True)
    receipt = transact(w3, zoo.functions.emitBig(1, 5))
    listener.step()

    cursor = ChainCursor.objects.get(chain=chain)
    assert proxy.faults_seen("lagging logs") >= 1 and proxy.faults_seen("lagging receipts") >= 1
    assert cursor.block_number == receipt["blockNumber"] - 1, "the cursor passed a block whose logs it never got"
    assert cursor.held_block == receipt["blockNumber"] and "bloom" in cursor.held_reason
    health = chain_health()["chains"][chain.slug]
    assert health["held_block"] == receipt["blockNumber"]
    assert runs_of(version) == []

    mine(w3, 2)  # the lagging node catches up with the block
    step_until(listener, lambda: len(runs_of(version)) == 1)
    listener.step()
    assert [r.trigger["args"]["id"] for r in runs_of(version)] == [1]
    cursor.refresh_from_db()
    assert cursor.held_block is None and cursor.held_reason == ""
    assert cursor.block_number >= receipt["blockNumber"] + 2


def test_receipts_show_the_logs_a_lagging_logs_index_hides_and_the_inconsistency_is_counted(proxied, caplog):
    w3, zoo, proxy, chain, version, listener = proxied
    proxy.faults = Faults(lag_logs=2)
    transact(w3, zoo.functions.emitBig(7, 1))
    listener.step()

    assert proxy.faults_seen("lagging logs") >= 1
    assert [r.trigger["args"]["id"] for r in runs_of(version)] == [7]
    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.inconsistencies == 1 and cursor.held_block is None
    assert "receipts" in cursor.last_inconsistency and API_KEY not in cursor.last_inconsistency
    assert "RPC inconsistency" in caplog.text and API_KEY not in caplog.text
    health = chain_health(detail=False)["chains"][chain.slug]
    assert health["inconsistencies"] == 1 and health["inconsistency_recent"] is True


def _one_block(w3: Web3, *calls) -> None:
    """Send the calls without mining, then mine them into one block."""
    w3.manager.request_blocking("evm_setAutomine", [False])
    try:
        for call in calls:
            call.transact({"from": w3.eth.accounts[0]})
        mine(w3, 1)
    finally:
        w3.manager.request_blocking("evm_setAutomine", [True])


def test_a_bloom_that_only_may_match_is_settled_by_the_receipts_without_holding(proxied):
    w3, zoo, proxy, chain, version, listener = proxied
    other = deploy_zoo(w3)
    listener.step()
    # The zoo's address and Big's topic are both in the block's bloom, from two different logs.
    _one_block(w3, other.functions.emitBig(1, 1), zoo.functions.emitTagged(b"\x01" * 32, zoo.address, [1], "x"))
    calls = proxy.requests
    listener.step()

    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.block_number == w3.eth.block_number and cursor.held_block is None
    assert cursor.inconsistencies == 0 and runs_of(version) == []
    assert proxy.requests - calls <= 6  # the head, the header, its logs, its receipts and the writes' reads


def test_without_receipts_two_empty_answers_blocks_apart_settle_a_bloom_that_only_may_match(proxied):
    w3, zoo, proxy, chain, version, listener = proxied
    other = deploy_zoo(w3)
    listener.step()
    proxy.faults = Faults(no_receipts=True)
    _one_block(w3, other.functions.emitBig(1, 1), zoo.functions.emitTagged(b"\x01" * 32, zoo.address, [1], "x"))
    doubtful = w3.eth.block_number
    listener.step()
    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.held_block == doubtful and proxy.faults_seen("not supported") >= 1

    mine(w3, 3)
    step_until(listener, lambda: ChainCursor.objects.get(chain=chain).block_number == w3.eth.block_number)
    cursor.refresh_from_db()
    assert cursor.held_block is None and cursor.inconsistencies == 0 and runs_of(version) == []


def test_a_pushed_log_for_a_block_the_loop_passed_without_it_is_stored_and_claimed_once(proxied, caplog):
    """The worst case: a node lagging longer than the checks wait, and no receipts anywhere."""
    w3, zoo, proxy, chain, version, listener = proxied
    proxy.faults = Faults(lag_logs=50, no_receipts=True)
    receipt = transact(w3, zoo.functions.emitBig(3, 9))
    for _ in range(4):
        mine(w3, 1)
        step_until(listener, lambda: True)
    step_until(listener, lambda: ChainCursor.objects.get(chain=chain).block_number == w3.eth.block_number)
    assert runs_of(version) == [] and not Event.objects.filter(chain=chain).exists()

    # The node's websocket pushes the log late, after the loop passed its block.
    block = w3.eth.get_block(receipt["blockNumber"])
    raw = w3.provider.make_request("eth_getLogs", [{"blockHash": block["hash"].to_0x_hex()}])["result"]
    push = PushedBlock(block["number"], block["hash"].to_0x_hex(), block["timestamp"], [log_from_rpc(r) for r in raw])
    for _ in range(2):  # delivered twice: the queue delivers at least once
        for batch in pushed_claims(chain, [push], listener.registry.get(31337)):
            with transaction.atomic():
                start_pushed_runs(batch.payload())

    assert [r.trigger["args"]["id"] for r in runs_of(version)] == [3]
    assert Event.objects.filter(chain=chain, block_hash=push.hash).count() == 1
    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.inconsistencies == 1 and "never got" in cursor.last_inconsistency
    assert "RPC inconsistency" in caplog.text


def test_a_late_push_for_an_orphaned_block_is_ignored_with_a_log_line(proxied, caplog):
    w3, zoo, proxy, chain, version, listener = proxied
    receipt = transact(w3, zoo.functions.emitBig(4, 4))
    listener.step()
    assert len(runs_of(version)) == 1
    block = w3.eth.get_block(receipt["blockNumber"])
    log = {**log_from_rpc(w3.provider.make_request("eth_getLogs", [{"blockHash": block["hash"].to_0x_hex()}])["result"][0])}
    fake_hash = "0x" + "ab" * 32
    log["block_hash"] = fake_hash
    push = PushedBlock(block["number"], fake_hash, block["timestamp"], [log])
    for batch in pushed_claims(chain, [push], listener.registry.get(31337)):
        with transaction.atomic():
            start_pushed_runs(batch.payload())
    assert len(runs_of(version)) == 1
    assert not Event.objects.filter(block_hash=fake_hash).exists()
    assert "no longer on the chain" in caplog.text
    assert ChainCursor.objects.get(chain=chain).inconsistencies == 0


def test_readyz_degrades_while_a_block_is_held_and_recovers_on_its_own(proxied, client, settings):
    w3, zoo, proxy, chain, version, listener = proxied
    settings.KWALA_CHAIN_HELD_SECONDS = 0.5
    proxy.faults = Faults(lag_logs=2, lag_receipts=True)
    transact(w3, zoo.functions.emitBig(1, 5))
    listener.step()
    wait_for(lambda: client.get("/readyz").status_code == 503, timeout=5)
    body = client.get("/readyz").json()
    assert "cannot verify" in " ".join(body["checks"]["chains"]["chains"][chain.slug]["problems"])

    mine(w3, 2)
    step_until(listener, lambda: len(runs_of(version)) == 1)
    assert client.get("/readyz").json()["checks"]["chains"]["chains"][chain.slug]["ok"] is True


def test_an_error_clears_from_health_when_its_cause_clears(proxied):
    w3, zoo, proxy, chain, version, listener = proxied
    proxy.faults = Faults(unavailable=1.0)
    stop = threading.Event()
    threads = listen([chain], stop, poll_seconds=0.1, use_websocket=False)
    try:
        wait_for(lambda: ChainCursor.objects.get(chain=chain).last_error != "", timeout=10)
        assert proxy.faults_seen("503") >= 1
        proxy.faults = Faults()
        wait_for(lambda: ChainCursor.objects.get(chain=chain).last_error == "", timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert chain_health()["chains"][chain.slug]["ok"] is True


def test_a_dropped_websocket_reconnects_quickly_every_time_not_ever_slower(fresh_anvil, team, alice):
    """The reconnect delay starts again after every successful subscribe (it used to double for good)."""
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    with RpcProxy(fresh_anvil.http_url, Faults(ws_drop_after=0.3), ws_upstream=fresh_anvil.ws_url) as proxy:
        chain = make_chain(fresh_anvil, http_urls=[proxy.url], ws=False)
        RpcEndpoint.objects.create(chain=chain, url=proxy.ws_url, kind=RpcEndpoint.Kind.WS)
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        stop = threading.Event()
        threads = listen([chain], stop, poll_seconds=0.2)
        try:
            wait_for(lambda: len(proxy.ws_connected_at) >= 6, timeout=20)
            wait_for(lambda: ChainCursor.objects.get(chain=chain).ws_state != "", timeout=5)
            transact(w3, zoo.functions.emitBig(1, 1))
            wait_for(lambda: len(runs_of(version)) == 1, timeout=10)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    gaps = [b - a for a, b in zip(proxy.ws_connected_at, proxy.ws_connected_at[1:], strict=False)]
    # Each connection lives 0.3 s, then the listener waits the first delay (0.5 s) again.
    assert max(gaps[:5]) < 1.5, f"reconnect gaps grew: {[round(g, 2) for g in gaps]}"
    assert proxy.faults_seen("dropped") >= 5


def test_with_verify_with_2_two_endpoints_must_agree_before_runs_fire(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    with RpcProxy(fresh_anvil.http_url) as honest, RpcProxy(fresh_anvil.http_url) as other:
        chain = make_chain(fresh_anvil, http_urls=[honest.url, f"{other.url}/{API_KEY}"], ws=False)
        Chain.objects.filter(pk=chain.pk).update(verify_with=2)
        chain.refresh_from_db()
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        listener = listener_for(chain)
        listener.step()
        other.faults = Faults(hide_logs=True)  # the second backend disagrees
        receipt = transact(w3, zoo.functions.emitBig(5, 5))
        listener.step()

        cursor = ChainCursor.objects.get(chain=chain)
        assert runs_of(version) == [] and cursor.held_block == receipt["blockNumber"]
        assert cursor.inconsistencies == 1 and "disagree" in cursor.last_inconsistency
        assert API_KEY not in cursor.last_inconsistency and other.faults_seen("hidden logs") >= 1

        other.faults = Faults()  # it catches up: both agree
        step_until(listener, lambda: len(runs_of(version)) == 1)
        listener.step()
    assert [r.trigger["args"]["id"] for r in runs_of(version)] == [5]
    assert ChainCursor.objects.get(chain=chain).held_block is None


def test_with_verify_with_2_and_one_endpoint_a_second_read_a_block_later_must_agree(proxied):
    w3, zoo, proxy, chain, version, listener = proxied
    Chain.objects.filter(pk=chain.pk).update(verify_with=2)
    listener.chain.refresh_from_db()
    receipt = transact(w3, zoo.functions.emitBig(6, 6))
    listener.step()
    assert runs_of(version) == []
    assert ChainCursor.objects.get(chain=chain).held_block == receipt["blockNumber"]

    mine(w3, 1)
    step_until(listener, lambda: len(runs_of(version)) == 1)
    assert [r.trigger["args"]["id"] for r in runs_of(version)] == [6]
    assert ChainCursor.objects.get(chain=chain).inconsistencies == 0


def test_logs_pushed_for_a_block_that_never_makes_the_chain_leave_no_live_run(fresh_anvil, team, alice,
                                                                              executor_worker):
    """The node pushes a log in a sibling block it then drops: whatever the push started is retracted, the real
    log runs once."""
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    with RpcProxy(fresh_anvil.http_url, Faults(ws_orphan_logs=1.0), ws_upstream=fresh_anvil.ws_url) as proxy:
        chain = make_chain(fresh_anvil, http_urls=[proxy.url], ws=False)
        RpcEndpoint.objects.create(chain=chain, url=proxy.ws_url, kind=RpcEndpoint.Kind.WS)
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        stop = threading.Event()
        threads = listen([chain], stop, poll_seconds=0.2)
        try:
            wait_for(lambda: ChainCursor.objects.filter(chain=chain, ws_state="connected").exists(), timeout=10)
            receipts = [transact(w3, zoo.functions.emitBig(i, i)) for i in range(3)]
            real = {r["blockHash"].to_0x_hex() for r in receipts}
            wait_for(lambda: ChainCursor.objects.filter(
                chain=chain, block_number__gte=receipts[-1]["blockNumber"]).exists(), timeout=20)

            def settled():
                runs = runs_of(version)
                live = [r for r in runs if r.status not in (Run.Status.CANCELLED, Run.Status.REORGED)]
                return sorted(r.block_hash for r in live) == sorted(real) and len(live) == 3

            wait_for(settled, timeout=20)
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert proxy.faults_seen("orphan log pushed") >= 3
    retracted = [r for r in runs_of(version) if r.block_hash not in real]
    assert all(r.status in (Run.Status.CANCELLED, Run.Status.REORGED) and "reorganised" in r.error
               for r in retracted)
    assert not Event.objects.filter(block_hash__in=[r.block_hash for r in retracted], retracted_at__isnull=True)
