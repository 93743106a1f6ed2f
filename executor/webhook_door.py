"""The inbound webhook door: POST /hooks/<flow>/<token>/ served straight from ASGI.

A webhook is a machine calling a JSON endpoint: it needs none of what Django's
middleware does for pages (sessions, CSRF, messages, CSP, htmx), and passing
through it cost more CPU than the webhook itself. Here the request's host is
checked against ALLOWED_HOSTS, its body read up to DATA_UPLOAD_MAX_MEMORY_SIZE,
and executor.webhooks.accept (the same code the Django view runs) called in a
thread of the shared pool, with the database connection given back to the pool
after. Every other request goes to Django unchanged.

Measured with bench/webhook_load.py (2 web processes, 32 clients): see the
figures in the commit that added it.
"""

from __future__ import annotations

import json
import logging
import re

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import QueryDict
from django.http.request import split_domain_port, validate_host
from django.utils.datastructures import CaseInsensitiveMapping

from executor.webhooks import Answer, accept, refused
from kwala_site import overload

logger = logging.getLogger(__name__)

_PATH = re.compile(r"^/hooks/([^/]+)/([^/]+)/$")


def _accept_in_thread(code, token, method, headers, query, body) -> Answer:
    try:
        return accept(code, token, method=method, headers=headers, query=query, body=body)
    except Exception as exc:
        if overload.is_overload(exc):
            overload.note(method, f"/hooks/{code}/…/")
            return refused(503, "overloaded", overload.BODY["error"]["message"],
                           **{"Retry-After": str(overload.RETRY_AFTER_SECONDS)})
        logger.exception("webhook for flow %s: the door failed", code)
        return refused(500, "server_error", "Internal error.")
    finally:
        close_old_connections()  # with the pool: the connection goes back to it


class WebhookDoor:
    def __init__(self, app) -> None:
        self.app = app
        self.accept = sync_to_async(_accept_in_thread, thread_sensitive=False)

    async def __call__(self, scope, receive, send) -> None:
        match = _PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)  # GET and the rest: Django answers (405 and all)
            return
        headers = CaseInsensitiveMapping({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        host = headers.get("host", "")
        domain, _ = split_domain_port(host)
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            await _send(send, refused(400, "bad_host", "Bad Host header."))
            return
        body = await _read_body(receive, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        if body is None:
            await _send(send, refused(413, "too_large", "The request body is too large."))
            return
        query = QueryDict(scope.get("query_string", b"").decode("latin-1"))
        answer = await self.accept(match[1], match[2], "POST", headers, query, body)
        await _send(send, answer)


async def _read_body(receive, limit: int | None) -> bytes | None:
    """The whole body, or None once it is over `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send, answer: Answer) -> None:
    payload = json.dumps(answer.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), str(v).encode()) for k, v in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
