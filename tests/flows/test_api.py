from __future__ import annotations

import json

import pytest
from django.test import Client, override_settings

from flows import audit
from flows.actions import do_create_flow, do_publish_version
from flows.models import ApiToken, Flow, Membership, Secret, SignerKey
from tests.team_fixtures import ROLES, api_client, logged_in, token_for

GRAPH = {
    "nodes": [
        {"id": "t", "type": "manual", "config": {}, "position": {"x": 0, "y": 0}},
        {"id": "h", "type": "http.request", "config": {"url": "https://example.com/hook"}, "position": {"x": 0, "y": 100}},
    ],
    "edges": [{"source": "t", "source_port": "out", "target": "h"}],
}
BROKEN = {"nodes": [{"id": "h", "type": "http.request", "config": {}}], "edges": []}


def body(response) -> dict:
    return json.loads(response.content)


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    data = body(response)
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "details"}
    assert data["error"]["code"] == code, data
    return data["error"]


@pytest.fixture
def flow(alice, team):
    return do_create_flow(team, alice, "Hook", graph=GRAPH)


def test_the_openapi_schema_and_docs_are_served(client, db):
    schema = body(client.get("/api/v1/openapi.json"))
    assert "/api/v1/flows" in schema["paths"] and "/api/v1/secrets/{name}" in schema["paths"]
    assert client.get("/api/v1/docs").status_code == 200


def test_no_token_is_a_401_in_the_error_format(client, db):
    assert_error(client.get("/api/v1/flows"), 401, "unauthorized")
    assert_error(Client(HTTP_AUTHORIZATION="Bearer kwl_nope").get("/api/v1/flows"), 401, "unauthorized")


def test_a_token_lists_its_teams_flows_and_records_its_use(alice, flow, team):
    client = api_client(alice)
    data = body(client.get("/api/v1/flows"))
    assert data["count"] == 1 and data["items"][0]["code"] == flow.code
    assert ApiToken.objects.get(user=alice).last_used_at is not None


def test_flows_are_paginated(alice, team):
    for i in range(5):
        do_create_flow(team, alice, f"Flow {i}")
    data = body(api_client(alice).get("/api/v1/flows", {"limit": 2, "offset": 2}))
    assert data["count"] == 5 and [f["name"] for f in data["items"]] == ["Flow 2", "Flow 3"]


def test_an_outsider_never_sees_another_teams_flow_even_with_its_code(charlie, flow):
    client = api_client(charlie)
    assert body(client.get("/api/v1/flows"))["count"] == 0
    for method, path in [
        ("get", f"/api/v1/flows/{flow.code}"),
        ("post", f"/api/v1/flows/{flow.code}/publish"),
        ("get", f"/api/v1/flows/{flow.code}/versions"),
        ("get", f"/api/v1/flows/{flow.code}/export"),
        ("delete", f"/api/v1/flows/{flow.code}"),
    ]:
        assert_error(getattr(client, method)(path, content_type="application/json"), 404, "flow_not_found")
    assert Flow.objects.filter(pk=flow.pk).exists()


def test_publish_and_unpublish_are_audited(alice, flow, team):
    client = api_client(alice)
    response = client.post(f"/api/v1/flows/{flow.code}/publish", content_type="application/json")
    assert response.status_code == 200 and body(response)["status"] == "PUBLISHED"
    assert body(client.post(f"/api/v1/flows/{flow.code}/unpublish"))["live_version"] is None
    actions = [e.action for e in audit.events_for(team, action="flow.")]
    assert actions == ["flow.unpublished", "flow.published", "flow.created"]
    assert_error(client.post(f"/api/v1/flows/{flow.code}/unpublish"), 409, "not_published")


def test_publishing_a_broken_draft_returns_every_node_problem(alice, team):
    flow = do_create_flow(team, alice, "Broken", graph=BROKEN)
    error = assert_error(api_client(alice).post(f"/api/v1/flows/{flow.code}/publish"), 422, "compile_error")
    assert error["details"] and all({"node_id", "field", "message"} <= set(p) for p in error["details"])
    assert {"node_id": "h", "field": "url"}.items() <= next(p for p in error["details"] if p["field"] == "url").items()


def test_a_stale_revision_is_a_409_conflict(alice, flow):
    client = api_client(alice)
    ok = client.put(f"/api/v1/flows/{flow.code}/draft", {"graph": GRAPH, "revision": 1}, content_type="application/json")
    assert ok.status_code == 200
    error = assert_error(
        client.put(f"/api/v1/flows/{flow.code}/draft", {"graph": GRAPH, "revision": 1}, content_type="application/json"),
        409, "conflict",
    )
    assert error["details"] == [{"current_revision": 2}]


def test_a_validation_error_is_a_422_in_the_error_format(alice, db):
    error = assert_error(api_client(alice).post("/api/v1/flows", {"name": ""}, content_type="application/json"),
                         422, "validation_error")
    assert error["details"][0]["loc"][-1] == "name"


