"""What every log line of the site goes through: tokens kept out, run and flow codes put in.

LOG_FORMAT=json (python-json-logger) writes one JSON object a line, with `run`
and `flow` keys on the lines written while a run or a flow is being worked on;
the plain format appends them as ` [flow=… run=…]`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# /hooks/<flow code>/<token>/: the token is the webhook's credential.
_WEBHOOK_PATH = re.compile(r"(/hooks/[^/\s]+/)[^/\s]+")

_bound: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("kwala_log_context", default=())
CONTEXT_KEYS = ("flow", "run")


@contextmanager
def bound(**fields) -> Iterator[None]:
    """Put these codes (flow=…, run=…) on every log line written inside the block, in this thread."""
    merged = {**dict(_bound.get()), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _bound.set(tuple(merged.items()))
    try:
        yield
    finally:
        _bound.reset(token)


class RedactWebhookTokens(logging.Filter):
    """Keep webhook URL tokens out of every log line (Django logs a 4xx request's path, for one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/hooks/" in message:
            record.msg, record.args = _WEBHOOK_PATH.sub(r"\1…", message), ()
        return True


class RunContext(logging.Filter):
    """Give the record the codes bound in this thread (see `bound`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _bound.get():
            setattr(record, key, value)
        return True


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        codes = " ".join(f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if getattr(record, key, None))
        return f"{text} [{codes}]" if codes else text
