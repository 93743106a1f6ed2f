"""Who may watch a run over a websocket: every role of the team, nobody else (real uvicorn, real Redis)."""

from __future__ import annotations

import json
import uuid

import pytest
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus

from executor.models import Run
from executor.runs.store import record_run_event
from flows.actions import do_create_flow
from flows.models import Membership
from tests.site.test_services import open_socket

pytestmark = pytest.mark.django_db(transaction=True)
ROLES = ["OWNER", "ADMIN", "EDITOR", "VIEWER"]


def make_run(team, user, name: str = "Watched") -> Run:
    flow = do_create_flow(team, user, name)
    # Finished: a sweeper and a worker an earlier test left running would start a queued run and log in it.
    run = Run.objects.create(team=team, flow=flow, version=flow.versions.get(), trigger_key=f"manual:{uuid.uuid4()}",
                             status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    record_run_event(run, "run.status", {"status": "QUEUED"})
    return run


def assert_refused(server, path: str, user) -> None:
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with open_socket(server, path, user) as socket:
            socket.recv(timeout=5)


@pytest.fixture
def run(team, alice):
    return make_run(team, alice)


@pytest.mark.parametrize("role", ROLES)
def test_every_role_in_the_team_may_watch_a_run_and_its_flow(asgi_server, users_by_role, run, role):
    user = users_by_role[role]
    with open_socket(asgi_server, f"/ws/runs/{run.code}/", user) as socket:
        first = json.loads(socket.recv(timeout=5))
        assert (first["seq"], first["kind"], first["data"]) == (1, "run.status", {"status": "QUEUED"})
    with open_socket(asgi_server, f"/ws/flows/{run.flow.code}/runs/", user) as socket:
        record_run_event(run, "run.status", {"status": "RUNNING"})
        live = json.loads(socket.recv(timeout=5))
        if live["seq"] == 1:  # the run's first event, broadcast just as this socket joined the flow's group
            live = json.loads(socket.recv(timeout=5))
        assert (live["seq"], live["data"]) == (2, {"status": "RUNNING"})


@pytest.mark.parametrize("who", ["OUTSIDER", "ANONYMOUS"])
def test_outsiders_and_anonymous_visitors_are_refused_on_both_sockets(asgi_server, users_by_role, run, who):
    user = users_by_role.get(who)
    assert_refused(asgi_server, f"/ws/runs/{run.code}/", user)
    assert_refused(asgi_server, f"/ws/flows/{run.flow.code}/runs/", user)


def test_a_member_guessing_another_teams_run_or_flow_code_is_refused(asgi_server, alice, charlie, run):
    theirs = make_run(Membership.objects.get(user=charlie).team, charlie, "Theirs")
    assert_refused(asgi_server, f"/ws/runs/{theirs.code}/", alice)
    assert_refused(asgi_server, f"/ws/flows/{theirs.flow.code}/runs/", alice)
    assert_refused(asgi_server, f"/ws/runs/{uuid.uuid4()}/", alice)
    assert_refused(asgi_server, "/ws/runs/not-a-uuid/", alice)
    # ...while the owner of that run may watch it.
    with open_socket(asgi_server, f"/ws/runs/{theirs.code}/", charlie) as socket:
        assert json.loads(socket.recv(timeout=5))["seq"] == 1


def test_a_member_removed_from_the_team_can_no_longer_open_the_socket(asgi_server, users_by_role, run):
    viewer = users_by_role["VIEWER"]
    with open_socket(asgi_server, f"/ws/runs/{run.code}/", viewer) as socket:
        assert json.loads(socket.recv(timeout=5))["seq"] == 1
    Membership.objects.filter(user=viewer).delete()
    assert_refused(asgi_server, f"/ws/runs/{run.code}/", viewer)
    assert_refused(asgi_server, f"/ws/flows/{run.flow.code}/runs/", viewer)
