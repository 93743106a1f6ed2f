"""What other teams and the public may see of a flow: its graph with secrets and signer details removed."""

from __future__ import annotations

import copy
from typing import Any

from flows.nodes import NODE_TYPES

HIDDEN = "(hidden)"
# Field kinds that name or hold credentials; a webhook URL is a credential too.
_HIDDEN_KINDS = {"secret_ref", "signer", "headers"}
_HIDDEN_NAMES = {"webhook_url", "signer", "bot_token_secret", "webhook_secret", "secret"}


def redacted_graph(graph: dict[str, Any]) -> dict[str, Any]:
    """A copy of `graph` safe to show outside the team: credential fields replaced by a marker."""
    out = copy.deepcopy(graph or {"nodes": [], "edges": []})
    for node in out.get("nodes", []):
        node_type = NODE_TYPES.get(node.get("type"))
        config = node.get("config") or {}
        hidden = set(_HIDDEN_NAMES)
        if node_type is not None:
            hidden |= {spec.name for spec in node_type.fields if spec.kind in _HIDDEN_KINDS}
        for name in list(config):
            if name in hidden and config[name] not in (None, "", {}, []):
                config[name] = HIDDEN
    return out
