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

The sweeper prunes a slice at a time between its sweeps (`prune_slice`) until a whole pass
finds nothing due, then waits KWALA_RETENTION_INTERVAL_SECONDS; `manage.py prune_history` does
it by hand. For installs that keep months of millions of runs a day, see the README
("History") for partitioning the run tables by time instead.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

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
    "AND (created_at, id) > (%(after_at)s, %(after_id)s) AND created_at < %(cutoff)s "
    "ORDER BY created_at, id LIMIT %(batch)s FOR UPDATE SKIP LOCKED), "
    "tx AS (DELETE FROM executor_transaction WHERE run_id IN (SELECT id FROM doomed)), "
    "notices AS (DELETE FROM executor_notification WHERE run_id IN (SELECT id FROM doomed)), "
    "steps AS (DELETE FROM executor_steprun WHERE run_id IN (SELECT id FROM doomed)), "
    "log AS (DELETE FROM executor_runevent WHERE run_id IN (SELECT id FROM doomed)) "
    "DELETE FROM executor_run WHERE id IN (SELECT id FROM doomed) RETURNING event_id, created_at, id"
)
# Where the scan of each (team, status) got to in this process: the (created_at, id) of the last
# run it deleted. The next batch starts there, not at the oldest index entries again, which are
# the runs just deleted (dead until vacuumed: walking them made each batch slower than the last).
# A call that finds nothing due forgets them all, so the next looks from the oldest once (a run
# created long ago that finished since, a run that was locked).
_scanned_to: dict[tuple[int, str], tuple[datetime, int]] = {}
_START = (datetime(1, 1, 1, tzinfo=UTC), 0)
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
    that looked at every team and found no run due (0) has also pruned the unused chain events
    and the rollups.
    """
    return _prune(now=now, batch=batch, max_batches=max_batches, max_seconds=max_seconds)[0]


def prune_slice(seconds: float) -> bool:
    """Prune for about `seconds` (the sweeper's slice between two sweeps); return whether to
    come back soon: runs were deleted, or time ran out before every team was looked at.
    False only when a whole pass found nothing due."""
    deleted, finished = _prune(max_seconds=seconds)
    return bool(deleted) or not finished


def _prune(*, now: datetime | None = None, batch: int = BATCH, max_batches: int | None = None,
           max_seconds: float | None = None) -> tuple[int, bool]:
    """(runs deleted, whether every team and status was looked at to its end)."""
    now = now or timezone.now()
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    deleted, batches, finished = 0, 0, True

    def budget_left() -> bool:
        return ((max_batches is None or batches < max_batches)
                and (deadline is None or time.monotonic() < deadline))

    for team_id, days, failed_days in _policies():
        for statuses, keep in ((_KEPT_LESS, days), ((Run.Status.FAILED,), failed_days)):
            for status in statuses:
                while True:
                    if not budget_left():
                        finished = False
                        break
                    gone, last = prune_batch(team_id, status, now - timedelta(days=keep), batch,
                                             after=_scanned_to.get((team_id, status)))
                    if last is not None:
                        _scanned_to[team_id, status] = last
                    deleted += gone
                    batches += bool(gone)
                    if gone < batch:
                        break
    if deleted:
        logger.info("retention: deleted %s run(s) past their team's retention", deleted)
    elif finished:
        _scanned_to.clear()
        prune_unused_events(now=now)
        rollups.fold(now)
        rollups.prune(now)
    return deleted, finished


def prune_batch(team_id: int, status: str, cutoff: datetime, batch: int = BATCH, *,
                after: tuple[datetime, int] | None = None) -> tuple[int, tuple[datetime, int] | None]:
    """Delete up to `batch` of the team's runs in `status` created before `cutoff` (and after
    `after`, a (created_at, id)), in one short transaction; return how many went and the
    (created_at, id) of the last."""
    after_at, after_id = after or _START
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_BATCH_SQL, {"team": team_id, "status": status, "cutoff": cutoff, "batch": batch,
                                    "after_at": after_at, "after_id": after_id})
        rows = cursor.fetchall()
        events = sorted({event_id for event_id, _, _ in rows if event_id is not None})
        if events:
            cursor.execute(_EVENTS_SQL, [events])
    return len(rows), max(((at, pk) for _, at, pk in rows), default=None)


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
