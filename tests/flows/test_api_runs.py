"""The runs API: manual and test runs, retry, re-run from a step, replay and backtest over blocks."""

from __future__ import annotations

import json
import time

import pytest

from executor.models import Chain, RpcEndpoint, Run, StepRun
from flows.actions import do_create_flow, do_publish_version, do_save_draft
from flows.models import AuditEvent
from kwala_site.dev.devchain import DEV_ACCOUNTS, load_artifact
from tests.flows.test_api import assert_error, body
from tests.team_fixtures import api_client, logged_in

S = StepRun.Status


def graph(url: str = "https://example.com/hook", trigger: dict | None = None) -> dict:
    trigger = trigger or {"id": "t", "type": "manual", "config": {}, "position": {"x": 0, "y": 0}}
    return {
        "nodes": [
            trigger,
            {"id": "h", "type": "http.request", "position": {"x": 0, "y": 100},
             "config": {"method": "POST", "url": url, "body": {"amount": "{{ trigger.payload.amount }}"}}},
        ],
        "edges": [{"source": trigger["id"], "source_port": "out", "target": "h"}],
    }


@pytest.fixture
def live_flow(alice, team):
    flow = do_create_flow(team, alice, "Manual hook", graph=graph())
    do_publish_version(flow, alice)
    return flow


def failed_run(flow) -> Run:
    """A run as the worker leaves it when its only step failed for good."""
    version = flow.versions.get(status="PUBLISHED")
    run = Run.objects.create(team=flow.team, flow=flow, version=version, trigger_key="manual:failed",
                             trigger={"type": "manual", "payload": {}}, status=Run.Status.FAILED, error="h failed")
    StepRun.objects.create(run=run, step_id="h", status=S.FAILED, attempt=3, error="HTTP 500")
    return run


# -- starting runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("role,status", [("OWNER", 201), ("ADMIN", 201), ("EDITOR", 201), ("VIEWER", 403),
                                         ("OUTSIDER", 404)])
def test_editors_and_up_start_runs_viewers_may_not_and_outsiders_see_nothing(role, status, users_by_role, live_flow):
    response = api_client(users_by_role[role]).post(
        f"/api/v1/flows/{live_flow.code}/runs", {"payload": {"amount": 5}}, content_type="application/json"
    )
    assert response.status_code == status, response.content
    if status == 201:
        data = body(response)
        run = Run.objects.get(code=data["code"])
        assert (data["status"], data["dry_run"], data["version"]) == ("QUEUED", False, 1)
        assert run.trigger["payload"] == {"amount": 5} and run.created_by == users_by_role[role]
    else:
        assert not Run.objects.exists()


def test_a_viewer_can_read_runs_but_not_change_them(users_by_role, live_flow):
    run = failed_run(live_flow)
    viewer = api_client(users_by_role["VIEWER"])
    assert body(viewer.get(f"/api/v1/runs/{run.code}"))["steps"][0]["status"] == "FAILED"
    assert_error(viewer.post(f"/api/v1/runs/{run.code}/retry"), 403, "forbidden")
    assert_error(viewer.post(f"/api/v1/runs/{run.code}/rerun", {"step_id": "h"}, content_type="application/json"),
                 403, "forbidden")
    assert_error(viewer.post(f"/api/v1/flows/{live_flow.code}/replay", {"from_block": 0, "to_block": 1},
                             content_type="application/json"), 403, "forbidden")
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED and Run.objects.count() == 1


def test_a_dry_run_is_marked_as_such(alice, live_flow):
    data = body(api_client(alice).post(f"/api/v1/flows/{live_flow.code}/runs", {"dry_run": True},
                                       content_type="application/json"))
    assert data["dry_run"] is True and Run.objects.get(code=data["code"]).dry_run


def test_a_run_started_by_hand_is_audited_and_a_dry_run_is_not(alice, live_flow, team):
    client = api_client(alice)
    real = body(client.post(f"/api/v1/flows/{live_flow.code}/runs", {}, content_type="application/json"))
    client.post(f"/api/v1/flows/{live_flow.code}/runs", {"dry_run": True}, content_type="application/json")
    entry = AuditEvent.objects.get(team=team, action="run.started")
    assert (entry.actor, entry.target) == (alice, real["code"])
    assert entry.data == {"flow": live_flow.code, "version": 1}


