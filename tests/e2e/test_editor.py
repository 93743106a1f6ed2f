"""The flow editor in a real browser: drag, connect, undo, save, conflicts, problems, keyboard."""

from __future__ import annotations

import pytest

from flows.actions import current_graph
from tests.conftest import login
from tests.e2e.editor_helpers import (
    connect,
    drag_from_palette,
    edge_keys,
    inspect,
    local_chain,
    make_flow,
    node,
    node_ids,
    open_editor,
    wait_saved,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_editor_opens_and_a_click_loads_the_node_settings(asgi_server, page, team, alice):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    assert node_ids(page) == ["condition_1", "http_request_1", "manual_1"]
    node(page, "http_request_1").click()
    assert page.get_by_label("URL").input_value() == "http://127.0.0.1:9/hook"
    assert page.console_errors == []


def saved_graph(flow) -> dict:
    flow.refresh_from_db()
    return current_graph(flow)[1]


def test_undo_and_redo_cover_add_connect_move_and_delete(asgi_server, page, team, alice):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    start_nodes, start_edges = node_ids(page), edge_keys(page)

    drag_from_palette(page, "Stop", 300, 480)  # add
    assert node_ids(page) == sorted(start_nodes + ["stop_1"])
    connect(page, "condition_1", "false", "stop_1")  # connect
    assert ("condition_1", "out:false", "stop_1") in edge_keys(page)
    before_move = node(page, "manual_1").bounding_box()
    page.mouse.move(before_move["x"] + 60, before_move["y"] + 12)
    page.mouse.down()
    page.mouse.move(before_move["x"] + 60, before_move["y"] + 160, steps=6)
    page.mouse.up()  # move
    moved = page.evaluate("window.kwalaEditor.graph.getCellById('manual_1').getPosition()")
    node(page, "http_request_1").click()
    page.keyboard.press("Delete")  # delete
    assert "http_request_1" not in node_ids(page)
    wait_saved(page)
    assert {n["id"] for n in saved_graph(flow)["nodes"]} == {"manual_1", "condition_1", "stop_1"}

    page.locator("#canvas").focus()
    page.keyboard.press("Control+z")  # undo delete
    assert "http_request_1" in node_ids(page)
    assert ("condition_1", "out:true", "http_request_1") in edge_keys(page)
    page.keyboard.press("Control+z")  # undo move
    assert page.evaluate("window.kwalaEditor.graph.getCellById('manual_1').getPosition()") != moved
    page.keyboard.press("Control+z")  # undo connect
    assert ("condition_1", "out:false", "stop_1") not in edge_keys(page)
    page.keyboard.press("Control+z")  # undo add
    assert node_ids(page) == start_nodes and edge_keys(page) == start_edges
    wait_saved(page)
    assert {n["id"] for n in saved_graph(flow)["nodes"]} == set(start_nodes)

    for _ in range(4):
        page.keyboard.press("Control+Shift+z")
    assert node_ids(page) == sorted(["condition_1", "manual_1", "stop_1"])
    assert ("condition_1", "out:false", "stop_1") in edge_keys(page)
    assert page.evaluate("window.kwalaEditor.graph.getCellById('manual_1').getPosition()") == moved
    wait_saved(page)
    assert {n["id"] for n in saved_graph(flow)["nodes"]} == {"manual_1", "condition_1", "stop_1"}
    assert page.console_errors == []


def test_a_second_editor_gets_the_conflict_banner_and_overwrites_nothing(asgi_server, browser, page, team, alice, bob):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    other_context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        other = other_context.new_page()
        login(other, asgi_server.url, "bob", "bob-password-1")
        open_editor(other, asgi_server.url, flow)

        drag_from_palette(page, "Stop", 300, 480)
        wait_saved(page)
        drag_from_palette(other, "Wait", 300, 480)
        banner = other.get_by_role("alert").filter(has_text="changed elsewhere")
        banner.wait_for()
        assert "reload" in banner.inner_text()

        ids = {n["id"] for n in saved_graph(flow)["nodes"]}
        assert "stop_1" in ids and "delay_1" not in ids  # alice's change stands, bob's is refused
        assert page.get_by_text("changed elsewhere").is_hidden()
        # bob's canvas keeps his edit until he chooses to reload
        assert "delay_1" in node_ids(other)
    finally:
        other_context.close()


def test_compile_problems_show_on_the_right_node_and_clear_when_fixed(asgi_server, page, team, alice):
    local_chain()
    graph = {
        "nodes": [
            {"id": "manual_1", "type": "manual", "config": {}, "position": {"x": 40, "y": 120}},
            {"id": "condition_1", "type": "condition", "config": {}, "position": {"x": 340, "y": 120}},
            {"id": "stop_1", "type": "stop", "config": {}, "position": {"x": 640, "y": 120}},
        ],
        "edges": [
            {"id": "e1", "source": "manual_1", "source_port": "out", "target": "condition_1"},
            {"id": "e2", "source": "condition_1", "source_port": "true", "target": "stop_1"},
        ],
    }
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)

    badge = node(page, "condition_1").locator(".node-badge")
    assert badge.get_attribute("visibility") == "visible"
    # The badge covers none of the node's ports (it sat on the first output port before).
    b = badge.bounding_box()
    for port in ("in", "out:true", "out:false"):
        q = page.locator(f"#canvas [data-cell-id='condition_1'] [port='{port}']").bounding_box()
        apart = (b["x"] + b["width"] <= q["x"] or q["x"] + q["width"] <= b["x"]
                 or b["y"] + b["height"] <= q["y"] or q["y"] + q["height"] <= b["y"])
        assert apart, (port, b, q)
    assert node(page, "stop_1").locator(".node-badge").get_attribute("visibility") == "hidden"
    assert page.locator("#problem-count").inner_text() == "1"

    page.get_by_role("tab", name="Problems").click()
    page.get_by_role("button", name="Condition is required").click()
    field = page.get_by_label("Condition", exact=True)
    field.fill("1 + ")
    page.get_by_role("button", name="Apply").click()
    page.locator(".field-error").wait_for()
    assert "with problems to fix" in page.locator(".saved-note").inner_text()
    assert badge.get_attribute("visibility") == "visible"

    page.get_by_label("Condition", exact=True).fill("trigger.payload.amount > 10")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_function("document.querySelector('.saved-note')?.textContent.trim() === 'Saved.'")
    page.wait_for_function("document.querySelector('#problem-count').textContent === '0'")
    assert badge.get_attribute("visibility") == "hidden"
    assert saved_graph(flow)["nodes"][1]["config"] == {"expression": "trigger.payload.amount > 10"}
    assert page.console_errors == []


