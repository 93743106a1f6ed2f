from __future__ import annotations

import pytest
from django.test import override_settings


def test_healthz_answers_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_redis_and_broker_ready(client):
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is True


@pytest.mark.django_db
def test_readyz_reports_a_down_redis_as_not_ready(client, tmp_path):
    # A socket path nobody listens on: a Redis that is down.
    with override_settings(REDIS_URL=f"unix://{tmp_path}/nobody.sock"):
        response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "not ready"
    assert body["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}
    assert body["checks"]["database"]["ok"] is True


@pytest.mark.django_db
def test_readyz_reports_a_lagging_chain(client):
    from django.utils import timezone

    from executor.models import Chain, ChainCursor

    chain = Chain.objects.create(slug="slow", name="Slow", chain_id=99)
    ChainCursor.objects.create(chain=chain, block_number=10, head_block=500, head_seen_at=timezone.now())
    body = client.get("/readyz").json()
    assert body["checks"]["chains"]["ok"] is False
    assert body["checks"]["chains"]["chains"]["slow"]["lag"] == 490


@pytest.mark.django_db
def test_readyz_never_shows_an_rpc_url_with_its_key(client):
    from django.utils import timezone

    from executor.models import Chain, ChainCursor

    chain = Chain.objects.create(slug="eth", name="Ethereum", chain_id=1)
    ChainCursor.objects.create(
        chain=chain, block_number=1, head_block=1, head_seen_at=timezone.now(),
        last_error="every RPC endpoint failed (https://mainnet.infura.io/v3/SECRETKEY42: timed out)",
    )
    response = client.get("/readyz")
    assert "SECRETKEY42" not in response.content.decode()
    assert response.json()["checks"]["chains"]["chains"]["eth"]["last_error"] is True


def test_scrub_urls_keeps_only_scheme_and_host():
    from executor.listener_health import scrub_urls

    text = "failed (https://mainnet.infura.io/v3/KEY: x), wss://user:pw@node.example:8546/ws?key=abc"
    scrubbed = scrub_urls(text)
    assert "KEY" not in scrubbed and "abc" not in scrubbed and "pw" not in scrubbed
    assert "https://mainnet.infura.io/…" in scrubbed and "wss://node.example:8546/…" in scrubbed
