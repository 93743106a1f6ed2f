"""Overload is a 503 with Retry-After, never a 500.

The web server's database pool (kwala_site.settings, KWALA_DB_POOL) makes a request
wait for a free connection; one that waits past the pool's timeout, that PostgreSQL
turns away (too many clients) or cannot reach (down, restarting, a dropped
connection: psycopg's OperationalError) is answered 503 with Retry-After by the
one place that sees every uncaught error (``handler500``, and the API's catch-all
handler), logged as overload rather than as a bug. Websockets get the same answer to
their handshake (SocketGuard below).
"""

from __future__ import annotations

import asyncio
import json
import logging

import psycopg
import redis
from django.http import JsonResponse
from psycopg_pool import PoolTimeout

from kwala_site import counters

logger = logging.getLogger("kwala.overload")

RETRY_AFTER_SECONDS = 2


def _raised_from(exc: BaseException | None, matches) -> bool:
    """Whether `exc`, or an error it was raised from (up to ten deep), `matches`."""
    seen = 0
    while exc is not None and seen < 10:
        if matches(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def is_overload(exc: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) means no database connection could be had."""
    return _raised_from(exc, lambda e: isinstance(e, (PoolTimeout, psycopg.OperationalError)))


def rolled_back(exc: BaseException | None) -> bool:
    """Whether PostgreSQL rolled the transaction back to break a deadlock or a serialization
    conflict (SQLSTATE class 40): the same work may well succeed when tried again."""
    return _raised_from(exc, lambda e: isinstance(e, psycopg.Error) and (e.sqlstate or "").startswith("40"))


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


# RFC 6455's registered close code "Try Again Later": the server cannot serve the socket now.
TRY_AGAIN_LATER = 1013


def unavailable(exc: BaseException | None) -> str | None:
    """The service that could not serve, when an error (or one it was raised from) says so: "PostgreSQL"
    (is_overload) or "Redis" (a connection refused, dropped or timed out); else None."""
    if is_overload(exc):
        return "PostgreSQL"
    if _raised_from(exc, lambda e: isinstance(e, (redis.ConnectionError, redis.TimeoutError))):
        return "Redis"
    return None


class SocketGuard:
    """ASGI middleware for websockets: a socket PostgreSQL or Redis cannot serve is refused, not crashed.

    A websocket's handshake needs the database (the session, the permission
    check, the log it replays) and Redis (the channel layer's groups). When either
    fails, the error used to escape the consumer, and the server answered the
    handshake 500 with a traceback in the log. Here the handshake is answered as an
    HTTP request would be, 503 with Retry-After and the API's error body (ASGI's
    websocket.http.response extension, which uvicorn offers); a socket already
    open is closed with 1013, Try Again Later, and the browser's live view
    reconnects and replays what it missed from the log. Each is logged and counted
    (`sockets_refused`). Any other error is left to the server, as before.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        state = {"accepted": False, "answered": False, "left": False}

        async def tracked_receive():
            message = await receive()
            state["left"] |= message["type"] == "websocket.disconnect"
            return message

        async def tracked_send(message) -> None:
            kind = message["type"]
            state["accepted"] |= kind == "websocket.accept"
            state["answered"] |= kind in ("websocket.close", "websocket.http.response.start")
            await send(message)

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except Exception as exc:
            service = unavailable(exc)
            if service is None or state["answered"]:
                raise
            if state["left"]:  # the browser went first; leaving the groups failed with it
                logger.info("websocket %s closed by its browser; %s could not be told: %s", scope["path"], service, exc)
                return
            await self._refuse(scope, send, service, accepted=state["accepted"])

    @staticmethod
    async def _refuse(scope, send, service: str, *, accepted: bool) -> None:
        logger.warning("overloaded: %s could not serve websocket %s; %s", service, scope["path"],
                       "closed it with 1013" if accepted else "answered its handshake 503")
        if accepted or "websocket.http.response" not in scope.get("extensions", {}):
            replies = [{"type": "websocket.close", "code": TRY_AGAIN_LATER}]  # before accept: the server says 403
        else:
            replies = [
                {"type": "websocket.http.response.start", "status": 503,
                 "headers": [(b"content-type", b"application/json"),
                             (b"retry-after", str(RETRY_AFTER_SECONDS).encode())]},
                {"type": "websocket.http.response.body", "body": json.dumps(BODY).encode()},
            ]
        try:
            for reply in replies:
                await send(reply)
        except (OSError, RuntimeError) as exc:  # the browser is gone meanwhile
            logger.info("websocket %s: the refusal could not be sent: %s", scope["path"], exc)
        # Off the event loop: counting is a blocking Redis call (up to its 1 s timeout when Redis is away).
        await asyncio.to_thread(counters.incr, "sockets_refused")
