"""A static SVG picture of a graph, drawn server-side from the node positions (gallery and shared previews)."""

from __future__ import annotations

from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from flows.nodes import NODE_TYPES
from flows.nodes.base import CATEGORY_COLOURS, NODE_HEADER, NODE_WIDTH, node_height

# The node look is the editor's (flows/nodes/base.py), so a preview's edges meet the same ports.
NODE_W, HEADER, PAD = NODE_WIDTH, NODE_HEADER, 20
_FILL = {"trigger": "#e8f0fe", "logic": "#fff4e5", "action": "#e6f4ea"}


def _category(node_type: str) -> str:
    spec = NODE_TYPES.get(node_type)
    return getattr(spec, "category", "action") if spec else "action"


def _outputs(node: dict[str, Any]) -> list[str]:
    spec = NODE_TYPES.get(node.get("type"))
    if spec is None:
        return ["out"]
    try:
        return spec.output_ports(node.get("config") if isinstance(node.get("config"), dict) else {}) or []
    except (TypeError, ValueError, KeyError, AttributeError):
        return list(spec.static_output_ports)


def _height(outputs: list[str]) -> float:
    return node_height(len(outputs))


def _port_y(outputs: list[str], port: str, height: float) -> float:
    """The preview's output ports: spread evenly down the right edge, at (i + 1) / (n + 1) of its
    height (the editor's X6 layout puts them at (i + 0.5) / n; a preview's edges meet its own
    circles either way)."""
    index = outputs.index(port) if port in outputs else 0
    return height * (index + 1) / (len(outputs) + 1)


STUB = 24


def _curve(x1: float, y1: float, x2: float, y2: float) -> str:
    """Out of the port to the right, into the next node from the left (canvas.js portPath): one
    curve forward; to a node further left, out, down between the nodes, across and in."""
    if x2 - x1 >= 2 * STUB:
        reach = max(STUB, (x2 - x1) / 2)
        return f"M{x1:g},{y1:g} C{x1 + reach:g},{y1:g} {x2 - reach:g},{y2:g} {x2:g},{y2:g}"
    middle = (y1 + y2) / 2
    points = [(x1, y1), (x1 + STUB, y1), (x1 + STUB, middle), (x2 - STUB, middle), (x2 - STUB, y2), (x2, y2)]
    return "M" + " L".join(f"{x:g},{y:g}" for x, y in points)


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
    outputs = {node.get("id"): _outputs(node) for node in nodes}
    heights = {node_id: _height(ports) for node_id, ports in outputs.items()}
    min_x = min(x for x, _ in pos.values()) - PAD
    min_y = min(y for _, y in pos.values()) - PAD
    width = max(x for x, _ in pos.values()) - min_x + NODE_W + PAD
    height = max(y + heights[n] for n, (_, y) in pos.items()) - min_y + PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}" class="graph-svg" '
        f'viewBox="{min_x:g} {min_y:g} {width:g} {height:g}">'
    ]
    for edge in (graph or {}).get("edges", []):
        if edge.get("source") in pos and edge.get("target") in pos:
            sx, sy = pos[edge["source"]]
            tx, ty = pos[edge["target"]]
            port = str(edge.get("source_port") or "out")
            x1 = sx + NODE_W
            y1 = sy + _port_y(outputs[edge["source"]], port, heights[edge["source"]])
            x2, y2 = tx, ty + heights[edge["target"]] / 2
            parts.append(
                f'<path class="edge" data-port="{escape(port)}" d="{_curve(x1, y1, x2, y2)}" fill="none" '
                f'stroke="#888" stroke-width="1.5"/>'
            )
    for node in nodes:
        node_id = node.get("id")
        x, y = pos[node_id]
        label = str(node.get("name") or node_id or "")[:26]
        kind = str(node.get("type") or "")
        h = heights[node_id]
        ports = outputs[node_id]
        parts.append(
            f'<g class="node"><rect x="{x:g}" y="{y:g}" width="{NODE_W}" height="{h:g}" rx="8" '
            f'fill="{_FILL.get(_category(kind), "#eee")}" stroke="#999"/>'
            f'<rect x="{x:g}" y="{y:g}" width="6" height="{h:g}" rx="3" '
            f'fill="{CATEGORY_COLOURS.get(_category(kind), "#64748b")}"/>'
            f'<text x="{x + 10:g}" y="{y + 18:g}" font-size="13" font-weight="600">{escape(label)}</text>'
            f'<text x="{x + 10:g}" y="{y + 35:g}" font-size="11" fill="#555">{escape(kind)}</text>'
        )
        if _category(kind) != "trigger":
            parts.append(f'<circle cx="{x:g}" cy="{y + h / 2:g}" r="4" fill="#fff" stroke="#666"/>')
        for port in ports:
            py = y + _port_y(ports, port, h)
            parts.append(f'<circle cx="{x + NODE_W:g}" cy="{py:g}" r="4" fill="#fff" stroke="#666"/>')
            if len(ports) > 1 or port != "out":
                parts.append(f'<text x="{x + NODE_W - 8:g}" y="{py + 4:g}" font-size="10" fill="#555" '
                             f'text-anchor="end">{escape(port)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated string above is escaped
