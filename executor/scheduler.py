"""Schedule triggers: cron (in the flow's time zone), fixed intervals and one-off times.

`tick(now)` claims, for every published schedule flow, the run of the latest
tick that is due, keyed `schedule:<tick as UTC ISO time>` per version. The key
makes several schedulers safe, and claiming only the latest tick means that
after downtime a missed schedule fires once, not once per missed tick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from django.utils import timezone

from executor.runs.start import RunClaim, claim_runs

logger = logging.getLogger(__name__)


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo("UTC"))


def due_tick(spec: Mapping[str, Any], now: datetime, published_at: datetime) -> datetime | None:
    """The latest tick at or before `now` that the schedule owes a run for, or None.

    Ticks before the version was published (or before start_at) are not owed;
    nothing is owed from expire_at on.
    """
    start_at = _when(spec.get("start_at"))
    expire_at = _when(spec.get("expire_at"))
    floor = start_at or published_at
    if now < floor or (expire_at is not None and now >= expire_at):
        return None
    if spec.get("cron"):
        zone = ZoneInfo(spec.get("timezone") or "UTC")
        # get_prev is strictly before its start: one second on includes a tick at `now`.
        tick = croniter(spec["cron"], (now + timedelta(seconds=1)).astimezone(zone)).get_prev(datetime)
        return tick if tick >= floor else None
    if spec.get("interval_seconds"):
        interval = timedelta(seconds=int(spec["interval_seconds"]))
        count = math.floor((now - floor) / interval)
        if start_at is None and count < 1:
            return None  # anchored at publication: the first run is one interval later
        return floor + count * interval
    return start_at  # a single run at start_at


def schedule_versions() -> list[dict]:
    from flows.models import FlowVersion

    return [
        {"version_id": vid, "flow_id": fid, "team_id": tid, "flow_code": code, "spec": dag["trigger"],
         "published_at": published_at}
        for vid, fid, tid, code, dag, published_at in FlowVersion.objects.filter(
            status=FlowVersion.Status.PUBLISHED, flow__paused=False, dag__trigger__type="schedule"
        ).values_list("id", "flow_id", "flow__team_id", "flow__code", "dag", "published_at")
    ]


def _previous_tick(row: dict, key: str) -> str:
    """The scheduled time of the version's run before this one, or when the schedule began."""
    from executor.models import Run

    last = (
        Run.objects.filter(version_id=row["version_id"], trigger_key__startswith="schedule:", trigger_key__lt=key)
        .order_by("-trigger_key")
        .values_list("trigger_key", flat=True)
        .first()
    )
    if last is not None:
        return last.removeprefix("schedule:")
    began = _when(row["spec"].get("start_at")) or row["published_at"]
    return began.astimezone(ZoneInfo("UTC")).isoformat()


def tick(now: datetime | None = None) -> list[int]:
    """Claim the due run of every schedule flow; returns the ids of runs created by this call."""
    now = now or timezone.now()
    claims = []
    for row in schedule_versions():
        try:
            due = due_tick(row["spec"], now, row["published_at"] or now)
        except (KeyError, ValueError, TypeError) as exc:
            logger.error("flow %s: bad schedule %r: %s", row["flow_code"], row["spec"], exc)
            continue
        if due is None:
            continue
        at = due.astimezone(ZoneInfo("UTC")).isoformat()
        key = f"schedule:{at}"
        previous = _previous_tick(row, key)
        claims.append(
            RunClaim(
                version_id=row["version_id"], flow_id=row["flow_id"], team_id=row["team_id"],
                trigger_key=key,
                # previous_at..scheduled_at tile time with no gap or overlap, whenever each run
                # actually starts: a flow that reports "since the last run" uses that window.
                trigger={"type": "schedule", "scheduled_at": at, "previous_at": previous, "fired_at": now.isoformat()},
            )
        )
    return claim_runs(claims)
