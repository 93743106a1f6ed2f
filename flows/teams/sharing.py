"""What other teams and the public may see of a flow: its graph with credentials removed."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlsplit

from flows.nodes import NODE_TYPES

HIDDEN = "(hidden)"
# Field kinds that name or hold credentials. Outgoing request bodies and headers
# and e-mail addresses often carry tokens or personal data, so they go too.
_HIDDEN_KINDS = {"secret_ref", "signer", "headers", "emails"}
_HIDDEN_NAMES = {"webhook_url", "signer", "bot_token_secret", "webhook_secret", "secret", "body", "headers"}


def _host_only(url: Any) -> Any:
    """scheme://host/… — paths and queries of webhook URLs hold API keys and bot tokens."""
    if not isinstance(url, str):
        return HIDDEN
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return HIDDEN
    if not parts.scheme or not host:
        return HIDDEN
    return f"{parts.scheme}://{host}/…"


def redacted_graph(graph: Any) -> dict[str, Any]:
    """A copy of `graph` safe to show outside the team: credential fields replaced by a marker."""
    source = graph if isinstance(graph, dict) else {}
    out = copy.deepcopy(source)
    out["nodes"] = [node for node in out.get("nodes") or [] if isinstance(node, dict)]
    out["edges"] = [edge for edge in out.get("edges") or [] if isinstance(edge, dict)]
    for node in out["nodes"]:
        node_type = NODE_TYPES.get(node.get("type")) if isinstance(node.get("type"), str) else None
        config = node.get("config")
        if not isinstance(config, dict):
            node["config"] = {}
            continue
        hidden = set(_HIDDEN_NAMES)
        urls = {"url"}
        if node_type is not None:
            hidden |= {spec.name for spec in node_type.fields if spec.kind in _HIDDEN_KINDS}
            urls |= {spec.name for spec in node_type.fields if spec.kind == "url"}
        for name in list(config):
            if config[name] in (None, "", {}, []):
                continue
            if name in hidden:
                config[name] = HIDDEN
            elif name in urls:
                config[name] = _host_only(config[name])
    return out