def test_a_node_can_be_selected_and_deleted_with_the_keyboard_alone(asgi_server, page, team, alice):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)

    page.locator("#canvas").focus()
    page.keyboard.press("Tab")  # the leftmost node: the trigger
    page.keyboard.press("ArrowRight")  # the condition
    page.keyboard.press("Enter")
    page.get_by_label("Condition", exact=True).wait_for()
    assert page.evaluate("document.activeElement.id") == "id__name"  # focus moved into the inspector
    page.locator("#canvas").focus()
    page.keyboard.press("Delete")
    assert node_ids(page) == ["http_request_1", "manual_1"]
    assert edge_keys(page) == []
    wait_saved(page)
    assert {n["id"] for n in saved_graph(flow)["nodes"]} == {"manual_1", "http_request_1"}


def test_nodes_pasted_from_another_flow_get_free_valid_ids_and_keep_their_edges(asgi_server, page, team, alice):
    import re

    local_chain()
    source = make_flow(team, alice, "Source")
    target = make_flow(team, alice, "Target")  # the same node ids: every pasted id is taken
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, source)
    page.locator("#canvas").focus()
    page.keyboard.press("Control+a")
    page.keyboard.press("Control+c")

    open_editor(page, asgi_server.url, target)
    page.locator("#canvas").focus()
    page.keyboard.press("Control+v")
    page.keyboard.press("Control+v")  # twice: the second copy needs other ids again
    wait_saved(page)

    graph = saved_graph(target)
    ids = [n["id"] for n in graph["nodes"]]
    assert len(ids) == 9 and len(set(ids)) == 9
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", i) for i in ids)
    assert {"manual_2", "condition_2", "http_request_2", "manual_3", "condition_3", "http_request_3"} <= set(ids)
    edges = {(e["source"], e["source_port"], e["target"]) for e in graph["edges"]}
    for n in (2, 3):
        assert (f"manual_{n}", "out", f"condition_{n}") in edges
        assert (f"condition_{n}", "true", f"http_request_{n}") in edges
    assert len(graph["edges"]) == 6 and len({e["id"] for e in graph["edges"]}) == 6
    assert page.console_errors == []


