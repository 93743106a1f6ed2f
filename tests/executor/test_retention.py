"""Finished runs past their team's retention are deleted with everything hanging off them; nothing else is."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from executor import retention
from executor.models import Run, RunEvent, StepRun
from executor.runs.store import record_run_event
from flows.models import Membership
from tests.executor.conftest import edge, make_version, manual, node

pytestmark = pytest.mark.django_db


def aged(version, status: str, days: float, key: str) -> Run:
    run = Run.objects.create(team=version.flow.team, flow=version.flow, version=version, trigger_key=key,
                             status=status)
    StepRun.objects.create(run=run, step_id="halt", status="SUCCEEDED")
    record_run_event(run, "run.status", {"status": status})
    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=days))
    return run


def stop_version(team, user):
    return make_version(team, user, [manual(), node("halt", "stop", {})], [edge("start", "halt")])


def test_old_finished_runs_go_with_their_steps_and_events_failed_ones_later_unfinished_never(team, alice):
    version = stop_version(team, alice)
    old_ok = aged(version, "SUCCEEDED", 31, "manual:old-ok")
    new_ok = aged(version, "SUCCEEDED", 29, "manual:new-ok")
    old_failed = aged(version, "FAILED", 31, "manual:old-failed")
    ancient_failed = aged(version, "FAILED", 91, "manual:ancient-failed")
    stuck = aged(version, "RUNNING", 400, "manual:still-running")

    assert retention.prune() == 2
    left = set(Run.objects.values_list("pk", flat=True))
    assert left == {new_ok.pk, old_failed.pk, stuck.pk}
    assert not StepRun.objects.filter(run_id__in=[old_ok.pk, ancient_failed.pk]).exists()
    assert not RunEvent.objects.filter(run_id__in=[old_ok.pk, ancient_failed.pk]).exists()
    assert retention.prune() == 0


def test_a_team_keeps_its_own_retention_and_a_pass_stops_at_its_batch_budget(team, alice, charlie):
    team.run_retention_days = 2
    team.save(update_fields=["run_retention_days"])
    mine = stop_version(team, alice)
    theirs = stop_version(Membership.objects.get(user=charlie).team, charlie)
    for n in range(5):
        aged(mine, "SUCCEEDED", 3, f"manual:mine-{n}")
    kept = aged(theirs, "SUCCEEDED", 3, "manual:theirs")  # the site's 30 days for the other team

    assert retention.prune(batch=2, max_batches=2) == 4  # two batches of two: the rest waits
    call_command("prune_history", stdout=open("/dev/null", "w"))
    assert list(Run.objects.values_list("pk", flat=True)) == [kept.pk]
