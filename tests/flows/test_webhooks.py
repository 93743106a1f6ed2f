"""Inbound webhooks: signatures, repeats, and flows that do not listen."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.test import Client

from executor.models import Run
from flows.actions import do_create_flow, do_publish_version, do_rotate_webhook_token, webhook_path
from flows.models import AuditEvent, Secret
from tests.team_fixtures import api_client

SECRET = "hook-signing-secret"


def hook_graph(verification: str = "hmac-sha256") -> dict:
    return {
        "nodes": [
            {"id": "hook", "type": "webhook", "position": {"x": 0, "y": 0},
             "config": {"verification": verification, "secret": "HOOK" if verification != "none" else "",
                        "signature_header": "X-Signature-256"}},
            {"id": "h", "type": "http.request", "position": {"x": 0, "y": 100},
             "config": {"url": "https://example.com/x"}},
        ],
        "edges": [{"source": "hook", "source_port": "out", "target": "h"}],
    }


@pytest.fixture
def hooked(alice, team):
    secret = Secret(team=team, name="HOOK")
    secret.set_value(SECRET)
    secret.save()
    flow = do_create_flow(team, alice, "Hooked", graph=hook_graph())
    do_publish_version(flow, alice)
    return flow


def post(flow, payload: dict, signature: str | None = None, **headers):
    raw = json.dumps(payload).encode()
    if signature is None:
        signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return Client().post(f"{webhook_path(flow, flow.created_by)}?source=test", raw, content_type="application/json",
                         HTTP_X_SIGNATURE_256=signature, **headers)


def test_a_signed_request_starts_a_run_with_its_body_headers_and_query(hooked):
    response = post(hooked, {"message": "hello"}, HTTP_AUTHORIZATION="Bearer private")
    assert response.status_code == 202, response.content
    run = Run.objects.get(code=response.json()["run"])
    assert run.trigger["body"] == {"message": "hello"} and run.trigger["query"] == {"source": "test"}
    assert run.trigger["method"] == "POST" and "authorization" not in run.trigger["headers"]
    # Stored, claimed and started before the answer; its side effect waits for a worker.
    assert run.status == Run.Status.RUNNING
    assert list(run.steps.values_list("step_id", "status")) == [("h", "QUEUED")]
    assert [e.data["status"] for e in run.log.order_by("seq")] == ["RUNNING", "QUEUED"]


def test_a_bad_or_missing_signature_is_a_401_and_starts_nothing(hooked):
    assert post(hooked, {"message": "x"}, signature="sha256=" + "0" * 64).status_code == 401
    assert post(hooked, {"message": "x"}, signature="").status_code == 401
    assert not Run.objects.exists()


def test_a_repeated_delivery_with_the_same_id_is_one_run(hooked):
    first = post(hooked, {"n": 1}, HTTP_IDEMPOTENCY_KEY="delivery-1").json()["run"]
    again = post(hooked, {"n": 1}, HTTP_IDEMPOTENCY_KEY="delivery-1").json()["run"]
    assert first == again and Run.objects.count() == 1


def test_paused_unpublished_and_unknown_flows_do_not_listen(hooked, alice, team):
    other = do_create_flow(team, alice, "Manual", graph={"nodes": [{"id": "t", "type": "manual", "config": {}}],
                                                      "edges": []})
    assert post(other, {}).status_code == 404
    hooked.paused = True
    hooked.save(update_fields=["paused"])
    assert post(hooked, {}).status_code == 404
    assert Client().post("/hooks/nope/x/", b"{}", content_type="application/json").status_code == 404
    assert Client().get(webhook_path(hooked, hooked.created_by)).status_code == 405
    assert not Run.objects.exists()


def test_an_unverified_webhook_accepts_anyone_with_the_url(alice, team):
    flow = do_create_flow(team, alice, "Open", graph=hook_graph("none"))
    do_publish_version(flow, alice)
    response = Client().post(webhook_path(flow, alice), "plain text", content_type="text/plain")
    assert response.status_code == 202 and Run.objects.get().trigger["body"] == "plain text"


# -- the URL's token ------------------------------------------------------------------------------


@pytest.fixture
def open_hook(alice, team):
    flow = do_create_flow(team, alice, "Open", graph=hook_graph("none"))
    do_publish_version(flow, alice)
    return flow


def test_the_flow_code_alone_or_a_wrong_token_opens_nothing(open_hook, alice):
    webhook_path(open_hook, alice)
    for path in (f"/hooks/{open_hook.code}/", f"/hooks/{open_hook.code}/not-the-token/"):
        response = Client().post(path, b"{}", content_type="application/json")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert not Run.objects.exists()


def test_only_editors_can_read_the_webhook_url(open_hook, alice, make_member):
    bob = make_member("VIEWER")
    assert api_client(bob).get(f"/api/v1/flows/{open_hook.code}/webhook").status_code == 403
    assert api_client(bob).post(f"/api/v1/flows/{open_hook.code}/webhook/rotate").status_code == 403
    url = api_client(alice).get(f"/api/v1/flows/{open_hook.code}/webhook").json()["url"]
    open_hook.refresh_from_db()
    assert url.endswith(f"/hooks/{open_hook.code}/{open_hook.webhook_token()}/")
    viewer = Client()
    viewer.force_login(bob)
    page = viewer.get(f"/flows/{open_hook.code}/nodes/hook/").content.decode()
    assert open_hook.webhook_token() not in page and "Webhook URL" not in page
    assert viewer.post(f"/flows/{open_hook.code}/webhook-token/", {"rotate": "1"}).status_code == 404
    editor = Client()
    editor.force_login(alice)
    assert open_hook.webhook_token() in editor.get(f"/flows/{open_hook.code}/nodes/hook/").content.decode()


def test_rotating_the_token_kills_the_old_url_at_once_and_is_audited(open_hook, alice):
    old = webhook_path(open_hook, alice)
    assert Client().post(old, b"{}", content_type="application/json").status_code == 202
    do_rotate_webhook_token(open_hook, alice)
    open_hook.refresh_from_db()
    assert Client().post(old, b"{}", content_type="application/json").status_code == 404
    assert Client().post(webhook_path(open_hook, alice), b"{}", content_type="application/json").status_code == 202
    assert AuditEvent.objects.filter(action="flow.webhook_token_rotated", target=open_hook.code).count() == 2
    assert open_hook.webhook_token() not in json.dumps(list(AuditEvent.objects.values("data")))


def test_a_captured_signed_request_replayed_with_a_fresh_idempotency_key_starts_no_second_run(hooked):
    first = post(hooked, {"pay": 1}, HTTP_IDEMPOTENCY_KEY="a")
    again = post(hooked, {"pay": 1}, HTTP_IDEMPOTENCY_KEY="b")
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["run"] == first.json()["run"] and again.json()["repeat"] is True
    assert Run.objects.count() == 1


def test_hmac_with_a_signed_timestamp_refuses_stale_or_unsigned_times(alice, team):
    import time

    secret = Secret(team=team, name="HOOK")
    secret.set_value(SECRET)
    secret.save()
    graph = hook_graph()
    graph["nodes"][0]["config"]["timestamp_header"] = "X-Timestamp"
    flow = do_create_flow(team, alice, "Stamped", graph=graph)
    do_publish_version(flow, alice)
    raw = b'{"n": 1}'

    def send(stamp: int, signed_stamp: int | None = None):
        signed = f"{stamp if signed_stamp is None else signed_stamp}.".encode() + raw
        digest = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        return Client().post(webhook_path(flow, alice), raw, content_type="application/json",
                             HTTP_X_SIGNATURE_256=f"sha256={digest}", HTTP_X_TIMESTAMP=str(stamp))

    now = int(time.time())
    assert send(now).status_code == 202
    assert send(now - 3600).status_code == 401  # captured an hour ago
    assert send(now, signed_stamp=now - 1).status_code == 401  # a time the signature does not cover
    assert Run.objects.count() == 1


def test_a_flow_over_its_team_s_webhook_rate_gets_429_with_retry_after(open_hook, alice, team):
    team.webhook_rate_per_minute = 3
    team.save(update_fields=["webhook_rate_per_minute"])
    path = webhook_path(open_hook, alice)
    statuses = [Client().post(path, b"{}", content_type="application/json").status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    refused = Client().post(path, b"{}", content_type="application/json")
    assert refused.status_code == 429 and 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["error"]["code"] == "rate_limited"
    assert Run.objects.filter(flow=open_hook).count() == 3