def test_an_unpublished_flow_runs_only_as_a_draft_test_run(alice, team):
    flow = do_create_flow(team, alice, "Draft only", graph=graph())
    client = api_client(alice)
    error = assert_error(client.post(f"/api/v1/flows/{flow.code}/runs", {}, content_type="application/json"),
                         409, "not_published")
    assert "draft" in error["message"]
    data = body(client.post(f"/api/v1/flows/{flow.code}/runs", {"draft": True, "dry_run": True},
                            content_type="application/json"))
    run = Run.objects.get(code=data["code"])
    assert run.version.status == "DRAFT" and run.version.dag["steps"][0]["id"] == "h"


def test_a_draft_test_run_uses_the_draft_not_the_live_version(alice, live_flow):
    do_save_draft(live_flow, alice, graph("https://example.com/changed"), revision=live_flow.revision)
    data = body(api_client(alice).post(f"/api/v1/flows/{live_flow.code}/runs", {"draft": True},
                                       content_type="application/json"))
    run = Run.objects.get(code=data["code"])
    assert data["version"] == 2 and run.version.dag["steps"][0]["config"]["url"] == "https://example.com/changed"


def test_a_draft_that_does_not_compile_is_a_422_listing_its_problems(alice, live_flow):
    broken = {"nodes": [{"id": "h", "type": "http.request", "config": {}}], "edges": []}
    do_save_draft(live_flow, alice, broken, revision=live_flow.revision)
    error = assert_error(api_client(alice).post(f"/api/v1/flows/{live_flow.code}/runs", {"draft": True},
                                                content_type="application/json"), 422, "compile_error")
    assert error["details"] and not Run.objects.exists()


@pytest.mark.parametrize("payload", [{"payload": [1, 2]}, {"payload": "x"}, {"dry_run": "maybe"},
                                     {"payload": {"a": "\x00"}}])
def test_a_bad_run_request_is_a_422_and_starts_nothing(alice, live_flow, payload):
    response = api_client(alice).post(f"/api/v1/flows/{live_flow.code}/runs", json.dumps(payload),
                                      content_type="application/json")
    assert_error(response, 422, "validation_error")
    assert not Run.objects.exists()


# -- retry and re-run ------------------------------------------------------------------------------


def test_retrying_a_failed_run_requeues_its_failed_steps_and_is_audited(alice, live_flow, team):
    run = failed_run(live_flow)
    data = body(api_client(alice).post(f"/api/v1/runs/{run.code}/retry"))
    assert data["status"] == "RUNNING" and data["error"] == ""
    step = run.steps.get()
    assert (step.status, step.attempt, step.error) == (S.QUEUED, 0, "")
    entry = AuditEvent.objects.get(team=team, action="run.retried")
    assert entry.target == str(run.code) and entry.data["flow"] == live_flow.code


def test_only_a_failed_run_can_be_retried(alice, live_flow):
    run = failed_run(live_flow)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    error = assert_error(api_client(alice).post(f"/api/v1/runs/{run.code}/retry"), 409, "run_error")
    assert "failed" in error["message"]
    assert not AuditEvent.objects.filter(action="run.retried").exists()


def test_rerunning_from_a_step_creates_a_new_run_of_the_same_trigger(alice, live_flow):
    run = failed_run(live_flow)
    response = api_client(alice).post(f"/api/v1/runs/{run.code}/rerun", {"step_id": "h"},
                                      content_type="application/json")
    assert response.status_code == 201, response.content
    new = Run.objects.get(code=body(response)["code"])
    assert new.pk != run.pk and new.trigger == run.trigger and new.created_by == alice
    assert new.steps.get().status == S.QUEUED
    entry = AuditEvent.objects.get(action="run.rerun")
    assert (entry.team, entry.actor, entry.target) == (live_flow.team, alice, str(new.code))
    assert entry.data == {"flow": live_flow.code, "rerun_of": str(run.code), "from_step": "h"}


