"""Inbound webhooks: signatures, repeats, and flows that do not listen."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from django.test import Client

from executor.models import Run
from flows.actions import create_flow, publish_version
from flows.models import Secret

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
    flow = create_flow(team, alice, "Hooked", graph=hook_graph())
    publish_version(flow, alice)
    return flow


def post(flow, payload: dict, signature: str | None = None, **headers):
    raw = json.dumps(payload).encode()
    if signature is None:
        signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return Client().post(f"/hooks/{flow.code}/?source=test", raw, content_type="application/json",
                         HTTP_X_SIGNATURE_256=signature, **headers)


def test_a_signed_request_starts_a_run_with_its_body_headers_and_query(hooked):
    response = post(hooked, {"message": "hello"}, HTTP_AUTHORIZATION="Bearer private")
    assert response.status_code == 202, response.content
    run = Run.objects.get(code=response.json()["run"])
    assert run.trigger["body"] == {"message": "hello"} and run.trigger["query"] == {"source": "test"}
    assert run.trigger["method"] == "POST" and "authorization" not in run.trigger["headers"]
    assert run.status == Run.Status.QUEUED


def test_a_bad_or_missing_signature_is_a_401_and_starts_nothing(hooked):
    assert post(hooked, {"message": "x"}, signature="sha256=" + "0" * 64).status_code == 401
    assert post(hooked, {"message": "x"}, signature="").status_code == 401
    assert not Run.objects.exists()


def test_a_repeated_delivery_with_the_same_id_is_one_run(hooked):
    first = post(hooked, {"n": 1}, HTTP_IDEMPOTENCY_KEY="delivery-1").json()["run"]
    again = post(hooked, {"n": 1}, HTTP_IDEMPOTENCY_KEY="delivery-1").json()["run"]
    assert first == again and Run.objects.count() == 1


def test_paused_unpublished_and_unknown_flows_do_not_listen(hooked, alice, team):
    other = create_flow(team, alice, "Manual", graph={"nodes": [{"id": "t", "type": "manual", "config": {}}],
                                                      "edges": []})
    assert post(other, {}).status_code == 404
    hooked.paused = True
    hooked.save(update_fields=["paused"])
    assert post(hooked, {}).status_code == 404
    assert Client().post("/hooks/nope/", b"{}", content_type="application/json").status_code == 404
    assert Client().get(f"/hooks/{hooked.code}/").status_code == 405
    assert not Run.objects.exists()


def test_an_unverified_webhook_accepts_anyone_with_the_url(alice, team):
    flow = create_flow(team, alice, "Open", graph=hook_graph("none"))
    publish_version(flow, alice)
    response = Client().post(f"/hooks/{flow.code}/", "plain text", content_type="text/plain")
    assert response.status_code == 202 and Run.objects.get().trigger["body"] == "plain text"
