"""Overload is a 503 with Retry-After, never a 500.

The web server's database pool (kwala_site.settings, KWALA_DB_POOL) makes a request
wait for a free connection; one that waits past the pool's timeout, that PostgreSQL
turns away (too many clients) or cannot reach (down, restarting, a dropped
connection: psycopg's OperationalError) is answered 503 with Retry-After by the
one place that sees every uncaught error (``handler500``, and the API's catch-all
handler), logged as overload rather than as a bug.
"""

from __future__ import annotations

import logging

import psycopg
from django.http import JsonResponse
from psycopg_pool import PoolTimeout

from kwala_site import counters

logger = logging.getLogger("kwala.overload")

RETRY_AFTER_SECONDS = 2


def is_overload(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) means no database connection could be had."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (PoolTimeout, psycopg.OperationalError)):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def rolled_back(exc: BaseException | None) -> bool:
    """Whether PostgreSQL rolled the transaction back to break a deadlock or a serialization
    conflict (SQLSTATE class 40): the same work may well succeed when tried again."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith("40"):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


BODY = {"error": {"code": "overloaded", "message": "The server is busy; try again in a moment.", "details": []}}


def note(method: str, path: str) -> None:
    """Log and count one request answered 503 for overload."""
    logger.warning("overloaded: no database connection for %s %s; answered 503", method, path)
    counters.incr("overloaded")


def overloaded(request) -> JsonResponse:
    note(request.method, request.path)
    response = JsonResponse(BODY, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
