"""Dramatiq actors: thin wrappers that take ids and call plain code.

Every actor must be safe to run twice: Dramatiq delivers at least once.
"""

from __future__ import annotations

import dramatiq
from django.utils import timezone

from executor.models import WorkerProbe


@dramatiq.actor(queue_name="default", max_retries=3, time_limit=10_000)
def answer_probe(probe_id: int) -> None:
    """Mark a probe answered: proves a worker consumes the queue and reaches PostgreSQL."""
    WorkerProbe.objects.filter(pk=probe_id, answered_at__isnull=True).update(answered_at=timezone.now())


@dramatiq.actor(queue_name="runs", max_retries=20, min_backoff=500, max_backoff=30_000, time_limit=60_000)
def start_run(run_id: int) -> None:
    """Begin a QUEUED run: claim it and enqueue its entry steps (safe to deliver twice)."""
    from executor import runner

    runner.start_run(run_id)
