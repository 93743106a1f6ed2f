"""Step results recorded together (engine._record through a group commit, runs.batching): each
outcome is settled on its run's rows as if alone, in one transaction."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executor import metrics, rollups
from executor.models import Notification, Run, RunRollup, StepRun
from executor.runs import engine, start, store
from executor.steps import StepError, StepResult
from tests.executor.conftest import edge, make_version, manual, node, steps_of
from tests.sinks import Reply

S = StepRun.Status


def hook(node_id: str, url: str) -> dict:
    return node(node_id, "http.request", {"method": "POST", "url": url, "body": {"n": "{{ trigger.n }}"}})


def ran(run: Run, step_id: str, output: dict, *, keep_one: bool = True) -> engine._Done:
    """The step claimed as a worker claims it, and run with `output`."""
    claimed = store.claim_step(StepRun.objects.get(run=run, step_id=step_id).pk, 30)
    step = engine._dag_step(claimed.run, step_id)
    ctx = engine._context(claimed.run, claimed.row, step, claimed.rows)
    return engine._Done(run.pk, claimed.row, step, ctx, StepResult(output=output), keep_one)


def batch_sizes() -> tuple[float, float]:
    """This process's kwala_step_results_per_commit: (results recorded, transactions)."""
    found = {s.name: s.value for family in metrics.RESULTS_PER_COMMIT.collect() for s in family.samples}
    return found["kwala_step_results_per_commit_sum"], found["kwala_step_results_per_commit_count"]


@pytest.mark.django_db
def test_two_branches_of_one_run_recorded_together_start_the_join_once(team, alice):
    url = "http://127.0.0.1:9/never"
    version = make_version(team, alice, [manual(), hook("a", url), hook("b", url), node("both", "join", {}),
                                         hook("done", url)],
                           [edge("start", "a"), edge("start", "b"), edge("a", "both"), edge("b", "both"),
                            edge("both", "done")])
    run = Run.objects.create(team=team, flow=version.flow, version=version, trigger_key="manual:both", trigger={})
    start.start_run(run.pk)  # inside the test's transaction: both branches queued, none kept, no message sent
    outcomes = [ran(run, "a", {"from": "a"}), ran(run, "b", {"from": "b"})]
    seq_before = Run.objects.get(pk=run.pk).event_seq

    with CaptureQueriesContext(connection) as queries:
        (kept_a, _, _), (kept_b, _, rows) = engine._record(outcomes)

    # One locked read of the run and its steps (pipelined: one entry), one write.
    assert len([q for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]) == 2, queries.captured_queries
    # The first branch left the join waiting; the second, settled on the rows the first left, ran it
    # and kept the step after it for its thread.
    assert kept_a is None
    assert (kept_b.step_id, kept_b.status, kept_b.attempt) == ("done", S.RUNNING, 1)
    assert rows["done"] is kept_b
    steps = steps_of(run)
    assert {sid: row.status for sid, row in steps.items()} == {
        "a": S.SUCCEEDED, "b": S.SUCCEEDED, "both": S.SUCCEEDED, "done": S.RUNNING}
    assert steps["both"].output == {"a": {"from": "a"}, "b": {"from": "b"}}
    events = [(e.seq, e.data.get("step"), e.data.get("status")) for e in run.log.filter(seq__gt=seq_before)]
    assert sorted(events) == [(seq_before + 1, "a", S.SUCCEEDED), (seq_before + 2, "b", S.SUCCEEDED),
                              (seq_before + 3, "both", S.SUCCEEDED), (seq_before + 4, "done", S.QUEUED),
                              (seq_before + 5, "done", S.RUNNING)]
    assert Run.objects.get(pk=run.pk).event_seq == seq_before + 5


@pytest.mark.django_db
def test_steps_of_several_runs_recorded_together_each_settle_their_own_run(team, alice):
    version = make_version(team, alice, [manual(), hook("hook", "http://127.0.0.1:9/never")],
                           [edge("start", "hook")])
    runs = [Run.objects.create(team=team, flow=version.flow, version=version, trigger_key=f"manual:{n}", trigger={})
            for n in range(3)]
    failing = Run.objects.create(team=team, flow=version.flow, version=version, trigger_key="manual:no", trigger={})
    for run in [*runs, failing]:
        start.start_run(run.pk)
    outcomes = [ran(run, "hook", {"run": n}) for n, run in enumerate(runs)]
    outcomes.append(ran(failing, "hook", {}))
    outcomes[-1].outcome = StepError("the endpoint said no", permanent=True)
    taken_over = outcomes[1].row
    # The second run's step was taken over since (its lease ran out): its result is not recorded.
    StepRun.objects.filter(pk=taken_over.pk).update(attempt=taken_over.attempt + 1)

    results = engine._record(outcomes)

    assert results[1] == (None, None, None)
    for n in (0, 2):
        run = Run.objects.get(pk=runs[n].pk)
        assert run.status == Run.Status.SUCCEEDED
        assert steps_of(run)["hook"].output == {"run": n}
        assert [e.data["status"] for e in run.log.order_by("seq")][-2:] == [S.SUCCEEDED, Run.Status.SUCCEEDED]
    assert Run.objects.get(pk=runs[1].pk).status == Run.Status.RUNNING
    assert StepRun.objects.get(pk=taken_over.pk).status == S.RUNNING
    # A run failed in the same transaction tells its team, once.
    failing.refresh_from_db()
    assert failing.status == Run.Status.FAILED and "the endpoint said no" in failing.error
    assert Notification.objects.filter(run=failing, kind=Notification.Kind.RUN_FAILED).count() == 1
    assert not Notification.objects.filter(run__in=runs).exists()


