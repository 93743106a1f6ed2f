"""Claims made separately and written together (runs.batching, store.claim_each): each keeps
its own run, its own start and its own answer; none waits when nothing else is in flight."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import DataError, OperationalError
from django.utils import timezone

from executor.models import Run
from executor.runs import start, store
from executor.runs.batching import GroupCommit
from flows import actions
from tests.executor.test_runner_guards import checked_graph, hook_version  # noqa: F401 (a fixture)


def webhook_claim(version, key: str) -> store.RunClaim:
    return store.RunClaim(version_id=version.pk, flow_id=version.flow_id, team_id=version.flow.team_id,
                          trigger_key=f"webhook:{key}", trigger={"type": "webhook", "body": {"key": key}})


def begun(claim: store.RunClaim) -> start.Begun:
    found, wait = start._begin_claim(claim, keep_one=False, now=timezone.now())
    assert found is not None and wait == 0
    return found


@pytest.mark.django_db
def test_claims_written_together_each_get_their_own_run_rows_and_events(hook_version):  # noqa: F811
    claims = [webhook_claim(hook_version, key) for key in ("a", "b", "a", "c")]
    starts = [begun(claims[0]), begun(claims[1]), begun(claims[2]), None]

    found = store.claim_each([(c, b.start if b else None) for c, b in zip(claims, starts, strict=True)])

    first, second, again, unstarted = found
    # The same claim twice in one statement is one run: the first.
    assert again is None
    assert first.started and second.started and not unstarted.started
    assert len({first.run_id, second.run_id, unstarted.run_id}) == 3
    runs = {run.pk: run for run in Run.objects.filter(flow=hook_version.flow)}
    assert set(runs) == {first.run_id, second.run_id, unstarted.run_id}
    assert runs[first.run_id].trigger_key == "webhook:a" and runs[second.run_id].trigger_key == "webhook:b"
    assert str(runs[first.run_id].code) == starts[0].start.run["code"]
    assert runs[unstarted.run_id].status == Run.Status.QUEUED and not runs[unstarted.run_id].steps.exists()
    for mine in (first, second):
        run = runs[mine.run_id]
        assert run.status == Run.Status.RUNNING
        # Each run's own rows and events came back to it, and nobody else's.
        assert sorted(mine.steps) == sorted([row.pk, row.step_id] for row in run.steps.all())
        assert sorted(mine.log) == sorted([e.pk, e.seq] for e in run.log.all())
        assert [e.data.get("status") for e in run.log.order_by("seq")] == ["RUNNING", "SUCCEEDED", "QUEUED"]


@pytest.mark.django_db
def test_a_start_that_no_longer_holds_goes_in_queued_and_the_others_start(hook_version, alice):  # noqa: F811
    other = actions.do_publish_version(
        actions.do_create_flow(hook_version.flow.team, alice, "Other", graph=checked_graph(hook=True)), alice)
    stale, fresh = webhook_claim(hook_version, "stale"), webhook_claim(other, "fresh")
    stale_start, fresh_start = begun(stale), begun(fresh)
    hook_version.flow.name = "Renamed since"  # what the stale start was worked out from changed
    hook_version.flow.save(update_fields=["name"])

    went_stale, went_fresh = store.claim_each([(stale, stale_start.start), (fresh, fresh_start.start)])

    assert not went_stale.started and went_stale.steps == []
    assert Run.objects.get(pk=went_stale.run_id).status == Run.Status.QUEUED
    assert went_fresh.started and Run.objects.get(pk=went_fresh.run_id).status == Run.Status.RUNNING


@pytest.mark.django_db(transaction=True)
def test_concurrent_webhook_claims_start_one_run_each_and_a_repeat_none(hook_version):  # noqa: F811
    keys = [f"k{n}" for n in range(24)] + ["k0", "k1"]  # two repeats, racing the originals
    gate = threading.Barrier(len(keys))
    answers: dict[int, tuple[Run | None, bool]] = {}

    def call(index: int) -> None:
        claim = webhook_claim(hook_version, keys[index])
        gate.wait()
        try:
            answers[index] = start.start_claimed(claim)
        finally:
            from django.db import connection
            connection.close()

    threads = [threading.Thread(target=call, args=(n,)) for n in range(len(keys))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    new = [run for run, is_new in answers.values() if is_new]
    assert len(answers) == 26 and len(new) == 24
    stored = Run.objects.filter(flow=hook_version.flow)
    assert sorted(stored.values_list("trigger_key", flat=True)) == sorted(f"webhook:k{n}" for n in range(24))
    assert {str(run.code) for run in new} == {str(code) for code in stored.values_list("code", flat=True)}
    for run in stored:
        # Started by its claim (the session's workers may have taken its hook step since).
        assert run.started_at is not None and run.status != Run.Status.QUEUED
        assert sorted(run.steps.values_list("step_id", flat=True)) == ["check", "hook"]
        assert run.steps.get(step_id="check").status == "SUCCEEDED"


# -- the group commit itself -------------------------------------------------------------------


class Recorder:
    """A write that records its batches; the first waits for `gate` when one is given."""

    def __init__(self, gate: threading.Event | None = None, refuse=()) -> None:
        self.batches: list[list] = []
        self.gate = gate
        self.refuse = set(refuse)
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
            first = len(self.batches) == 1
        if first and self.gate is not None:
            assert self.gate.wait(10)
        if self.refuse & set(items):
            raise self.refuse_error()
        return [f"done {item}" for item in items]

    def refuse_error(self) -> Exception:
        return DataError("unsupported Unicode escape sequence")


def submit_in_threads(group: GroupCommit, items) -> tuple[dict, list[threading.Thread]]:
    results: dict = {}

    def call(item) -> None:
        try:
            results[item] = group.submit(item)
        except Exception as exc:  # noqa: BLE001 (the caller's answer is what is checked)
            results[item] = exc

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return results, threads


def wait_until_waiting(group: GroupCommit, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(group._waiting) < count:
        assert time.monotonic() < deadline, f"{len(group._waiting)} of {count} callers queued"
        time.sleep(0.001)


def behind_a_first_write(write: Recorder, items: list, limit: int = 8) -> tuple[dict, dict]:
    """Submit `items` while a first caller's write waits on `write.gate`, so they queue and are
    written together next; then let it all go. The answers: (the first's, the items')."""
    group = GroupCommit(write, limit=limit)
    first, first_threads = submit_in_threads(group, ["first"])
    while not write.batches:
        time.sleep(0.001)  # the first caller is writing, alone
    results, threads = submit_in_threads(group, items)
    wait_until_waiting(group, len(items))
    write.gate.set()
    for thread in first_threads + threads:
        thread.join()
    return first, results


def test_a_lone_caller_writes_at_once_and_alone():
    write = Recorder()
    sizes = []
    group = GroupCommit(write, limit=8, observe=sizes.append)
    assert group.submit(1) == "done 1"
    assert group.submit(2) == "done 2"
    assert write.batches == [[1], [2]] and sizes == [1, 1]


def test_callers_that_arrive_during_a_write_are_written_together_next_each_with_its_answer():
    write = Recorder(threading.Event())
    first, rest = behind_a_first_write(write, [1, 2, 3, 4], limit=3)

    assert first == {"first": "done first"}
    assert rest == {n: f"done {n}" for n in (1, 2, 3, 4)}
    # The limit splits what waited; nobody is left behind.
    assert write.batches[0] == ["first"]
    assert sorted(n for batch in write.batches[1:] for n in batch) == [1, 2, 3, 4]
    assert [len(batch) for batch in write.batches[1:]] == [3, 1]


def test_an_item_the_database_refuses_fails_only_its_own_caller():
    write = Recorder(threading.Event(), refuse={"bad"})
    _, results = behind_a_first_write(write, ["good", "bad", "fine"])

    assert results["good"] == "done good" and results["fine"] == "done fine"
    assert isinstance(results["bad"], DataError)
    # Together once, then each alone.
    assert sorted(write.batches[1]) == ["bad", "fine", "good"]
    assert sorted(map(tuple, write.batches[2:])) == [("bad",), ("fine",), ("good",)]


def test_an_overload_fails_every_caller_of_the_write_at_once():
    overloaded = psycopg.OperationalError("connection failed: sorry, too many clients already")

    class Overloaded(Recorder):
        def refuse_error(self):
            return overloaded

    write = Overloaded(threading.Event(), refuse={"x"})
    _, results = behind_a_first_write(write, ["x", "y"])

    assert results == {"x": overloaded, "y": overloaded}
    assert len(write.batches) == 2  # not tried again one by one: each alone would fail too


def deadlock() -> Exception:
    """A write PostgreSQL rolled back to break a deadlock, as Django raises it."""
    try:
        raise psycopg.errors.DeadlockDetected("deadlock detected")
    except psycopg.Error as cause:
        try:
            raise OperationalError("deadlock detected") from cause
        except OperationalError as exc:
            return exc


class DeadlockedOnce(Recorder):
    """A write that PostgreSQL rolls back the first time it is tried."""

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
            first = len(self.batches) == 1
        if first:
            raise deadlock()
        return [f"done {item}" for item in items]


def test_a_lone_write_rolled_back_for_a_deadlock_is_written_again():
    write = DeadlockedOnce()
    group = GroupCommit(write, limit=8)
    assert group.submit("alone") == "done alone"
    assert write.batches == [["alone"], ["alone"]]


def test_a_write_rolled_back_for_a_deadlock_is_written_again_each_alone():
    class DeadlockedTogether(Recorder):
        def __call__(self, items):
            if len(items) > 1:
                with self.lock:
                    self.batches.append(list(items))
                raise deadlock()
            return super().__call__(items)

    write = DeadlockedTogether(threading.Event())
    _, results = behind_a_first_write(write, ["x", "y"])

    assert results == {"x": "done x", "y": "done y"}
    assert sorted(write.batches[1]) == ["x", "y"]
    assert sorted(map(tuple, write.batches[2:])) == [("x",), ("y",)]
