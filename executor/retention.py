"""Run history that does not grow without bound: finished runs older than their team's
retention are deleted, with their steps, events, notices and transactions, in small batches.

Each batch is one short transaction over the oldest rows (the runs' (team, created_at)
index finds them), so the hot rows new runs write are never locked. Failed runs are kept
longer than the others, for the post-mortem; runs that have not finished are never touched.
The sweeper loop prunes every KWALA_RETENTION_INTERVAL_SECONDS; `manage.py prune_history`
does it by hand. For installs that keep months of millions of runs a day, see the README
("History") for partitioning the run tables by time instead.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from executor.models import Run

logger = logging.getLogger(__name__)

BATCH = 500
# The other finished statuses: pruned after the team's run retention.
_KEPT_LESS = (Run.Status.SUCCEEDED, Run.Status.CANCELLED, Run.Status.REORGED)


def _policies() -> list[tuple[int, int, int]]:
    """(team id, days to keep finished runs, days to keep failed runs) for every team."""
    from flows.models import Team

    return [
        (pk, days or settings.KWALA_RUN_RETENTION_DAYS, failed or settings.KWALA_FAILED_RUN_RETENTION_DAYS)
        for pk, days, failed in Team.objects.values_list("pk", "run_retention_days", "failed_run_retention_days")
    ]


def prune(*, now: datetime | None = None, batch: int = BATCH, max_batches: int = 40) -> int:
    """Delete up to `max_batches` batches of runs past their retention; return how many runs went."""
    now = now or timezone.now()
    deleted, budget = 0, max_batches
    for team_id, days, failed_days in _policies():
        for statuses, keep in ((_KEPT_LESS, days), ((Run.Status.FAILED,), failed_days)):
            cutoff = now - timedelta(days=keep)
            while budget > 0:
                ids = list(Run.objects.filter(team_id=team_id, created_at__lt=cutoff, status__in=statuses)
                           .order_by("created_at").values_list("pk", flat=True)[:batch])
                if not ids:
                    break
                with transaction.atomic():
                    Run.objects.filter(pk__in=ids).delete()
                deleted += len(ids)
                budget -= 1
    if deleted:
        logger.info("retention: deleted %s run(s) past their team's retention", deleted)
    return deleted
