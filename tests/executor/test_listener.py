"""The listener against real anvil chains: exactly once, across kills, two listeners and reorgs."""

from __future__ import annotations

import io
import signal
import sys
import threading
import time

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from executor.listener import ChainHalted, TriggerRegistry, listen
from executor.models import ChainCursor, Event, RpcEndpoint, Run, TriggerState
from kwala_site.dev.devchain import DEV_ACCOUNTS, mine, reorg, transact
from tests.conftest import Service, free_port
from tests.executor.chainkit import (
    BIG,
    TAGGED,
    deploy_zoo,
    event_graph,
    listener_for,
    make_chain,
    publish,
    replacing,
    trigger_graph,
    wait_for,
)


def live_runs(version):
    return Run.objects.filter(version=version).order_by("block_number", "trigger__log_index")


def test_it_fires_once_per_event_with_exact_big_values(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBatch(3))
    transact(w3, zoo.functions.emitBig(7, 2**200 + 3))
    listener.step()
    listener.step()  # nothing new: no duplicate
    runs = list(live_runs(version))
    assert [r.trigger["args"]["id"] for r in runs] == [0, 1, 2, 7]
    assert [r.trigger["args"]["value"] for r in runs] == [1 << 64, 2 << 64, 3 << 64, 2**200 + 3]
    first = runs[0]
    assert first.trigger_key == f"log:31337:{first.block_hash}:{first.trigger['log_index']}"
    assert first.trigger["event"] == "Big" and first.trigger["contract"] == zoo.address
    assert first.trigger["args_list"] == [0, 1 << 64]
    assert first.event.block_hash == first.block_hash and first.status == Run.Status.QUEUED
    assert first.trigger["timestamp"] > 0 and first.trigger["tx_hash"].startswith("0x")


def test_a_signature_without_indexed_markers_fires_and_the_editor_and_run_page_say_it_was_inferred(
        zoo_setup, team, alice):
    from tests.team_fixtures import logged_in

    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, "Big(uint256 id, uint256 value)", addresses=[zoo.address]))
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBig(7, 2**200 + 3))
    listener.step()
    (run,) = live_runs(version)
    assert run.trigger["args"] == {"id": 7, "value": 2**200 + 3}
    assert run.trigger["decoding"]["indexed"] == ["id"] and run.trigger["decoding"]["ambiguous"]
    client = logged_in(alice)
    page = client.get(f"/runs/{run.code}/").content.decode()
    assert 'class="banner banner-warning"' in page and "another fits too" in page
    inspector = client.get(f"/flows/{version.flow.code}/nodes/start/").content.decode()
    assert 'class="form-note"' in inspector and "No argument is marked indexed" in inspector


def test_filters_on_indexed_and_plain_arguments_and_any_address_triggers(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    other_zoo = deploy_zoo(w3)
    who = DEV_ACCOUNTS[3].address
    tag = "0x" + "42" * 32
    by_tag = publish(team, alice, event_graph(31337, TAGGED, filters=[
        {"arg": "tag", "op": "eq", "value": tag}, {"arg": "who", "op": "eq", "value": who}]), "tag")
    by_value = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address], filters=[
        {"arg": "value", "op": "gt", "value": str(2**64)}]), "value")
    anywhere = publish(team, alice, event_graph(31337, BIG, condition="trigger.args.id == 9"), "any")
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitTagged(bytes.fromhex("42" * 32), who, [1, 2**100], "hello"))
    transact(w3, zoo.functions.emitTagged(bytes.fromhex("43" * 32), who, [1], "other tag"))
    transact(w3, zoo.functions.emitBig(1, 2**64))
    transact(w3, zoo.functions.emitBig(2, 2**64 + 1))
    transact(w3, other_zoo.functions.emitBig(9, 5))
    listener.step()
    (tagged,) = live_runs(by_tag)
    assert tagged.trigger["args"] == {"tag": tag, "who": who, "amounts": [1, 2**100], "note": "hello"}
    assert [r.trigger["args"]["id"] for r in live_runs(by_value)] == [2]
    assert [(r.trigger["args"]["id"], r.trigger["contract"]) for r in live_runs(anywhere)] == [(9, other_zoo.address)]


