from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.urls import reverse

from flows.models import AuditEvent, Secret, SignerKey
from tests.team_fixtures import api_client, logged_in

CANARY = "canary-7f3a9c-DO-NOT-LEAK"
KEY = "0x" + "4c" * 32


def all_text_columns_except_encrypted() -> list[str]:
    """Every text/json value in the database, except the two encrypted columns."""
    values = []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND data_type IN ('text', 'character varying', 'jsonb')"
        )
        for table, column in cursor.fetchall():
            if (table, column) in {("flows_secret", "value_encrypted"), ("flows_signerkey", "key_encrypted")}:
                continue
            cursor.execute(f'SELECT "{column}"::text FROM "{table}"')  # noqa: S608 - names from the catalog
            values.extend(row[0] for row in cursor.fetchall() if row[0])
    return values


def test_a_secret_value_never_comes_back_from_pages_api_logs_or_other_rows(alice, team, caplog):
    caplog.set_level(logging.DEBUG)
    client = logged_in(alice)
    response = client.post(reverse("secrets"), {"name": "SLACK_URL", "value": CANARY})
    assert response.status_code == 302
    client.post(reverse("signers"), {"name": "RELAYER", "private_key": KEY})
    api = api_client(alice)
    api.put("/api/v1/secrets/OTHER", {"value": CANARY}, content_type="application/json")
    bodies = [
        client.get(reverse("secrets")).content,
        client.get(reverse("signers")).content,
        client.get(reverse("audit_log")).content,
        client.get(reverse("team")).content,
        api.get("/api/v1/secrets").content,
        api.get("/api/v1/signers").content,
        api.get("/api/v1/audit").content,
    ]
    for body in bodies:
        assert CANARY.encode() not in body and KEY[2:].encode() not in body
    assert CANARY not in caplog.text and KEY[2:] not in caplog.text
    for value in all_text_columns_except_encrypted():
        assert CANARY not in value and KEY[2:] not in value
    assert Secret.objects.get(team=team, name="SLACK_URL").reveal() == CANARY
    assert SignerKey.objects.get(team=team, name="RELAYER").private_key().removeprefix("0x") == KEY[2:]


def test_a_rejected_secret_form_does_not_echo_the_value(alice):
    response = logged_in(alice).post(reverse("secrets"), {"name": "bad name!", "value": CANARY})
    assert response.status_code == 400 and CANARY.encode() not in response.content


def test_changing_and_deleting_secrets_and_keys_is_audited(alice, team):
    client = logged_in(alice)
    client.post(reverse("secrets"), {"name": "S", "value": "one"})
    client.post(reverse("secrets"), {"name": "S", "value": "two"})
    client.post(reverse("delete_secret", args=["S"]))
    client.post(reverse("signers"), {"name": "K", "private_key": ""})
    key = SignerKey.objects.get(team=team)
    client.post(reverse("delete_signer", args=[key.code]))
    actions = list(AuditEvent.objects.filter(team=team).order_by("id").values_list("action", flat=True))
    assert actions == ["secret.created", "secret.rotated", "secret.deleted", "signer.created", "signer.deleted"]


def test_an_editor_sees_secret_names_but_cannot_change_them(alice, bob, team):
    logged_in(alice).post(reverse("secrets"), {"name": "S", "value": "one"})
    client = logged_in(bob)
    assert b">S<" in client.get(reverse("secrets")).content
    assert client.post(reverse("secrets"), {"name": "S", "value": "evil"}).status_code == 404
    assert client.post(reverse("delete_secret", args=["S"])).status_code == 404
    assert Secret.objects.get(team=team, name="S").reveal() == "one"


def test_an_outsider_cannot_touch_another_teams_secret_or_key(alice, charlie, team):
    client = logged_in(alice)
    client.post(reverse("secrets"), {"name": "S", "value": "one"})
    client.post(reverse("signers"), {"name": "K", "private_key": ""})
    key = SignerKey.objects.get(team=team)
    outsider = logged_in(charlie)
    assert b">S<" not in outsider.get(reverse("secrets")).content
    assert outsider.post(reverse("delete_secret", args=["S"])).status_code == 404
    assert outsider.post(reverse("delete_signer", args=[key.code])).status_code == 404
    assert Secret.objects.filter(team=team).exists() and SignerKey.objects.filter(team=team).exists()