def test_versions_diff_export_and_import(alice, flow, team):
    client = api_client(alice)
    do_publish_version(flow, alice)
    changed = json.loads(json.dumps(GRAPH))
    changed["nodes"][1]["config"]["url"] = "https://example.com/other"
    client.put(f"/api/v1/flows/{flow.code}/draft", {"graph": changed, "revision": 2}, content_type="application/json")
    versions = body(client.get(f"/api/v1/flows/{flow.code}/versions"))["items"]
    assert [(v["number"], v["status"]) for v in versions] == [(2, "DRAFT"), (1, "PUBLISHED")]
    assert body(client.get(f"/api/v1/flows/{flow.code}/versions/1"))["graph"] == GRAPH
    diff = body(client.get(f"/api/v1/flows/{flow.code}/diff", {"from": 1, "to": 2}))
    assert "h" in json.dumps(diff) and "https://example.com/other" in json.dumps(diff)
    exported = body(client.get(f"/api/v1/flows/{flow.code}/export"))["yaml"]
    created = client.post("/api/v1/flows/import", {"yaml": exported}, content_type="application/json")
    assert created.status_code == 201
    assert body(created)["graph"] == changed
    assert_error(client.post("/api/v1/flows/import", {"yaml": "nodes: [oops"}, content_type="application/json"),
                 400, "invalid_yaml")
    assert_error(client.get(f"/api/v1/flows/{flow.code}/versions/99"), 404, "version_not_found")


def test_secrets_are_write_only(alice, team):
    client = api_client(alice)
    response = client.put("/api/v1/secrets/SLACK_URL", {"value": "https://hooks.example/CANARY-123"},
                          content_type="application/json")
    assert response.status_code == 201 and "CANARY-123" not in response.content.decode()
    listing = client.get("/api/v1/secrets")
    assert [s["name"] for s in body(listing)] == ["SLACK_URL"] and b"CANARY" not in listing.content
    assert Secret.objects.get(team=team).reveal() == "https://hooks.example/CANARY-123"
    assert client.put("/api/v1/secrets/SLACK_URL", {"value": "v2"}, content_type="application/json").status_code == 200
    assert client.delete("/api/v1/secrets/SLACK_URL").status_code == 204
    assert_error(client.delete("/api/v1/secrets/SLACK_URL"), 404, "secret_not_found")


def test_signer_keys_show_only_name_and_address(alice, team):
    client = api_client(alice)
    key = "0x" + "11" * 32
    response = client.post("/api/v1/signers", {"name": "RELAYER", "private_key": key}, content_type="application/json")
    assert response.status_code == 201
    data = body(response)
    assert set(data) == {"code", "name", "address", "created_at"}
    assert data["address"] == "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
    assert "11" * 32 not in client.get("/api/v1/signers").content.decode()
    generated = body(client.post("/api/v1/signers", {"name": "FRESH"}, content_type="application/json"))
    assert SignerKey.objects.get(code=generated["code"]).address == generated["address"]
    assert_error(client.post("/api/v1/signers", {"name": "BAD", "private_key": "0x12"}, content_type="application/json"),
                 400, "invalid")


def test_members_roles_and_last_owner_over_the_api(alice, bob, team):
    client = api_client(alice)
    assert {m["username"] for m in body(client.get("/api/v1/members"))} == {"alice", "bob"}
    response = client.patch("/api/v1/members/bob", {"role": "VIEWER"}, content_type="application/json")
    assert body(response)["role"] == "VIEWER"
    assert_error(client.patch("/api/v1/members/alice", {"role": "ADMIN"}, content_type="application/json"),
                 409, "last_owner")
    assert_error(api_client(bob).delete("/api/v1/members/alice"), 403, "forbidden")


def test_tokens_over_the_api_are_shown_once_and_revocable(alice):
    client = Client()
    client.force_login(alice)  # tokens are made from a logged-in session, never with a token
    created = body(client.post("/api/v1/tokens", {"name": "deploy"}, content_type="application/json"))
    assert created["token"].startswith(created["prefix"])
    assert "token" not in body(client.get("/api/v1/tokens"))[0]
    assert Client(HTTP_AUTHORIZATION=f"Bearer {created['token']}").get("/api/v1/flows").status_code == 200
    assert client.delete(f"/api/v1/tokens/{created['prefix']}").status_code == 204
    assert Client(HTTP_AUTHORIZATION=f"Bearer {created['token']}").get("/api/v1/flows").status_code == 401


def test_templates_and_chains_over_the_api(alice, team, chains):
    client = api_client(alice)
    slugs = [t["slug"] for t in body(client.get("/api/v1/templates"))]
    assert len(slugs) >= 10 and "cross-chain-mirror" in slugs
    response = client.post(
        "/api/v1/templates/block-heartbeat/use",
        {"inputs": {"chain": 31337, "heartbeat_url": "https://hc-ping.com/abc"}}, content_type="application/json",
    )
    assert response.status_code == 201
    assert body(response)["graph"]["nodes"][0]["config"] == {"chain": 31337, "every": 10}
    error = assert_error(
        client.post("/api/v1/templates/block-heartbeat/use", {"inputs": {"chain": 999}}, content_type="application/json"),
        400, "invalid_inputs",
    )
    assert {d["input"] for d in error["details"]} == {"chain", "heartbeat_url"}
    assert [c["chain_id"] for c in body(client.get("/api/v1/chains"))] == [31337, 31338]