@pytest.mark.csp
def test_pages_carry_a_content_security_policy_that_the_editor_works_under(asgi_server, page, team, alice):
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    response = page.goto(f"{asgi_server.url}/flows/{flow.code}/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-eval" not in policy and "frame-ancestors 'none'" in policy
    open_editor(page, asgi_server.url, flow)
    node(page, "http_request_1").click()  # htmx loads the side panel
    assert page.get_by_label("URL").input_value() == "http://127.0.0.1:9/hook"
    page.get_by_role("tab", name="Test").click()
    page.get_by_role("button", name="Pick another sample").click()  # a wired, not inline, action
    page.locator("#samples button[data-action=load-samples]").wait_for(state="detached")
    assert page.console_errors == []  # a blocked script or style would be reported here


def test_settings_typed_and_left_without_apply_are_saved_not_dropped(
    asgi_server, page, team, alice
):
    """Measured before: type a name and URL, click another node without Apply, come back: both empty."""
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)

    node(page, "http_request_1").click()
    page.wait_for_selector("#inspector-form[data-node='http_request_1']")
    page.get_by_label("Name", exact=True).fill("Tell the desk")
    page.get_by_label("URL").fill("https://example.com/typed")
    node(page, "condition_1").click()
    page.wait_for_selector("#inspector-form[data-node='condition_1']")
    node(page, "http_request_1").click()
    page.wait_for_selector("#inspector-form[data-node='http_request_1']")
    assert page.get_by_label("URL").input_value() == "https://example.com/typed"
    assert page.get_by_label("Name", exact=True).input_value() == "Tell the desk"
    saved = {n["id"]: n for n in saved_graph(flow)["nodes"]}["http_request_1"]
    assert (saved["name"], saved["config"]["url"]) == ("Tell the desk", "https://example.com/typed")

    # A value with a problem is kept too, and the node says so.
    page.get_by_label("Timeout").fill("soon")
    node(page, "condition_1").click()
    page.wait_for_selector("#inspector-form[data-node='condition_1']")
    badge = node(page, "http_request_1").locator(".node-badge")
    page.wait_for_function("el => el.getAttribute('visibility') === 'visible'", arg=badge.element_handle())
    node(page, "http_request_1").click()
    page.wait_for_selector("#inspector-form[data-node='http_request_1']")
    assert page.get_by_label("Timeout").input_value() == "soon"
    assert page.console_errors == []


def test_the_side_panel_follows_the_selection_blank_canvas_and_undo(asgi_server, page, team, alice):
    """Measured before: a click on the empty canvas left the old form, and after undo the panel
    kept a node that no longer existed (its Apply then 404ed)."""
    local_chain()
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    empty = page.locator("#inspector .empty")

    node(page, "condition_1").click()
    page.wait_for_selector("#inspector-form[data-node='condition_1']")
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + 20, box["y"] + box["height"] - 20)  # empty canvas
    empty.wait_for()

    drag_from_palette(page, "Stop", 600, 420)  # a dropped node is selected, its settings shown
    page.wait_for_selector("#inspector-form[data-node='stop_1']")
    page.get_by_role("button", name="Undo").click()
    empty.wait_for()
    assert "stop_1" not in node_ids(page)
    assert page.console_errors == []


# Laid out top to bottom (as flows from templates, the API and YAML often are): the branches of a
# condition must still leave their own ports, to the right, and enter the next node's input port.
VERTICAL = {
    "nodes": [
        {"id": "manual_1", "type": "manual", "config": {}, "position": {"x": 300, "y": 40}},
        {"id": "condition_1", "type": "condition", "config": {"expression": "true"}, "position": {"x": 300, "y": 180}},
        {"id": "yes", "type": "stop", "config": {}, "position": {"x": 120, "y": 340}},
        {"id": "no", "type": "stop", "config": {}, "position": {"x": 480, "y": 340}},
    ],
    "edges": [
        {"id": "e1", "source": "manual_1", "source_port": "out", "target": "condition_1"},
        {"id": "e2", "source": "condition_1", "source_port": "true", "target": "yes"},
        {"id": "e3", "source": "condition_1", "source_port": "false", "target": "no"},
    ],
}

