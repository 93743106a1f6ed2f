"""GET /metrics after real runs: the counters moved by the right amounts, the state is the database's."""

from __future__ import annotations

import time

import httpx
import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from executor.models import Chain, ChainCursor, RpcEndpoint, Run
from flows.actions import do_create_flow, do_publish_version, webhook_path
from tests.site.test_load import delivering_graph

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a /metrics page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_webhook_runs_move_the_counters_by_what_happened(asgi_server, dramatiq_worker, http_sink, alice, team):
    flow = do_create_flow(team, alice, "Counted", graph=delivering_graph(http_sink.url))
    do_publish_version(flow, alice)
    before = samples(httpx.get(f"{asgi_server.url}/metrics", timeout=30).text)

    url = asgi_server.url + webhook_path(flow, alice)
    for n in range(5):
        assert httpx.post(url, json={"id": f"m{n}"}, timeout=30).status_code == 202
    assert httpx.post(url.replace(url.rstrip("/").rsplit("/", 1)[1], "wrong"), json={}, timeout=30).status_code == 404
    http_sink.wait_for("/delivered", 5, timeout=60)
    deadline = time.monotonic() + 30
    while Run.objects.filter(flow=flow, status=Run.Status.SUCCEEDED).count() < 5:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # The worker counts after it commits; wait for its last count to show.
    deadline = time.monotonic() + 10
    while True:
        after = samples(httpx.get(f"{asgi_server.url}/metrics", timeout=30).text)
        done = value(after, "kwala_run_status_total", team=str(team.pk), flow=flow.code, status="SUCCEEDED")
        if done == 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert done == 5
    assert value(after, "kwala_run_status_total", team=str(team.pk), flow=flow.code, status="RUNNING") == 5

    def moved(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("kwala_webhooks_total", outcome="accepted") == 5
    assert moved("kwala_webhooks_total", outcome="not_found") == 1
    assert moved("kwala_step_seconds_count", type="http.request") == 5
    assert moved("kwala_step_seconds_count", type="condition") == 0  # the webhook graph has none
    assert moved("kwala_run_seconds_count", status="SUCCEEDED") == 5


def test_chain_and_endpoint_state_comes_from_the_database_and_hides_provider_keys(client):
    chain = Chain.objects.create(slug="metered", name="Metered", chain_id=99001)
    ChainCursor.objects.create(chain=chain, head_block=120, block_number=100, ws_state="connected", inconsistencies=2)
    RpcEndpoint.objects.create(chain=chain, url="https://user:pw@rpc.example.com:8545/v3/CANARY-KEY", failures=3)
    text = Client(HTTP_HOST="127.0.0.1").get("/metrics").content.decode()
    found = samples(text)
    assert value(found, "kwala_chain_lag_blocks", chain="metered") == 20
    assert value(found, "kwala_chain_websocket_up", chain="metered") == 1
    assert value(found, "kwala_chain_rpc_inconsistencies_total", chain="metered") == 2
    assert value(found, "kwala_rpc_endpoint_failures", chain="metered", endpoint="https://rpc.example.com:8545",
                 kind="HTTP") == 3
    assert "CANARY" not in text and "pw@" not in text
    assert any(name == "kwala_queue_messages" for name, _ in found)


def test_metrics_answer_only_the_token_or_this_machine(client, settings):
    assert Client(HTTP_HOST="127.0.0.1", REMOTE_ADDR="203.0.113.9").get("/metrics").status_code == 404
    settings.KWALA_METRICS_TOKEN = "scrape-me"
    local = Client(HTTP_HOST="127.0.0.1")
    assert local.get("/metrics").status_code == 404  # with a token, loopback needs it too
    assert local.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    assert local.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_the_grafana_dashboard_asks_only_for_metrics_kwala_exports():
    import json
    import re
    from pathlib import Path

    from executor import metrics

    declared = {m._name for m in (metrics.RUN_STATUS, metrics.RUN_SECONDS, metrics.STEP_SECONDS, metrics.STEP_RETRIES,
                                  metrics.WEBHOOKS, metrics.RPC_REQUESTS, metrics.RPC_SECONDS, metrics.SWEEPER)}
    declared |= {family.name for family in metrics.StateCollector().collect()}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    asked = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
             for name in re.findall(r"kwala_[a-z_]+", target["expr"])}
    assert asked
    for name in asked:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in declared, name
