"""The MCP server: the public API as tools for AI assistants.

`tools` holds the tools and `build_server()` (they import the `mcp` SDK);
`manage.py mcp --token T` serves them on stdio, and `door.McpDoor` (mounted in
kwala_site.asgi) over streamable HTTP at /mcp. What both need is here.
"""

from __future__ import annotations

from django.http import HttpRequest

PATH = "/mcp"


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def api_request(tool: str, method: str = "POST") -> HttpRequest:
    """A request for calling the REST API's endpoint functions; its path is what the API's log lines name."""
    request = HttpRequest()
    request.method = method
    request.path = request.path_info = f"{PATH}/{tool}"
    return request
