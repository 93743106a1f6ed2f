"""The real services the product stands on: embedded servers, broker, channel layer."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.utils import timezone

from executor.models import Run, WorkerProbe
from executor.runs.store import record_run_event
from flows.models import Flow, FlowVersion
from kwala_site.dev import embedded


def test_embedded_postgres_and_redis_start_stop_and_keep_their_data():
    base = Path(tempfile.mkdtemp(prefix="kw-"))  # short: Unix socket paths are limited to 107 bytes
    try:
        pg_url = embedded.ensure_postgres(base / "pg")
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        redis_url = embedded.ensure_redis(base / "redis")
        redis.Redis.from_url(redis_url).set("kept", "still here")

        embedded.stop_postgres(base / "pg")
        embedded.stop_redis(base / "redis")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_url, connect_timeout=2)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(redis_url).ping()

        assert embedded.ensure_postgres(base / "pg") == pg_url
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT value FROM kept").fetchone() == ("still here",)
        assert embedded.ensure_redis(base / "redis") == redis_url
        assert redis.Redis.from_url(redis_url).get("kept") == b"still here"
    finally:
        embedded.stop_postgres(base / "pg")
        embedded.stop_redis(base / "redis")
        embedded.remove(base)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_an_actor_through_redis_and_writes_to_postgres(dramatiq_worker, capsys):
    call_command("check_workers", timeout=15)
    assert "worker answered" in capsys.readouterr().out
    assert WorkerProbe.objects.filter(answered_at__isnull=False).count() == 1


@pytest.fixture
def run(alice, team):
    flow = Flow.objects.create(team=team, name="Whale alert", created_by=alice)
    version = FlowVersion.objects.create(flow=flow, number=1, graph={}, status=FlowVersion.Status.PUBLISHED)
    # Finished: a sweeper and a worker an earlier test left running would start a queued run and log in it.
    return Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:1",
                              status=Run.Status.SUCCEEDED, finished_at=timezone.now())


def session_cookie(user) -> str:
    """A Cookie header that logs `user` in."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def open_socket(server, path: str, user=None, origin: str = "http://127.0.0.1", open_timeout: float = 5,
                cookie: str | None = None):
    """A real websocket to the uvicorn server, logged in as `user` through a session cookie (or with `cookie`)."""
    from websockets.sync.client import connect

    headers = {"Origin": origin}
    if cookie is None and user is not None:
        cookie = session_cookie(user)
    if cookie is not None:
        headers["Cookie"] = cookie
    ws_url = server.url.replace("http://", "ws://") + path
    return connect(ws_url, additional_headers=headers, open_timeout=open_timeout)


@pytest.mark.django_db(transaction=True)
def test_a_websocket_round_trip_goes_through_the_consumer_and_the_redis_layer(asgi_server, run, alice):
    assert get_channel_layer().__class__.__module__ == "channels_redis.core"
    record_run_event(run, "run.queued", {"status": "QUEUED"})

    with open_socket(asgi_server, f"/ws/runs/{run.code}/", alice) as socket:
        replayed = json.loads(socket.recv(timeout=5))
        assert (replayed["seq"], replayed["kind"]) == (1, "run.queued")

        # Recorded here, broadcast through Redis, delivered by the server process.
        record_run_event(run, "run.started", {"status": "RUNNING"})
        live = json.loads(socket.recv(timeout=5))
        assert (live["seq"], live["kind"], live["data"]) == (2, "run.started", {"status": "RUNNING"})


@pytest.mark.django_db(transaction=True)
def test_a_reconnecting_socket_gets_only_what_it_missed(asgi_server, run, alice):
    for index in range(3):
        record_run_event(run, "step.update", {"n": index})
    with open_socket(asgi_server, f"/ws/runs/{run.code}/?after=2", alice) as socket:
        message = json.loads(socket.recv(timeout=5))
        assert (message["seq"], message["data"]) == (3, {"n": 2})
        with pytest.raises(TimeoutError):
            socket.recv(timeout=0.3)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["anonymous", "outsider"])
def test_anonymous_and_outsider_sockets_are_refused(asgi_server, run, charlie, who):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    user = charlie if who == "outsider" else None
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with open_socket(asgi_server, f"/ws/runs/{run.code}/", user) as socket:
            socket.recv(timeout=5)


@pytest.mark.django_db(transaction=True)
def test_a_cross_origin_websocket_is_refused(asgi_server, run, alice):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with open_socket(asgi_server, f"/ws/runs/{run.code}/", alice, origin="https://evil.example") as socket:
            socket.recv(timeout=5)


def test_the_channel_layer_is_redis_backed():
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel, {"type": "hello", "at": time.time()})
    assert async_to_sync(layer.receive)(channel)["type"] == "hello"


@pytest.mark.django_db(transaction=True)
def test_a_removed_member_loses_the_live_socket_at_once(asgi_server, run, alice, bob):
    from websockets.exceptions import ConnectionClosed

    from flows.models import Membership
    from flows.teams import do_remove_member

    with open_socket(asgi_server, f"/ws/runs/{run.code}/", bob) as socket:
        record_run_event(run, "run.queued", {"status": "QUEUED"})
        assert json.loads(socket.recv(timeout=5))["seq"] == 1
        do_remove_member(Membership.objects.get(user=alice), Membership.objects.get(user=bob))
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=5)
    assert closed.value.rcvd.code == 4403
