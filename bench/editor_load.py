"""How long a flow takes to open in the editor and become interactive, and how a large one responds.

Run from the repo root: ``python bench/editor_load.py [--nodes 200 1000] [--runs 15] [--large-runs 5]
[--static production|debug]``. It starts what it needs: embedded PostgreSQL and Redis under
var/bench (through settings), a uvicorn child process serving the app, a user with a flow of N
nodes per size, and headless Debian Chromium through Playwright.

The app is served as a deployment serves it (``--static production``, the default): DEBUG=0,
``collectstatic`` into a temporary STATIC_ROOT with whitenoise's
CompressedManifestStaticFilesStorage (hashed names, gzip/brotli files, far-future caching).
``--static debug`` serves it the way figures before this option were taken: DEBUG=1, whitenoise
reading the source directories through the finders on every request, uncompressed. Each sample
loads the editor page in a fresh browser context (cold: no cache) and measures, from navigation
start:

- "rendered": the canvas shows every node that lies in its view (drawn by the editor's first
  paint, before X6 has loaded, or by X6; a large flow opens at a readable scale rather than
  shrunk into the window);
- "interactive": a click on the trigger node, made the moment it is drawn, has selected it and
  its settings form from the server is on the page;
- "editable": X6 has loaded and drawn its canvas (drag, connect, pan, zoom, keyboard).

The page is watched by a small script added before the page's own (it checks once per
animation frame and records performance.now()). It tells the bench where the trigger is on the
console, which reaches the bench at once (page.evaluate would wait for the page's main thread),
and the click is a real mouse click through the DevTools protocol. Playwright's selector engine
is not injected into the page while it loads, so its own start-up does not land on the page's
main thread in the middle of the measurement.

For the largest flow it then measures, in the page, how fast the canvas answers a person:
dragging the empty canvas (pan, per mouse move), Ctrl+wheel (zoom, per wheel step) and a click
on a node (select): each from the input event until the first frame that shows its result has
been produced. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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


# Added to every page before its own scripts. "Rendered": the editor says it is ready and
# every node that lies in the visible part of the canvas has its SVG element (the editor draws
# only the cells in view, X6 virtual rendering, so nodes out of view are not drawn until panned
# to). "Interactive": the trigger's settings form is on the page after the click. Both are read
# at the start of an animation frame, as a person would first see them.
WATCH_JS = """(() => {
  const marks = window.__kwalaBench = {};
  let visible = null;
  // The nodes in view: from the flow's own JSON and the transform of the layer on screen (the
  // editor's first paint, or X6's viewport), each node taken as its smallest box (210 x 44).
  const inView = () => {
    const layer = document.querySelector('.canvas-wrap .first-paint > g, #canvas .x6-graph-svg-viewport');
    const m = layer && layer.transform.baseVal.consolidate()?.matrix;
    if (!m) return null;
    const box = document.querySelector('#canvas').getBoundingClientRect();
    const nodes = JSON.parse(document.querySelector('#flow-state').textContent).graph.nodes;
    return nodes.filter((n) => {
      const x = n.position.x * m.a + m.e, y = n.position.y * m.d + m.f;
      return x < box.width && x + 210 * m.a > 0 && y < box.height && y + 44 * m.d > 0;
    }).map((n) => n.id);
  };
  const shown = (id) => document.querySelector(`.canvas-wrap [data-node-id="${id}"], #canvas [data-cell-id="${id}"]`);
  const drawn = () => {
    const ready = document.documentElement.dataset;  // the first paint, or (before it existed) X6
    if (ready.canvasDrawn !== '1' && ready.editorReady !== '1') return false;
    visible ??= inView();
    if (!visible) return false;
    marks.visible = visible.length;
    return visible.length > 0 && visible.every(shown);
  };
  addEventListener('pointerdown', () => { marks.clicked ??= performance.now(); }, true);
  const tick = () => {
    if (!marks.rendered && drawn()) {
      marks.rendered = performance.now();
      marks.drawn = document.querySelectorAll('.canvas-wrap [data-node-id], #canvas .x6-node').length;
      // Where the trigger is, for the click: told on the console, which reaches the bench at once
      // (page.evaluate would wait for the page's main thread, busy loading X6 meanwhile).
      const r = document.querySelector(".canvas-wrap [data-node-id='start'] .node-body, "
                                       + "#canvas [data-cell-id='start'] .node-body").getBoundingClientRect();
      console.debug(`kwala-bench rendered ${r.x + r.width / 2} ${r.y + r.height / 2}`);
    }
    if (!marks.editable && document.documentElement.dataset.editorReady === '1') marks.editable = performance.now();
    if (!marks.interactive && marks.clicked && document.querySelector("#inspector-form[data-node='start']")) {
      marks.interactive = performance.now();
    }
    if (!marks.interactive || !marks.editable) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);

  // One interaction: from its input event (seen first, in the capture phase) until the frame
  // that shows its result has been produced (the task after that frame's rendering).
  marks.measure = (eventType, done) => new Promise((resolve, reject) => {
    let start = null;
    const timeout = setTimeout(() => reject(new Error(`no result of ${eventType} in 5 s`)), 5000);
    const onEvent = (e) => { start ??= performance.now(); };
    addEventListener(eventType, onEvent, {capture: true, once: true});
    const frame = () => {
      if (start === null || !done()) { requestAnimationFrame(frame); return; }
      const channel = new MessageChannel();
      channel.port1.onmessage = () => { clearTimeout(timeout); resolve(performance.now() - start); };
      channel.port2.postMessage(null);
    };
    requestAnimationFrame(frame);
  });
})();"""

# Where the time goes, from navigation start: first byte and last byte of the page,
# DOMContentLoaded (every classic and module script has run), the X6 file fetched.
PHASES_JS = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const x6 = performance.getEntriesByType('resource').find((r) => r.name.includes('/x6-'));
  return {ttfb: nav.responseStart, html_done: nav.responseEnd, dom_ready: nav.domContentLoadedEventEnd,
          x6_loaded: x6 ? x6.responseEnd : 0};
}"""

