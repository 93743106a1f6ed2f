"""One team cannot starve the others on a shared chain listener: a budget per team and block
for the time its trigger conditions take.

The listener evaluates every team's trigger conditions on every matching log of a block,
in one thread per chain. A team whose conditions take more than its budget on one block
(settings.KWALA_CONDITION_MS_PER_BLOCK, or the team's own limit in the admin) has the rest
of its evaluations on that block skipped, and the flows concerned are paused, with an
alert: the chain goes on for everyone else. Nothing is skipped silently: each skipped
evaluation is counted in the log line, the events are stored, and the team can replay
the blocks once the condition is fixed and the flow resumed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger("kwala.quotas")


@dataclass
class ConditionBudget:
    """Time spent in each team's trigger conditions on one block (or one batch of pushed logs)."""

    where: str  # "chain X block N", for the alert
    spent: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    skipped: Counter = field(default_factory=Counter)  # flow id -> evaluations skipped
    _limits: dict[int, float] = field(default_factory=dict)

    def limit(self, team_id: int) -> float:
        if team_id not in self._limits:
            from flows.models import Team

            own = Team.objects.filter(pk=team_id).values_list("condition_ms_per_block", flat=True).first()
            self._limits[team_id] = (own or settings.KWALA_CONDITION_MS_PER_BLOCK) / 1000
        return self._limits[team_id]

    def allows(self, team_id: int) -> bool:
        return self.spent[team_id] < self.limit(team_id)

    def start(self) -> float:
        return time.thread_time()

    def charge(self, team_id: int, started: float) -> None:
        self.spent[team_id] += time.thread_time() - started

    def skip(self, flow_id: int) -> None:
        self.skipped[flow_id] += 1

    def enforce(self) -> list[int]:
        """Pause the flows whose evaluations were skipped, with an alert; returns their ids."""
        if not self.skipped:
            return []
        from flows.actions import do_pause_flow
        from flows.models import Flow

        paused = []
        for flow in Flow.objects.filter(pk__in=list(self.skipped)).select_related("team"):
            do_pause_flow(flow, None)
            paused.append(flow.pk)
            logger.error(
                "ALERT team %s, flow %s: trigger conditions took over the team's budget of %.0f ms on %s; "
                "%s evaluation(s) skipped and the flow paused. Fix the condition, resume the flow, then replay "
                "the block to run what was skipped.",
                flow.team.name, flow.code, self.limit(flow.team_id) * 1000, self.where, self.skipped[flow.pk],
            )
        return paused


# -- runs started per minute ----------------------------------------------------------------

# Team overrides, read at most this often per process (the admin changes them rarely).
_LIMITS_TTL_SECONDS = 30.0
# team id -> (read at, team code, per team, per flow)
_run_limits: dict[int, tuple[float, str, int, int]] = {}


def _limits_for(team_id: int) -> tuple[str, int, int]:
    now = time.monotonic()
    cached = _run_limits.get(team_id)
    if cached is None or now - cached[0] > _LIMITS_TTL_SECONDS:
        from flows.models import Team

        code, team_limit, flow_limit = Team.objects.filter(pk=team_id).values_list(
            "code", "runs_per_minute", "flow_runs_per_minute").first() or (str(team_id), None, None)
        cached = (now, code, team_limit or settings.KWALA_RUNS_PER_MINUTE_PER_TEAM,
                  flow_limit or settings.KWALA_RUNS_PER_MINUTE_PER_FLOW)
        _run_limits[team_id] = cached
    return cached[1], cached[2], cached[3]


def run_start_wait(team_id: int, flow_id: int, flow_code: str) -> int:
    """Count a run start against its team's and flow's runs per minute: 0 if it may start now,
    else the seconds until the window that has room.

    A run over its quota is not dropped: it stays QUEUED and starts later
    (runs.start), with a log line, a run event and the `run_starts_deferred`
    counter. When Redis cannot be reached, runs start (the limit fails open).
    """
    from kwala_site import counters, ratelimit

    team_code, team_limit, flow_limit = _limits_for(team_id)
    # By code, never reused (a primary key is, in a recreated database).
    team, flow = ratelimit.hit_each([f"runs:team:{team_code}", f"runs:flow:{flow_code}"], 60)
    if not team.over(team_limit) and not flow.over(flow_limit):
        return 0
    which = "team" if team.over(team_limit) else "flow"
    limit = team_limit if which == "team" else flow_limit
    logger.warning("flow %s: over its %s's %s runs a minute; its run starts in %s s", flow_code, which, limit,
                   team.retry_after)
    counters.incr("run_starts_deferred")
    return team.retry_after
