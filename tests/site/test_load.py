"""Every door holds load: many concurrent callers on the real ASGI server get a 2xx or a 503
with Retry-After, never a 500, and every 202 is a run that exists and is delivered once.

Measured before: 32 webhook callers or 256 API callers made PostgreSQL refuse
connections ("too many clients already"), answered as 500s. Under ASGI each request's
sync code runs in a thread of its own with a connection of its own, so the web server
alone took every connection PostgreSQL had; it now draws from a bounded pool.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import psycopg
import pytest
from django.db import connection

from executor.models import Run
from flows.actions import do_create_flow, do_publish_version, webhook_path
from tests.conftest import Service, free_port
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


def hammer(url: str, method: str, requests_each: int, body=None, **kwargs) -> tuple[Counter, list[httpx.Response]]:
    """CALLERS threads, each with its own keep-alive connection, all starting together.

    `body(caller, n)`, if given, is the JSON body of caller's n-th request.
    """
    start = threading.Barrier(CALLERS)
    statuses: Counter = Counter()
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        with httpx.Client(timeout=60) as client:
            start.wait()
            for n in range(requests_each):
                extra = {"json": body(index, n)} if body is not None else {}
                response = client.request(method, url, **kwargs, **extra)
                with lock:
                    statuses[response.status_code] += 1
                    answers.append(response)

    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(caller, range(CALLERS)))
    return statuses, answers


def delivering_graph(sink_url: str) -> dict:
    graph = hook_graph("none")
    graph["nodes"][1]["config"] = {"method": "POST", "url": f"{sink_url}/delivered",
                                   "body": {"id": "{{ trigger.body.id }}"}}
    return graph


def test_many_webhook_callers_at_once_get_a_run_or_a_503_never_a_500_and_every_run_is_delivered_once(
    asgi_server, dramatiq_worker, http_sink, alice, team,
):
    from tests.site.test_metrics import samples, value

    flow = do_create_flow(team, alice, "Busy hook", graph=delivering_graph(http_sink.url))
    do_publish_version(flow, alice)
    before = samples(httpx.get(f"{asgi_server.url}/metrics", timeout=30).text)
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + webhook_path(flow, alice), "POST", 4,
                                   body=lambda caller, n: {"id": f"{caller}-{n}"})
    after = samples(httpx.get(f"{asgi_server.url}/metrics", timeout=30).text)

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
    # Every accepted request reaches the sink, exactly once.
    sent = {r.request.content for r in answers if r.status_code == 202}
    delivered = http_sink.wait_for("/delivered", len(accepted), timeout=120)
    ids = [r.json()["id"] for r in delivered]
    assert len(ids) == len(set(ids)) == len(sent)
    # Claims that met at the door went into one statement (runs.batching), and each still got its run.
    claims, statements = (value(after, f"kwala_webhook_claims_per_statement_{part}")
                          - value(before, f"kwala_webhook_claims_per_statement_{part}") for part in ("sum", "count"))
    assert claims >= statuses[202] and statements < claims, (claims, statements)


def webhook_server(child_env, service_logs, name: str, **env) -> Service:
    port = free_port()
    server = Service(name, [sys.executable, "-m", "uvicorn", "kwala_site.asgi:application", "--host", "127.0.0.1",
                            "--port", str(port), "--no-access-log"], {**child_env, **env}, service_logs)
    server.wait_for_output("Uvicorn running on", timeout=30)
    server.url = f"http://127.0.0.1:{port}"
    return server


def test_a_webhook_answers_503_with_retry_after_while_postgresql_is_down(child_env, service_logs, alice, team):
    flow = do_create_flow(team, alice, "Hook", graph=hook_graph("none"))
    do_publish_version(flow, alice)
    closed = free_port()  # nothing listens there: PostgreSQL is down, as far as this server can tell
    server = webhook_server(child_env, service_logs, "uvicorn-no-db",
                            DATABASE_URL=f"postgres://kwala:x@127.0.0.1:{closed}/kwala")
    try:
        response = httpx.post(server.url + webhook_path(flow, alice), json={"n": 1}, timeout=60)
    finally:
        server.stop()
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    assert not Run.objects.exists()


def test_a_webhook_accepted_while_redis_is_down_is_stored_and_sent_once_redis_is_back(
    child_env, service_logs, alice, team, http_sink,
):
    flow = do_create_flow(team, alice, "Hook", graph=delivering_graph(http_sink.url))
    do_publish_version(flow, alice)
    closed = free_port()
    server = webhook_server(child_env, service_logs, "uvicorn-no-redis", REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    try:
        response = httpx.post(server.url + webhook_path(flow, alice), json={"id": "while-down"}, timeout=60)
    finally:
        server.stop()
    # The run is stored, started, and its step waits: nothing was lost with the doorbell.
    assert response.status_code == 202, response.text
    run = Run.objects.get(code=response.json()["run"])
    assert list(run.steps.values_list("status", flat=True)) == ["QUEUED"]
    assert "could not send step" in server.log_path.read_text()

    # The sweeper (with the real Redis) finds the step and a worker delivers it.
    sweeper = Service("sweeper-after-redis", [sys.executable, "manage.py", "sweep", "--interval", "0.5"],
                      child_env, service_logs)
    worker = Service("worker-after-redis", [sys.executable, "manage.py", "rundramatiq", "--processes", "1",
                                            "--threads", "2"], child_env, service_logs)
    try:
        delivered = http_sink.wait_for("/delivered", 1, timeout=60)
    finally:
        sweeper.stop()
        worker.stop()
    assert [r.json()["id"] for r in delivered] == ["while-down"]


def test_many_api_callers_at_once_get_an_answer_or_a_503_never_a_500(asgi_server, alice):
    headers = {"Authorization": f"Bearer {token_for(alice)}"}
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + "/api/v1/runs", "GET", 3, headers=headers)

    assert peak["seen"] < peak["max"] // 2, peak

    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0
    assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 503)


def test_many_assistants_at_once_get_an_answer_or_a_503_never_a_500(asgi_server, alice):
    """The MCP door (/mcp, stateless JSON over streamable HTTP): the token check and the tool
    both need the database, from the same pool as every other request."""
    headers = {"Authorization": f"Bearer {token_for(alice)}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + "/mcp", "POST", 2, headers=headers,
                                   body=lambda caller, n: {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                                           "params": {"name": "list_flows", "arguments": {}}})

    assert peak["seen"] < peak["max"] // 2, peak
    assert set(statuses) <= {200, 503}, statuses
    answered = [r.json() for r in answers if r.status_code == 200]
    assert answered and all("result" in body for body in answered), answered[:3]
    # A call the server could not serve says so, with when to come back, whichever layer refused it.
    for response in answers:
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
    refused_inside = [body["result"] for body in answered if body["result"].get("isError")]
    assert all(result["structuredContent"]["status"] == 503 for result in refused_inside), refused_inside[:3]


def test_many_browsers_at_once_on_the_flows_page_get_it_or_a_503_never_a_500(asgi_server, alice, team):
    from tests.site.test_services import session_cookie

    for n in range(3):
        do_create_flow(team, alice, f"Flow {n}", graph=hook_graph("none"))
    with connections_peak() as peak:
        statuses, answers = hammer(asgi_server.url + "/", "GET", 2, headers={"Cookie": session_cookie(alice)})

    assert peak["seen"] < peak["max"] // 2, peak
    assert set(statuses) <= {200, 503}, statuses
    assert all("Flow 2" in r.text for r in answers if r.status_code == 200) and statuses[200] > 0
    assert all(int(r.headers["Retry-After"]) >= 1 for r in answers if r.status_code == 503)
