"""ASGI entry point: HTTP through Django, websockets through Channels; webhooks and MCP beside Django."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
# Web requests share a pool of database connections (see kwala_site.settings).
os.environ.setdefault("KWALA_DB_POOL", "1")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from executor.routing import websocket_urlpatterns  # noqa: E402
from executor.webhook_door import WebhookDoor  # noqa: E402
from flows.mcp.door import McpDoor  # noqa: E402
from kwala_site.overload import SocketGuard  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Inbound webhooks and MCP (/mcp, streamable HTTP) are answered straight from ASGI;
        # everything else goes to Django.
        "http": WebhookDoor(McpDoor(django_asgi_app)),
        # Browsers send Origin on websockets; refuse pages from other sites. A socket that
        # PostgreSQL or Redis cannot serve is answered 503 or closed 1013 (SocketGuard).
        "websocket": SocketGuard(AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
