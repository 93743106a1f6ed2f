"""A request whose URL holds a NUL byte is answered 400, before any view runs.

PostgreSQL's text cannot hold NUL (U+0000), and a URL's path or query decoded
from `%00` reaches the queries that look up what it names: every such lookup
failed with psycopg's DataError, answered 500 (found on the webhook door, then
on the pages and the API). No code, token or filter the product makes contains
one, so the request is refused whole, logged and counted.
"""

from __future__ import annotations

import logging

from django.http import HttpResponseBadRequest, JsonResponse

from kwala_site import counters

logger = logging.getLogger("kwala.requests")

MESSAGE = "The URL contains a NUL byte (%00)."


class RefuseNulBytes:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        # The path comes decoded; the query string raw (its values are decoded when read).
        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
            logger.info("refused %s %r: a NUL byte in the URL; answered 400", request.method, request.path[:200])
            counters.incr("nul_bytes_refused")
            if request.path.startswith(("/api/", "/hooks/")):
                return JsonResponse({"error": {"code": "bad_request", "message": MESSAGE, "details": []}}, status=400)
            return HttpResponseBadRequest(MESSAGE)
        return self.get_response(request)