def test_runs_of_another_team_are_404(alice, charlie, team):
    assert body(api_client(charlie).get("/api/v1/runs"))["count"] == 0
    assert_error(api_client(charlie).get("/api/v1/runs/00000000-0000-0000-0000-000000000000"), 404, "run_not_found")
    assert_error(api_client(charlie).get("/api/v1/runs/not-a-uuid"), 404, "run_not_found")


@override_settings(KWALA_API_RATE_LIMIT=3, KWALA_API_RATE_WINDOW=3600)
def test_the_rate_limit_is_per_token_and_answers_429(alice, bob):
    client = api_client(alice)
    for _ in range(3):
        assert client.get("/api/v1/members").status_code == 200
    response = client.get("/api/v1/members")
    assert_error(response, 429, "rate_limited")
    assert int(response["Retry-After"]) >= 1
    assert api_client(bob).get("/api/v1/members").status_code == 200


def test_the_browser_session_works_with_the_api(alice, flow):
    assert body(logged_in(alice).get("/api/v1/flows"))["count"] == 1


# -- the permission matrix ---------------------------------------------------------------------

# (method, path template, json body, lowest role allowed)
ENDPOINTS = [
    ("get", "/api/v1/flows/{flow}", None, "VIEWER"),
    ("get", "/api/v1/flows/{flow}/versions", None, "VIEWER"),
    ("post", "/api/v1/flows/{flow}/compile", None, "VIEWER"),
    ("patch", "/api/v1/flows/{flow}", {"description": "x"}, "EDITOR"),
    ("put", "/api/v1/flows/{flow}/draft", {"graph": GRAPH, "revision": 1}, "EDITOR"),
    ("post", "/api/v1/flows", {"name": "New"}, "EDITOR"),
    ("get", "/api/v1/secrets", None, "EDITOR"),
    ("put", "/api/v1/secrets/NEW_SECRET", {"value": "v"}, "ADMIN"),
    ("get", "/api/v1/signers", None, "EDITOR"),
    ("get", "/api/v1/audit", None, "ADMIN"),
    ("post", "/api/v1/invitations", {"email": "n@example.com", "role": "VIEWER"}, "ADMIN"),
    ("get", "/api/v1/members", None, "VIEWER"),
]
RANK = {"VIEWER": 0, "EDITOR": 1, "ADMIN": 2, "OWNER": 3}


@pytest.mark.parametrize("role", ROLES)
def test_api_endpoints_follow_the_role_matrix(role, users_by_role, alice, team):
    flow = do_create_flow(team, alice, "Matrix", graph=GRAPH)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token_for(users_by_role[role])}")
    for method, path, payload, lowest in ENDPOINTS:
        kwargs = {"content_type": "application/json"}
        response = getattr(client, method)(path.format(flow=flow.code), payload or {}, **kwargs) if payload else \
            getattr(client, method)(path.format(flow=flow.code), **kwargs)
        if RANK[role] >= RANK[lowest]:
            assert response.status_code in (200, 201), (method, path, role, response.content)
        else:
            assert_error(response, 403, "forbidden")


def test_an_outsider_gets_404_for_every_object_endpoint(users_by_role, alice, team):
    flow = do_create_flow(team, alice, "Matrix", graph=GRAPH)
    Secret(team=team, name="ACME_SECRET").set_value("v") or None
    client = api_client(users_by_role["OUTSIDER"])
    for path in [f"/api/v1/flows/{flow.code}", f"/api/v1/flows/{flow.code}/versions/1"]:
        assert client.get(path).status_code == 404
    assert client.delete("/api/v1/secrets/ACME_SECRET").status_code == 404
    assert client.patch("/api/v1/members/alice", {"role": "VIEWER"}, content_type="application/json").status_code == 404
    assert Membership.objects.get(user=alice, team=team).role == "OWNER"


def test_a_token_cannot_mint_tokens_and_an_expired_token_opens_nothing(alice):
    from datetime import timedelta

    from django.utils import timezone

    from flows.models import ApiToken

    assert_error(api_client(alice).post("/api/v1/tokens", {"name": "more"}, content_type="application/json"),
                 403, "forbidden")
    session = Client()
    session.force_login(alice)
    created = body(session.post("/api/v1/tokens", {"name": "ci", "expires_in_days": 30},
                                content_type="application/json"))
    assert created["expires_at"] is not None
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {created['token']}")
    assert bearer.get("/api/v1/flows").status_code == 200
    ApiToken.objects.filter(prefix=created["prefix"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error(bearer.get("/api/v1/flows"), 401, "unauthorized")
