"""Hostile or broken requests get a clear 4xx in the documented error format, never a 500."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from flows.actions import do_create_flow, do_publish_version, webhook_path
from tests.flows.test_webhooks import hook_graph, hooked  # noqa: F401 (a fixture)
from tests.team_fixtures import api_client


def error_of(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return response.json()["error"]


def test_a_5_mb_body_to_the_api_is_a_413(alice):
    body = json.dumps({"name": "x" * (5 * 1024 * 1024), "graph": {"nodes": [], "edges": []}})
    response = api_client(alice).post("/api/v1/flows", body, content_type="application/json")
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"


def test_deeply_nested_json_to_the_api_is_a_400(alice):
    body = "[" * 100_000 + "]" * 100_000
    response = api_client(alice).post("/api/v1/flows", body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] in ("invalid_body", "too_deep")


def test_deeply_nested_yaml_to_the_import_is_a_400(alice):
    text = "name: x\ngraph: " + "[" * 50_000 + "]" * 50_000 + "\n"
    response = api_client(alice).post("/api/v1/flows/import", {"yaml": text}, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_yaml"


def test_a_non_ascii_signature_header_is_a_401(hooked):  # noqa: F811
    response = Client().post(webhook_path(hooked, hooked.created_by), b"{}", content_type="application/json",
                             HTTP_X_SIGNATURE_256="sha256=é" + "0" * 63)
    assert response.status_code == 401
    assert error_of(response)["code"] == "bad_signature"


@pytest.fixture
def open_hook(alice, team):
    flow = do_create_flow(team, alice, "Open hook", graph=hook_graph("none"))
    do_publish_version(flow, alice)
    return flow


def test_deeply_nested_json_to_a_webhook_is_a_400(open_hook):
    body = ("[" * 100_000 + "]" * 100_000).encode()
    response = Client().post(webhook_path(open_hook, open_hook.created_by), body, content_type="application/json")
    assert response.status_code == 400
    assert error_of(response)["code"] == "too_deep"