# A point of the empty canvas (no node, edge or port under it) in the middle of the view,
# for a drag that pans.
BLANK_POINT_JS = """() => {
  const box = document.querySelector('#canvas').getBoundingClientRect();
  for (let dy = 0; dy < box.height / 3; dy += 7) {
    for (let dx = 0; dx < box.width / 3; dx += 7) {
      const x = box.x + box.width / 2 + dx, y = box.y + box.height / 2 + dy;
      const el = document.elementFromPoint(x, y);
      if (el && el.closest('#canvas') && !el.closest('.x6-cell')) return {x, y};
    }
  }
  return null;
}"""

# The centre of a drawn node near the middle of the view, other than the one selected.
NODE_POINT_JS = """() => {
  const box = document.querySelector('#canvas').getBoundingClientRect();
  const centre = {x: box.x + box.width / 2, y: box.y + box.height / 2};
  let best = null;
  for (const el of document.querySelectorAll('#canvas .x6-node')) {
    const id = el.getAttribute('data-cell-id');
    const r = el.querySelector('.node-body').getBoundingClientRect();
    const p = {id, x: r.x + r.width / 2, y: r.y + r.height / 2};
    const hit = document.elementFromPoint(p.x, p.y);
    if (id === 'start' || !hit || hit.closest('.x6-node') !== el) continue;
    const d = Math.hypot(p.x - centre.x, p.y - centre.y);
    if (!best || d < best.d) best = {...p, d};
  }
  return best;
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_mark(page, name: str, timeout_s: float = 30) -> float:
    """Poll from here rather than with Playwright's wait_for_function, which would inject its
    selector engine into the page while it loads."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = page.evaluate(f"window.__kwalaBench && window.__kwalaBench.{name}")
        if value:
            return value
        time.sleep(0.01)
    raise RuntimeError(f"the page did not reach {name!r} in {timeout_s} s")


