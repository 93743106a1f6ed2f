"""Logs the node pushes over its websocket are claimed and started at once, and the block loop agrees.

Real anvil, real websocket subscriptions, real PostgreSQL and a real worker: the
loop is driven by hand (`step()`) so each test decides which of the two paths
goes first.
"""

from __future__ import annotations

import contextlib
import signal
import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from executor.chain import log_from_rpc
from executor.listener import ChainListener, PushedBlock, TriggerRegistry, pushed_claims
from executor.models import ChainCursor, Event, Run, StepRun
from executor.tasks import start_pushed_runs
from flows import actions
from flows.models import Flow
from kwala_site.dev.devchain import mine, reorg, transact
from tests.conftest import running_workers
from tests.executor.chainkit import BIG, event_graph, listener_for, publish, replacing, wait_for
from tests.executor.test_recovery import signal_tree

pytestmark = pytest.mark.django_db(transaction=True)


def pushed(w3, receipt) -> PushedBlock:
    """The block of `receipt` with its logs, as the node would push them."""
    block = w3.eth.get_block(receipt["blockNumber"])
    raw = w3.provider.make_request("eth_getLogs", [{"blockHash": block["hash"].to_0x_hex()}])["result"]
    return PushedBlock(block["number"], block["hash"].to_0x_hex(), block["timestamp"], [log_from_rpc(r) for r in raw])


def claim(listener: ChainListener, block: PushedBlock) -> None:
    """What a worker does with the listener's message (inside a transaction: it does not go on to run steps)."""
    for batch in pushed_claims(listener.chain, [block], listener.registry.get(listener.chain.chain_id)):
        with transaction.atomic():
            start_pushed_runs(batch.payload())


@pytest.fixture
def watched(zoo_setup, team, alice):
    """A published flow on the zoo's BIG event and a loop that has read the head: (w3, zoo, chain, version, listener)."""
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG))
    listener = listener_for(chain)
    listener.step()
    return w3, zoo, chain, version, listener


def test_a_pushed_log_is_claimed_and_started_before_the_loop_reads_its_block(zoo_setup, fresh_anvil, team, alice,
                                                                              executor_worker):
    w3, zoo, chain = zoo_setup
    registry = TriggerRegistry()
    registry.reload()  # nothing published yet: no logs subscription
    stop = threading.Event()
    listener = ChainListener(chain, registry, stop)
    listener.step()  # the cursor starts at the head
    start = ChainCursor.objects.get(chain=chain).block_number
    watcher = threading.Thread(target=listener.watch, args=([fresh_anvil.ws_url],), daemon=True)
    watcher.start()
    try:
        wait_for(lambda: listener.ws_connected, timeout=10, interval=0.02)
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        registry.reload()  # what the NOTIFY watcher does: the socket subscribes to the new filter
        wait_for(lambda: listener.logs_follow is registry.get(31337), timeout=10, interval=0.02)
        transact(w3, zoo.functions.emitBig(7, 70))
        wait_for(lambda: Run.objects.filter(version=version, started_at__isnull=False).exists(), timeout=10,
                 interval=0.02)
    finally:
        stop.set()
        watcher.join(5)
    # Claimed and started by the push and a worker alone: the loop never ran, its cursor did not move.
    assert ChainCursor.objects.get(chain=chain).block_number == start
    (run,) = Run.objects.filter(version=version)
    assert run.trigger["args"] == {"id": 7, "value": 70} and run.event_id is not None
    assert listener.wake.is_set()  # the header woke the loop
    # The loop then processes the block, skips what the push did, and adds nothing.
    stop.clear()
    listener.step()
    assert Run.objects.filter(version=version).count() == 1 and Event.objects.count() == 1
    assert ChainCursor.objects.get(chain=chain).block_number == w3.eth.block_number


