"""Run history that does not grow without bound: finished runs older than their team's
retention are deleted, with their steps, events, notices, transactions and the chain events
no other run fired on, in small batches.

Each batch is one statement in one short transaction: it locks the oldest due runs of one
team and status (SKIP LOCKED: a run a worker holds is left for the next pass), found through
the runs' (team, status, created_at, id) index, and deletes them with everything hanging off
them. New runs, steps and events are never waited on: only old rows are locked. Failed runs
are kept longer than the others, for the post-mortem; runs that have not finished are never
touched. Chain events no run fired on (a trigger condition said no, the flow was paused) go
after KWALA_RUN_RETENTION_DAYS. The rollups' figures outlive the runs (executor.rollups);
their own hours go after KWALA_ROLLUP_RETENTION_DAYS.

The sweeper prunes a slice at a time between its sweeps (`prune(max_seconds=...)`) until
nothing is due, then waits KWALA_RETENTION_INTERVAL_SECONDS; `manage.py prune_history` does
it by hand. For installs that keep months of millions of runs a day, see the README
("History") for partitioning the run tables by time instead.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from executor import rollups
from executor.models import Run

logger = logging.getLogger(__name__)

BATCH = 500
# The other finished statuses: pruned after the team's run retention.
_KEPT_LESS = (Run.Status.SUCCEEDED, Run.Status.CANCELLED, Run.Status.REORGED)

# One batch: the oldest due runs of a team in one status, and what hangs off them. The foreign
# keys are checked at commit (Django makes them deferrable), when the children are gone too.
_BATCH_SQL = (
    "WITH doomed AS (SELECT id FROM executor_run WHERE team_id = %(team)s AND status = %(status)s "
    "AND created_at < %(cutoff)s ORDER BY created_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED), "
    "tx AS (DELETE FROM executor_transaction WHERE run_id IN (SELECT id FROM doomed)), "
    "notices AS (DELETE FROM executor_notification WHERE run_id IN (SELECT id FROM doomed)), "
    "steps AS (DELETE FROM executor_steprun WHERE run_id IN (SELECT id FROM doomed)), "
    "log AS (DELETE FROM executor_runevent WHERE run_id IN (SELECT id FROM doomed)) "
    "DELETE FROM executor_run WHERE id IN (SELECT id FROM doomed) RETURNING event_id"
)
# The chain events of the runs just deleted that no other run fired on.
_EVENTS_SQL = (
    "DELETE FROM executor_event e WHERE e.id = ANY(%s) "
    "AND NOT EXISTS (SELECT 1 FROM executor_run r WHERE r.event_id = e.id)"
)
# Chain events that fired no run, oldest first from where the last scan stopped: a window of
# ids, its old rows deleted; the scan stops at the first young row (ids follow created_at).
_UNUSED_EVENTS_SQL = (
    "WITH scanned AS (SELECT id, created_at FROM executor_event WHERE id > %(after)s ORDER BY id LIMIT %(batch)s), "
    "old AS (SELECT id FROM scanned WHERE created_at < %(cutoff)s), "
    "gone AS (DELETE FROM executor_event e USING old WHERE e.id = old.id "
    "AND NOT EXISTS (SELECT 1 FROM executor_run r WHERE r.event_id = e.id) RETURNING e.id) "
    "SELECT (SELECT max(id) FROM old), (SELECT count(*) FROM old) = (SELECT count(*) FROM scanned), "
    "(SELECT count(*) FROM scanned), (SELECT count(*) FROM gone)"
)
# Where the unused-event scan stopped, in this process (a restart scans again from the oldest).
_events_scanned_to = 0


def _policies() -> list[tuple[int, int, int]]:
    """(team id, days to keep finished runs, days to keep failed runs) for every team."""
    from flows.models import Team

    return [
        (pk, days or settings.KWALA_RUN_RETENTION_DAYS, failed or settings.KWALA_FAILED_RUN_RETENTION_DAYS)
        for pk, days, failed in Team.objects.values_list("pk", "run_retention_days", "failed_run_retention_days")
    ]


def prune(*, now: datetime | None = None, batch: int = BATCH, max_batches: int | None = None,
          max_seconds: float | None = None) -> int:
    """Delete runs past their retention, a batch at a time; return how many runs went.

    Stops after `max_batches` batches or once `max_seconds` have passed, if given; a call
    that finds no run due (0) has also pruned the unused chain events and the rollups.
    """
    now = now or timezone.now()
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    deleted, batches = 0, 0

    def budget_left() -> bool:
        return ((max_batches is None or batches < max_batches)
                and (deadline is None or time.monotonic() < deadline))

    for team_id, days, failed_days in _policies():
        for statuses, keep in ((_KEPT_LESS, days), ((Run.Status.FAILED,), failed_days)):
            for status in statuses:
                while budget_left():
                    gone = prune_batch(team_id, status, now - timedelta(days=keep), batch)
                    if not gone:
                        break
                    deleted += gone
                    batches += 1
                    if gone < batch:
                        break
    if deleted:
        logger.info("retention: deleted %s run(s) past their team's retention", deleted)
    elif budget_left():
        prune_unused_events(now=now)
        rollups.fold(now)
        rollups.prune(now)
    return deleted


def prune_batch(team_id: int, status: str, cutoff: datetime, batch: int = BATCH) -> int:
    """Delete up to `batch` of the team's runs in `status` created before `cutoff`, in one short transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_BATCH_SQL, {"team": team_id, "status": status, "cutoff": cutoff, "batch": batch})
        rows = cursor.fetchall()
        events = sorted({event_id for (event_id,) in rows if event_id is not None})
        if events:
            cursor.execute(_EVENTS_SQL, [events])
    return len(rows)


def prune_unused_events(*, now: datetime | None = None, batch: int = 2000, max_batches: int = 50) -> int:
    """Delete chain events older than KWALA_RUN_RETENTION_DAYS that no run fired on; return how many went."""
    global _events_scanned_to
    cutoff = (now or timezone.now()) - timedelta(days=settings.KWALA_RUN_RETENTION_DAYS)
    deleted = 0
    for _ in range(max_batches):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_UNUSED_EVENTS_SQL, {"after": _events_scanned_to, "batch": batch, "cutoff": cutoff})
            last_old, all_old, scanned, gone = cursor.fetchone()
        deleted += gone
        if last_old is not None:
            _events_scanned_to = last_old
        if not all_old or scanned < batch:
            break  # the young events start here
    if deleted:
        logger.info("retention: deleted %s chain event(s) no run fired on", deleted)
    return deleted
