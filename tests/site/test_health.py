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
