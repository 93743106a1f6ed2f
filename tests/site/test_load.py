"""Every door holds load: many concurrent callers on the real ASGI server get a 2xx or a 503
with Retry-After, never a 500, and every 202 is a run that exists.

Measured before: 32 webhook callers or 256 API callers made PostgreSQL refuse
connections ("too many clients already"), answered as 500s. Under ASGI each request's
sync code runs in a thread of its own with a connection of its own, so the web server
alone took every connection PostgreSQL had; it now draws from a bounded pool.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from django.db import connection

from executor.models import Run
from flows.actions import create_flow, publish_version, webhook_path
from tests.flows.test_webhooks import hook_graph
from tests.team_fixtures import token_for

pytestmark = pytest.mark.django_db(transaction=True)

CALLERS = 150


@contextmanager
def connections_peak():
    """The most PostgreSQL client connections seen at once while the block runs, and the server's maximum."""
    params = connection.get_connection_params()
    peak = {"seen": 0, "max": 0}
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(**params, autocommit=True) as conn:
            peak["max"] = int(conn.execute("SHOW max_connections").fetchone()[0])
            while not stop.is_set():
                count = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE backend_type = 'client backend'").fetchone()[0]
                peak["seen"] = max(peak["seen"], count)
                stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def hammer(url: str, method: str, requests_each: int, **kwargs) -> tuple[Counter, list[httpx.Response]]:
    """CALLERS threads, each with its own keep-alive connection, all starting together."""
    start = threading.Barrier(CALLERS)
    statuses: Counter = Counter()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def caller(_: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            for _ in range(requests_each):
                response = client.request(method, url, **kwargs)
                with lock:
                    statuses[response.status_code] += 1
                    answers.append(response)

    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(caller, range(CALLERS)))
    return statuses, answers


def test_many_webhook_callers_at_once_get_a_run_or_a_503_never_a_500(asgi_server, alice, team):
    flow = create_flow(team, alice, "Busy hook", graph=hook_graph("none"))
    publish_version(flow, alice)
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + webhook_path(flow, alice), "POST", 4, json={"n": 1})

    # The web server never takes every connection PostgreSQL has (workers and listeners need theirs).
    assert peak["seen"] < peak["max"] // 2, peak

    assert set(statuses) <= {202, 503}, statuses
    assert statuses[202] > 0
    for response in answers:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"]["code"] == "overloaded"
    accepted = {r.json()["run"] for r in answers if r.status_code == 202}
    assert Run.objects.filter(flow=flow).count() == len(accepted) == statuses[202]


def test_many_api_callers_at_once_get_an_answer_or_a_503_never_a_500(asgi_server, alice):
    headers = {"Authorization": f"Bearer {token_for(alice)}"}
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + "/api/v1/runs", "GET", 3, headers=headers)

    assert peak["seen"] < peak["max"] // 2, peak

    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0
    assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 503)
