"""A static SVG picture of a graph, drawn server-side from the node positions (gallery and shared previews)."""

from __future__ import annotations

from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from flows.nodes import NODE_TYPES

NODE_W, NODE_H, PAD = 180, 48, 20
_FILL = {"trigger": "#e8f0fe", "logic": "#fff4e5", "action": "#e6f4ea"}


def _category(node_type: str) -> str:
    spec = NODE_TYPES.get(node_type)
    return getattr(spec, "category", "action") if spec else "action"


def graph_svg(graph: dict[str, Any], *, title: str = "Flow graph") -> SafeString:
    nodes = [n for n in (graph or {}).get("nodes", []) if isinstance(n, dict)]
    if not nodes:
        return mark_safe(f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 200 40" class="graph-svg"></svg>')  # noqa: S308
    pos = {}
    for index, node in enumerate(nodes):
        p = node.get("position") or {}
        x = p.get("x") if isinstance(p.get("x"), (int, float)) else 0
        y = p.get("y") if isinstance(p.get("y"), (int, float)) else index * 100
        pos[node.get("id")] = (float(x), float(y))
    min_x = min(x for x, _ in pos.values()) - PAD
    min_y = min(y for _, y in pos.values()) - PAD
    width = max(x for x, _ in pos.values()) - min_x + NODE_W + PAD
    height = max(y for _, y in pos.values()) - min_y + NODE_H + PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" class="graph-svg" '
        f'viewBox="{min_x:g} {min_y:g} {width:g} {height:g}">'
    ]
    for edge in (graph or {}).get("edges", []):
        if edge.get("source") in pos and edge.get("target") in pos:
            sx, sy = pos[edge["source"]]
            tx, ty = pos[edge["target"]]
            x1, y1, x2, y2 = sx + NODE_W / 2, sy + NODE_H, tx + NODE_W / 2, ty
            mid = (y1 + y2) / 2
            parts.append(
                f'<path d="M{x1:g},{y1:g} C{x1:g},{mid:g} {x2:g},{mid:g} {x2:g},{y2:g}" fill="none" stroke="#888" stroke-width="1.5"/>'
            )
            if edge.get("source_port") not in (None, "out"):
                parts.append(
                    f'<text x="{(x1 + x2) / 2:g}" y="{mid:g}" font-size="11" fill="#555">{escape(edge["source_port"])}</text>'
                )
    for node in nodes:
        x, y = pos[node.get("id")]
        label = str(node.get("name") or node.get("id") or "")[:26]
        kind = str(node.get("type") or "")
        parts.append(
            f'<g class="node"><rect x="{x:g}" y="{y:g}" width="{NODE_W}" height="{NODE_H}" rx="8" '
            f'fill="{_FILL.get(_category(kind), "#eee")}" stroke="#999"/>'
            f'<text x="{x + 10:g}" y="{y + 20:g}" font-size="13" font-weight="600">{escape(label)}</text>'
            f'<text x="{x + 10:g}" y="{y + 38:g}" font-size="11" fill="#555">{escape(kind)}</text></g>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string above is escaped
