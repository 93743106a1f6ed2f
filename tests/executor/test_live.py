"""Run progress over websockets: members see it live, reconnects replay what they missed."""

from __future__ import annotations

import json
import time

import pytest

from executor.models import RunEvent
from executor.runs.manual import start_manual_run
from tests.executor.conftest import edge, make_version, manual, node, wait_for_run
from tests.site.test_services import open_socket

pytestmark = pytest.mark.django_db(transaction=True)


def flow(team, alice):
    return make_version(
        team, alice,
        [manual(), node("wait", "delay", {"duration": 1}),
         node("x", "transform", {"fields": [{"name": "v", "expression": "1"}]})],
        [edge("start", "wait"), edge("wait", "x")],
    )


def test_a_member_watches_a_run_to_the_end_and_a_reconnect_replays_only_what_was_missed(
    executor_worker, asgi_server, team, alice, bob
):
    run = start_manual_run(flow(team, alice), {}, user=alice)
    seen = []
    with open_socket(asgi_server, f"/ws/runs/{run.code}/", bob) as socket:
        while not (seen and seen[-1]["kind"] == "run.status" and seen[-1]["data"]["status"] == "SUCCEEDED"):
            seen.append(json.loads(socket.recv(timeout=15)))
    assert [m["seq"] for m in seen] == list(range(1, len(seen) + 1))
    assert {"wait", "x"} <= {m["data"].get("step") for m in seen}

    wait_for_run(run)
    total = RunEvent.objects.filter(run=run).count()
    with open_socket(asgi_server, f"/ws/runs/{run.code}/?after=3", alice) as socket:
        replayed = [json.loads(socket.recv(timeout=5)) for _ in range(total - 3)]
        with pytest.raises(TimeoutError):
            socket.recv(timeout=0.3)
    assert [m["seq"] for m in replayed] == list(range(4, total + 1))


@pytest.mark.parametrize("who", ["anonymous", "outsider"])
def test_anonymous_and_outsider_cannot_watch_a_run_or_its_flow(asgi_server, team, alice, charlie, who):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    run = start_manual_run(flow(team, alice), {}, user=alice)
    user = charlie if who == "outsider" else None
    for path in (f"/ws/runs/{run.code}/", f"/ws/flows/{run.flow.code}/runs/"):
        with pytest.raises((ConnectionClosed, InvalidStatus)):
            with open_socket(asgi_server, path, user) as socket:
                socket.recv(timeout=5)


def broadcasts_sent() -> None:
    """Wait until this process's broadcast loop has sent everything handed to it."""
    from executor.live import _outbox

    outbox = _outbox()
    for _ in range(500):
        with outbox.lock:
            if outbox.idle and not outbox.items:
                return
        time.sleep(0.01)
    raise AssertionError("the broadcast loop did not go idle")


def test_events_recorded_while_a_socket_watches_reach_it_after_what_it_replayed(asgi_server, team, alice):
    from executor.runs.store import record_run_event
    from tests.site.test_socket_permissions import make_run

    run = make_run(team, alice)
    record_run_event(run, "step.update", {"n": 1})
    broadcasts_sent()

    with open_socket(asgi_server, f"/ws/runs/{run.code}/", alice) as socket:
        assert [json.loads(socket.recv(timeout=5))["seq"] for _ in range(2)] == [1, 2]
        record_run_event(run, "step.update", {"n": 2})
        live = json.loads(socket.recv(timeout=5))
    assert (live["seq"], live["data"]) == (3, {"n": 2})