def load_once(browser, storage: dict, url: str) -> tuple[dict, object, object]:
    """Open the editor in a fresh context, click the trigger once drawn; return the marks."""
    context = browser.new_context(storage_state=storage, viewport={"width": 1280, "height": 800})
    context.add_init_script(WATCH_JS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    with page.expect_console_message(lambda m: m.text.startswith("kwala-bench rendered"), timeout=30_000) as message:
        page.goto(url, wait_until="commit")
    x, y = map(float, message.value.text.split()[2:])
    page.mouse.click(x, y)
    wait_for_mark(page, "interactive")
    wait_for_mark(page, "editable")
    marks = page.evaluate("(() => { const {measure, pending, ...m} = window.__kwalaBench; return m; })()")
    marks.update(page.evaluate(PHASES_JS))
    if errors:
        raise RuntimeError(f"page errors: {errors}")
    return marks, context, page


def interactions(page) -> dict[str, list[float]]:
    """Pan, zoom and select on an opened editor, each measured in the page (ms), once it has
    settled: the minimap is drawn 1.5 s after the canvas is made, when the page is idle."""
    page.wait_for_selector("#minimap .x6-widget-minimap", state="attached", timeout=30_000)
    timings: dict[str, list[float]] = {"pan": [], "zoom": [], "select": []}
    graph = "window.kwalaEditor.graph"

    def measured(event: str, done_js: str, act) -> float:
        # Kept in the page rather than returned: Playwright would wait for the promise here.
        page.evaluate(f"window.__kwalaBench.pending = window.__kwalaBench.measure('{event}', () => {done_js}); 0")
        act()
        return page.evaluate("window.__kwalaBench.pending")

    for _ in range(3):
        point = page.evaluate(BLANK_POINT_JS)
        if not point:
            raise RuntimeError("no empty point of the canvas to drag")
        page.mouse.move(point["x"], point["y"])
        page.mouse.down()
        for step in range(1, 11):
            before = page.evaluate(f"JSON.stringify({graph}.translate())")
            timings["pan"].append(measured(
                "pointermove", f"JSON.stringify({graph}.translate()) !== {before!r}",
                lambda step=step, point=point: page.mouse.move(point["x"] - 15 * step, point["y"] - 10 * step)))
        page.mouse.up()
    page.mouse.move(640, 420)
    for delta in (-100, -100, 100, 100, -100, 100):
        before = page.evaluate(f"{graph}.zoom()")
        page.keyboard.down("Control")
        timings["zoom"].append(measured("wheel", f"{graph}.zoom() !== {before}", lambda delta=delta: page.mouse.wheel(0, delta)))
        page.keyboard.up("Control")
        page.wait_for_timeout(250)  # let the view settle (cells that came into view are drawn)
    for _ in range(5):
        node = page.evaluate(NODE_POINT_JS)
        done = f"document.querySelector('#canvas .x6-widget-selection-box[data-cell-id=\"{node['id']}\"]')"
        timings["select"].append(measured("pointerup", done, lambda node=node: page.mouse.click(node["x"], node["y"])))
        page.wait_for_timeout(300)  # its settings load from the server
        page.keyboard.press("Escape")
        page.wait_for_timeout(100)
    return timings


def median(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def main() -> None:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from playwright.sync_api import sync_playwright

    from flows import actions
    from flows.models import Flow, Membership, Team

    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--runs", type=int, default=15, help="samples for each flow but the largest")
    parser.add_argument("--large-runs", type=int, default=5, help="samples for the largest flow")
    parser.add_argument("--static", choices=["production", "debug"], default="production",
                        help="serve the app as a deployment does (default) or as `make run` does")
    args = parser.parse_args()
    sizes = sorted(args.nodes)

    call_command("migrate", verbosity=0)
    team, _ = Team.objects.get_or_create(name="editor bench")
    user, _ = get_user_model().objects.get_or_create(username="editor-bench")
    user.set_password(PASSWORD)
    user.save()
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Membership.Role.OWNER})
    Flow.objects.filter(team=team).delete()
    flows = {size: actions.do_create_flow(team, user, f"editor bench {size}", graph=generate_graph(size)) for size in sizes}

    # The child finds the same embedded PostgreSQL and Redis through KWALA_VAR_DIR.
    env = dict(os.environ)
    static_root = tempfile.TemporaryDirectory(prefix="kwala-bench-static-")
    if args.static == "production":
        # Plain HTTP on 127.0.0.1: the session cookie must not be marked Secure.
        env.update(DEBUG="0", SECURE_COOKIES="0", STATIC_ROOT=static_root.name)
        subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
                       cwd=ROOT, env=env, check=True)
    else:
        env["DEBUG"] = "1"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "kwala_site.asgi:application", "--host", "127.0.0.1", "--port",
         str(port), "--no-access-log", "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    results = []
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
            for size in sizes:
                largest = size == sizes[-1]
                runs = args.large_runs if largest else args.runs
                url = f"{base}/flows/{flows[size].code}/"
                samples: dict[str, list[float]] = {key: [] for key in (
                    "rendered", "interactive", "editable", "ttfb", "html_done", "dom_ready", "x6_loaded", "click_to_settings")}
                timings: dict[str, list[float]] = {"pan": [], "zoom": [], "select": []}
                marks: dict = {}
                for run in range(runs + 1):  # the first load warms the server, not counted
                    marks, context, page = load_once(browser, storage, url)
                    if run:
                        for key in ("rendered", "interactive", "editable", "ttfb", "html_done", "dom_ready", "x6_loaded"):
                            samples[key].append(marks[key] / 1000)
                        samples["click_to_settings"].append((marks["interactive"] - marks["clicked"]) / 1000)
                        if largest:
                            for key, values in interactions(page).items():
                                timings[key].extend(values)
                    context.close()
                interactive = sorted(samples["interactive"])
                result = {
                    "nodes": size,
                    "runs": runs,
                    "rendered_median_s": median(samples["rendered"]),
                    "interactive_median_s": median(interactive),
                    "interactive_p90_s": round(interactive[int(0.9 * (len(interactive) - 1))], 3),
                    "interactive_max_s": round(interactive[-1], 3),
                    **{f"{key}_median_s": median(samples[key]) for key in
                       ("editable", "ttfb", "html_done", "dom_ready", "x6_loaded", "click_to_settings")},
                    "nodes_visible": marks["visible"],
                    "nodes_drawn": marks["drawn"],
                }
                print(f"{size}-node flow, {marks['visible']} in view: canvas drawn after {result['rendered_median_s']} s, "
                      f"node selected with its settings loaded after {result['interactive_median_s']} s, "
                      f"editable (X6 loaded: drag, connect, pan, zoom) after {result['editable_median_s']} s (median of {runs})")
                if largest:
                    for key, values in timings.items():
                        ordered = sorted(values)
                        result[f"{key}_median_ms"] = median(ordered, 1)
                        result[f"{key}_p90_ms"] = round(ordered[int(0.9 * (len(ordered) - 1))], 1)
                        result[f"{key}_max_ms"] = round(ordered[-1], 1)
                    print(f"  pan {result['pan_median_ms']} ms (p90 {result['pan_p90_ms']}), "
                          f"zoom {result['zoom_median_ms']} ms (p90 {result['zoom_p90_ms']}), "
                          f"select {result['select_median_ms']} ms (p90 {result['select_p90_ms']}), "
                          f"from the input event to its frame, median of {len(timings['pan'])}, "
                          f"{len(timings['zoom'])} and {len(timings['select'])}")
                results.append(result)
            browser.close()
    finally:
        server.terminate()
        server.wait(10)
        static_root.cleanup()
    print(json.dumps({"benchmark": "editor_load", "static": args.static, "interactive_target_s": 0.5,
                      "interaction_target_ms": 100, "flows": results}))


if __name__ == "__main__":
    main()