EDGE_ENDS = """() => {
  const centre = (el) => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
  const port = (cell, id) => centre(document.querySelector(`[data-cell-id="${cell}"] [port="${id}"]`));
  return window.kwalaEditor.graph.getEdges().map((edge) => {
    const path = document.querySelector(`[data-cell-id="${edge.id}"] path[stroke]`);
    const m = path.getScreenCTM();
    const at = (len) => { const p = path.getPointAtLength(len).matrixTransform(m); return [p.x, p.y]; };
    const start = at(0), next = at(6);
    return {edge: edge.id, start, end: at(path.getTotalLength()), rightwards: next[0] > start[0],
            source: port(edge.getSourceCellId(), edge.getSourcePortId()), target: port(edge.getTargetCellId(), "in")};
  });
}"""


def test_edges_meet_their_own_ports_whatever_the_layout(asgi_server, page, team, alice):
    flow = make_flow(team, alice, graph=VERTICAL)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    ends = page.evaluate(EDGE_ENDS)
    assert len(ends) == 3
    for end in ends:
        assert abs(end["start"][0] - end["source"][0]) < 2 and abs(end["start"][1] - end["source"][1]) < 2, end
        assert abs(end["end"][0] - end["target"][0]) < 2 and abs(end["end"][1] - end["target"][1]) < 2, end
        assert end["rightwards"], f"{end['edge']} leaves its port backwards"
    starts = {e["edge"]: e["start"][1] for e in ends}
    assert starts["e2"] < starts["e3"]  # true above false, as the ports are
    assert page.console_errors == []


def test_a_switch_shows_a_port_per_case_and_nodes_take_their_look_from_the_catalogue(asgi_server, page, team, alice):
    graph = {"nodes": [
        {"id": "manual_1", "type": "manual", "config": {}, "position": {"x": 40, "y": 40}},
        {"id": "route", "type": "switch", "position": {"x": 340, "y": 40}, "config": {
            "cases": [{"name": "big", "expression": "true"}, {"name": "small", "expression": "false"}]}},
    ], "edges": [{"id": "e1", "source": "manual_1", "source_port": "out", "target": "route"}]}
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    ports = page.evaluate("window.kwalaEditor.graph.getCellById('route').getPorts().map(p => p.id)")
    assert ports == ["in", "out:big", "out:small", "out:default"]
    stripe = page.locator("[data-cell-id='manual_1'] rect").nth(1).get_attribute("fill")
    assert stripe == "#7c3aed"  # the trigger colour, from flows/nodes/base.py
    assert page.console_errors == []


def test_a_field_s_error_clears_when_the_person_fixes_it_and_comes_back_if_still_wrong(asgi_server, page, team,
                                                                                      alice):
    local_chain()
    graph = {"nodes": [{"id": "watch", "type": "chain.event", "config": {}, "position": {"x": 80, "y": 80}}],
             "edges": []}
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    node(page, "watch").click()
    chain_field = page.locator("#inspector-form .field[data-field='chain']")
    assert chain_field.locator(".field-error").inner_text() == "Chain is required"
    page.locator("#inspector select[name=chain]").select_option(index=1)
    assert chain_field.locator(".field-error").count() == 0
    assert "field-invalid" not in (chain_field.get_attribute("class") or "")
    # The event is still missing: applying brings its error back from the server, not the chain's.
    page.get_by_role("button", name="Apply").click()
    event_field = page.locator("#inspector-form .field[data-field='event']")
    event_field.locator(".field-error").wait_for()
    assert event_field.locator(".field-error").inner_text() == "Event is required"
    assert page.locator("#inspector-form .field[data-field='chain'] .field-error").count() == 0
    assert page.console_errors == []


def test_the_data_picker_follows_a_new_connection_without_reselecting(asgi_server, page, team, alice):
    graph = {"nodes": [
        {"id": "manual_1", "type": "manual", "config": {}, "position": {"x": 40, "y": 120}},
        {"id": "hook", "type": "http.request", "config": {"url": "https://example.com/x", "method": "POST"},
         "position": {"x": 400, "y": 120}},
    ], "edges": []}
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    inspect(page, "hook")
    page.get_by_label("URL").fill("https://example.com/typed")  # typed, not applied: must survive
    picker = page.locator("#inspector-form .picker")
    assert "Trigger: Manual" not in picker.text_content() and "Flow" in picker.text_content()
    connect(page, "manual_1", "out", "hook")
    page.locator("#inspector-form .picker h3", has_text="Trigger: Manual").wait_for(state="attached")
    assert page.locator("#inspector-form .picker [data-expr='trigger.payload']").count() == 1
    assert page.get_by_label("URL").input_value() == "https://example.com/typed"
    assert page.console_errors == []


