"""Logic steps: branch, reshape, wait, gather, stop. No I/O."""

from __future__ import annotations

import time

from executor.steps.base import Reschedule, StepContext, StepError, StepResult, to_jsonable
from flows.expressions import ExpressionError, evaluate


def _evaluate(ctx: StepContext, source: str, what: str):
    try:
        return evaluate(source, ctx.values)
    except ExpressionError as exc:
        raise StepError(f"{what}: {ctx.redact(str(exc))}", permanent=True) from None


def run_condition(ctx: StepContext) -> StepResult:
    result = bool(_evaluate(ctx, ctx.config["expression"], "condition"))
    return StepResult(output={"result": result}, port="true" if result else "false")


def run_switch(ctx: StepContext) -> StepResult:
    for case in ctx.config["cases"]:
        if _evaluate(ctx, case["expression"], f"case {case['name']}"):
            return StepResult(output={"case": case["name"]}, port=case["name"])
    return StepResult(output={"case": "default"}, port="default")


def run_transform(ctx: StepContext) -> StepResult:
    output = {}
    for item in ctx.config["fields"]:
        output[item["name"]] = to_jsonable(_evaluate(ctx, item["expression"], f"field {item['name']}"))
    return StepResult(output=output)


def run_delay(ctx: StepContext) -> StepResult | Reschedule:
    """The first call sets a deadline and comes back when it has passed (the worker is free meanwhile)."""
    seconds = int(ctx.config["duration"])
    until = ctx.state.get("until")
    now = time.time()
    if until is None:
        return Reschedule(seconds, {"until": now + seconds})
    if now < until:
        return Reschedule(until - now, {"until": until})
    return StepResult(output={"waited_seconds": seconds})


def run_join(ctx: StepContext) -> StepResult:
    steps = ctx.values["steps"]
    output = {i["step"]: steps[i["step"]]["output"] for i in ctx.step["inputs"] if i["step"] in steps}
    return StepResult(output=output)


def run_stop(ctx: StepContext) -> StepResult:
    message = ""
    if ctx.config.get("message"):
        message = str(ctx.render(ctx.config["message"], "message"))
    fail = bool(ctx.config.get("fail"))
    return StepResult(
        output={"message": ctx.redact(message)},
        port="",
        stop="failed" if fail else "succeeded",
        stop_message=ctx.redact(message),
    )
