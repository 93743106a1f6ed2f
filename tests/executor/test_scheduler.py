"""Schedules: due ticks computed in the flow's time zone, claimed exactly once."""

from __future__ import annotations

import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from executor.models import Run
from executor.scheduler import due_tick, tick
from flows.models import FlowVersion
from tests.conftest import Service
from tests.executor.chainkit import publish, trigger_graph

PUBLISHED = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_a_cron_tick_is_computed_in_the_flow_time_zone():
    spec = {"cron": "0 9 * * *", "timezone": "Europe/Paris"}
    now = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)  # 09:30 in Paris
    assert due_tick(spec, now, PUBLISHED) == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)


def test_only_the_latest_missed_tick_is_owed_after_downtime():
    spec = {"interval_seconds": 60}
    now = PUBLISHED + timedelta(hours=3, seconds=30)
    assert due_tick(spec, now, PUBLISHED) == PUBLISHED + timedelta(hours=3)


def test_nothing_is_owed_before_start_or_after_expiry():
    spec = {"interval_seconds": 60, "start_at": "2026-03-05T00:00:00+00:00", "expire_at": "2026-03-06T00:00:00+00:00"}
    assert due_tick(spec, datetime(2026, 3, 4, tzinfo=UTC), PUBLISHED) is None
    assert due_tick(spec, datetime(2026, 3, 5, 0, 0, 30, tzinfo=UTC), PUBLISHED) == datetime(2026, 3, 5, tzinfo=UTC)
    assert due_tick(spec, datetime(2026, 3, 6, tzinfo=UTC), PUBLISHED) is None


def test_ticks_before_publication_are_not_owed():
    assert due_tick({"cron": "0 7 * * *"}, PUBLISHED + timedelta(minutes=5), PUBLISHED) is None


def schedule_flow(team, alice, **config):
    version = publish(team, alice, trigger_graph("schedule", config))
    FlowVersion.objects.filter(pk=version.pk).update(published_at=PUBLISHED)
    return version


def test_a_catch_up_after_downtime_fires_once(team, alice):
    version = schedule_flow(team, alice, interval="5m")
    now = PUBLISHED + timedelta(hours=2, minutes=1)
    assert len(tick(now)) == 1
    assert tick(now + timedelta(seconds=30)) == []
    (run,) = Run.objects.filter(version=version)
    assert run.trigger_key == "schedule:2026-03-02T10:00:00+00:00"
    assert run.trigger["scheduled_at"] == "2026-03-02T10:00:00+00:00"
    assert len(tick(now + timedelta(minutes=5))) == 1


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_at_once_fire_each_tick_once(team, alice):
    version = schedule_flow(team, alice, cron="*/5 * * * *")
    now = PUBLISHED + timedelta(minutes=11)
    barrier = threading.Barrier(4)

    def scheduler():
        barrier.wait()
        try:
            tick(now)
        finally:
            connection.close()

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(Run.objects.filter(version=version).values_list("trigger_key", flat=True)) == [
        "schedule:2026-03-02T08:10:00+00:00"
    ]


@pytest.mark.django_db(transaction=True)
def test_run_scheduler_processes_share_the_ticks(team, alice, child_env, service_logs):
    version = publish(team, alice, trigger_graph("schedule", {"cron": "* * * * * *"}))  # every second
    schedulers = [
        Service(f"scheduler-{i}", [sys.executable, "manage.py", "run_scheduler", "--interval", "0.2"],
                child_env, service_logs)
        for i in range(2)
    ]
    try:
        for scheduler in schedulers:
            scheduler.wait_for_output("scheduler running", timeout=30)
        # Three ticks, each one both schedulers raced for.
        deadline = time.monotonic() + 30
        while Run.objects.filter(version=version).count() < 3:
            assert time.monotonic() < deadline, "no three ticks in 30 s"
            time.sleep(0.1)
    finally:
        for scheduler in schedulers:
            scheduler.stop()
    keys = list(Run.objects.filter(version=version).values_list("trigger_key", flat=True))
    assert keys and len(keys) == len(set(keys))


@pytest.mark.django_db
def test_each_schedule_run_knows_the_window_since_the_previous_one(team, alice):
    from datetime import UTC, datetime, timedelta

    from executor.scheduler import tick
    from flows import actions

    graph = {"nodes": [{"id": "every", "type": "schedule", "name": "Every minute", "position": {"x": 0, "y": 0},
                        "config": {"interval": 60}}], "edges": []}
    flow = actions.do_create_flow(team, alice, "Windowed", graph=graph)
    version = actions.do_publish_version(flow, alice)
    published = version.published_at
    first = Run.objects.get(pk=tick(published + timedelta(seconds=61))[0])
    second = Run.objects.get(pk=tick(published + timedelta(seconds=125))[0])
    assert datetime.fromisoformat(first.trigger["previous_at"]) == published.astimezone(UTC)
    assert first.trigger["scheduled_at"] == second.trigger["previous_at"]
