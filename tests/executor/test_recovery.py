"""Nothing is lost when a worker dies mid-step or Redis forgets its queues."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings

from executor.models import Run, RunEvent, StepRun
from executor.runs.manual import start_manual_run
from tests.conftest import Service, running_workers, start_worker
from tests.executor.conftest import edge, make_version, manual, node, steps_of, wait_for_run
from tests.sinks import Reply

S = StepRun.Status


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants: rundramatiq execs dramatiq, which forks the worker processes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def signal_tree(pid: int, sig: int) -> None:
    for member in tree(pid):
        try:
            os.kill(member, sig)
        except ProcessLookupError:
            pass


pytestmark = pytest.mark.django_db(transaction=True)


def test_a_worker_killed_mid_step_is_taken_over_and_each_result_is_recorded_once(
    executor_worker, executor_env, service_logs, http_sink, team, alice
):
    # The first delivery hangs long enough for the worker to be killed while it waits.
    http_sink.script("/slow", Reply(delay=30))
    others = running_workers()
    victim = start_worker(executor_env, service_logs, "victim-worker", threads=2)
    for worker in others:  # let the victim take the step
        signal_tree(worker.process.pid, signal.SIGSTOP)
    try:
        version = make_version(
            team, alice,
            [manual(), node("call", "http.request", {"url": f"{http_sink.url}/slow", "body": {"n": 1}, "timeout": 40}),
             node("after", "transform", {"fields": [{"name": "code", "expression": "steps.call.output.status_code"}]})],
            [edge("start", "call"), edge("call", "after")],
        )
        run = start_manual_run(version, {}, user=alice)
        http_sink.wait_for("/slow", 1)
    finally:
        signal_tree(victim.process.pid, signal.SIGKILL)
        victim.process.wait()
        for worker in others:
            signal_tree(worker.process.pid, signal.SIGCONT)

    run = wait_for_run(run, timeout=90)

    assert run.status == Run.Status.SUCCEEDED, run.error
    deliveries = http_sink.to("/slow")
    assert len(deliveries) == 2
    assert {d.headers["Idempotency-Key"] for d in deliveries} == {f"{run.code}:call"}
    steps = steps_of(run)
    assert steps["after"].output == {"code": 200}
    assert steps["call"].attempt == 2
    finished = [e for e in RunEvent.objects.filter(run=run, kind="step.status") if e.data["status"] == "SUCCEEDED"]
    assert sorted(e.data["step"] for e in finished) == ["after", "call"]


def test_a_flushed_redis_loses_no_run_the_sweeper_sends_it_again(executor_worker, http_sink, team, alice):
    version = make_version(
        team, alice,
        [manual(), node("call", "http.request", {"url": f"{http_sink.url}/after-flush", "body": {}})],
        [edge("start", "call")],
    )
    workers = running_workers()
    for worker in workers:  # hold the queue still while it is flushed
        signal_tree(worker.process.pid, signal.SIGSTOP)
    try:
        run = start_manual_run(version, {}, user=alice)
        redis.Redis.from_url(settings.REDIS_URL).flushall()
    finally:
        for worker in workers:
            signal_tree(worker.process.pid, signal.SIGCONT)

    run = wait_for_run(run, timeout=60)

    assert run.status == Run.Status.SUCCEEDED
    assert len(http_sink.to("/after-flush")) == 1


@pytest.mark.django_db(transaction=True)
def test_the_sweeper_finishes_its_pass_and_exits_cleanly_on_sigterm(child_env, service_logs):
    sweeper = Service("sweeper-sigterm", [sys.executable, "manage.py", "sweep", "--interval", "30"], child_env,
                      service_logs)
    sweeper.wait_for_output("sweeper started", timeout=30)
    sweeper.process.terminate()
    assert sweeper.process.wait(10) == 0  # not killed by the signal: it stopped between passes
    assert "sweeper stopped" in sweeper.output()
    sweeper.stop()
