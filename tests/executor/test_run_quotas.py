"""Runs started per minute, per flow and per team: a run over either is kept and starts later, never dropped."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from executor import quotas
from executor.models import Run
from executor.runs import start
from executor.sweeper import sweep
from flows.actions import do_create_flow, do_publish_version, webhook_path
from kwala_site import counters, ratelimit
from tests.flows.test_webhooks import hook_graph

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_limits():
    quotas._run_limits.clear()  # the team's limits are cached per process for 30 s
    yield
    quotas._run_limits.clear()


def hooked_flow(team, user, name: str):
    flow = do_create_flow(team, user, name, graph=hook_graph("none"))
    do_publish_version(flow, user)
    return flow


def post(flow) -> Run:
    response = Client(HTTP_HOST="127.0.0.1").post(webhook_path(flow, flow.created_by), b'{"n": 1}',
                                                  content_type="application/json")
    assert response.status_code == 202, response.content  # accepted either way: the run is stored
    return Run.objects.get(code=response.json()["run"])


def test_a_flow_over_its_runs_per_minute_keeps_the_run_and_starts_it_in_the_next_window(team, alice):
    team.flow_runs_per_minute = 2
    team.save(update_fields=["flow_runs_per_minute"])
    flow = hooked_flow(team, alice, "Limited")
    before = counters.read().get("run_starts_deferred", 0)

    runs = [post(flow) for _ in range(3)]

    assert [r.status for r in runs] == [Run.Status.RUNNING, Run.Status.RUNNING, Run.Status.QUEUED]
    deferred = runs[2]
    assert deferred.dispatched_at > timezone.now()  # the sweeper leaves it alone until then
    assert list(deferred.log.values_list("kind", flat=True)) == ["run.deferred"]
    assert counters.read()["run_starts_deferred"] == before + 1
    assert sweep(grace_seconds=0)["stale_runs"] == 0

    # The next minute's window (its counter gone): the delayed start_run starts it.
    ratelimit.client().delete(*ratelimit.client().keys(f"kwala:ratelimit:runs:flow:{flow.code}:*"))
    start.start_run(deferred.pk)  # (this thread goes on to run its HTTP step too)
    deferred.refresh_from_db()
    assert deferred.started_at is not None
    kinds = list(deferred.log.order_by("seq").values_list("kind", "data__status"))
    assert kinds[:2] == [("run.deferred", None), ("run.status", "RUNNING")]


def test_a_team_over_its_runs_per_minute_defers_runs_of_any_of_its_flows(team, alice):
    team.runs_per_minute = 1
    team.save(update_fields=["runs_per_minute"])
    first, second = hooked_flow(team, alice, "One"), hooked_flow(team, alice, "Two")

    assert post(first).status == Run.Status.RUNNING
    assert post(second).status == Run.Status.QUEUED


def test_runs_of_other_teams_are_not_held_back(team, alice, charlie):
    from flows.models import Membership

    team.flow_runs_per_minute = 1
    team.save(update_fields=["flow_runs_per_minute"])
    limited = hooked_flow(team, alice, "Limited")
    post(limited)
    other = hooked_flow(Membership.objects.get(user=charlie).team, charlie, "Other")
    assert [post(other).status for _ in range(3)] == [Run.Status.RUNNING] * 3
