"""Structured diff between two versions of a graph, for the version history.

Nodes are matched by id (the editor keeps ids stable across edits), edges by
(source, source_port, target); an edge's own id is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["diff_graphs", "is_empty"]

_MISSING = object()


def _field_changes(old: Any, new: Any, path: str) -> Iterator[dict[str, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            yield from _field_changes(old.get(key, _MISSING), new.get(key, _MISSING), f"{path}.{key}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from _field_changes(a, b, f"{path}.{index}")
    elif old != new or type(old) is not type(new):
        yield {
            "path": path,
            "old": None if old is _MISSING else old,
            "new": None if new is _MISSING else new,
        }


def _edge_key(edge: Mapping[str, Any]) -> tuple[str, str, str]:
    return (edge.get("source"), edge.get("source_port"), edge.get("target"))


def _edge_dict(key: tuple[str, str, str]) -> dict[str, str]:
    return {"source": key[0], "source_port": key[1], "target": key[2]}


def diff_graphs(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed between two graphs, as JSON-serializable data:

    ``{"nodes": {"added": [node], "removed": [node], "moved": [{id, old, new}],
    "renamed": [{id, old, new}], "changed": [{id, changes: [{path, old, new}]}]},
    "edges": {"added": [edge], "removed": [edge]}}``. ``changed`` covers type and
    config; a position-only change is a move, a name-only change is a rename.
    """
    old_nodes = {n["id"]: n for n in old.get("nodes", [])}
    new_nodes = {n["id"]: n for n in new.get("nodes", [])}
    added = [new_nodes[i] for i in new_nodes if i not in old_nodes]
    removed = [old_nodes[i] for i in old_nodes if i not in new_nodes]
    moved, renamed, changed = [], [], []
    for node_id, before in old_nodes.items():
        after = new_nodes.get(node_id)
        if after is None:
            continue
        if before.get("position") != after.get("position"):
            moved.append({"id": node_id, "old": before.get("position"), "new": after.get("position")})
        if before.get("name") != after.get("name"):
            renamed.append({"id": node_id, "old": before.get("name"), "new": after.get("name")})
        changes = []
        if before.get("type") != after.get("type"):
            changes.append({"path": "type", "old": before.get("type"), "new": after.get("type")})
        changes.extend(_field_changes(before.get("config", {}), after.get("config", {}), "config"))
        if changes:
            changed.append({"id": node_id, "changes": changes})

    old_edges = {_edge_key(e): e for e in old.get("edges", [])}
    new_edges = {_edge_key(e): e for e in new.get("edges", [])}
    return {
        "nodes": {
            "added": added,
            "removed": removed,
            "moved": moved,
            "renamed": renamed,
            "changed": changed,
        },
        "edges": {
            "added": [_edge_dict(k) for k in new_edges if k not in old_edges],
            "removed": [_edge_dict(k) for k in old_edges if k not in new_edges],
        },
    }


def is_empty(diff: Mapping[str, Any]) -> bool:
    """True when two graphs differ in nothing the diff tracks."""
    return not any(diff["nodes"].values()) and not any(diff["edges"].values())