def test_rerunning_from_an_unknown_step_is_a_clear_409(alice, live_flow):
    run = failed_run(live_flow)
    error = assert_error(api_client(alice).post(f"/api/v1/runs/{run.code}/rerun", {"step_id": "nope"},
                                                content_type="application/json"), 409, "run_error")
    assert "nope" in error["message"] and Run.objects.count() == 1
    assert not AuditEvent.objects.filter(action="run.rerun").exists()


def test_rerunning_from_a_step_that_was_skipped_is_refused_and_the_page_does_not_offer_it(alice, live_flow):
    run = failed_run(live_flow)
    run.steps.filter(step_id="h").update(status=S.SKIPPED, error="")
    error = assert_error(api_client(alice).post(f"/api/v1/runs/{run.code}/rerun", {"step_id": "h"},
                                                content_type="application/json"), 409, "run_error")
    assert "did not run" in error["message"] and Run.objects.count() == 1
    page = logged_in(alice).get(f"/runs/{run.code}/steps/h/").content.decode()
    assert "Re-run from this step" not in page
    run.steps.filter(step_id="h").update(status=S.FAILED)
    assert "Re-run from this step" in logged_in(alice).get(f"/runs/{run.code}/steps/h/").content.decode()


def test_another_teams_run_cannot_be_retried_or_rerun(alice, charlie, live_flow):
    run = failed_run(live_flow)
    outsider = api_client(charlie)
    assert_error(outsider.post(f"/api/v1/runs/{run.code}/retry"), 404, "run_not_found")
    assert_error(outsider.post(f"/api/v1/runs/{run.code}/rerun", {"step_id": "h"}, content_type="application/json"),
                 404, "run_not_found")
    assert_error(outsider.post("/api/v1/runs/not-a-uuid/retry"), 404, "run_not_found")
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED


# -- replay ----------------------------------------------------------------------------------------


def test_replaying_a_flow_that_is_not_event_triggered_is_a_422(alice, live_flow):
    error = assert_error(api_client(alice).post(f"/api/v1/flows/{live_flow.code}/replay",
                                                {"from_block": 0, "to_block": 10}, content_type="application/json"),
                         422, "replay_error")
    assert "contract event" in error["message"]


def test_replaying_an_unpublished_flow_is_a_409(alice, team):
    flow = do_create_flow(team, alice, "Draft", graph=graph())
    assert_error(api_client(alice).post(f"/api/v1/flows/{flow.code}/replay", {"from_block": 0, "to_block": 1},
                                        content_type="application/json"), 409, "not_published")


def test_a_negative_block_is_a_validation_error(alice, live_flow):
    assert_error(api_client(alice).post(f"/api/v1/flows/{live_flow.code}/replay", {"from_block": -1, "to_block": 1},
                                        content_type="application/json"), 422, "validation_error")


def test_the_run_endpoints_are_in_the_openapi_schema(client, db):
    paths = body(client.get("/api/v1/openapi.json"))["paths"]
    for path in ["/api/v1/flows/{code}/runs", "/api/v1/flows/{code}/replay", "/api/v1/runs/{code}/retry",
                 "/api/v1/runs/{code}/rerun"]:
        assert "post" in paths[path], path


# -- for real: a worker, the HTTP sink and anvil ------------------------------------------------------


@pytest.fixture(scope="module")
def worker(child_env, service_logs):
    """A worker for this module only: a session worker left running would take later modules' messages."""
    from tests.conftest import start_worker

    process = start_worker(child_env, service_logs, "api-runs-worker")
    yield process
    process.stop()


