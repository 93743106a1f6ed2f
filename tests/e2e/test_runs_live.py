"""Test runs and live runs in the browser, against a real worker, listener and anvil chain."""

from __future__ import annotations

import sys

import pytest

from executor.models import Run
from executor.runs.manual import start_manual_run
from flows import actions
from kwala_site.dev.devchain import DEV_ACCOUNTS, deploy, load_artifact, transact
from tests.conftest import Service, login
from tests.e2e.editor_helpers import (
    apply_settings,
    connect,
    drag_from_palette,
    inspect,
    local_chain,
    make_flow,
    node,
    open_editor,
    sample_graph,
)
from tests.executor.chainkit import make_chain

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def succeeded(page, node_id: str) -> None:
    """Wait (briefly) for the node to be painted green: the canvas renders on animation frames."""
    page.wait_for_selector(f"#canvas [data-cell-id='{node_id}'] .node-body.status-succeeded", state="attached",
                           timeout=5_000)


def test_a_dry_test_run_lights_up_the_nodes_and_shows_each_steps_output(
    asgi_server, dramatiq_worker, page, team, alice, http_sink
):
    local_chain()
    flow = make_flow(team, alice, graph=sample_graph(url=f"{http_sink.url}/hook"))
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)

    page.get_by_role("tab", name="Test").click()
    page.get_by_label("Sample trigger (JSON)").fill('{"amount": 42}')
    assert page.get_by_label("Dry run (actions are recorded, not sent)").is_checked()
    page.get_by_role("button", name="Run now").click()
    page.wait_for_selector("#test-status[data-status='SUCCEEDED']", timeout=30_000)

    # X6 paints attribute changes on its next frame, after the status line has changed.
    for node_id in ("condition_1", "http_request_1"):
        succeeded(page, node_id)
    node(page, "http_request_1").click()
    output = page.locator("#step-details .step-output")
    output.wait_for()
    assert "would_send" in output.inner_text()
    node(page, "condition_1").click()
    page.wait_for_function("document.querySelector('#step-details h2')?.textContent.includes('condition_1')")
    assert '"result": true' in page.locator("#step-details .step-output").inner_text()  # JSON, not repr
    assert http_sink.requests == []  # a dry run sends nothing
    run = Run.objects.get(flow=flow)
    assert run.dry_run and run.status == Run.Status.SUCCEEDED
    assert page.console_errors == []


def test_a_person_builds_a_transfer_flow_by_dragging_and_sees_the_live_run(
    asgi_server, dramatiq_worker, child_env, service_logs, fresh_anvil, page, team, alice, http_sink
):
    anvil = fresh_anvil
    w3 = anvil.web3()
    make_chain(anvil)
    token_address = deploy(w3, "KwalaToken", "Kwala Token", "KWL")
    token = w3.eth.contract(address=token_address, abi=load_artifact("KwalaToken")["abi"])
    login(page, asgi_server.url, "alice", "alice-password-1")

    page.get_by_label("New flow").fill("Big transfers")
    page.get_by_role("button", name="Create and open").click()
    page.wait_for_selector("html[data-editor-ready='1']", state="attached")

    drag_from_palette(page, "Contract event", 110, 160)
    drag_from_palette(page, "Condition", 340, 300)
    drag_from_palette(page, "HTTP request", 570, 440)
    connect(page, "chain_event_1", "out", "condition_1")
    connect(page, "condition_1", "true", "http_request_1")

    inspect(page, "chain_event_1")
    page.get_by_label("Chain", exact=True).select_option(value="31337")
    page.get_by_label("Contract addresses").fill(token_address)
    page.get_by_text("Pick from an ABI").click()
    page.get_by_label("Demo contract").select_option("KwalaToken")
    page.get_by_role("button", name="Transfer(address indexed from, address indexed to, uint256 value)").click()
    apply_settings(page)

    inspect(page, "condition_1")
    page.get_by_label("Condition", exact=True).fill("trigger.args.value > 0")
    apply_settings(page)

    inspect(page, "http_request_1")
    page.get_by_label("URL").fill(f"{http_sink.url}/transfers")
    page.get_by_label("Body").fill('{"value": "{{ trigger.args.value }}", "to": "{{ trigger.args.to }}"}')
    apply_settings(page)
    page.wait_for_function("document.querySelector('#problem-count').textContent === '0'")

    page.get_by_role("button", name="Publish").click()
    page.get_by_text("Version 1 is live.").wait_for()

    listener = Service("listener-e2e", [sys.executable, "manage.py", "listen_chains", "--poll", "0.2"], child_env,
                       service_logs)
    try:
        listener.wait_for_output("listening to", timeout=30)
        receiver = DEV_ACCOUNTS[1].address
        transact(w3, token.functions.mint(DEV_ACCOUNTS[0].address, 10**18))
        transact(w3, token.functions.transfer(receiver, 5 * 10**17))
        # the canvas follows the newest run of the flow and turns green without a reload
        try:
            # The test-run panel may sit in a closed tab: the status is an attribute, not a visible box.
            page.wait_for_selector("#test-status[data-status='SUCCEEDED']", state="attached", timeout=60_000)
        except Exception:
            runs = list(Run.objects.values_list("status", "error"))
            raise AssertionError(f"runs: {runs}\nlistener:\n{listener.output()[-3000:]}") from None
        succeeded(page, "http_request_1")
    finally:
        listener.stop()
    bodies = [r.json() for r in http_sink.requests if r.path == "/transfers"]
    assert {"value": str(5 * 10**17), "to": receiver} in bodies or {"value": 5 * 10**17, "to": receiver} in bodies
    assert page.console_errors == []


