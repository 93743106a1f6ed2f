"""What the visual editor needs from the server besides saving: the palette, the
data picker's entries, the ABI helper and the compile problems per node.

Pure functions over graph JSON, plus the demo contract artifacts on disk.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings

from flows import abi as abi_lib
from flows.graph import NODE_ID_PATTERN
from flows.nodes import NODE_TYPES, TriggerType

# The palette's sections, in order, with their headings.
CATEGORIES = (("trigger", "Triggers"), ("logic", "Logic"), ("action", "Actions"))
CATEGORY_ORDER = tuple(key for key, _ in CATEGORIES)
ARTIFACTS_DIR = Path(settings.BASE_DIR) / "contracts" / "artifacts"


def find_node(graph: Mapping[str, Any], node_id: str) -> dict | None:
    for node in graph.get("nodes", []):
        if node.get("id") == node_id:
            return node
    return None


def palette() -> list[dict[str, Any]]:
    """The node catalogue for the palette, triggers first, with each type's ports."""
    entries = []
    for node_type in NODE_TYPES.values():
        entry = node_type.describe()
        entries.append(entry)
    return sorted(entries, key=lambda e: CATEGORY_ORDER.index(e["category"]))


def rules() -> dict[str, Any]:
    """What the browser must know besides the node types, so that it derives nothing itself:
    the node-id rule (flows/schemas/graph.schema.json) and the palette's sections."""
    return {"node_id_pattern": NODE_ID_PATTERN,
            "categories": [{"key": key, "label": label} for key, label in CATEGORIES]}


def output_ports(node: Mapping[str, Any]) -> list[str]:
    node_type = NODE_TYPES.get(node.get("type", ""))
    if node_type is None:
        return []
    return node_type.output_ports(node.get("config") or {})


def upstream_ids(graph: Mapping[str, Any], node_id: str) -> list[str]:
    """Every node that runs before `node_id` (its ancestors), nearest first."""
    parents: dict[str, list[str]] = {}
    for edge in graph.get("edges", []):
        parents.setdefault(edge.get("target"), []).append(edge.get("source"))
    seen: list[str] = []
    frontier = list(parents.get(node_id, []))
    while frontier:
        current = frontier.pop(0)
        if current in seen or current == node_id:
            continue
        seen.append(current)
        frontier.extend(parents.get(current, []))
    return seen


def _shape_entries(prefix: str, shape: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for name, info in shape.items():
        if name.startswith("<"):
            continue
        path = f"{prefix}.{name}"
        yield path, f"{info.get('type', '')} · {info.get('description', '')}".strip(" ·")
        for sub, sub_info in (info.get("fields") or {}).items():
            yield f"{path}.{sub}", sub_info.get("type", "")


def picker_entries(
    graph: Mapping[str, Any], node_id: str, secret_names: Iterable[str]
) -> list[dict[str, Any]]:
    """Groups of expressions a person can insert into a field of `node_id`:
    the trigger's fields, the outputs of the steps that run before it, the team's secrets."""
    nodes = {n.get("id"): n for n in graph.get("nodes", [])}
    groups = []
    upstream = upstream_ids(graph, node_id)
    for nid in upstream:
        node = nodes.get(nid)
        node_type = NODE_TYPES.get(node.get("type", "")) if node else None
        if node_type is None:
            continue
        config = node.get("config") or {}
        try:
            shape = node_type.output_shape(config)
        except (abi_lib.AbiError, TypeError, ValueError, KeyError):
            shape = {}
        if isinstance(node_type, TriggerType):
            items = list(_shape_entries("trigger", shape))
            groups.insert(0, {"label": f"Trigger: {node.get('name') or node_type.label}", "items": items})
        else:
            items = list(_shape_entries(f"steps.{nid}.output", shape))
            groups.append({"label": f"Step {node.get('name') or nid}", "items": items})
    secrets = [(f"secrets.{name}", "secret") for name in sorted(secret_names)]
    if secrets:
        groups.append({"label": "Secrets", "items": secrets})
    groups.append({"label": "Flow", "items": [("flow.name", "text"), ("now", "datetime")]})
    return groups


# -- the ABI helper ----------------------------------------------------------------


@cache
def demo_contracts() -> dict[str, list[dict]]:
    """Name -> ABI of the demo contracts shipped in contracts/artifacts."""
    contracts = {}
    if ARTIFACTS_DIR.is_dir():
        for path in sorted(ARTIFACTS_DIR.glob("*.json")):
            try:
                contracts[path.stem] = json.loads(path.read_text())["abi"]
            except (OSError, ValueError, KeyError):
                continue
    return contracts


def _param_text(param: Mapping[str, Any], *, with_indexed: bool) -> str:
    text = abi_lib.canonical_type(param)
    if with_indexed and param.get("indexed"):
        text += " indexed"
    if param.get("name"):
        text += f" {param['name']}"
    return text


def readable_signature(fragment: Mapping[str, Any]) -> str:
    """A signature a person can read and the parser reads back, with names and `indexed`."""
    is_event = fragment.get("type") == "event"
    params = ", ".join(_param_text(p, with_indexed=is_event) for p in fragment.get("inputs", []))
    text = f"{fragment['name']}({params})"
    if not is_event:
        mutability = fragment.get("stateMutability", "nonpayable")
        if mutability != "nonpayable":
            text += f" {mutability}"
        outputs = fragment.get("outputs") or []
        if outputs:
            text += " returns (" + ", ".join(_param_text(p, with_indexed=False) for p in outputs) + ")"
    return text


def abi_choices(abi: Any, kind: str) -> list[dict[str, Any]]:
    """The events (kind "event") or functions ("function") of an ABI, for the helper's list.

    Raises AbiError for something that is not an ABI."""
    fragments = abi_lib.parse_abi_json(abi)
    choices = []
    for fragment in fragments:
        if fragment.get("type") != kind:
            continue
        choices.append(
            {
                "signature": readable_signature(fragment),
                "name": fragment["name"],
                "inputs": [
                    {"name": p.get("name") or f"arg{i}", "type": abi_lib.canonical_type(p)}
                    for i, p in enumerate(fragment.get("inputs", []))
                ],
                "mutability": fragment.get("stateMutability", ""),
            }
        )
    return choices
