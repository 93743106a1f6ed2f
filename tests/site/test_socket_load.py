"""The websocket door under load and overload: many browsers at once get their run's events or
a 503 with Retry-After to the handshake, never a 500; a socket the server cannot serve is
refused that way and counted, like an HTTP request."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.utils import timezone

from executor.models import Run
from executor.runs.store import record_run_event
from flows.models import Flow, FlowVersion
from kwala_site import counters
from tests.conftest import free_port
from tests.site.test_load import connections_peak, webhook_server
from tests.site.test_services import open_socket, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(alice, team):
    """A finished run, whose events only its test writes: a sweeper and a worker an earlier test left
    running would start a queued one (its version has no DAG) and log events of their own in it."""
    flow = Flow.objects.create(team=team, name="Watched", created_by=alice)
    version = FlowVersion.objects.create(flow=flow, number=1, graph={}, status=FlowVersion.Status.PUBLISHED)
    return Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:1",
                              status=Run.Status.SUCCEEDED, finished_at=timezone.now())


def refused_handshake(server, path: str, user):
    """The HTTP answer to a websocket handshake the server refused."""
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        with open_socket(server, path, user, open_timeout=60):
            pass
    return refused.value.response


@pytest.mark.parametrize("down", ["postgresql", "redis"])
def test_a_websocket_is_answered_503_with_retry_after_while_a_service_is_down(
    child_env, service_logs, run, alice, down,
):
    closed = free_port()  # nothing listens there
    env = ({"DATABASE_URL": f"postgres://kwala:x@127.0.0.1:{closed}/kwala"} if down == "postgresql"
           else {"REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    refused_before = counters.read()["sockets_refused"]
    server = webhook_server(child_env, service_logs, f"uvicorn-socket-no-{down}", **env)
    try:
        response = refused_handshake(server, f"/ws/runs/{run.code}/", alice)
    finally:
        server.stop()
    assert response.status_code == 503, response
    assert int(response.headers["Retry-After"]) >= 1
    assert json.loads(response.body)["error"]["code"] == "overloaded"
    log = server.log_path.read_text()
    assert "overloaded" in log and "Exception inside application" not in log and "Traceback" not in log
    # Counted where Redis could be reached (/readyz shows it); without Redis the log line is all there is.
    refused = counters.read()["sockets_refused"] - refused_before
    assert refused == (1 if down == "postgresql" else 0)
    assert down == "postgresql" or "sockets_refused not counted" in log


SOCKETS = 150


def test_many_websockets_at_once_get_every_event_or_a_503_never_a_500(asgi_server, run, alice):
    from websockets.exceptions import InvalidStatus

    for index in range(3):
        record_run_event(run, "step.update", {"n": index})
    cookie = session_cookie(alice)  # one login: a thread of this process logging in holds a connection
    start = threading.Barrier(SOCKETS)
    joined = threading.Barrier(SOCKETS + 1)
    outcomes: Counter = Counter()
    received: list[list[int]] = []
    lock = threading.Lock()

    def browser(_index: int) -> None:
        seqs: list[int] = []
        start.wait()
        try:
            socket = open_socket(asgi_server, f"/ws/runs/{run.code}/", open_timeout=60, cookie=cookie)
        except InvalidStatus as refused:
            outcome = refused.response.status_code
            if outcome == 503:
                assert int(refused.response.headers["Retry-After"]) >= 1
            with lock:
                outcomes[outcome] += 1
            joined.wait()
            return
        with socket:
            while len(seqs) < 3:
                seqs.append(json.loads(socket.recv(timeout=60))["seq"])
            joined.wait()  # every socket has its replay: now one event is recorded, live
            seqs.append(json.loads(socket.recv(timeout=60))["seq"])
        with lock:
            outcomes["open"] += 1
            received.append(seqs)

    with connections_peak() as peak, ThreadPoolExecutor(SOCKETS) as pool:
        futures = [pool.submit(browser, i) for i in range(SOCKETS)]
        joined.wait(timeout=120)
        record_run_event(run, "run.finished", {"status": "SUCCEEDED"})
        for future in futures:
            future.result()

    assert peak["seen"] < peak["max"] // 2, peak
    assert set(outcomes) <= {"open", 503}, outcomes
    assert outcomes["open"] > 0
    assert all(seqs == [1, 2, 3, 4] for seqs in received), received


def test_an_open_socket_whose_redis_goes_away_is_closed_with_try_again_later(child_env, service_logs, run, alice):
    from urllib.parse import urlsplit

    from websockets.exceptions import ConnectionClosed

    from tests.tcpproxy import TcpProxy

    redis_url = urlsplit(child_env["REDIS_URL"])  # the tests' Redis listens on a Unix socket
    proxy = TcpProxy(redis_url.path if redis_url.scheme == "unix" else (redis_url.hostname, redis_url.port))
    server = webhook_server(child_env, service_logs, "uvicorn-socket-redis-cut", REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0")
    record_run_event(run, "run.queued", {"status": "QUEUED"})
    try:
        with open_socket(server, f"/ws/runs/{run.code}/", alice) as socket:
            assert json.loads(socket.recv(timeout=5))["seq"] == 1
            proxy.cut()
            after_cut = []
            with pytest.raises(ConnectionClosed) as closed:
                while len(after_cut) < 10:
                    after_cut.append(json.loads(socket.recv(timeout=30)))
    finally:
        server.stop()
        proxy.close()
    assert closed.value.rcvd.code == 1013  # Try Again Later: the page reconnects and replays
    assert after_cut == []
    log = server.log_path.read_text()
    assert "overloaded: Redis could not serve websocket" in log and "Traceback" not in log


def test_a_socket_whose_database_goes_away_leaves_its_groups_and_is_closed_with_try_again_later(
    child_env, service_logs, run, alice,
):
    import redis
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    from django.conf import settings
    from websockets.exceptions import ConnectionClosed

    from executor.live import run_group
    from tests.tcpproxy import postgres_proxy

    proxy, url = postgres_proxy()
    server = webhook_server(child_env, service_logs, "uvicorn-socket-db-cut", KWALA_DB_POOL_TIMEOUT="2",
                            DATABASE_URL=url)
    record_run_event(run, "run.queued", {"status": "QUEUED"})
    layer = get_channel_layer()
    members = redis.Redis.from_url(settings.REDIS_URL)
    group_key = layer._group_key(run_group(run.code))  # channels_redis' own key for the group's channels
    try:
        with open_socket(server, f"/ws/runs/{run.code}/", alice) as socket:
            assert json.loads(socket.recv(timeout=5))["seq"] == 1
            assert members.zcard(group_key) == 1
            proxy.cut()
            # An event the socket missed part of: it reads the gap from the log, which it cannot reach.
            async_to_sync(layer.group_send)(run_group(run.code), {"type": "run.event", "seq": 5, "kind": "x",
                                                                  "data": {}, "run": str(run.code)})
            with pytest.raises(ConnectionClosed) as closed:
                socket.recv(timeout=30)
    finally:
        server.stop()
        proxy.close()
    assert closed.value.rcvd.code == 1013
    assert members.zcard(group_key) == 0  # left: broadcasts no longer queue for it
    log = server.log_path.read_text()
    assert "overloaded: PostgreSQL could not serve websocket" in log and "Traceback" not in log