@pytest.mark.django_db(transaction=True)
def test_runs_finishing_at_the_same_moment_share_commits_and_each_finishes_once(team, alice, http_sink):
    count = 24
    version = make_version(team, alice, [manual(), hook("hook", f"{http_sink.url}/hook")], [edge("start", "hook")])
    runs = [Run.objects.create(team=team, flow=version.flow, version=version, trigger_key=f"manual:{n}",
                               trigger={"n": n}) for n in range(count)]
    # Every call answers after the same pause, so the threads come back to record together.
    http_sink.script("/hook", *[Reply(delay=0.3)] * count)
    gate = threading.Barrier(count)
    errors = []
    recorded, commits = batch_sizes()

    def run_one(run: Run) -> None:
        try:
            gate.wait()
            start.start_run(run.pk)  # starts it, then runs its hook on this thread and records it
        except Exception as exc:  # noqa: BLE001 (checked below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_one, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(int(r.json()["n"]) for r in http_sink.to("/hook")) == list(range(count))  # each once
    for run in Run.objects.filter(pk__in=[r.pk for r in runs]):
        assert run.status == Run.Status.SUCCEEDED, run.error
        hook_row = steps_of(run)["hook"]
        assert (hook_row.status, hook_row.attempt) == (S.SUCCEEDED, 1)
        seqs = list(run.log.order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, run.event_seq + 1))  # no gap, no repeat
    now_recorded, now_commits = batch_sizes()
    assert now_recorded - recorded == count
    assert now_commits - commits < count  # some results went together


def waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        return cursor.fetchone()[0]


def wait_for_waiters(count: int) -> None:
    deadline = time.monotonic() + 10
    while waiting_on_locks() < count:
        assert time.monotonic() < deadline, f"{waiting_on_locks()} of {count} transactions wait on a lock"
        time.sleep(0.01)


@pytest.mark.django_db(transaction=True)
def test_transactions_finishing_runs_of_one_flow_take_its_rollup_rows_in_one_order(team, alice):
    # A run that finishes adds itself to one of its flow's rollup rows for the hour (by its id),
    # locking that row until the commit. Two transactions finishing runs of one flow whose rows
    # come in opposite orders would each hold one row and wait for the other's: a deadlock.
    version = make_version(team, alice, [manual(), hook("hook", "http://127.0.0.1:9/never")],
                           [edge("start", "hook")])
    runs = [Run.objects.create(team=team, flow=version.flow, version=version, trigger_key=f"manual:{n}", trigger={},
                               status=Run.Status.RUNNING, started_at=timezone.now()) for n in range(16)]
    low, high = ([run for run in runs if rollups.row_of(run)[2] == shard][:2] for shard in (2, 5))
    for run in low + high:
        StepRun.objects.create(run=run, step_id="hook", status=S.QUEUED)  # no message: nothing else runs it
    outcomes = {run.pk: ran(run, "hook", {"run": run.pk}) for run in low + high}
    _, hour, _ = rollups.row_of(low[0])
    RunRollup.objects.create(team=team, flow=version.flow, hour=hour, shard=2)
    held, release, errors = threading.Event(), threading.Event(), []

    def hold_the_low_row() -> None:
        with transaction.atomic():
            RunRollup.objects.select_for_update().get(flow=version.flow, hour=hour, shard=2)
            held.set()
            release.wait(10)
        connection.close()

    def record(order: list[Run]) -> None:
        try:
            engine._record([outcomes[run.pk] for run in order])
        except Exception as exc:  # noqa: BLE001 (checked below)
            errors.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_low_row)
    holder.start()
    assert held.wait(10)
    # The first waits for the low row, holding no rollup row; the second comes with the high
    # run first: as it came, it would take the high row, then wait for the low one behind the
    # first, which, once it has the low row, would wait for the high one.
    first = threading.Thread(target=record, args=([low[0], high[0]],))
    first.start()
    wait_for_waiters(1)
    second = threading.Thread(target=record, args=([high[1], low[1]],))
    second.start()
    wait_for_waiters(2)
    release.set()
    for thread in (holder, first, second):
        thread.join()

    assert errors == []
    assert set(Run.objects.filter(pk__in=[r.pk for r in low + high]).values_list("status", flat=True)) == {
        Run.Status.SUCCEEDED}
    assert sum(RunRollup.objects.filter(flow=version.flow).values_list("succeeded", flat=True)) == 4
