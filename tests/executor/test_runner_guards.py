"""Small guards in the runner: what a run reveals, when a claimed run must not start, how long a lease lasts."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executor.models import Run, StepRun
from executor.runs import engine, start, store
from flows import actions
from flows.models import FlowVersion


def test_secrets_named_with_either_syntax_are_revealed_for_the_step():
    config = {"headers": {"Authorization": "Bearer {{ secrets[\"API_TOKEN\"] }}"},
              "body": {"k": "{{ secrets.OTHER }}", "n": ["{{ secrets['THIRD'] }}"]},
              "webhook_secret": "SLACK_URL"}
    assert engine._secret_names("notify.slack", config) == {"API_TOKEN", "OTHER", "THIRD", "SLACK_URL"}


def test_slow_step_kinds_get_a_lease_longer_than_their_timeouts(settings):
    settings.KWALA_STEP_LEASE_SECONDS = 30
    assert engine._lease_seconds({"type": "http.request", "config": {"timeout": 40}}) == 70
    assert engine._lease_seconds({"type": "notify.email", "config": {}}) >= 30 + 3 * 20
    assert engine._lease_seconds({"type": "condition", "config": {}}) == 30


def checked_graph(*, hook: bool = False) -> dict:
    """A manual trigger and a condition that is always true; with `hook`, an HTTP step after it."""
    graph = {
        "nodes": [
            {"id": "start", "type": "manual", "name": "Start", "position": {"x": 0, "y": 0}, "config": {}},
            {"id": "check", "type": "condition", "name": "Check", "position": {"x": 0, "y": 100},
             "config": {"expression": "1 > 0"}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "check"}],
    }
    if hook:
        graph["nodes"].append({"id": "hook", "type": "http.request", "name": "Hook", "position": {"x": 0, "y": 200},
                               "config": {"method": "POST", "url": "http://127.0.0.1:9/never"}})
        graph["edges"].append({"source": "check", "source_port": "true", "target": "hook"})
    return graph


@pytest.fixture
def live_version(team, alice):
    flow = actions.do_create_flow(team, alice, "Guarded", graph=checked_graph())
    return actions.do_publish_version(flow, alice)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["pause", "unpublish"])
def test_a_trigger_run_claimed_before_a_pause_or_unpublish_is_cancelled_not_started(live_version, alice, change):
    flow = live_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=live_version, trigger_key="log:31337:0xabc:0")
    if change == "pause":
        actions.do_pause_flow(flow, alice)
    else:
        actions.do_unpublish_flow(flow, alice)
    start.start_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert "paused or unpublished" in run.error
    assert not run.steps.exists()


@pytest.mark.django_db(transaction=True)
def test_a_manual_run_of_a_live_flow_still_runs(live_version, alice):
    flow = live_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=live_version, trigger_key="manual:1")
    start.start_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert live_version.status == FlowVersion.Status.PUBLISHED


@pytest.fixture
def hook_version(team, alice):
    flow = actions.do_create_flow(team, alice, "Hooked", graph=checked_graph(hook=True))
    return actions.do_publish_version(flow, alice)


@pytest.mark.django_db
def test_a_run_starts_with_its_rows_written_as_the_logic_left_them(hook_version):
    flow = hook_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=hook_version, trigger_key="manual:rows")
    with CaptureQueriesContext(connection) as queries:
        start.start_run(run.pk)  # inside the test's transaction: nothing is kept, the hook is queued
    # One query loads the run (locked), one reads its version's DAG and one its team's run
    # quotas (both once per worker process), one writes the step rows and the run's log
    # together; the rest is this test's savepoint.
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 4, statements
    assert "runs_per_minute" in statements[2]
    assert "executor_steprun" in statements[3] and "executor_runevent" in statements[3]
    run.refresh_from_db()
    rows = {row.step_id: row for row in run.steps.all()}
    assert run.status == Run.Status.RUNNING and run.started_at is not None
    assert (rows["check"].status, rows["check"].port, rows["check"].output) == ("SUCCEEDED", "true", {"result": True})
    assert (rows["hook"].status, rows["hook"].attempt) == ("QUEUED", 0)
    assert [e.data.get("status") for e in run.log.order_by("seq")] == ["RUNNING", "SUCCEEDED", "QUEUED"]


@pytest.mark.django_db
def test_a_guarded_step_write_that_lost_its_row_raises_and_writes_nothing(hook_version):
    flow = hook_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=hook_version, trigger_key="manual:guard")
    start.start_run(run.pk)
    loaded = store.load_run(run.pk, lock=True)
    rows = store.load_steps(loaded)
    # Another worker claims the queued hook after we read it.
    StepRun.objects.filter(pk=rows["hook"].pk).update(status="RUNNING", attempt=1)

    changes = store.StepChanges()
    changes.change(rows["hook"], status="CANCELLED")
    with pytest.raises(store.ClaimLost):
        engine.write(changes)
    assert StepRun.objects.get(pk=rows["hook"].pk).status == "RUNNING"

    lenient = store.StepChanges()
    lenient.change(store.load_steps(loaded)["check"], strict=False, status="CANCELLED")
    lenient.change(rows["hook"], strict=False, status="CANCELLED")  # still stale: dropped, no error
    engine.write(lenient)
    assert StepRun.objects.get(pk=rows["hook"].pk).status == "RUNNING"
    assert StepRun.objects.get(pk=rows["check"].pk).status == "CANCELLED"


@pytest.mark.django_db(transaction=True)
def test_a_run_started_outside_a_transaction_is_locked_read_and_written_with_its_commit(live_version):
    flow = live_version.flow
    start.start_run(Run.objects.create(team=flow.team, flow=flow, version=live_version, trigger_key="manual:warm").pk)
    run = Run.objects.create(team=flow.team, flow=flow, version=live_version, trigger_key="manual:commit")
    with CaptureQueriesContext(connection) as queries:
        start.start_run(run.pk)
    # BEGIN, the run row locked with its steps read, then one write that ends with the commit
    # (Django's own COMMIT after it finds no transaction open: psycopg sends nothing).
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    assert len(statements) == 2, statements
    assert "FOR UPDATE" in statements[0] and statements[1].endswith("; COMMIT")
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED and run.event_seq == 3
    assert run.steps.get().status == StepRun.Status.SUCCEEDED
    assert list(run.log.order_by("seq").values_list("seq", "kind")) == [
        (1, "run.status"), (2, "step.status"), (3, "run.status")]


@pytest.mark.django_db(transaction=True)
def test_a_write_that_commits_keeps_on_commit_callbacks_and_only_ends_the_outermost_block(live_version):
    from django.db import transaction

    from executor.runs.store import Statement, execute_together

    flow = live_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=live_version, trigger_key="manual:end")

    def mark(error: str) -> Statement:
        return Statement("UPDATE executor_run SET error = %s WHERE id = %s", [error, run.pk], lambda rows: None,
                         returns_rows=False)

    other = connection.get_new_connection(connection.get_connection_params())
    other.autocommit = True
    try:
        ran = []
        with transaction.atomic():
            transaction.on_commit(lambda: ran.append("after commit"))
            execute_together([mark("committed")], commit=True)
            # Committed already: another connection sees it, and the callbacks wait for the block's end.
            assert other.execute("SELECT error FROM executor_run WHERE id = %s", [run.pk]).fetchone() == ("committed",)
            assert ran == []
        assert ran == ["after commit"]

        with pytest.raises(RuntimeError, match="outermost"), transaction.atomic(), transaction.atomic():
            execute_together([mark("nested")], commit=True)
        assert other.execute("SELECT error FROM executor_run WHERE id = %s", [run.pk]).fetchone() == ("committed",)
    finally:
        other.close()


def queued_hook(version: FlowVersion, key: str) -> tuple[Run, StepRun, dict]:
    """A run of `version` started, its hook step queued: (run, hook row, hook's DAG step).

    Inside the test's transaction the thread keeps no step and nothing is committed: no
    message goes out for the suite's workers to take the hook first.
    """
    run = Run.objects.create(team=version.flow.team, flow=version.flow, version=version, trigger_key=key)
    start.start_run(run.pk)
    hook_step = next(step for step in version.dag["steps"] if step["id"] == "hook")
    return run, StepRun.objects.get(run=run, step_id="hook"), hook_step


@pytest.mark.django_db
def test_a_worker_claims_a_queued_step_logs_it_running_and_reads_its_run_in_one_statement(hook_version):
    flow = hook_version.flow
    run, hook, hook_step = queued_hook(hook_version, "manual:claim")
    # The hook's own timeout, kept on its row when the run started, is added to the base lease.
    assert hook.lease_extra_seconds == engine.lease_extra_seconds(hook_step) == hook_step["config"]["timeout"] > 0
    before = {r.step_id: (r.status, r.output) for r in StepRun.objects.filter(run=run)}
    seq_before = Run.objects.get(pk=run.pk).event_seq

    with CaptureQueriesContext(connection) as queries:
        claimed = store.claim_step(hook.pk, 30)
    # The claim, its event and the reads are one statement (outside a transaction it commits on its own).
    assert len(queries.captured_queries) == 1, queries.captured_queries
    assert (claimed.row.pk, claimed.row.status, claimed.row.attempt) == (hook.pk, "RUNNING", 1)
    held = StepRun.objects.get(pk=hook.pk)
    assert claimed.row.lease_expires_at == held.lease_expires_at
    assert held.lease_expires_at - held.started_at == timedelta(seconds=30 + hook.lease_extra_seconds)
    # The run with its flow and version, and every step as it is, the claimed one as claimed.
    assert (claimed.run.pk, claimed.run.flow.code, claimed.run.version.dag) == (run.pk, flow.code, hook_version.dag)
    assert claimed.rows["hook"] is claimed.row
    assert {sid: (r.status, r.output) for sid, r in claimed.rows.items() if sid != "hook"} == {
        sid: value for sid, value in before.items() if sid != "hook"}
    assert all(isinstance(r.queued_at, datetime) for r in claimed.rows.values() if r.status == "SUCCEEDED")
    assert Run.objects.get(pk=run.pk).event_seq == seq_before + 1
    event = run.log.get(seq=seq_before + 1)
    assert (event.kind, event.data) == ("step.status", {"step": "hook", "status": "RUNNING", "attempt": 1})

    # Held under its lease: a second claim (a message delivered twice) takes nothing and logs nothing.
    assert store.claim_step(hook.pk, 30) is None
    assert Run.objects.get(pk=run.pk).event_seq == seq_before + 1
    assert StepRun.objects.get(pk=hook.pk).attempt == 1


@pytest.mark.django_db
def test_a_step_whose_row_keeps_no_lease_extra_gets_its_full_lease_when_claimed(hook_version):
    # A row written before the column existed, by an older process during a deploy, or reset by a
    # retry keeps 0: claimed with the base lease alone, a slow endpoint would outlive it and the
    # step would be taken over and run twice.
    _, hook, hook_step = queued_hook(hook_version, "manual:old-row")
    StepRun.objects.filter(pk=hook.pk).update(lease_extra_seconds=0)
    needed = settings.KWALA_STEP_LEASE_SECONDS + engine.lease_extra_seconds(hook_step)

    claimed = engine._claim(hook.pk)

    held = StepRun.objects.get(pk=hook.pk)
    assert (held.status, held.attempt) == ("RUNNING", 1)
    assert held.lease_expires_at - held.started_at == timedelta(seconds=needed)
    assert held.lease_extra_seconds == engine.lease_extra_seconds(hook_step) > 0
    assert claimed.row.lease_expires_at == held.lease_expires_at


@pytest.mark.django_db
def test_a_step_write_looks_up_its_rows_by_key_however_many_rows_the_table_holds(hook_version):
    # The rows travel as one JSON document, which the planner takes for 100 rows: joined by
    # id alone, it hashed them against a scan of the whole step table while that table held
    # under ~15,000 rows (a bench's worth), so each step's result cost more as runs piled up.
    flow = hook_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=hook_version, trigger_key="manual:plan")
    start.start_run(run.pk)
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO executor_steprun (run_id, step_id, status, attempt, input, output, error, logs, "
                       "port, handled, state) SELECT %s, 'filler' || n, 'SUCCEEDED', 1, '{}', '{}', '', '[]', '', "
                       "false, '{}' FROM generate_series(1, 5000) AS n", [run.pk])
        cursor.execute("ANALYZE executor_steprun")
    changes = store.StepChanges()
    changes.change(store.load_steps(store.load_run(run.pk, lock=True))["hook"], status="CANCELLED")
    (statement,) = changes.take_statements()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {statement.sql}", statement.params)
        plan = "\n".join(line for (line,) in cursor.fetchall())
    assert "Seq Scan on executor_steprun" not in plan, plan


@pytest.mark.django_db
def test_a_claim_looks_up_its_flow_and_version_by_key_however_many_flows_there_are(hook_version, alice):
    # As for step writes: the runs' JSON taken for 100 rows, hashed against whole-table scans
    # of the flows and their versions (every published version stays a row).
    from flows.models import Flow

    team = hook_version.flow.team
    flows = Flow.objects.bulk_create(Flow(team=team, name=f"filler {n}", code=f"fill{n:06d}") for n in range(4000))
    FlowVersion.objects.bulk_create(FlowVersion(flow=f, number=n, status=FlowVersion.Status.ARCHIVED)
                                    for f in flows for n in (1, 2))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE flows_flow")
        cursor.execute("ANALYZE flows_flowversion")
    claim = store.RunClaim(version_id=hook_version.pk, flow_id=hook_version.flow_id, team_id=team.pk,
                           trigger_key="manual:plan", trigger={"type": "manual"})
    sql, params = store.claim_statement([claim], starts=[None], pushed=None)
    # Numbered as PostgreSQL's own placeholders: the plan a prepared claim keeps (plan_cache_mode).
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
    generic = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", sql).replace("%%", "%")
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plans = ["\n".join(line for (line,) in cursor.fetchall())]
        cursor.execute(f"EXPLAIN (GENERIC_PLAN) {generic}")
        plans.append("\n".join(line for (line,) in cursor.fetchall()))
    for plan in plans:
        assert "Seq Scan on flows_flow " not in plan, plan
        assert "Seq Scan on flows_flowversion" not in plan, plan


def waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def behind_a_lock(hold: Callable[[Callable[[], None]], None], wait: Callable[[], None]) -> list[Exception]:
    """Two transactions meeting on a lock: `hold(until_told)` runs in a thread and calls
    until_told() once it holds its locks; then `wait` runs in another thread, and once it waits
    on a lock, `hold` goes on. Returns what either raised (a deadlock, say)."""
    holding, go, errors = threading.Event(), threading.Event(), []

    def until_told() -> None:
        holding.set()
        assert go.wait(10)

    def guarded(func, *args) -> None:
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001 (returned)
            errors.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=guarded, args=(hold, until_told))
    holder.start()
    assert holding.wait(10)
    waiter = threading.Thread(target=guarded, args=(wait,))
    waiter.start()
    deadline = time.monotonic() + 10
    while waiting_on_locks() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.set()
    holder.join()
    waiter.join()
    return errors


@pytest.mark.django_db(transaction=True)
def test_a_claim_waits_for_its_run_before_it_holds_the_step_so_ending_the_run_cannot_deadlock(hook_version):
    # A transaction that ends a run holds the run row and cancels its queued steps. A claim of
    # one of those steps that took the step row first, then waited for the run, was a deadlock.
    flow = hook_version.flow
    run = Run.objects.create(team=flow.team, flow=flow, version=hook_version, trigger_key="manual:race",
                             status=Run.Status.RUNNING, started_at=timezone.now())
    hook = StepRun.objects.create(run=run, step_id="hook", status="QUEUED")  # no message: only this test claims it
    seq_before = run.event_seq
    claims = []

    def end_the_run(until_told) -> None:
        with transaction.atomic():
            Run.objects.select_for_update().get(pk=run.pk)
            until_told()
            StepRun.objects.filter(pk=hook.pk, status="QUEUED").update(status="CANCELLED")
            Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED)

    errors = behind_a_lock(end_the_run, lambda: claims.append(store.claim_step(hook.pk, 30)))  # the claim waits

    assert errors == []
    assert claims == [None]  # the run ended first: nothing to claim
    assert StepRun.objects.get(pk=hook.pk).status == "CANCELLED"
    assert Run.objects.get(pk=run.pk).event_seq == seq_before