@pytest.mark.django_db(transaction=True)
def test_a_secret_and_a_signer_key_used_by_real_runs_reach_only_their_destination(
    alice, team, http_sink, asgi_server, child_env, service_logs, anvil_b, w3_b, demo_contracts_b, caplog
):
    """The sink gets the secret and the chain gets the signature; no record, page, log or row gets either."""
    import sys
    import time

    from executor.models import Chain, RpcEndpoint, Run
    from flows.actions import do_create_flow, do_publish_version
    from kwala_site.dev.devchain import load_artifact
    from tests.conftest import Service, start_worker
    from tests.site.test_services import open_socket

    caplog.set_level(logging.DEBUG)
    chain = Chain.objects.create(slug="anvil-b", name="Anvil B", chain_id=31338)
    RpcEndpoint.objects.create(chain=chain, url=anvil_b.http_url)
    secret = Secret(team=team, name="CANARY")
    secret.set_value(CANARY)
    secret.save()
    signer = SignerKey(team=team, name="RELAYER")
    signer.set_private_key(KEY)
    signer.save()
    w3_b.provider.make_request("anvil_setBalance", [signer.address, hex(10**20)])
    graph = {
        "nodes": [
            {"id": "t", "type": "manual", "config": {}},
            {"id": "h", "type": "http.request", "config": {
                "method": "POST", "url": f"{http_sink.url}/canary",
                "headers": {"X-Canary": "{{ secrets.CANARY }}"}, "body": {"token": "{{ secrets.CANARY }}"}}},
            {"id": "w", "type": "contract.write", "config": {
                "chain": 31338, "address": demo_contracts_b["Receiver"], "function": "ping(string message)",
                "args": ["signed by the relayer"], "signer": "RELAYER"}},
        ],
        "edges": [{"source": "t", "source_port": "out", "target": "h"},
                  {"source": "h", "source_port": "out", "target": "w"}],
    }
    flow = do_create_flow(team, alice, "Canary", graph=graph)
    do_publish_version(flow, alice)
    env = child_env
    worker = start_worker(env, service_logs, "canary-worker")
    listener = Service("canary-listener", [sys.executable, "manage.py", "listen_chains", "--poll", "0.2"], env,
                       service_logs)
    try:
        listener.wait_for_output("listening to", timeout=30)
        api = api_client(alice)
        started = api.post(f"/api/v1/flows/{flow.code}/runs", {"payload": {}}, content_type="application/json")
        assert started.status_code == 201, started.content
        code = started.json()["code"]
        (request,) = http_sink.wait_for("/canary")
        assert request.headers["X-Canary"] == CANARY and request.json() == {"token": CANARY}
        run = Run.objects.get(code=code)
        deadline = time.monotonic() + 60
        while run.status not in Run.FINISHED and time.monotonic() < deadline:
            time.sleep(0.1)
            run.refresh_from_db()
        assert run.status == Run.Status.SUCCEEDED, (run.error, list(run.steps.values_list("step_id", "error")))
        receiver = w3_b.eth.contract(address=demo_contracts_b["Receiver"], abi=load_artifact("Receiver")["abi"])
        pings = receiver.events.Pinged().get_logs(from_block=0)
        assert any(p["args"]["caller"] == signer.address for p in pings)

        with open_socket(asgi_server, f"/ws/runs/{code}/", alice) as socket:
            events = []
            try:
                while True:
                    events.append(socket.recv(timeout=1))
            except TimeoutError:
                pass
        client = logged_in(alice)
        bodies = [
            api.get(f"/api/v1/runs/{code}").content, api.get("/api/v1/runs").content,
            api.get(f"/api/v1/flows/{flow.code}").content, api.get(f"/api/v1/flows/{flow.code}/export").content,
            client.get(reverse("run_list")).content,
            *(e.encode() for e in events),
        ]
    finally:
        listener.stop()
        worker.stop()
    assert events, "the socket replayed the run's events"
    for content in bodies:
        assert CANARY.encode() not in content and KEY[2:].encode() not in content
    logs = "".join(s.log_path.read_text(errors="replace") for s in (worker, listener)) + asgi_server.output() + caplog.text
    assert CANARY not in logs and KEY[2:] not in logs
    for value in all_text_columns_except_encrypted():
        assert CANARY not in value and KEY[2:] not in value
