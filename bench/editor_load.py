"""How long a 200-node flow takes to open in the editor and become interactive.

Run from the repo root: ``python bench/editor_load.py [--nodes 200] [--runs 15]``. It
starts what it needs: embedded PostgreSQL and Redis under var/bench (through
settings), a uvicorn child process serving the app, a user with a flow of N nodes,
and headless Debian Chromium through Playwright. Each sample loads the editor page
in a fresh browser context (cold: no cache) and measures, from navigation start,
until the canvas has drawn every node in view ("rendered": the editor draws only
the cells in the visible area, and opens a large flow at a readable scale rather
than shrinking all of it into the window), and until a click on a node has
selected it and loaded its settings form from the server ("interactive"). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
os.environ.setdefault("KWALA_VAR_DIR", str(ROOT / "var" / "bench"))

CHROMIUM = os.environ.get("KWALA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
PASSWORD = "bench-password-1"


def generate_graph(size: int) -> dict:
    """A manual trigger feeding a layered DAG of conditions, transforms and HTTP requests."""
    nodes = [{"id": "start", "type": "manual", "name": "Start", "config": {}, "position": {"x": 0, "y": 0}}]
    edges = []
    per_column = 10
    kinds = ["condition", "transform", "http.request"]
    for i in range(1, size):
        kind = kinds[i % 3]
        config = {
            "condition": {"expression": f"trigger.payload.n > {i}"},
            "transform": {"fields": [{"name": "v", "expression": f"{i} * 2"}]},
            "http.request": {"url": f"https://example.com/{i}", "method": "POST"},
        }[kind]
        column, row = divmod(i - 1, per_column)
        nodes.append({"id": f"n{i}", "type": kind, "config": config,
                      "position": {"x": 280 * (column + 1), "y": 110 * row}})
        parent = "start" if column == 0 else f"n{i - per_column}"
        parent_type = "manual" if parent == "start" else kinds[int(parent[1:]) % 3]
        port = {"manual": "out", "condition": "true", "transform": "out", "http.request": "out"}[parent_type]
        edges.append({"id": f"e{i}", "source": parent, "source_port": port, "target": f"n{i}"})
    return {"nodes": nodes, "edges": edges}


# "Drawn": every node that lies in the visible part of the canvas has its SVG element.
# The editor draws only the cells in view (X6 virtual rendering) and opens a large flow
# at a readable scale, so the nodes out of view are not drawn until panned to.
VISIBLE_JS = """(() => {
  const graph = window.kwalaEditor.graph;
  const area = graph.getGraphArea();
  return graph.getNodes().filter((n) => area.isIntersectWithRect(n.getBBox()));
})()"""
VISIBLE_DRAWN_JS = f"""() => {{
  if (document.documentElement.dataset.editorReady !== '1') return false;
  const visible = {VISIBLE_JS};
  return visible.length > 0 && visible.every((n) => document.querySelector(`#canvas [data-cell-id="${{n.id}}"]`));
}}"""
VISIBLE_COUNT_JS = f"() => {VISIBLE_JS}.length"

# Where the time goes, from navigation start: first byte and last byte of the page,
# DOMContentLoaded (every classic and module script has run), the X6 file fetched.
PHASES_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const x6 = performance.getEntriesByType('resource').find((r) => r.name.includes('/x6-'));
  return {ttfb: nav.responseStart, html_done: nav.responseEnd, dom_ready: nav.domContentLoadedEventEnd,
          x6_loaded: x6 ? x6.responseEnd : 0};
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from playwright.sync_api import sync_playwright

    from flows import actions
    from flows.models import Flow, Membership, Team

    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    team, _ = Team.objects.get_or_create(name="editor bench")
    user, _ = get_user_model().objects.get_or_create(username="editor-bench")
    user.set_password(PASSWORD)
    user.save()
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Membership.Role.OWNER})
    Flow.objects.filter(team=team).delete()
    flow = actions.do_create_flow(team, user, "editor bench", graph=generate_graph(args.nodes))

    # The child finds the same embedded PostgreSQL and Redis through KWALA_VAR_DIR.
    env = dict(os.environ)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "kwala_site.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        samples, render_samples = [], []
        phases: dict[str, list[float]] = {"ttfb": [], "html_done": [], "dom_ready": [], "x6_loaded": [], "click_to_settings": []}
        nodes_drawn = nodes_visible = 0
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            login_context = browser.new_context()
            page = login_context.new_page()
            page.goto(f"{base}/login/")
            page.get_by_label("Username").fill(user.username)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{base}/")
            storage = login_context.storage_state()
            login_context.close()
            for run in range(args.runs + 1):  # the first load warms the server, not counted
                context = browser.new_context(storage_state=storage, viewport={"width": 1280, "height": 800})
                page = context.new_page()
                errors = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                page.goto(f"{base}/flows/{flow.code}/", wait_until="commit")
                page.wait_for_function(VISIBLE_DRAWN_JS)
                rendered = page.evaluate("performance.now()")
                timing = page.evaluate(PHASES_JS)
                nodes_drawn = page.evaluate("document.querySelectorAll('#canvas .x6-node').length")
                nodes_visible = page.evaluate(VISIBLE_COUNT_JS)
                target = page.locator("#canvas [data-cell-id='start']")
                target.click()
                page.wait_for_selector("#inspector-form[data-node='start']")
                interactive = page.evaluate("performance.now()")
                if errors:
                    raise RuntimeError(f"page errors: {errors}")
                if run:
                    samples.append(interactive / 1000)
                    render_samples.append(rendered / 1000)
                    for key in ("ttfb", "html_done", "dom_ready", "x6_loaded"):
                        phases[key].append(timing[key] / 1000)
                    phases["click_to_settings"].append((interactive - rendered) / 1000)
                context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
    result = {
        "benchmark": "editor_load",
        "nodes": args.nodes,
        "runs": args.runs,
        "rendered_median_s": round(statistics.median(render_samples), 3),
        "interactive_median_s": round(statistics.median(samples), 3),
        "interactive_p90_s": round(sorted(samples)[int(0.9 * (len(samples) - 1))], 3),
        "interactive_max_s": round(max(samples), 3),
        "target_s": 1.0,
        **{f"{key}_median_s": round(statistics.median(values), 3) for key, values in phases.items()},
        "nodes_visible": nodes_visible,
        "nodes_drawn": nodes_drawn,
    }
    print(f"{args.nodes}-node flow, {nodes_visible} in view: canvas drawn after {result['rendered_median_s']} s, "
          f"node selected with its settings loaded after {result['interactive_median_s']} s (median of {args.runs})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
