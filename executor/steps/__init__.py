"""Step kinds: one module per kind, listed in one explicit registry.

A step kind is a function ``run(ctx: StepContext) -> StepResult | Reschedule``
that raises StepError on failure. It must be safe to call again after a crash:
side effects carry an idempotency key (HTTP) or are recorded before they are
sent (transactions).
"""

from __future__ import annotations

from collections.abc import Callable

from executor.steps import contract, http, logic, notify
from executor.steps.base import Reschedule, StepContext, StepError, StepResult

StepKind = Callable[[StepContext], StepResult | Reschedule]

STEP_KINDS: dict[str, StepKind] = {
    "http.request": http.run_request,
    "notify.slack": notify.run_slack,
    "notify.discord": notify.run_discord,
    "notify.telegram": notify.run_telegram,
    "notify.email": notify.run_email,
    "contract.read": contract.run_read,
    "contract.write": contract.run_write,
    "condition": logic.run_condition,
    "switch": logic.run_switch,
    "transform": logic.run_transform,
    "delay": logic.run_delay,
    "join": logic.run_join,
    "stop": logic.run_stop,
}

__all__ = ["STEP_KINDS", "Reschedule", "StepContext", "StepError", "StepResult"]
