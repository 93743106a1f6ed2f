"""A provider's API key in an RPC URL never comes back out: not in API answers, run records, pages or logs.

Each test points a chain's only endpoint at a closed port on loopback whose URL
carries a canary, makes the product read the chain, and looks for the canary.
"""

from __future__ import annotations

import logging

import pytest
import requests

from executor.chain import ChainClient, ChainError, scrub_urls
from executor.models import Chain, ReplayJob, RpcEndpoint
from tests.conftest import free_port
from tests.executor.chainkit import BIG, event_graph, publish
from tests.team_fixtures import api_client

CANARY = "canary-7d41e0b9"


@pytest.fixture
def dead_chain(db):
    chain = Chain.objects.create(slug="dead", name="Dead", chain_id=31399)
    url = f"http://user:{CANARY}@127.0.0.1:{free_port()}/v3/{CANARY}?key={CANARY}"
    RpcEndpoint.objects.create(chain=chain, url=url, kind=RpcEndpoint.Kind.HTTP)
    return chain


def test_scrubbing_keeps_the_host_and_drops_paths_queries_and_passwords():
    text = (f"https://eth.example.com/v3/{CANARY} failed; wss://u:{CANARY}@ws.example.com:8546/{CANARY}; "
            f"HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /v3/{CANARY} (Caused by x)")
    scrubbed = scrub_urls(text)
    assert CANARY not in scrubbed
    assert "https://eth.example.com/…" in scrubbed and "wss://ws.example.com:8546/…" in scrubbed


def test_a_chain_error_never_carries_the_endpoint_url(dead_chain, caplog):
    caplog.set_level(logging.INFO)
    client = ChainClient.for_chain(dead_chain)
    with pytest.raises(ChainError) as caught:
        client.block_number()
    assert CANARY not in str(caught.value) and CANARY not in caught.value.message
    assert CANARY not in caught.value.endpoint
    assert CANARY not in caplog.text
    assert "127.0.0.1" in str(caught.value)  # the host still says which endpoint


def test_a_replay_against_an_unreachable_endpoint_answers_without_the_key(dead_chain, alice, team, caplog):
    from executor.tasks import run_replay

    version = publish(team, alice, event_graph(31399, BIG))
    client = api_client(alice)
    response = client.post(f"/api/v1/flows/{version.flow.code}/replay", {"from_block": 0, "to_block": 5},
                           content_type="application/json")
    assert response.status_code == 202
    job = ReplayJob.objects.get(code=response.json()["job"])
    run_replay(job.pk)  # what a worker does with the job's message
    answer = client.get(f"/api/v1/replays/{job.code}")
    assert answer.json()["status"] == "FAILED" and "dead" in answer.json()["error"]
    assert CANARY not in answer.content.decode() and CANARY not in ReplayJob.objects.get(pk=job.pk).error
    assert CANARY not in caplog.text


def test_the_admin_chain_pages_show_no_key(dead_chain, admin_client, caplog):
    with pytest.raises(ChainError):
        ChainClient.for_chain(dead_chain).block_number()
    for url in ("/admin/executor/chain/", "/admin/executor/rpcendpoint/"):
        response = admin_client.get(url)
        assert response.status_code in (200, 404)
        assert CANARY not in response.content.decode()
    assert CANARY not in caplog.text


def test_requests_own_error_text_is_scrubbed_too():
    with pytest.raises(requests.RequestException) as caught:
        requests.get(f"http://127.0.0.1:{free_port()}/v3/{CANARY}", timeout=2)
    assert CANARY in str(caught.value)  # what would leak
    assert CANARY not in scrub_urls(str(caught.value))
