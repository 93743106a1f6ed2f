"""Dramatiq actors: thin wrappers that take ids and call plain code.

The only module that declares actors; it plugs them into executor.runs.queue on
import (ExecutorConfig.ready imports it in every process), so the run code sends
messages without importing Dramatiq.

Every actor must be safe to run twice: Dramatiq delivers at least once.
Actors do not retry through Dramatiq for step failures (the engine owns step
retries in PostgreSQL); their own retries only cover a database that is briefly
unreachable, and the sweeper covers anything still lost.
"""

from __future__ import annotations

import dramatiq
from django.utils import timezone

# Imported when the worker starts, not on its first message: the step kinds pull in
# web3 and friends (about a second), which the first run would otherwise wait for.
from executor import listener
from executor.models import WorkerProbe
from executor.runs import engine, manual, queue, start


@dramatiq.actor(queue_name="default", max_retries=3, time_limit=10_000)
def answer_probe(probe_id: int) -> None:
    """Mark a probe answered: proves a worker consumes the queue and reaches PostgreSQL."""
    WorkerProbe.objects.filter(pk=probe_id, answered_at__isnull=True).update(answered_at=timezone.now())


# start_run goes on to run one of the steps it queued (see engine._continue_with), so it
# gets the same limit as run_step.
@dramatiq.actor(queue_name="runs", max_retries=20, min_backoff=500, max_backoff=30_000, time_limit=300_000)
def start_run(run_id: int) -> None:
    """Begin a QUEUED run: claim it and enqueue its entry steps (safe to deliver twice)."""
    start.start_run(run_id)


# Like start_run, it goes on to run a step of the run it started.
@dramatiq.actor(queue_name="runs", max_retries=20, min_backoff=500, max_backoff=30_000, time_limit=300_000)
def start_pushed_runs(payload: dict) -> None:
    """Claim the runs of logs a chain's node pushed (listener.PushedClaims) and start the first.

    Logs for blocks the block loop had already passed are checked against what it
    stored: what it never got is stored and claimed now, loudly.
    """
    start.start_pushed_runs(payload, on_passed=listener.reconcile_late_push)


# A step's own timeout is far below this; the limit only stops a wedged thread.
@dramatiq.actor(queue_name="runs", max_retries=5, min_backoff=500, max_backoff=10_000, time_limit=300_000)
def run_step(step_run_id: int) -> None:
    """Claim one step, run it, record it and queue its successors (safe to deliver twice)."""
    engine.run_step(step_run_id)


# A replay reads up to KWALA_MAX_REPLAY_BLOCKS blocks' logs; on the default queue, beside the runs.
@dramatiq.actor(queue_name="default", max_retries=3, min_backoff=1000, max_backoff=30_000, time_limit=1_800_000)
def run_replay(job_id: int) -> None:
    """Run a replay or backtest job (safe to deliver twice)."""
    manual.run_replay_job(job_id)


queue.connect(
    run=lambda run_id, delay_ms: start_run.send_with_options(args=(run_id,), delay=delay_ms or None),
    step=lambda step_run_id, delay_ms: run_step.send_with_options(args=(step_run_id,), delay=delay_ms or None),
    pushed=start_pushed_runs.send,
    replay=run_replay.send,
)
