"""Logging filters every handler of the site applies."""

from __future__ import annotations

import logging
import re

# /hooks/<flow code>/<token>/: the token is the webhook's credential.
_WEBHOOK_PATH = re.compile(r"(/hooks/[^/\s]+/)[^/\s]+")


class RedactWebhookTokens(logging.Filter):
    """Keep webhook URL tokens out of every log line (Django logs a 4xx request's path, for one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/hooks/" in message:
            record.msg, record.args = _WEBHOOK_PATH.sub(r"\1…", message), ()
        return True