def test_a_loop_that_was_not_told_claims_the_same_runs_once(watched):
    w3, zoo, chain, version, listener = watched
    block = pushed(w3, transact(w3, zoo.functions.emitBatch(3)))
    claim(listener, block)
    claim(listener, block)  # a second listener's push, or a message delivered twice
    assert Run.objects.filter(version=version).count() == 3
    # The first is started in the claim's own transaction, the others are sent to start_run.
    assert Run.objects.filter(version=version, started_at__isnull=False).exists()
    listener.step()  # another process's loop: it reads, stores and claims again, finding every row
    runs = Run.objects.filter(version=version)
    assert sorted(r.trigger["args"]["id"] for r in runs) == [0, 1, 2]
    assert Event.objects.count() == 3
    assert {r.event_id for r in runs} == set(Event.objects.values_list("id", flat=True))


def test_the_claim_statement_is_prepared_once_with_one_plan_whatever_the_number_of_logs(watched):
    w3, zoo, _, _, listener = watched
    claim(listener, pushed(w3, transact(w3, zoo.functions.emitBatch(3))))
    claim(listener, pushed(w3, transact(w3, zoo.functions.emitBig(1, 1))))
    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["WITH cur AS (SELECT block_number FROM executor_chaincursor %"])
        plans = cursor.fetchall()
    assert len(plans) == 1  # three logs or one: the same text
    generic, custom = plans[0]
    assert generic >= 2 and custom == 0  # planned once for the connection, not once per claim


def test_a_pushed_block_orphaned_before_the_loop_reached_it_is_retracted(watched):
    w3, zoo, chain, version, listener = watched
    orphan = pushed(w3, transact(w3, zoo.functions.emitBig(1, 1)))
    claim(listener, orphan)
    (early,) = Run.objects.filter(version=version)
    # The block is replaced at the same height before the loop ever saw it.
    reorg(w3, 1, replacing(zoo.functions.emitBig(2, 2)))
    mine(w3)
    listener.step()
    early.refresh_from_db()
    # CANCELLED if no worker had started it yet, REORGED if one had (a suite's worker may be running).
    assert early.status in (Run.Status.CANCELLED, Run.Status.REORGED) and "reorganised" in early.error
    assert early.log.filter(kind__in=["run.cancelled", "run.reorged"]).exists()
    assert Event.objects.get(block_hash=orphan.hash).retracted_at is not None
    live = Run.objects.filter(version=version).exclude(status__in=[Run.Status.CANCELLED, Run.Status.REORGED])
    assert [r.trigger["args"]["id"] for r in live] == [2]


def test_pushed_logs_the_loop_has_decided_or_a_halted_chain_are_not_claimed(watched):
    w3, zoo, chain, version, listener = watched
    late = pushed(w3, transact(w3, zoo.functions.emitBig(1, 1)))
    ChainCursor.objects.filter(chain=chain).update(block_number=late.number)  # the loop is past it
    claim(listener, late)
    ChainCursor.objects.filter(chain=chain).update(block_number=late.number - 1, halted=True)
    claim(listener, late)
    assert not Run.objects.filter(version=version).exists() and not Event.objects.exists()


def test_a_paused_flow_is_not_claimed_from_a_push(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG))
    other = publish(team, alice, event_graph(31337, BIG), name="Other")
    listener = listener_for(chain)
    listener.step()
    version.flow.paused = True
    version.flow.save(update_fields=["paused"])
    block = pushed(w3, transact(w3, zoo.functions.emitBig(1, 1)))
    claim(listener, block)
    assert not Run.objects.filter(version=version).exists()
    assert Run.objects.filter(version=other).count() == 1


def named_graph() -> dict:
    """BIG → a transform that records the flow's name (so a start shows which name it was worked out with) → hook."""
    graph = event_graph(31337, BIG)
    graph["nodes"].insert(1, {"id": "name", "type": "transform", "name": "Name", "position": {"x": 120, "y": 0},
                              "config": {"fields": [{"name": "flow", "expression": "flow.name"}]}})
    graph["edges"] = [{"source": "start", "source_port": "out", "target": "name"},
                      {"source": "name", "source_port": "out", "target": "hook"}]
    return graph


