"""Every page as a person sees it, on a laptop and on a tablet: nothing runs off the side, previews and
nodes stay a sane size, and axe-core finds no serious or critical accessibility violation.

axe-core is the npm package (package.json), injected into each page by Playwright. A page that
fails a check is saved to test-artifacts/ as <test>-<page>.png, so the failure can be looked at.
"""

from __future__ import annotations

import pytest

from executor.models import Run, StepRun
from flows import actions
from tests.conftest import ARTIFACTS, ROOT, login
from tests.e2e.editor_helpers import local_chain, make_flow

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
SIZES = {"laptop": (1440, 900), "tablet": (768, 1024)}

SERIOUS = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.filter((v) => v.impact === "serious" || v.impact === "critical").map((v) => ({
    id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 4).map((n) => n.target.join(" ")),
  }));
}"""

# Elements wider than the viewport, or sticking out of its right edge (the page would scroll sideways).
OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  if (document.documentElement.scrollWidth > width + 1) out.push(`page is ${document.documentElement.scrollWidth}px wide`);
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > width + 1 && getComputedStyle(el).position !== "fixed" && !el.closest(".canvas, .x6-graph")) {
      let scroller = el.parentElement, clipped = false;
      while (scroller && scroller !== document.body) {
        const s = getComputedStyle(scroller);
        if (["auto", "scroll", "hidden", "clip"].includes(s.overflowX)) { clipped = true; break; }
        scroller = scroller.parentElement;
      }
      if (!clipped) out.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}.${el.className} ends at ${Math.round(r.right)}px`);
    }
    if (out.length > 5) break;
  }
  return out;
}"""

# Previews (gallery, template, shared flow) and canvas nodes: neither a speck nor a wall.
SIZES_OF_DRAWINGS = """() => {
  const bad = [];
  for (const svg of document.querySelectorAll("svg.graph-svg")) {
    const r = svg.getBoundingClientRect();
    if (r.width > 1000 || r.height > 700) bad.push(`preview ${Math.round(r.width)}x${Math.round(r.height)}`);
    for (const text of svg.querySelectorAll("text")) {
      const size = text.getBoundingClientRect().height;
      if (size > 40) bad.push(`preview text ${Math.round(size)}px tall`);
    }
  }
  for (const node of document.querySelectorAll("#canvas .x6-node")) {
    const r = node.getBoundingClientRect();
    if (r.width > 600 || (r.width && r.width < 40)) bad.push(`node ${Math.round(r.width)}px wide`);
  }
  return bad;
}"""


@pytest.fixture
def pages(team, alice):
    """Every page a team member opens, with something on it: (name, path)."""
    local_chain()
    flow = make_flow(team, alice, "Payments")
    version = actions.do_publish_version(flow, alice)
    run = Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:look",
                             trigger={"type": "manual", "payload": {"amount": 2**70}}, status=Run.Status.FAILED,
                             error="the hook answered 500")
    StepRun.objects.create(run=run, step_id="condition_1", status=StepRun.Status.SUCCEEDED, output={"result": True})
    StepRun.objects.create(run=run, step_id="http_request_1", status=StepRun.Status.FAILED, error="HTTP 500")
    return [
        ("flows", "/"), ("editor", f"/flows/{flow.code}/"), ("runs", "/runs/"), ("run", f"/runs/{run.code}/"),
        ("templates", "/templates/"), ("template", "/templates/erc20-whale-slack/"), ("team", "/team/"),
        ("alerts", "/alerts/"), ("account", "/account/"),
    ]


def look(page, name: str, test: str) -> list[str]:
    """What is wrong with the page as it is now (empty: nothing)."""
    page.add_script_tag(path=str(AXE))
    found = [f"axe {v['impact']} {v['id']} ({v['help']}): {', '.join(v['nodes'])}" for v in page.evaluate(SERIOUS)]
    found += page.evaluate(OVERFLOW) + page.evaluate(SIZES_OF_DRAWINGS)
    if found:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{test}-{name}.png"), full_page=True)
    return [f"{name}: {problem}" for problem in found]


@pytest.mark.parametrize("size", SIZES)
def test_every_page_fits_and_passes_axe(asgi_server, page, pages, size):
    width, height = SIZES[size]
    page.set_viewport_size({"width": width, "height": height})
    page.goto(f"{asgi_server.url}/login/")
    problems = look(page, "login", f"look-{size}")
    login(page, asgi_server.url, "alice", "alice-password-1")
    for name, path in pages:
        page.goto(f"{asgi_server.url}{path}")
        page.wait_for_load_state("networkidle")
        if name == "editor":
            page.wait_for_selector("html[data-editor-ready='1']", state="attached", timeout=10_000)
        problems += look(page, name, f"look-{size}")
    assert problems == []
    assert page.console_errors == []