def test_a_paused_or_unpublished_flow_does_not_fire(zoo_setup, team, alice):
    from flows import actions

    w3, zoo, chain = zoo_setup
    paused = publish(team, alice, event_graph(31337, BIG), "paused")
    gone = publish(team, alice, event_graph(31337, BIG), "gone")
    listener = listener_for(chain)
    listener.step()
    actions.do_pause_flow(paused.flow, alice)
    actions.do_unpublish_flow(gone.flow, alice)
    listener.registry.reload()
    transact(w3, zoo.functions.emitBig(1, 1))
    listener.step()
    assert not Run.objects.exists()


def test_confirmations_hold_the_run_until_the_block_is_deep_enough(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, confirmations=2))
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBig(1, 1))
    listener.step()
    assert Event.objects.count() == 1 and not Run.objects.exists()
    mine(w3)
    listener.step()
    assert not Run.objects.exists()
    mine(w3)
    listener.step()
    (run,) = live_runs(version)
    assert run.trigger["args"]["id"] == 1 and run.block_hash == Event.objects.get().block_hash


def test_a_reorg_retracts_orphaned_events_and_fires_the_replacements_once(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG))
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBig(1, 1))
    transact(w3, zoo.functions.emitBig(2, 2))
    listener.step()
    queued, started = live_runs(version)
    Run.objects.filter(pk=started.pk).update(status=Run.Status.RUNNING)  # a worker picked it up
    reorg(w3, 2, replacing(zoo.functions.emitBig(3, 3)))
    mine(w3)
    listener.step()
    listener.step()
    queued.refresh_from_db()
    started.refresh_from_db()
    assert queued.status == Run.Status.CANCELLED and "reorg" in queued.error.lower()
    assert started.status == Run.Status.REORGED
    assert started.log.filter(kind="run.reorged").exists() and queued.log.filter(kind="run.cancelled").exists()
    assert set(Event.objects.filter(retracted_at__isnull=False).values_list("block_hash", flat=True)) == {
        queued.block_hash, started.block_hash}
    (replacement,) = live_runs(version).filter(status=Run.Status.QUEUED)
    assert replacement.trigger["args"]["id"] == 3
    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.block_hash == w3.eth.get_block("latest")["hash"].to_0x_hex()


def test_a_reorg_before_confirmation_never_fires_the_orphaned_event(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, confirmations=2))
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBig(1, 1))
    listener.step()
    reorg(w3, 1, replacing(zoo.functions.emitBig(2, 2)))
    listener.step()
    mine(w3, 3)
    listener.step()
    assert [r.trigger["args"]["id"] for r in live_runs(version)] == [2]
    assert Event.objects.get(retracted_at__isnull=False).topics[1].endswith("1")


def test_a_reorg_deeper_than_the_window_halts_the_chain_loudly(zoo_setup, team, alice, caplog):
    w3, zoo, chain = zoo_setup
    publish(team, alice, event_graph(31337, BIG))
    listener = listener_for(chain, window=2)
    listener.step()
    mine(w3, 4)
    listener.step()
    reorg(w3, 4)
    with pytest.raises(ChainHalted):
        listener.step()
    cursor = ChainCursor.objects.get(chain=chain)
    assert cursor.halted and "deeper than" in cursor.last_error
    assert "LISTENER HALTED" in caplog.text
    with pytest.raises(ChainHalted):
        listener.step()


def test_resume_chain_refuses_a_chain_that_is_not_halted_or_unknown(zoo_setup):
    with pytest.raises(CommandError, match="anvil-a is not halted"):
        call_command("resume_chain", "anvil-a")
    with pytest.raises(CommandError, match=r"No chain 'nope' \(configured: anvil-a\)"):
        call_command("resume_chain", "nope")


