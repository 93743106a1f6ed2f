"""The MCP door: POST /mcp, MCP's streamable HTTP, served straight from ASGI beside Django.

Every request needs `Authorization: Bearer <API token>` (401 otherwise, as the REST
API answers) and a host in ALLOWED_HOSTS; the tools check the token again on every
call. Stateless with JSON answers, so any web process (uvicorn --workers N) can answer
any request. The SDK's DNS-rebinding check is off: the host check is Django's, and a
page in a browser cannot borrow a bearer token as it could a cookie.

The SDK is imported, and its session manager started, by the first MCP request of a
process: importing it costs the web process most of a second it would pay on every
start, and its session manager needs a task group that ASGI lifespan events would
otherwise start, which Channels' router does not route and some servers never send.
"""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host
from ninja.errors import AuthenticationError

from flows.mcp import PATH, api_request, bearer
from flows.teams import membership_for_token
from kwala_site import api as project_api
from kwala_site import overload

logger = logging.getLogger(__name__)


class McpDoor:
    """ASGI: /mcp (or /mcp/) goes to the MCP app after the checks; everything else to `app`."""

    def __init__(self, app) -> None:
        self.app = app
        self._mcp_app = None
        self._ready: asyncio.Event | None = None
        self._serving: asyncio.Task | None = None
        self._check_token = sync_to_async(_check_token, thread_sensitive=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != PATH:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        domain, _ = split_domain_port(headers.get("host", ""))
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            await _send_json(send, 400, {"error": {"code": "bad_host", "message": "Bad Host header.", "details": []}})
            return
        status, body = await self._check_token(headers.get("authorization"), scope["method"])
        if status != 200:
            extra = {401: [(b"www-authenticate", b'Bearer realm="kwala"')],
                     503: [(b"retry-after", str(overload.RETRY_AFTER_SECONDS).encode())]}.get(status, [])
            await _send_json(send, status, body, extra)
            return
        await self._started()
        await self._mcp_app(dict(scope, path=PATH), receive, send)

    async def _started(self) -> None:
        if self._ready is None:  # the first MCP request of this process; no await until the task exists
            from mcp.server.transport_security import TransportSecuritySettings

            from flows.mcp.tools import build_server

            self._ready = asyncio.Event()
            server = build_server()
            self._mcp_app = server.streamable_http_app(
                streamable_http_path=PATH, stateless_http=True, json_response=True,
                max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2_621_440,
                transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            )
            self._serving = asyncio.get_running_loop().create_task(_serve(server, self._ready))
        await self._ready.wait()


async def _serve(server, ready: asyncio.Event) -> None:
    try:
        async with server.session_manager.run():
            ready.set()
            await asyncio.Event().wait()  # until the process stops
    except Exception:
        logger.exception("MCP: the session manager stopped; /mcp cannot answer in this process")
        raise


def _check_token(authorization: str | None, method: str) -> tuple[int, dict]:
    """(200, {}) for a live token; otherwise the REST API's answer: 401, or 503 on overload."""
    request = api_request("auth", method)
    token = bearer(authorization)
    try:
        found = membership_for_token(token) if token else None
        error: Exception | None = AuthenticationError() if found is None else None
    except Exception as exc:
        error = exc
    finally:
        close_old_connections()  # with the web server's pool: the connection goes back to it
    if error is None:
        return 200, {}
    response = project_api.api.on_exception(request, error)
    return response.status_code, json.loads(response.content)


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    content = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": content})
