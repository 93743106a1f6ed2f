"""Server-drawn previews (gallery, shared flows): edges meet the ports they belong to, whatever the layout."""

from __future__ import annotations

import re

from flows.editor.graph_svg import HEADER, NODE_W, graph_svg
from flows.nodes.base import PORT_ROW

# Laid out top to bottom, as flows from templates, the API and YAML often are.
GRAPH = {
    "nodes": [
        {"id": "t", "type": "manual", "position": {"x": 0, "y": 0}, "config": {}},
        {"id": "check", "type": "condition", "position": {"x": 0, "y": 120}, "config": {"expression": "true"}},
        {"id": "yes", "type": "stop", "position": {"x": 0, "y": 260}, "config": {}},
        {"id": "no", "type": "stop", "position": {"x": 300, "y": 260}, "config": {}},
    ],
    "edges": [
        {"source": "t", "source_port": "out", "target": "check"},
        {"source": "check", "source_port": "true", "target": "yes"},
        {"source": "check", "source_port": "false", "target": "no"},
    ],
}


def edges(svg: str) -> dict[str, tuple[float, float, float, float]]:
    found = {}
    for port, d in re.findall(r'<path class="edge" data-port="([^"]+)" d="([^"]+)"', svg):
        numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", d)]
        found.setdefault(port, numbers[:2] + numbers[-2:])
    return found


def test_each_edge_leaves_its_own_output_port_and_enters_the_input_port():
    paths = edges(str(graph_svg(GRAPH)))
    condition_height = HEADER + PORT_ROW + 8  # two output ports
    assert paths["true"][:2] == [NODE_W, 120 + condition_height / 3]
    assert paths["false"][:2] == [NODE_W, 120 + 2 * condition_height / 3]
    assert paths["true"][2:] == [0, 260 + HEADER / 2] and paths["false"][2:] == [300, 260 + HEADER / 2]
    assert paths["out"] == [NODE_W, HEADER / 2, 0, 120 + condition_height / 2]


def test_an_edge_to_a_node_further_left_goes_out_rightwards_and_around():
    svg = str(graph_svg(GRAPH))
    d = re.search(r'data-port="true" d="([^"]+)"', svg).group(1)
    points = [tuple(map(float, p.split(","))) for p in d.lstrip("M").split(" L")]
    (x1, y1), (x2, y2) = points[0], points[1]
    assert x2 > x1 and y2 == y1  # out of the port to the right first
    assert points[-2][0] < points[-1][0]  # and into the input port from its left


def test_port_names_are_labelled_and_escaped():
    graph = {"nodes": [{"id": "s", "type": "switch", "position": {"x": 0, "y": 0},
                        "config": {"expression": "1", "cases": [{"name": "<big>", "value": 1}]}}], "edges": []}
    svg = str(graph_svg(graph))
    assert "&lt;big&gt;</text>" in svg and ">default</text>" in svg and "<big>" not in svg