@pytest.mark.django_db(transaction=True)
def test_a_halted_listener_waits_and_carries_on_once_the_chain_is_resumed(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
    listener = listener_for(chain)
    listener.step()
    # As if a bad endpoint had served another fork: the node now agrees with the kept blocks again.
    ChainCursor.objects.filter(chain=chain).update(halted=True, last_error="Reorg deeper than the 2 kept blocks")
    listener.poll_seconds = listener.halt_recheck_seconds = 0.1
    transact(w3, zoo.functions.emitBig(1, 1))
    with pytest.raises(ChainHalted):
        listener.step()  # halted: it reads nothing and fires nothing
    assert not Run.objects.filter(version=version).exists()
    assert ChainCursor.objects.get(chain=chain).halted
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    try:
        out = io.StringIO()
        call_command("resume_chain", "anvil-a", stdout=out)
        assert "resumed from block" in out.getvalue()
        wait_for(lambda: Run.objects.filter(version=version).exists(), timeout=10)
    finally:
        listener.stop.set()
        thread.join(10)
    assert [r.trigger["args"]["id"] for r in live_runs(version)] == [1]


def test_resume_chain_after_a_too_deep_reorg_retracts_what_the_node_lost_and_carries_on(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
    listener = listener_for(chain, window=2)
    listener.step()
    fork = w3.eth.block_number
    transact(w3, zoo.functions.emitBig(1, 1))
    transact(w3, zoo.functions.emitBig(2, 2))
    mine(w3, 3)
    listener.step()
    lost = list(live_runs(version))
    reorg(w3, w3.eth.block_number - fork, replacing(zoo.functions.emitBig(3, 3)))
    with pytest.raises(ChainHalted):
        listener.step()

    with pytest.raises(CommandError, match="give --from-block N"):
        call_command("resume_chain", "anvil-a")
    assert ChainCursor.objects.get(chain=chain).halted
    out = io.StringIO()
    call_command("resume_chain", "anvil-a", "--from-block", str(fork), stdout=out)
    assert "resumes after block" in out.getvalue() and "2 block(s)" in out.getvalue()

    cursor = ChainCursor.objects.get(chain=chain)
    assert not cursor.halted and cursor.block_number == fork
    listener.step()
    for run in lost:
        run.refresh_from_db()
        assert run.status == Run.Status.CANCELLED
    assert Event.objects.filter(retracted_at__isnull=False).count() == 2
    (replacement,) = live_runs(version).filter(status=Run.Status.QUEUED)
    assert replacement.trigger["args"]["id"] == 3


def test_block_triggers_fire_every_n_blocks(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    chain = make_chain(fresh_anvil)
    version = publish(team, alice, trigger_graph("chain.block", {"chain": 31337, "every": 3}))
    listener = listener_for(chain)
    listener.step()
    mine(w3, 7)
    listener.step()
    listener.step()
    numbers = [r.block_number for r in Run.objects.filter(version=version).order_by("block_number")]
    assert numbers and all(n % 3 == 0 for n in numbers) and len(numbers) == len(set(numbers))
    run = Run.objects.filter(version=version).first()
    assert run.trigger_key == f"block:31337:{run.block_hash}"


def test_state_triggers_fire_on_the_false_to_true_edge_only(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, trigger_graph("chain.state", {
        "chain": 31337, "address": zoo.address, "function": "function nextBatchId() view returns (uint256)",
        "args": [], "every": 1, "condition": "result % 2 == 1"}))
    listener = listener_for(chain)
    listener.step()
    mine(w3)
    listener.step()
    assert not Run.objects.exists() and TriggerState.objects.get(version=version).value is False
    transact(w3, zoo.functions.emitBatch(1))  # nextBatchId = 1: true
    mine(w3, 2)  # still true: no new edge
    listener.step()
    transact(w3, zoo.functions.emitBatch(1))  # 2: false
    transact(w3, zoo.functions.emitBatch(1))  # 3: true again
    listener.step()
    assert [r.trigger["result"] for r in Run.objects.filter(version=version).order_by("block_number")] == [1, 3]


# -- several processes -----------------------------------------------------------------------


def start_listener(child_env, service_logs, name: str) -> Service:
    service = Service(name, [sys.executable, "manage.py", "listen_chains", "--poll", "0.2"], child_env, service_logs)
    service.wait_for_output("listening to", timeout=30)
    return service


@pytest.mark.django_db(transaction=True)
def test_a_killed_listener_resumes_without_gap_or_duplicate(fresh_anvil, team, alice, child_env, service_logs):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    chain = make_chain(fresh_anvil)
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
    listener = start_listener(child_env, service_logs, "listener-killed")
    try:
        wait_for(lambda: ChainCursor.objects.filter(chain=chain, block_number__isnull=False).exists())
        for _ in range(5):
            transact(w3, zoo.functions.emitBatch(4))
        wait_for(lambda: Run.objects.filter(version=version).count() >= 8)
        listener.process.send_signal(signal.SIGKILL)
        listener.process.wait()
        for _ in range(5):
            transact(w3, zoo.functions.emitBatch(4))
        listener = start_listener(child_env, service_logs, "listener-restarted")
        wait_for(lambda: Run.objects.filter(version=version).count() >= 40)
        # Anything extra would be claimed by the time the cursor reaches the head.
        head = w3.eth.block_number
        wait_for(lambda: ChainCursor.objects.filter(chain=chain, block_number__gte=head).exists())
    finally:
        listener.stop()
    ids = sorted(r.trigger["args"]["id"] for r in Run.objects.filter(version=version))
    assert ids == list(range(40))


@pytest.mark.django_db(transaction=True)
def test_two_listeners_on_one_chain_create_each_run_once(fresh_anvil, team, alice, child_env, service_logs):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    make_chain(fresh_anvil)
    version = publish(team, alice, event_graph(31337, BIG))
    first = start_listener(child_env, service_logs, "listener-1")
    second = start_listener(child_env, service_logs, "listener-2")
    try:
        for _ in range(10):
            transact(w3, zoo.functions.emitBatch(3))
        wait_for(lambda: Run.objects.filter(version=version).count() >= 30)
        head = w3.eth.block_number
        wait_for(lambda: ChainCursor.objects.filter(chain__chain_id=31337, block_number__gte=head).exists())
    finally:
        first.stop()
        second.stop()
    ids = sorted(r.trigger["args"]["id"] for r in Run.objects.filter(version=version))
    assert ids == list(range(30))
    assert Event.objects.count() == 30
    connection.close()


@pytest.fixture
def watched_registry(transactional_db):
    """A trigger index reloaded by NOTIFY only (its periodic safety-net reload is an hour away)."""
    from executor.models import Chain

    Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)
    registry = TriggerRegistry(refresh_seconds=3600)
    stop = threading.Event()
    watcher = threading.Thread(target=registry.watch, args=(stop,), daemon=True)
    watcher.start()
    try:
        wait_for(lambda: registry.generation >= 1, timeout=10)
        yield registry
    finally:
        stop.set()
        watcher.join(5)


def test_the_trigger_index_follows_publish_and_unpublish_through_notify(watched_registry, team, alice):
    from flows import actions

    version = publish(team, alice, event_graph(31337, BIG))
    wait_for(lambda: len(watched_registry.get(31337).logs) == 1, timeout=5)
    actions.do_unpublish_flow(version.flow, alice)
    wait_for(lambda: len(watched_registry.get(31337).logs) == 0, timeout=5)


def test_the_trigger_index_has_a_published_trigger_within_a_second_of_the_commit(watched_registry, team, alice):
    publish(team, alice, event_graph(31337, BIG))  # returns once the publish has committed
    committed_at = time.monotonic()
    wait_for(lambda: len(watched_registry.get(31337).logs) == 1, timeout=5, interval=0.005)
    elapsed = time.monotonic() - committed_at
    # The bound for a published flow to be live; NOTIFY usually takes a few milliseconds.
    assert elapsed < 1.0, f"the index took {elapsed:.3f} s"


@pytest.mark.django_db(transaction=True)
def test_the_listener_polls_when_the_websocket_endpoint_is_unreachable(fresh_anvil, team, alice, caplog):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    chain = make_chain(fresh_anvil, ws=False)
    dead_ws = f"ws://127.0.0.1:{free_port()}"
    RpcEndpoint.objects.create(chain=chain, url=dead_ws, kind=RpcEndpoint.Kind.WS)
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
    stop = threading.Event()
    threads = listen([chain], stop, poll_seconds=0.2)
    try:
        assert any(t.name == "heads-anvil-a" for t in threads)  # it did try the websocket
        wait_for(lambda: ChainCursor.objects.filter(chain=chain, block_number__isnull=False).exists(), timeout=10)
        transact(w3, zoo.functions.emitBig(1, 1))
        transact(w3, zoo.functions.emitBig(2, 2))
        wait_for(lambda: Run.objects.filter(version=version).count() == 2, timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert f"websocket {dead_ws}/… failed" in caplog.text and "polling" in caplog.text
    assert [r.trigger["args"]["id"] for r in live_runs(version)] == [1, 2]