def wait_for_runs(codes: list[str], timeout: float = 30) -> list[Run]:
    import time

    deadline = time.monotonic() + timeout
    while True:
        runs = list(Run.objects.filter(code__in=codes).order_by("block_number", "pk"))
        if len(runs) == len(codes) and all(r.status in Run.FINISHED for r in runs):
            return runs
        if time.monotonic() > deadline:
            raise TimeoutError([(r.code, r.status) for r in runs])
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_an_api_run_calls_the_sink_and_an_api_dry_run_only_records_what_it_would_send(
    worker, http_sink, alice, team
):
    flow = do_create_flow(team, alice, "Hook", graph=graph(f"{http_sink.url}/api-run"))
    do_publish_version(flow, alice)
    client = api_client(alice)
    real = body(client.post(f"/api/v1/flows/{flow.code}/runs", {"payload": {"amount": 7}},
                            content_type="application/json"))
    dry = body(client.post(f"/api/v1/flows/{flow.code}/runs", {"payload": {"amount": 8}, "dry_run": True},
                           content_type="application/json"))
    real_run, dry_run = wait_for_runs([real["code"], dry["code"]])
    assert real_run.status == dry_run.status == Run.Status.SUCCEEDED
    assert [r.json() for r in http_sink.to("/api-run")] == [{"amount": 7}]
    would = dry_run.steps.get().output
    assert would["dry_run"] is True and "8" in json.dumps(would["would_send"])
    assert body(client.get(f"/api/v1/runs/{real['code']}"))["steps"][0]["status"] == "SUCCEEDED"


@pytest.mark.django_db(transaction=True)
def test_a_backtest_runs_past_transfers_without_side_effects_and_a_live_replay_runs_each_once(
    worker, http_sink, alice, charlie, team, anvil_a, w3_a, demo_contracts_a
):
    chain = Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)
    RpcEndpoint.objects.create(chain=chain, url=anvil_a.http_url)
    token = w3_a.eth.contract(address=demo_contracts_a["KwalaToken"], abi=load_artifact("KwalaToken")["abi"])
    trigger = {"id": "tr", "type": "chain.event", "position": {"x": 0, "y": 0},
               "config": {"chain": 31337, "addresses": [token.address],
                          "event": "Transfer(address indexed from, address indexed to, uint256 value)"}}
    hook = graph(f"{http_sink.url}/replayed", trigger)
    hook["nodes"][1]["config"]["body"] = {"value": "{{ trigger.args.value }}"}
    flow = do_create_flow(team, alice, "Transfers", graph=hook)
    do_publish_version(flow, alice)
    first = w3_a.eth.block_number + 1
    for amount in (11, 12, 13):
        tx = token.functions.mint(DEV_ACCOUNTS[2].address, amount).transact({"from": DEV_ACCOUNTS[0].address})
        w3_a.eth.wait_for_transaction_receipt(tx, poll_latency=0.01)
    last = w3_a.eth.block_number
    client = api_client(alice)
    span = {"from_block": first, "to_block": last}

    def replayed(**request) -> dict:
        """POST a replay (answered at once, 202: a worker reads the blocks) and follow its job to the end."""
        response = client.post(f"/api/v1/flows/{flow.code}/replay", request, content_type="application/json")
        assert response.status_code == 202, response.content
        job = response.json()
        assert job["status"] == "QUEUED" and job["runs"] == []
        deadline = time.monotonic() + 60
        while job["status"] in ("QUEUED", "RUNNING"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
            job = body(client.get(f"/api/v1/replays/{job['job']}"))
        return job

    backtest = replayed(**span, dry_run=True)
    assert (backtest["status"], backtest["matched"], len(backtest["runs"]), backtest["dry_run"]) == (
        "SUCCEEDED", 3, 3, True)
    runs = wait_for_runs(backtest["runs"])
    assert all(r.status == Run.Status.SUCCEEDED and r.dry_run for r in runs)
    assert [json.loads(r.steps.get().output["would_send"]["body"]) for r in runs] == [
        {"value": 11}, {"value": 12}, {"value": 13}]
    assert http_sink.to("/replayed") == []

    live = replayed(**span, dry_run=False)
    assert len(live["runs"]) == 3
    wait_for_runs(live["runs"])
    assert sorted(r.json()["value"] for r in http_sink.wait_for("/replayed", 3)) == [11, 12, 13]
    again = replayed(**span, dry_run=False)
    assert again["runs"] == [] and again["matched"] == 3
    assert AuditEvent.objects.filter(team=team, action="flow.replayed").count() == 3

    beyond = replayed(from_block=last, to_block=last + 50)
    assert beyond["status"] == "FAILED" and "beyond the chain head" in beyond["error"]
    # Another team cannot follow the job.
    assert_error(api_client(charlie).get(f"/api/v1/replays/{beyond['job']}"), 404, "replay_not_found")
