"""Property tests of the API against its own OpenAPI schema (schemathesis).

Bounded: a few examples per operation, so the module runs in well under a minute.
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from flows.actions import do_create_flow
from tests.team_fixtures import token_for

ERROR_KEYS = {"code", "message", "details"}


def _wsgi_app():
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _wsgi_app())


@pytest.fixture(autouse=True)
def requests_share_the_test_transaction(db, settings):
    """As Django's test client does: the handler must not close the connection the test's transaction is on."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    settings.KWALA_API_RATE_LIMIT = 1_000_000
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def api_headers(alice, team):
    do_create_flow(team, alice, "Fuzzed")
    return {"Authorization": f"Bearer {token_for(alice)}"}


@schema.parametrize()
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_never_fails_and_every_error_has_the_documented_shape(case, api_headers):
    response = case.call(headers=api_headers)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert response.text.startswith("{"), f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]!r}"
        body = json.loads(response.text)
        assert set(body) == {"error"}, body
        assert set(body["error"]) == ERROR_KEYS and isinstance(body["error"]["code"], str), body
