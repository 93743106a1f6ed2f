"""What every step kind shares: the one exception type, the context a step runs
in, and what a step hands back to the runner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from flows.expressions import ExpressionError, redact, render_value

if TYPE_CHECKING:
    from executor.models import Run, StepRun


class StepError(Exception):
    """A step failed. `permanent` failures are not retried (bad input, a 4xx, a revert)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


@dataclass
class StepResult:
    """A finished step: its output and the port whose successors run next."""

    output: Any = None
    port: str = "out"
    # Ends the whole run here (the stop step): "succeeded" or "failed".
    stop: str | None = None
    stop_message: str = ""


@dataclass
class Reschedule:
    """Not finished yet: run the step again after `delay_seconds` with `state` kept.

    Used by steps that wait (delay, a transaction waiting for confirmations) so
    they never hold a worker thread while waiting.
    """

    delay_seconds: float
    state: dict = field(default_factory=dict)


@dataclass
class StepContext:
    run: Run
    step_run: StepRun
    step: dict  # the DAG step: id, type, config, inputs, successors, ...
    values: dict  # the expression context: trigger, steps, secrets, flow, now
    secret_values: list[str]  # every revealed secret, for redaction
    logs: list[str] = field(default_factory=list)
    # What the step sent (or, in a dry run, would send), recorded as the step's input.
    sent: dict | None = None
    # Rendered text that holds a value derived from a secret (secrets.K|reverse, a slice, a
    # hash...) -> the same text rendered with stand-ins for the secrets. Redaction swaps the
    # first for the second, so run records, logs and outputs keep the stand-in: replacing
    # the secret's exact text alone would let every derived form through.
    derived: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> dict:
        return self.step["config"]

    @property
    def dry_run(self) -> bool:
        return self.run.dry_run

    @property
    def state(self) -> dict:
        return self.step_run.state

    def render(self, value: Any, what: str) -> Any:
        """Render a config value with the run's context; a bad expression is a permanent error."""
        try:
            rendered = render_value(value, self.values)
        except ExpressionError as exc:
            raise StepError(f"{what}: {self.redact(str(exc))}", permanent=True) from None
        if self.secret_values and _uses_secrets(value):
            self._remember_derived(value, rendered)
        return rendered

    def _remember_derived(self, value: Any, rendered: Any) -> None:
        names = self.values.get("secrets") or {}
        stand_ins = {**self.values, "secrets": {name: f"[secret {name}]" for name in names}}
        try:
            shown = render_value(value, stand_ins)
        except ExpressionError:
            shown = None  # a filter that needs the real value (secrets.K|int): hide the whole leaf
        for real, record in _leaf_pairs(rendered, shown):
            text = real if isinstance(real, str) else json.dumps(to_jsonable(real))
            if len(text) >= MIN_DERIVED_CHARS and text != record:
                self.derived[text] = record if isinstance(record, str) else "[derived from a secret]"

    def redact(self, text: str) -> str:
        for real in sorted(self.derived, key=len, reverse=True):
            text = text.replace(real, self.derived[real])
        return redact(text, self.secret_values)

    def redact_value(self, value: Any) -> Any:
        """`value` (a record, an output) with every secret and every value derived from one replaced."""
        if not self.secret_values:
            return value
        text = json.dumps(to_jsonable(value))
        for real in sorted(self.derived, key=len, reverse=True):
            text = text.replace(json.dumps(real)[1:-1], json.dumps(self.derived[real])[1:-1])
        return json.loads(redact(text, [json.dumps(s)[1:-1] for s in self.secret_values]))

    def log(self, message: str) -> None:
        self.logs.append(self.redact(message))

    def secret(self, name: str) -> str:
        """A team secret by name, revealed at run time; StepError if it does not exist."""
        value = self.values["secrets"].get(name)
        if value is None:
            raise StepError(f"the secret {name!r} does not exist", permanent=True)
        return value


# Shorter rendered values are not tracked as derived: hiding every "1" or "ok" would blank records.
MIN_DERIVED_CHARS = 4


def _uses_secrets(value: Any) -> bool:
    from flows.expressions import template_leaves

    return any("secrets" in text for _, text in template_leaves(value))


def _leaf_pairs(real: Any, shown: Any):
    """(real leaf, shown leaf) pairs of two renders of one structure; shown is None where it failed."""
    if isinstance(real, dict):
        for key, item in real.items():
            yield from _leaf_pairs(item, shown.get(key) if isinstance(shown, dict) else None)
    elif isinstance(real, list):
        for index, item in enumerate(real):
            other = shown[index] if isinstance(shown, list) and index < len(shown) else None
            yield from _leaf_pairs(item, other)
    else:
        yield real, shown


def to_jsonable(value: Any) -> Any:
    """Outputs go to a JSONField and the websocket: bytes as hex, Decimals and sets made plain."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
