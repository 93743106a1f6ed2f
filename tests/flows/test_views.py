"""The editor's and run pages' views: what each role may see and do, and what they answer."""

from __future__ import annotations

import json
from html import unescape

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from executor.models import Run, StepRun
from flows import actions, audit
from flows.models import Flow, FlowVersion, Membership
from tests.e2e.editor_helpers import local_chain, sample_graph

pytestmark = pytest.mark.django_db


@pytest.fixture
def flow(team, alice):
    local_chain()
    return actions.do_create_flow(team, alice, "Payments", graph=sample_graph())


@pytest.fixture
def viewer(team):
    user = get_user_model().objects.create_user("vera", "vera@example.com", "vera-password-1")
    Membership.objects.create(team=team, user=user, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def run(flow, alice):
    version = actions.do_publish_version(flow, alice)
    run = Run.objects.create(team=flow.team, flow=flow, version=version, trigger_key="manual:1",
                             trigger={"payload": {}}, status=Run.Status.FAILED, error="boom")
    StepRun.objects.create(run=run, step_id="condition_1", status=StepRun.Status.SUCCEEDED,
                           input={"x": 1}, output={"result": True})
    StepRun.objects.create(run=run, step_id="http_request_1", status=StepRun.Status.FAILED, error="refused")
    return run


def as_user(client, user):
    client.force_login(user)
    return client


def post_json(client, url, data, **headers):
    return client.post(url, json.dumps(data), content_type="application/json", **headers)


def editor_session(user) -> Client:
    """A browser logged in as `user` that has opened a page, so it holds a CSRF token as the editor does."""
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    browser.get("/")
    return browser


def editor_api(browser: Client, method: str, url: str, data=None, *, csrf: bool = True, team: str | None = None):
    """What editor.js sends: JSON to the API, with the session's CSRF token and the flow's team."""
    headers = {"X-CSRFToken": browser.cookies["csrftoken"].value} if csrf else {}
    if team:
        headers["X-Kwala-Team"] = team
    return getattr(browser, method)(f"/api/v1{url}", json.dumps(data or {}), content_type="application/json",
                                    headers=headers)


def test_the_inspector_renders_a_form_for_each_node_type(client, alice, flow):
    as_user(client, alice)
    for node_id in ("manual_1", "condition_1", "http_request_1"):
        response = client.get(f"/flows/{flow.code}/nodes/{node_id}/")
        assert response.status_code == 200, response.content[:2000]
        assert b'id="inspector-form"' in response.content


def read_urls(flow, run) -> list[str]:
    return [
        f"/flows/{flow.code}/",
        f"/flows/{flow.code}/nodes/condition_1/",
        f"/flows/{flow.code}/versions/",
        f"/flows/{flow.code}/export.yaml",
        f"/runs/{run.code}/",
        f"/runs/{run.code}/state/",
        f"/runs/{run.code}/steps/condition_1/",
    ]


@pytest.mark.parametrize("who", ["alice", "bob", "viewer"])
def test_team_members_of_every_role_can_read_the_editor_and_runs(client, who, alice, bob, viewer, flow, run):
    as_user(client, {"alice": alice, "bob": bob, "viewer": viewer}[who])
    for url in read_urls(flow, run):
        assert client.get(url).status_code == 200, url
    assert client.get("/").status_code == 200
    assert client.get("/runs/").status_code == 200


def test_an_outsider_gets_404_for_every_flow_and_run_url(client, charlie, flow, run):
    as_user(client, charlie)
    for url in read_urls(flow, run):
        assert client.get(url).status_code == 404, url
    for url in write_urls(flow, run):
        assert client.post(url, {}).status_code == 404, url
    assert client.get(f"/flows/{flow.code}/samples/").status_code == 404
    assert run.flow.name not in client.get("/runs/").content.decode()
    assert "Payments" not in client.get("/").content.decode()


def write_urls(flow, run) -> list[str]:
    return [
        f"/flows/{flow.code}/nodes/condition_1/",
        f"/flows/{flow.code}/abi/",
        f"/flows/{flow.code}/versions/1/rollback/",
        f"/flows/{flow.code}/import/",
        f"/runs/{run.code}/retry/",
        f"/runs/{run.code}/rerun/",
    ]


def test_a_viewer_cannot_change_anything(client, viewer, flow, run):
    as_user(client, viewer)
    revision = Flow.objects.get(pk=flow.pk).revision
    for url in write_urls(flow, run):
        response = client.post(url, {})
        assert response.status_code == 404, url
    assert client.get(f"/flows/{flow.code}/samples/").status_code == 404
    assert client.get(f"/flows/{flow.code}/import/").status_code == 404
    assert client.post("/flows/new/", {"name": "Sneaky"}).status_code == 404
    assert Flow.objects.get(pk=flow.pk).revision == revision
    assert not Flow.objects.filter(name="Sneaky").exists()
    assert b"Apply" not in client.get(f"/flows/{flow.code}/nodes/condition_1/").content


@pytest.mark.parametrize("who", ["alice", "bob"])
def test_owners_and_editors_save_the_draft_with_the_revision(who, alice, bob, flow):
    browser = editor_session({"alice": alice, "bob": bob}[who])
    graph = sample_graph()
    graph["nodes"][1]["config"] = {}
    response = editor_api(browser, "put", f"/flows/{flow.code}/draft", {"graph": graph, "revision": flow.revision})
    assert response.status_code == 200
    body = response.json()
    assert body["revision"] == flow.revision + 1
    assert [p["node_id"] for p in body["problems"]] == ["condition_1"]
    assert body["live_version"] is None and body["differs_from_live"] is True
    assert actions.current_graph(flow)[1] == graph


def test_a_stale_revision_is_refused_and_nothing_is_written(alice, flow):
    browser = editor_session(alice)
    url = f"/flows/{flow.code}/draft"
    assert editor_api(browser, "put", url, {"graph": sample_graph(), "revision": flow.revision}).status_code == 200
    stale = {"nodes": [], "edges": []}
    response = editor_api(browser, "put", url, {"graph": stale, "revision": flow.revision})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert actions.current_graph(flow)[1] == sample_graph()


def test_a_malformed_graph_is_refused_with_the_apis_error(alice, flow):
    browser = editor_session(alice)
    url = f"/flows/{flow.code}/draft"
    assert editor_api(browser, "put", url, {"graph": {"nodes": "x"}, "revision": flow.revision}).status_code == 422
    bad_id = {"nodes": [{"id": "1 bad", "type": "manual", "config": {}}], "edges": []}
    response = editor_api(browser, "put", url, {"graph": bad_id, "revision": flow.revision})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_graph"
    assert actions.current_graph(flow)[1] == sample_graph()


def test_a_session_write_without_the_csrf_token_is_refused(alice, flow):
    browser = editor_session(alice)
    response = editor_api(browser, "post", f"/flows/{flow.code}/publish", csrf=False)
    assert response.status_code == 403
    assert actions.live_version(flow) is None
    assert editor_api(browser, "post", f"/flows/{flow.code}/publish").status_code == 200


def test_the_editor_acts_in_its_flows_team_whatever_team_the_session_chose(alice, charlie, flow):
    from flows.teams import do_create_team

    other = do_create_team(alice, "Side project")
    browser = editor_session(alice)
    session = browser.session
    session["team"] = other.code
    session.save()
    draft = {"graph": sample_graph(), "revision": flow.revision}
    assert editor_api(browser, "put", f"/flows/{flow.code}/draft", draft).status_code == 404
    response = editor_api(browser, "put", f"/flows/{flow.code}/draft", draft, team=flow.team.code)
    assert response.status_code == 200
    outsider = editor_session(charlie)
    response = editor_api(outsider, "put", f"/flows/{flow.code}/draft", draft, team=flow.team.code)
    assert response.status_code == 401


def test_a_viewer_cannot_save_publish_or_test_through_the_session_api(viewer, flow):
    browser = editor_session(viewer)
    revision = Flow.objects.get(pk=flow.pk).revision
    for method, url, data in [("put", "draft", {"graph": sample_graph(), "revision": revision}),
                              ("post", "publish", None), ("post", "unpublish", None),
                              ("post", "runs", {"draft": True, "dry_run": True})]:
        response = editor_api(browser, method, f"/flows/{flow.code}/{url}", data, team=flow.team.code)
        assert response.status_code == 403, url
    assert Flow.objects.get(pk=flow.pk).revision == revision
    assert not Run.objects.filter(flow=flow).exists()


def test_the_inspector_saves_parsed_settings_and_shows_the_node_types_own_problems(client, alice, flow):
    as_user(client, alice)
    url = f"/flows/{flow.code}/nodes/http_request_1/"
    data = {"_name": "Notify", "method": "GET", "url": "http://127.0.0.1:9/x", "body": '{"a": 1}',
            "headers": "X-Test: {{ trigger.payload }}", "timeout": "5s", "expected_status": "200, 201",
            "retry__max_attempts": "3", "retry__backoff_seconds": "5"}
    response = client.post(url, data, HTTP_X_KWALA_REVISION=str(flow.revision), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert "A GET request cannot have a body" in response.content.decode()
    node = [n for n in actions.current_graph(flow)[1]["nodes"] if n["id"] == "http_request_1"][0]
    assert node["name"] == "Notify"
    assert node["config"]["headers"] == {"X-Test": "{{ trigger.payload }}"}
    assert node["config"]["expected_status"] == [200, 201]
    assert node["config"]["retry"] == {"max_attempts": 3, "backoff_seconds": 5}
    assert "kwala:node-saved" in response["HX-Trigger"]


def test_the_inspector_refuses_unparseable_input_without_saving(client, alice, flow):
    as_user(client, alice)
    url = f"/flows/{flow.code}/nodes/http_request_1/"
    before = actions.current_graph(flow)[1]
    response = client.post(url, {"url": "http://x", "expected_status": "two hundred", "method": "POST"},
                           HTTP_X_KWALA_REVISION=str(flow.revision))
    assert response.status_code == 422
    assert "Write whole numbers" in response.content.decode()
    assert actions.current_graph(flow)[1] == before


def test_the_inspector_with_a_stale_revision_shows_the_conflict(client, alice, flow):
    as_user(client, alice)
    response = client.post(f"/flows/{flow.code}/nodes/condition_1/", {"expression": "false"},
                           HTTP_X_KWALA_REVISION=str(flow.revision - 1))
    assert response.status_code == 409
    assert "changed elsewhere" in response.content.decode()


def test_the_abi_helper_lists_a_demo_contracts_events(client, alice, flow):
    as_user(client, alice)
    response = client.post(f"/flows/{flow.code}/abi/", {"kind": "event", "contract": "KwalaToken", "target": "id_event"})
    assert "Transfer(address indexed from, address indexed to, uint256 value)" in response.content.decode()
    response = client.post(f"/flows/{flow.code}/abi/", {"kind": "event", "abi": "[oops"})
    assert "not valid JSON" in response.content.decode()


def test_publish_reports_problems_then_publishes_and_unpublishes(alice, flow):
    browser = editor_session(alice)
    broken = sample_graph()
    broken["nodes"][2]["config"] = {}
    editor_api(browser, "put", f"/flows/{flow.code}/draft", {"graph": broken, "revision": flow.revision})
    flow.refresh_from_db()
    response = editor_api(browser, "post", f"/flows/{flow.code}/publish?revision={flow.revision}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "compile_error"
    assert response.json()["error"]["details"][0]["node_id"] == "http_request_1"
    editor_api(browser, "put", f"/flows/{flow.code}/draft", {"graph": sample_graph(), "revision": flow.revision})
    flow.refresh_from_db()
    response = editor_api(browser, "post", f"/flows/{flow.code}/publish?revision={flow.revision}")
    assert response.status_code == 200
    assert response.json()["number"] == 1 and response.json()["revision"] == flow.revision + 1
    assert actions.live_version(flow).number == 1
    assert editor_api(browser, "post", f"/flows/{flow.code}/unpublish").json()["live_version"] is None
    assert actions.live_version(flow) is None


def test_versions_show_a_diff_and_roll_back_into_the_draft(client, alice, flow):
    as_user(client, alice)
    actions.do_publish_version(flow, alice)
    changed = sample_graph()
    changed["nodes"][1]["config"] = {"expression": "false"}
    actions.do_save_draft(flow, alice, changed, revision=Flow.objects.get(pk=flow.pk).revision)
    page = client.get(f"/flows/{flow.code}/versions/?old=1&new=2").content.decode()
    assert "config.expression" in page and 'data-node="condition_1"' in page
    response = client.post(f"/flows/{flow.code}/versions/1/rollback/")
    assert response.status_code == 302
    assert actions.current_graph(flow)[1] == sample_graph()


def test_export_then_import_round_trips_the_graph(client, alice, flow):
    as_user(client, alice)
    text = client.get(f"/flows/{flow.code}/export.yaml").content.decode()
    actions.do_save_draft(flow, alice, {"nodes": [], "edges": []}, revision=Flow.objects.get(pk=flow.pk).revision)
    revision = Flow.objects.get(pk=flow.pk).revision
    response = client.post(f"/flows/{flow.code}/import/", {"format": "yaml", "text": text, "revision": revision})
    assert response.status_code == 302
    assert actions.current_graph(flow)[1] == sample_graph()
    bad = client.post(f"/flows/{flow.code}/import/", {"format": "yaml", "text": "nodes: [", "revision": revision + 1})
    assert bad.status_code == 422


def test_a_new_flow_opens_in_the_editor(client, bob, team):
    as_user(client, bob)
    response = client.post("/flows/new/", {"name": "Treasury alerts"})
    flow = Flow.objects.get(name="Treasury alerts", team=team)
    assert response["Location"] == f"/flows/{flow.code}/"
    assert FlowVersion.objects.filter(flow=flow, status=FlowVersion.Status.DRAFT).count() == 1


def test_the_dashboard_shows_last_run_and_success_rate(client, alice, flow, run):
    as_user(client, alice)
    page = client.get("/").content.decode()
    assert "Payments" in page and "Live v1" in page and "0% of 1" in page


def test_the_runs_list_filters_by_flow_and_status(client, alice, flow, run):
    as_user(client, alice)
    assert str(run.code)[:8] in client.get("/runs/?status=FAILED").content.decode()
    assert str(run.code)[:8] not in client.get("/runs/?status=SUCCEEDED").content.decode()
    assert str(run.code)[:8] not in client.get("/runs/?flow=nope").content.decode()


def test_the_run_state_and_step_details_come_from_the_database(client, alice, run):
    as_user(client, alice)
    state = client.get(f"/runs/{run.code}/state/").json()
    assert state["status"] == "FAILED"
    assert state["steps"]["http_request_1"] == {"status": "FAILED", "error": "refused", "duration_ms": None}
    step = client.get(f"/runs/{run.code}/steps/condition_1/").content.decode()
    assert "&quot;result&quot;: true" in step  # JSON, not Python's repr


def test_a_reorged_run_says_so(client, alice, run):
    as_user(client, alice)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.REORGED)
    page = client.get(f"/runs/{run.code}/").content.decode()
    assert "This run was reorged" in page
    assert 'id="reorg-banner" role="alert" hidden' not in page


# -- list settings edited as rows ------------------------------------------------------------

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
HOLDER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.fixture
def rows_flow(team, alice):
    local_chain()
    graph = {
        "nodes": [
            {"id": "on_transfer", "type": "chain.event", "position": {"x": 0, "y": 0},
             "config": {"chain": 31337, "event": TRANSFER,
                        "filters": [{"arg": "to", "op": "eq", "value": HOLDER}]}},
            {"id": "route", "type": "switch", "position": {"x": 300, "y": 0},
             "config": {"cases": [{"name": "big", "expression": "trigger.args.value > 100"},
                                  {"name": "small", "expression": "true"}]}},
        ],
        "edges": [{"id": "e1", "source": "on_transfer", "source_port": "out", "target": "route"}],
    }
    return actions.do_create_flow(team, alice, "Rows", graph=graph)


def cell(html: str, field: str) -> str:
    """The markup of one row input's cell, from its opening tag to the next cell."""
    start = html.index(f'data-field="{field}"')
    end = html.find('class="row-cell', start + 1)
    return unescape(html[start:end if end != -1 else None])


def node_config(flow, node_id: str) -> dict:
    flow.refresh_from_db()
    return next(n for n in actions.current_graph(flow)[1]["nodes"] if n["id"] == node_id)["config"]


def test_switch_cases_are_shown_as_rows_of_labelled_inputs(client, alice, rows_flow):
    as_user(client, alice)
    html = client.get(f"/flows/{rows_flow.code}/nodes/route/").content.decode()
    assert '<legend>Cases</legend>' in html
    assert 'name="cases-count" value="2"' in html
    assert 'name="cases-0-name" value="big"' in html
    assert 'name="cases-1-expression" value="true"' in html
    assert '<label for="id_cases-0-name">Case name</label>' in html
    assert "Add case" in html and 'aria-label="Remove case 2"' in html
    assert 'name="cases"' not in html  # no raw JSON text area any more


def test_adding_and_removing_a_row_redraws_the_form_and_saves_nothing(client, alice, rows_flow):
    as_user(client, alice)
    url = f"/flows/{rows_flow.code}/nodes/route/"
    before = node_config(rows_flow, "route")
    form = {"cases-count": "2", "cases-0-name": "big", "cases-0-expression": "x > 1",
            "cases-1-name": "small", "cases-1-expression": "true"}
    added = client.post(url, {**form, "_rows": "add:cases"}, HTTP_X_KWALA_REVISION=str(rows_flow.revision))
    assert added.status_code == 200
    html = added.content.decode()
    assert 'name="cases-count" value="3"' in html and 'name="cases-2-name"' in html
    assert 'name="cases-0-expression" value="x &gt; 1"' in html  # what was typed is kept

    removed = client.post(url, {**form, "_rows": "remove:cases:0"}, HTTP_X_KWALA_REVISION=str(rows_flow.revision))
    html = removed.content.decode()
    assert 'name="cases-count" value="1"' in html
    assert 'name="cases-0-name" value="small"' in html and 'name="cases-1-name"' not in html
    assert "HX-Trigger" not in removed
    assert node_config(rows_flow, "route") == before


def test_rows_are_saved_as_a_list_and_checked_by_the_node_type_inline(client, alice, rows_flow):
    as_user(client, alice)
    data = {"cases-count": "3", "cases-0-name": "big", "cases-0-expression": "x > 1",
            "cases-1-name": "", "cases-1-expression": "",  # left empty: dropped
            "cases-2-name": "big", "cases-2-expression": "true"}
    response = client.post(f"/flows/{rows_flow.code}/nodes/route/", data,
                           HTTP_X_KWALA_REVISION=str(rows_flow.revision))
    assert response.status_code == 200
    assert node_config(rows_flow, "route")["cases"] == [
        {"name": "big", "expression": "x > 1"}, {"name": "big", "expression": "true"},
    ]
    html = response.content.decode()
    assert "Case 'big' is listed twice" in cell(html, "cases-1-name")
    assert "listed twice" not in cell(html, "cases-0-name")
    assert "kwala:node-saved" in response["HX-Trigger"]


def test_event_filter_rows_take_plain_text_or_json_values(client, alice, rows_flow):
    as_user(client, alice)
    data = {"chain": "31337", "event": TRANSFER, "confirmations": "1",
            "filters-count": "3",
            "filters-0-arg": "to", "filters-0-op": "eq", "filters-0-value": HOLDER,
            "filters-1-arg": "value", "filters-1-op": "in", "filters-1-value": "[1, 2]",
            "filters-2-arg": "amount", "filters-2-op": "gt", "filters-2-value": "5"}
    response = client.post(f"/flows/{rows_flow.code}/nodes/on_transfer/", data,
                           HTTP_X_KWALA_REVISION=str(rows_flow.revision))
    assert response.status_code == 200
    filters = node_config(rows_flow, "on_transfer")["filters"]
    assert filters[0] == {"arg": "to", "op": "eq", "value": HOLDER}
    assert filters[1] == {"arg": "value", "op": "in", "value": [1, 2]}
    html = response.content.decode()
    assert "The event has no argument 'amount'" in cell(html, "filters-2-arg")
    assert 'name="filters-1-value" value="[1, 2]"' in html


def test_a_viewer_sees_rows_without_add_or_remove_buttons(client, viewer, rows_flow):
    as_user(client, viewer)
    html = client.get(f"/flows/{rows_flow.code}/nodes/route/").content.decode()
    assert 'name="cases-0-name" value="big"' in html
    assert "Add case" not in html and "row-remove" not in html
    response = client.post(f"/flows/{rows_flow.code}/nodes/route/", {"_rows": "add:cases"},
                           HTTP_X_KWALA_REVISION=str(rows_flow.revision))
    assert response.status_code == 404


def test_retrying_a_run_from_its_page_is_audited(client, alice, team, run):
    as_user(client, alice)
    response = client.post(f"/runs/{run.code}/retry/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status != Run.Status.FAILED
    (entry,) = audit.events_for(team, action="run.retried")
    assert (entry.actor, entry.target, entry.data) == (alice, str(run.code), {"flow": run.flow.code})


def test_a_viewer_sees_no_secret_names_in_the_side_panel_or_the_template_form(client, viewer, flow, team, alice):
    from flows.models import Secret

    for name in ("PROD_PAGERDUTY_KEY", "TREASURY_API"):
        secret = Secret(team=team, name=name)
        secret.set_value("x")
        secret.save()
    client.force_login(viewer)
    graph = actions.current_graph(flow)[1]
    for node in graph["nodes"]:
        page = client.get(f"/flows/{flow.code}/nodes/{node['id']}/").content.decode()
        assert "PROD_PAGERDUTY_KEY" not in page and "TREASURY_API" not in page
    page = client.get("/templates/erc20-whale-slack/").content.decode()
    assert "PROD_PAGERDUTY_KEY" not in page
    client.force_login(alice)  # an editor does see them, where a secret can be chosen
    pages = [client.get(f"/flows/{flow.code}/nodes/{n['id']}/").content.decode() for n in graph["nodes"]]
    assert any("PROD_PAGERDUTY_KEY" in page for page in pages)


def test_publishing_and_unpublishing_from_the_editor_are_audited_like_the_api(alice, flow):
    from flows.models import AuditEvent

    browser = editor_session(alice)
    team = flow.team.code
    assert editor_api(browser, "post", f"/flows/{flow.code}/publish?revision={flow.revision}", team=team).status_code == 200
    assert editor_api(browser, "post", f"/flows/{flow.code}/unpublish", team=team).status_code == 200
    entries = list(AuditEvent.objects.filter(target=flow.name).order_by("id").values_list("action", "actor_name", "data"))
    assert [(action, actor, data) for action, actor, data in entries] == [
        ("flow.created", "alice", {"flow": flow.code}),
        ("flow.published", "alice", {"flow": flow.code, "version": 1, "via": "api"}),
        ("flow.unpublished", "alice", {"flow": flow.code, "version": 1, "via": "api"})]


def test_deleting_a_flow_through_the_api_is_audited(alice, flow):
    from flows.models import AuditEvent
    from tests.team_fixtures import api_client

    assert api_client(alice).delete(f"/api/v1/flows/{flow.code}").status_code == 204
    assert AuditEvent.objects.filter(action="flow.deleted", data__flow=flow.code).exists()


def test_the_flows_list_sorts_names_regardless_of_case(client, alice, team):
    for name in ("Zeta watcher", "whale alert", "Alpha feed", "beta digest"):
        actions.do_create_flow(team, alice, name)
    as_user(client, alice)
    page = client.get("/").content.decode()
    positions = [page.index(name) for name in ("Alpha feed", "beta digest", "whale alert", "Zeta watcher")]
    assert positions == sorted(positions)


def test_the_editor_and_the_gallery_name_a_chain_the_same_way(client, alice, flow):
    from executor.models import Chain

    Chain.objects.update_or_create(chain_id=31337, defaults={"slug": "anvil-a", "name": "Anvil A (local)"})
    as_user(client, alice)
    watcher = actions.do_create_flow(flow.team, alice, "Watcher", graph={"nodes": [
        {"id": "t", "type": "chain.event", "config": {"chain": 31337}, "position": {"x": 0, "y": 0}}], "edges": []})
    inspector = client.get(f"/flows/{watcher.code}/nodes/t/").content.decode()
    template = client.get("/templates/erc20-whale-slack/").content.decode()
    assert ">Anvil A (local) (31337)<" in inspector and ">Anvil A (local) (31337)<" in template


def test_a_test_run_of_the_draft_is_labelled_draft_not_with_a_version_number(client, alice, flow, run):
    _, graph = actions.current_graph(flow)
    flow.refresh_from_db()
    draft = actions.do_save_draft(flow, alice, graph, revision=flow.revision)
    draft_run = Run.objects.create(team=flow.team, flow=flow, version=draft, trigger_key="test:draft", dry_run=True)
    assert draft.status == FlowVersion.Status.DRAFT and draft.number == 2
    as_user(client, alice)
    listed = client.get("/runs/").content.decode()
    detail = client.get(f"/runs/{draft_run.code}/").content.decode()
    assert "Payments draft" in listed and "Payments v2" not in listed
    assert "Payments v1" in listed  # the live run keeps its number
    assert "</a> draft</h1>" in detail


def test_chain_health_comes_before_the_flows_however_many_there_are(client, alice, flow):
    as_user(client, alice)
    page = client.get("/").content.decode()
    assert page.index('id="chains-h"') < page.index("<table")


def test_a_kwala_import_in_the_editor_shows_what_does_not_map(client, alice, flow):
    from pathlib import Path

    kwala = Path(__file__).parent / "kwala"
    as_user(client, alice)
    revision = Flow.objects.get(pk=flow.pk).revision
    text = (kwala / "dao_vote_every_field.yaml").read_text().replace("11155111", "31337")
    response = client.post(f"/flows/{flow.code}/import/", {"format": "kwala", "text": text, "revision": revision},
                           follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == f"/flows/{flow.code}/"
    assert "Imported into the draft." in page and "message-warning" in page and "marks no argument" in page
    bad = client.post(f"/flows/{flow.code}/import/", {
        "format": "kwala", "revision": revision + 1,
        "text": (kwala / "many_problems.yaml").read_text()})
    content = bad.content.decode()
    assert bad.status_code == 422 and 'class="form-error"' in content and 'class="form-note"' in content
    assert "problems:<br>  Line 4:" in content  # one problem a line


def test_the_editor_gets_the_node_id_rule_and_palette_sections_from_the_server(client, alice, flow):
    import re

    from flows.graph import NODE_ID_PATTERN, schema_problems

    page = as_user(client, alice).get(f"/flows/{flow.code}/")

    rules = json.loads(unescape(re.search(r'id="flow-rules" type="application/json">(.*?)</script>',
                                          page.content.decode()).group(1)))
    assert rules["node_id_pattern"] == NODE_ID_PATTERN
    # The rule the browser numbers new nodes by is the one the schema checks a saved graph with.
    browser_rule = re.compile(rules["node_id_pattern"])
    for candidate in ("http_request_1", "_x", "1abc", "a-b", "a" * 64, "a" * 65, "ok\n"):
        node = {"id": candidate, "type": "manual", "config": {}}
        accepted = not schema_problems({"nodes": [node], "edges": []})
        assert bool(browser_rule.search(candidate)) == accepted, candidate
    palette_order = list(dict.fromkeys(e["category"] for e in page.context["catalogue"]))
    assert [c["key"] for c in rules["categories"]] == palette_order
    assert [c["label"] for c in rules["categories"]] == ["Triggers", "Logic", "Actions"]