@contextlib.contextmanager
def workers_paused():
    """The workers other tests started, stopped (SIGSTOP) for the block: none takes a step meanwhile."""
    workers = running_workers()
    for worker in workers:
        signal_tree(worker.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for worker in workers:
            signal_tree(worker.process.pid, signal.SIGCONT)


def test_the_first_pushed_run_goes_in_started_with_the_claim_in_one_statement(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, named_graph(), name="Payouts")
    listener = listener_for(chain)
    listener.step()
    claim(listener, pushed(w3, transact(w3, zoo.functions.emitBig(1, 1))))  # this process now knows the version
    block = pushed(w3, transact(w3, zoo.functions.emitBig(2, 20)))
    with workers_paused():
        with CaptureQueriesContext(connection) as queries:
            claim(listener, block)
        run = Run.objects.get(version=version, block_hash=block.hash)
        steps = {s.step_id: s for s in run.steps.all()}
        log = list(run.log.order_by("seq").values_list("seq", "kind", "data"))
    statements = [q for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    assert len(statements) == 1  # the claim, the start and the events: no lock, no write after it
    assert run.status == Run.Status.RUNNING and run.started_at is not None and run.event_id is not None
    assert steps["name"].status == StepRun.Status.SUCCEEDED and steps["name"].output == {"flow": "Payouts"}
    assert steps["hook"].status == StepRun.Status.QUEUED  # sent to a worker (every worker is paused)
    assert [seq for seq, _, _ in log] == list(range(1, len(log) + 1)) and run.event_seq == len(log)
    assert [(kind, data.get("step"), data["status"]) for _, kind, data in log] == [
        ("run.status", None, "RUNNING"), ("step.status", "name", "SUCCEEDED"), ("step.status", "hook", "QUEUED")]


def test_a_start_worked_out_before_the_flow_changed_is_not_written(zoo_setup, team, alice):
    w3, zoo, chain = zoo_setup
    version = publish(team, alice, named_graph(), name="Payouts")
    listener = listener_for(chain)
    listener.step()
    claim(listener, pushed(w3, transact(w3, zoo.functions.emitBig(1, 1))))
    # Renamed by another process: this worker's copy of the name is out of date.
    Flow.objects.filter(pk=version.flow_id).update(name="Refunds")
    block = pushed(w3, transact(w3, zoo.functions.emitBig(2, 20)))
    claim(listener, block)
    run = Run.objects.get(version=version, block_hash=block.hash)
    assert run.status == Run.Status.RUNNING
    assert run.steps.get(step_id="name").output == {"flow": "Refunds"}  # started again, from the row
    assert run.log.filter(kind="run.status").count() == 1
    # Unpublished meanwhile: the run goes in QUEUED, and its start cancels it as start_run would.
    actions.do_unpublish_flow(version.flow, alice)
    block = pushed(w3, transact(w3, zoo.functions.emitBig(3, 30)))
    claim(listener, block)
    run = Run.objects.get(version=version, block_hash=block.hash)
    assert run.status == Run.Status.CANCELLED and not run.steps.exclude(status=StepRun.Status.CANCELLED).exists()


def test_a_pushed_log_only_a_deeper_trigger_wants_is_stored_though_no_run_is_claimed_yet(zoo_setup, team, alice):
    from executor.models import Event
    from kwala_site.dev.devchain import transact

    w3, zoo, chain = zoo_setup
    version = publish(team, alice, event_graph(31337, BIG, confirmations=2))
    listener = listener_for(chain)
    listener.step()
    block = pushed(w3, transact(w3, zoo.functions.emitBig(3, 30)))
    (batch,) = pushed_claims(chain, [block], listener.registry.get(31337))
    assert batch.events and not batch.claims  # the run waits for its confirmations
    start_pushed_runs(batch.payload())
    assert Event.objects.filter(chain=chain, block_hash=block.hash).count() == 1
    assert not Run.objects.filter(version=version).exists()
