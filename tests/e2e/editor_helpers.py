"""Helpers for driving the flow editor in a browser, as a person would."""

from __future__ import annotations

import re

from executor.models import Chain, RpcEndpoint
from flows import actions

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"


def local_chain(chain_id: int = 31337, rpc_url: str = "http://127.0.0.1:8545") -> Chain:
    chain, _ = Chain.objects.get_or_create(chain_id=chain_id, defaults={"slug": f"anvil-{chain_id}", "name": f"Anvil {chain_id}"})
    RpcEndpoint.objects.get_or_create(chain=chain, url=rpc_url)
    return chain


def sample_graph(chain_id: int = 31337, url: str = "http://127.0.0.1:9/hook") -> dict:
    """A manual trigger -> condition -> HTTP request on `true`, laid out left to right."""
    return {
        "nodes": [
            {"id": "manual_1", "type": "manual", "config": {}, "position": {"x": 40, "y": 120}},
            {"id": "condition_1", "type": "condition", "config": {"expression": "true"}, "position": {"x": 340, "y": 120}},
            {"id": "http_request_1", "type": "http.request", "config": {"url": url, "method": "POST"},
             "position": {"x": 640, "y": 60}},
        ],
        "edges": [
            {"id": "e1", "source": "manual_1", "source_port": "out", "target": "condition_1"},
            {"id": "e2", "source": "condition_1", "source_port": "true", "target": "http_request_1"},
        ],
    }


def make_flow(team, user, name: str = "Payments", graph: dict | None = None):
    return actions.do_create_flow(team, user, name, graph=graph or sample_graph())


def open_editor(page, base_url: str, flow) -> None:
    page.goto(f"{base_url}/flows/{flow.code}/")
    page.wait_for_selector("html[data-editor-ready='1']", state="attached", timeout=10_000)


def node(page, node_id: str):
    return page.locator(f"#canvas [data-cell-id='{node_id}']")


def node_ids(page) -> list[str]:
    return page.evaluate("window.kwalaEditor.graph.getNodes().map(n => n.id).sort()")


def edge_keys(page) -> list[tuple[str, str, str]]:
    edges = page.evaluate(
        "window.kwalaEditor.graph.getEdges().map(e => [e.getSourceCellId(), e.getSourcePortId(), e.getTargetCellId()])"
    )
    return sorted(tuple(e) for e in edges)


def drag_from_palette(page, label: str, x: float, y: float) -> None:
    """Drag a palette item onto the canvas at (x, y) relative to the canvas' top-left."""
    item = page.locator(".palette-item").filter(has=page.locator("strong", has_text=re.compile(f"^{re.escape(label)}$")))
    item.drag_to(page.locator("#canvas"), target_position={"x": x, "y": y})


def connect(page, source: str, port: str, target: str) -> None:
    """Drag a wire from `source`'s output port to `target`'s input port."""
    start = page.locator(f"#canvas [data-cell-id='{source}'] [port='out:{port}']").bounding_box()
    end = page.locator(f"#canvas [data-cell-id='{target}'] [port='in']").bounding_box()
    page.mouse.move(start["x"] + start["width"] / 2, start["y"] + start["height"] / 2)
    page.mouse.down()
    page.mouse.move(end["x"] - 20, end["y"], steps=8)
    page.mouse.move(end["x"] + end["width"] / 2, end["y"] + end["height"] / 2, steps=4)
    page.mouse.up()


def wait_saved(page) -> None:
    page.wait_for_function("document.querySelector('#save-state').textContent === 'Saved'")


def inspect(page, node_id: str) -> None:
    """Click a node and wait for its settings to be in the side panel."""
    node(page, node_id).click()
    page.wait_for_selector(f"#inspector-form[data-node='{node_id}']")
    page.wait_for_load_state("networkidle")


def apply_settings(page) -> None:
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function("document.querySelector('.saved-note')?.textContent.trim() === 'Saved.'")