def test_undoing_back_to_the_live_graph_clears_draft_changes(asgi_server, page, team, alice):
    from flows.actions import do_publish_version

    flow = make_flow(team, alice)
    do_publish_version(flow, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    badge = page.locator("#flow-status")
    assert badge.inner_text() == "Live v1"
    page.evaluate("window.kwalaEditor.graph.getCellById('manual_1').translate(60, 40)")
    page.wait_for_function("document.querySelector('#flow-status').textContent.includes('draft changes')")
    node(page, "condition_1").click()  # the canvas has the focus, as after a person's drag
    page.keyboard.press("Control+z")
    page.wait_for_function("document.querySelector('#flow-status').textContent === 'Live v1'")
    wait_saved(page)
    assert badge.inner_text() == "Live v1"
    assert page.console_errors == []


def test_publishing_in_the_editor_goes_through_the_api_and_is_audited_as_it(asgi_server, page, team, alice):
    from flows.actions import live_version
    from flows.models import AuditEvent

    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    page.get_by_role("button", name="Publish").click()
    page.get_by_text("Version 1 is live.").wait_for()
    assert page.locator("#flow-status").inner_text() == "Live v1"
    assert live_version(flow).number == 1
    page.get_by_role("button", name="Unpublish").click()
    page.get_by_text("Version 1 is no longer live.").wait_for()
    assert page.locator("#flow-status").inner_text() == "Draft"
    entries = (AuditEvent.objects.filter(target=flow.name).exclude(action="flow.created").order_by("id")
               .values_list("action", "actor_name", "data"))
    assert list(entries) == [
        ("flow.published", "alice", {"flow": flow.code, "version": 1, "via": "api"}),
        ("flow.unpublished", "alice", {"flow": flow.code, "version": 1, "via": "api"}),
    ]
    assert page.console_errors == []


def test_an_empty_flow_says_how_to_begin_and_messages_float_and_go(asgi_server, page, team, alice):
    flow = make_flow(team, alice, graph={"nodes": [], "edges": []})
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    hint = page.locator("#canvas-hint")
    assert hint.is_visible() and "Start with a trigger" in hint.inner_text()
    canvas_top = page.locator(".canvas-wrap").bounding_box()["y"]
    drag_from_palette(page, "Manual", 200, 150)
    hint.wait_for(state="hidden")
    drag_from_palette(page, "Webhook", 450, 150)  # a second trigger
    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert "exactly one trigger" in notice.inner_text()
    assert page.locator(".canvas-wrap").bounding_box()["y"] == canvas_top  # it floats: nothing moved down
    page.keyboard.press("Control+z")  # the second trigger goes, and the message with it (before its 5 s are up)
    notice.wait_for(state="hidden", timeout=2_000)
    assert page.console_errors == []


# Where each node, port and edge end is on screen: on the first paint (drawn before X6 has
# loaded) or on X6's canvas.
GEOMETRY = """(firstPaint) => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; };
  const centre = (el) => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
  const nodes = {};
  for (const g of document.querySelectorAll(firstPaint ? '.first-paint [data-node-id]' : '#canvas .x6-node')) {
    const ports = {};
    for (const c of g.querySelectorAll(firstPaint ? '[data-port]' : '[port]')) {
      ports[c.getAttribute(firstPaint ? 'data-port' : 'port')] = centre(c);
    }
    const texts = [...g.querySelectorAll('text')].filter((t) => t.getAttribute('display') !== 'none'
      && t.getAttribute('visibility') !== 'hidden').map((t) => t.textContent.replace(/\\u00a0/g, ' '));
    nodes[firstPaint ? g.dataset.nodeId : g.dataset.cellId] = {body: box(g.querySelector('.node-body')), ports, texts};
  }
  const edges = {};
  for (const path of document.querySelectorAll(firstPaint ? '.first-paint [data-edge-id]' : '#canvas .x6-edge path[stroke]:not([stroke=transparent])')) {
    const m = path.getScreenCTM();
    const at = (len) => { const p = path.getPointAtLength(len).matrixTransform(m); return [p.x, p.y]; };
    edges[firstPaint ? path.dataset.edgeId : path.closest('.x6-edge').dataset.cellId] = [at(0), at(path.getTotalLength())];
  }
  return {nodes, edges};
}"""


def test_the_flow_shows_and_answers_a_click_before_x6_has_loaded_and_x6_draws_it_the_same(
        asgi_server, page, team, alice):
    graph = {
        "nodes": [*VERTICAL["nodes"], {"id": "route", "type": "switch", "position": {"x": 700, "y": 40}, "config": {
            "cases": [{"name": "big", "expression": "true"}, {"name": "small", "expression": "false"}]}},
            {"id": "post", "type": "http.request", "config": {"method": "POST"}, "position": {"x": 40, "y": 480}}],
        "edges": [*VERTICAL["edges"], {"id": "e4", "source": "manual_1", "source_port": "out", "target": "route"},
                  {"id": "e5", "source": "route", "source_port": "small", "target": "post"}],
    }
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    held = []  # X6's script is held back until the first paint has been looked at
    page.route("**/x6-*.js", lambda route: held.append(route))
    page.goto(f"{asgi_server.url}/flows/{flow.code}/")
    page.wait_for_selector("html[data-canvas-drawn='1']", state="attached")
    page.wait_for_function("document.querySelector('.first-paint') !== null")
    before = page.evaluate(GEOMETRY, True)
    assert sorted(before["nodes"]) == sorted(n["id"] for n in graph["nodes"])
    for edge in graph["edges"]:
        start, end = before["edges"][edge["id"]]
        source = before["nodes"][edge["source"]]["ports"][f"out:{edge['source_port']}"]
        target = before["nodes"][edge["target"]]["ports"]["in"]
        assert abs(start[0] - source[0]) < 2 and abs(start[1] - source[1]) < 2, edge
        assert abs(end[0] - target[0]) < 3 and abs(end[1] - target[1]) < 2, edge
    assert any(t.isdigit() for t in before["nodes"]["post"]["texts"])  # its problem badge (no URL)

    # A click shows the node's settings; what needs the editable canvas waits for it.
    page.locator(".first-paint [data-node-id='condition_1']").click()
    page.wait_for_selector("#inspector-form[data-node='condition_1']")
    assert page.evaluate("document.querySelector('.side').inert && !document.documentElement.dataset.editorReady")
    assert len(held) == 1

    held[0].continue_()
    page.wait_for_selector("html[data-editor-ready='1']", state="attached")
    assert page.locator(".first-paint").count() == 0
    assert page.evaluate("document.querySelector('.side').inert") is False
    assert page.evaluate("window.kwalaEditor.graph.getPlugin('selection').getSelectedCells().map((c) => c.id)") == ["condition_1"]
    after = page.evaluate(GEOMETRY, False)
    # X6 takes over where the picture was: the same boxes, ports, texts and edges, to the pixel.
    for node_id, seen in before["nodes"].items():
        drawn = after["nodes"][node_id]
        assert all(abs(a - b) < 1 for a, b in zip(seen["body"], drawn["body"], strict=True)), node_id
        assert seen["ports"].keys() == drawn["ports"].keys(), node_id
        for port, (x, y) in seen["ports"].items():
            assert abs(x - drawn["ports"][port][0]) < 1 and abs(y - drawn["ports"][port][1]) < 1, (node_id, port)
        assert seen["texts"] == drawn["texts"], node_id
    for edge_id, ends in before["edges"].items():
        for (x, y), (x2, y2) in zip(ends, after["edges"][edge_id], strict=True):
            assert abs(x - x2) < 1 and abs(y - y2) < 1, edge_id
    assert page.console_errors == []


def test_a_node_added_after_opening_is_drawn_above_the_others(asgi_server, page, team, alice):
    """The flow loads in slices without X6's re-sort on every add: a node dropped afterwards got
    the last cell's zIndex + 1, and the last cells were the edges (0), so it went under."""
    flow = make_flow(team, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)
    drag_from_palette(page, "Stop", 420, 180)
    page.wait_for_function("window.kwalaEditor.graph.getCellById('stop_1') !== null")
    z = page.evaluate("Object.fromEntries(window.kwalaEditor.graph.getNodes().map((n) => [n.id, n.getZIndex()]))")
    assert z["stop_1"] > max(v for k, v in z.items() if k != "stop_1"), z
    assert page.console_errors == []
