"""Finds work whose message was lost and sends it again.

Dramatiq is only the doorbell: the state is in PostgreSQL. A worker killed
mid-step leaves a RUNNING row whose lease runs out; a flushed or lost Redis
leaves QUEUED rows (steps and runs) nobody will ever receive. Both are re-sent
here; the conditional claims in executor.runs make a duplicate harmless.

It runs every few seconds as `manage.py sweep` (a loop; `make run` starts it).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from executor import metrics
from executor.models import ReplayJob, Run, StepRun
from executor.runs import queue
from executor.runs.store import record_run_event

logger = logging.getLogger(__name__)
S = StepRun.Status
BATCH = 500


def sweep(grace_seconds: float | None = None) -> dict[str, int]:
    """One pass; returns how many leases, steps and runs it re-sent."""
    grace = timedelta(seconds=settings.KWALA_SWEEP_GRACE_SECONDS if grace_seconds is None else grace_seconds)
    now = timezone.now()
    counts = {"expired_leases": 0, "stale_steps": 0, "stale_runs": 0, "replay_jobs": 0}

    # A step whose worker died: back to QUEUED, then sent.
    expired = list(
        StepRun.objects.filter(status=S.RUNNING, lease_expires_at__lt=now, run__status=Run.Status.RUNNING)
        .select_related("run__flow")[:BATCH]
    )
    for row in expired:
        with transaction.atomic():
            # The run first, as every writer of a run's steps locks it (the step row first, then the
            # run for the event, waited on a result transaction that waited on this step: a deadlock).
            Run.objects.select_for_update().filter(pk=row.run_id).exists()
            if StepRun.objects.filter(pk=row.pk, status=S.RUNNING, attempt=row.attempt, lease_expires_at__lt=now).update(
                status=S.QUEUED, lease_expires_at=None, queued_at=now
            ):
                record_run_event(row.run, "step.status", {"step": row.step_id, "status": S.QUEUED,
                                                          "attempt": row.attempt, "reason": "lease expired"})
                transaction.on_commit(lambda pk=row.pk: queue.send_step(pk))
                counts["expired_leases"] += 1

    # Queued steps that are due but were not picked up within the grace period.
    stale = (
        StepRun.objects.filter(status=S.QUEUED, run__status=Run.Status.RUNNING, queued_at__lt=now - grace)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=now - grace))
        .values_list("pk", flat=True)[:BATCH]
    )
    for pk in list(stale):
        # Bump queued_at so the next pass waits another grace period for this message.
        if StepRun.objects.filter(pk=pk, status=S.QUEUED).update(queued_at=now):
            queue.send_step(pk)
            counts["stale_steps"] += 1

    # Runs whose start_run message never arrived.
    runs = Run.objects.filter(status=Run.Status.QUEUED).filter(
        Q(dispatched_at__lt=now - grace) | Q(dispatched_at__isnull=True, created_at__lt=now - grace)
    ).values_list("pk", flat=True)[:BATCH]
    for pk in list(runs):
        if Run.objects.filter(pk=pk, status=Run.Status.QUEUED).update(dispatched_at=now):
            queue.send_run(pk)
            counts["stale_runs"] += 1

    # Replay jobs whose message was lost, or whose worker died in them (running one again is safe).
    stuck = now - timedelta(seconds=settings.KWALA_REPLAY_JOB_TIMEOUT_SECONDS)
    jobs = ReplayJob.objects.filter(
        Q(status=ReplayJob.Status.QUEUED, queued_at__lt=now - grace)
        | Q(status=ReplayJob.Status.RUNNING, started_at__lt=stuck)
    ).values_list("pk", flat=True)[:BATCH]
    for pk in list(jobs):
        if ReplayJob.objects.filter(pk=pk).filter(
            Q(status=ReplayJob.Status.QUEUED) | Q(status=ReplayJob.Status.RUNNING, started_at__lt=stuck)
        ).update(status=ReplayJob.Status.QUEUED, queued_at=now):
            queue.send_replay(pk)
            counts["replay_jobs"] += 1

    if any(counts.values()):
        logger.info("sweep re-sent %s", counts)
        for kind, count in counts.items():
            if count:
                metrics.SWEEPER.labels(kind=kind).inc(count)
    return counts
