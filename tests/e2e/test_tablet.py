"""The editor and the run pages on a tablet: every part reachable, nothing off the side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executor.models import Run, StepRun
from flows import actions
from tests.conftest import login
from tests.e2e.editor_helpers import inspect, local_chain, make_flow, open_editor

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TABLETS = [(768, 1024), (1024, 768)]
# Set to a directory to keep a screenshot of every page at every size, to look at.
SCREENSHOTS = os.environ.get("KWALA_SCREENSHOTS")

NO_PAGE_SCROLL_X = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"


def tablet_page(browser, size):
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, has_touch=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return context, page, errors


def snap(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=True)


def reachable(page, selector: str) -> bool:
    """Visible, with a size, and scrolled to: inside the viewport horizontally."""
    box = page.locator(selector).first
    box.scroll_into_view_if_needed()
    rect = box.bounding_box()
    width = page.viewport_size["width"]
    return bool(rect) and rect["width"] > 50 and rect["height"] > 50 and rect["x"] >= 0 and rect["x"] + rect["width"] <= width + 1


@pytest.mark.parametrize("size", TABLETS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_palette_canvas_and_inspector_are_all_reachable_on_a_tablet(asgi_server, browser, team, alice, size):
    local_chain()
    flow = make_flow(team, alice)
    context, page, errors = tablet_page(browser, size)
    try:
        login(page, asgi_server.url, "alice", "alice-password-1")
        open_editor(page, asgi_server.url, flow)
        snap(page, f"editor-open-{size[0]}x{size[1]}")
        assert page.evaluate(NO_PAGE_SCROLL_X)
        canvas = page.locator("#canvas").bounding_box()
        for node_id in ("manual_1", "condition_1", "http_request_1"):  # the flow opens fitted
            box = page.locator(f"#canvas [data-cell-id='{node_id}']").bounding_box()
            assert canvas["x"] <= box["x"] and box["x"] + box["width"] <= canvas["x"] + canvas["width"], node_id
            assert canvas["y"] <= box["y"] and box["y"] + box["height"] <= canvas["y"] + canvas["height"], node_id
        for part in (".palette", "#canvas", ".side"):
            assert reachable(page, part), part
        assert page.get_by_role("button", name="Publish").is_visible()
        inspect(page, "http_request_1")
        apply = page.get_by_role("button", name="Apply")
        apply.scroll_into_view_if_needed()
        assert apply.is_visible()
        assert page.get_by_label("URL").input_value() == "http://127.0.0.1:9/hook"
        assert page.evaluate(NO_PAGE_SCROLL_X)
        snap(page, f"editor-{size[0]}x{size[1]}")
        assert errors == []
    finally:
        context.close()


@pytest.mark.parametrize("size", TABLETS, ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_run_pages_fit_a_tablet(asgi_server, browser, team, alice, size):
    local_chain()
    flow = make_flow(team, alice)
    version = actions.do_publish_version(flow, alice)
    run = Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:tablet",
                             trigger={"payload": {}}, status=Run.Status.FAILED, error="refused")
    StepRun.objects.create(run=run, step_id="condition_1", status=StepRun.Status.SUCCEEDED, output={"result": True})
    StepRun.objects.create(run=run, step_id="http_request_1", status=StepRun.Status.FAILED, error="refused")
    context, page, errors = tablet_page(browser, size)
    try:
        login(page, asgi_server.url, "alice", "alice-password-1")
        page.goto(f"{asgi_server.url}/runs/")
        page.wait_for_load_state("networkidle")
        assert page.evaluate(NO_PAGE_SCROLL_X)
        snap(page, f"runs-{size[0]}x{size[1]}")
        page.goto(f"{asgi_server.url}/runs/{run.code}/")
        page.wait_for_selector("#canvas [data-cell-id='http_request_1']")
        assert page.evaluate(NO_PAGE_SCROLL_X)
        assert reachable(page, "#canvas")
        snap(page, f"run-{size[0]}x{size[1]}")
        assert errors == []
    finally:
        context.close()
