"""Figures about runs read from their rollups, never by scanning executor_run.

A trigger on executor_run keeps RunRollup exact: finished runs per flow, per hour they
were created in, per final status (migration 0007 has its SQL and says why a trigger).
This module reads those rows, folds the shards of hours that are over, deletes hours past
KWALA_ROLLUP_RETENTION_DAYS (both from executor.retention's pass), and recounts hours from
the runs when asked (`manage.py rollup_runs`).

Windows are whole hours: "the last 7 days" is the 168 hours before the current one and
the current one so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone

from executor.models import Run, RunRollup

FINAL = (Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELLED, Run.Status.REORGED)


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Figures:
    """A flow's finished runs in a window, by final status."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    reorged: int = 0

    @property
    def finished(self) -> int:
        """Runs that ran to an end of their own (cancelled and reorged runs did not)."""
        return self.succeeded + self.failed

    @property
    def success_rate(self) -> int | None:
        """Percent of `finished` that succeeded, or None when none finished."""
        return round(100 * self.succeeded / self.finished) if self.finished else None


def flow_figures(team_id: int, since: datetime) -> dict[int, Figures]:
    """Each of the team's flows' Figures from the hour of `since` on (flows without runs are left out)."""
    rows = (RunRollup.objects.filter(team_id=team_id, hour__gte=hour_of(since)).values("flow_id")
            .annotate(succeeded=Sum("succeeded"), failed=Sum("failed"), cancelled=Sum("cancelled"),
                      reorged=Sum("reorged")))
    return {row.pop("flow_id"): Figures(**row) for row in rows}


def last_runs(team_id: int) -> dict[int, Run]:
    """Each of the team's flows' newest run (any status), one index probe per flow."""
    from flows.models import Flow

    newest = Run.objects.filter(flow_id=OuterRef("pk")).order_by("-created_at", "-id").values("id")[:1]
    ids = [pk for pk in Flow.objects.filter(team_id=team_id).annotate(last=Subquery(newest))
           .values_list("last", flat=True) if pk is not None]
    return {run.flow_id: run for run in Run.objects.filter(pk__in=ids).only("code", "flow_id", "status", "created_at")}


# -- keeping the rows few ------------------------------------------------------------------------

_FOLD_SQL = (
    "WITH moved AS (DELETE FROM executor_runrollup WHERE shard <> 0 AND hour < %s "
    "RETURNING team_id, flow_id, hour, succeeded, failed, cancelled, reorged) "
    "INSERT INTO executor_runrollup AS r (team_id, flow_id, hour, shard, succeeded, failed, cancelled, reorged) "
    "SELECT team_id, flow_id, hour, 0, sum(succeeded), sum(failed), sum(cancelled), sum(reorged) FROM moved "
    "GROUP BY team_id, flow_id, hour ORDER BY flow_id, hour "
    "ON CONFLICT (flow_id, hour, shard) DO UPDATE SET succeeded = r.succeeded + EXCLUDED.succeeded, "
    "failed = r.failed + EXCLUDED.failed, cancelled = r.cancelled + EXCLUDED.cancelled, "
    "reorged = r.reorged + EXCLUDED.reorged"
)


def fold(now: datetime | None = None) -> int:
    """Add the shard rows of hours that ended over an hour ago into their shard 0; return the rows folded.

    The shards are there for runs finishing together; an hour that is over gets few
    changes (a late finish, a retry, a reorg: they make a shard row again, folded next time).
    """
    before = hour_of(now or timezone.now()) - timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute(_FOLD_SQL, [before])
        return cursor.rowcount


def prune(now: datetime | None = None, *, batch: int = 5000) -> int:
    """Delete rollup hours older than KWALA_ROLLUP_RETENTION_DAYS, a batch at a time; return how many rows went."""
    from flows.models import Team

    cutoff = hour_of(now or timezone.now()) - timedelta(days=settings.KWALA_ROLLUP_RETENTION_DAYS)
    deleted = 0
    for team_id in Team.objects.values_list("pk", flat=True):
        while True:
            ids = list(RunRollup.objects.filter(team_id=team_id, hour__lt=cutoff).values_list("pk", flat=True)[:batch])
            if not ids:
                break
            deleted += RunRollup.objects.filter(pk__in=ids).delete()[0]
    return deleted


# -- counting again from the runs ---------------------------------------------------------------

_RECOUNT_SQL = (
    "INSERT INTO executor_runrollup (team_id, flow_id, hour, shard, succeeded, failed, cancelled, reorged) "
    "SELECT team_id, flow_id, date_trunc('hour', created_at, 'UTC'), 0, "
    "count(*) FILTER (WHERE status = 'SUCCEEDED'), count(*) FILTER (WHERE status = 'FAILED'), "
    "count(*) FILTER (WHERE status = 'CANCELLED'), count(*) FILTER (WHERE status = 'REORGED') "
    "FROM executor_run WHERE status = ANY(%s) AND created_at >= %s GROUP BY 1, 2, 3"
)


def rebuild(since: datetime | None = None) -> int:
    """Count the runs again from the hour of `since` on (all of them by default); return the rows written.

    The runs are share-locked while they are counted: runs are not written meanwhile (about
    10 s per 10 million runs), so the counts are exact. Hours before `since` keep their
    rows: runs pruned from them are still counted there. Hours whose runs were partly pruned
    (failed runs are kept longer) count only what is left, so recount only within the
    retention of every team.
    """
    start = hour_of(since) if since is not None else datetime(1970, 1, 1, tzinfo=UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("LOCK TABLE executor_run IN SHARE MODE")
        cursor.execute("DELETE FROM executor_runrollup WHERE hour >= %s", [start])
        cursor.execute(_RECOUNT_SQL, [list(FINAL), start])
        return cursor.rowcount