def test_a_block_flows_test_tab_is_prefilled_with_the_latest_block_and_the_dry_run_reads_it(
    asgi_server, dramatiq_worker, fresh_anvil, page, team, alice, http_sink
):
    """Issue #19, C9: a block trigger's sample failed to load, and a dry run with it failed on
    'dict object' has no attribute 'block_number'."""
    w3 = fresh_anvil.web3()
    make_chain(fresh_anvil)
    w3.provider.make_request("anvil_mine", [hex(146)])
    graph = sample_graph(url=f"{http_sink.url}/blocks")
    graph["nodes"][0].update(id="block_1", type="chain.block", config={"chain": 31337})
    graph["nodes"][1]["config"]["expression"] = "trigger.block_number > 100"
    graph["nodes"][2]["config"]["body"] = {"block": "{{ trigger.block_number }}"}
    graph["edges"][0]["source"] = "block_1"
    flow = make_flow(team, alice, graph=graph)
    login(page, asgi_server.url, "alice", "alice-password-1")
    open_editor(page, asgi_server.url, flow)

    page.get_by_role("tab", name="Test").click()
    sample = page.get_by_label("Sample trigger (JSON)")
    page.wait_for_selector("#test-payload[data-sample]", state="attached", timeout=10_000)
    assert '"block_number": 146' in sample.input_value() and '"type": "chain.block"' in sample.input_value()
    page.get_by_role("button", name="Pick another sample").click()
    assert page.locator("#sample-pick option").first.inner_text().startswith("block 146 ·")

    page.get_by_role("button", name="Run now").click()
    page.wait_for_selector("#test-status[data-status='SUCCEEDED']", state="attached", timeout=30_000)
    succeeded(page, "http_request_1")
    node(page, "http_request_1").click()
    page.locator("#step-details .step-output").wait_for()
    assert '\\"block\\":146' in page.locator("#step-details .step-output").inner_text()
    assert http_sink.requests == []
    assert page.console_errors == []


def test_the_runs_list_shows_a_new_run_and_how_it_ended_without_a_reload(
    asgi_server, dramatiq_worker, page, team, alice, http_sink
):
    local_chain()
    graph = sample_graph(url=f"{http_sink.url}/hook")
    graph["nodes"][1]["config"]["expression"] = "trigger.payload.amount > 10"
    flow = make_flow(team, alice, graph=graph)
    version = actions.do_publish_version(flow, alice)
    login(page, asgi_server.url, "alice", "alice-password-1")
    page.goto(f"{asgi_server.url}/runs/")
    page.wait_for_selector("#runs[data-connected='1']", state="attached", timeout=10_000)
    assert page.locator("tr[data-run]").count() == 0

    run = start_manual_run(version, {"amount": 3}, user=alice, dry_run=True)
    row = page.locator(f"tr[data-run='{run.code}']")
    row.wait_for(timeout=10_000)
    # Its condition was false and it sent nothing: "Filtered", not "Succeeded", once it ends.
    row.locator(".status-filtered").wait_for(timeout=30_000)
    assert "run-new" in (row.get_attribute("class") or "")
    assert page.console_errors == []
