"""Dramatiq actors: thin wrappers that take ids and call plain code.

Every actor must be safe to run twice: Dramatiq delivers at least once.
Actors do not retry through Dramatiq for step failures (the runner owns step
retries in PostgreSQL); their own retries only cover a database that is briefly
unreachable, and the sweeper covers anything still lost.
"""

from __future__ import annotations

import dramatiq
from django.utils import timezone

# Imported when the worker starts, not on its first message: the step kinds pull in
# web3 and friends (about a second), which the first run would otherwise wait for.
from executor import runner
from executor.models import WorkerProbe


@dramatiq.actor(queue_name="default", max_retries=3, time_limit=10_000)
def answer_probe(probe_id: int) -> None:
    """Mark a probe answered: proves a worker consumes the queue and reaches PostgreSQL."""
    WorkerProbe.objects.filter(pk=probe_id, answered_at__isnull=True).update(answered_at=timezone.now())


# start_run goes on to run one of the steps it queued (see runner._continue_with), so it
# gets the same limit as run_step.
@dramatiq.actor(queue_name="runs", max_retries=20, min_backoff=500, max_backoff=30_000, time_limit=300_000)
def start_run(run_id: int) -> None:
    """Begin a QUEUED run: claim it and enqueue its entry steps (safe to deliver twice)."""
    runner.start_run(run_id)


# Like start_run, it goes on to run a step of the run it started.
@dramatiq.actor(queue_name="runs", max_retries=20, min_backoff=500, max_backoff=30_000, time_limit=300_000)
def start_pushed_runs(payload: dict) -> None:
    """Claim the runs of logs a chain's node pushed (listener.PushedClaims) and start the first."""
    runner.start_pushed_runs(payload)


# A step's own timeout is far below this; the limit only stops a wedged thread.
@dramatiq.actor(queue_name="runs", max_retries=5, min_backoff=500, max_backoff=10_000, time_limit=300_000)
def run_step(step_run_id: int) -> None:
    """Claim one step, run it, record it and queue its successors (safe to deliver twice)."""
    runner.run_step(step_run_id)


def enqueue_step(step_run_id: int, *, delay_ms: int = 0) -> None:
    run_step.send_with_options(args=(step_run_id,), delay=delay_ms or None)


def enqueue_run(run_id: int) -> None:
    start_run.send(run_id)
