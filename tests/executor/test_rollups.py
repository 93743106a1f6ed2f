"""Run rollups: every way a run finishes moves its flow's hour by exactly one, once; the flows
page reads them; retention folds and prunes them. And the long lists page from where they stopped."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from executor import paging, retention, rollups
from executor.listener import retract_blocks
from executor.models import Chain, Event, Notification, Run, RunRollup, StepRun
from executor.runs import start
from executor.runs.manual import retry_run, start_manual_run
from executor.runs.start import RunClaim, start_claimed
from tests.executor.conftest import edge, make_version, manual, node
from tests.team_fixtures import api_client, logged_in

pytestmark = pytest.mark.django_db

S = Run.Status


def counts(flow) -> dict[str, int]:
    """The flow's rollups summed over every hour and shard."""
    figures = rollups.flow_figures(flow.team_id, timezone.now() - timedelta(days=3650)).get(flow.pk, rollups.Figures())
    return {"succeeded": figures.succeeded, "failed": figures.failed, "cancelled": figures.cancelled,
            "reorged": figures.reorged}


def zero(**moved) -> dict[str, int]:
    return {"succeeded": 0, "failed": 0, "cancelled": 0, "reorged": 0, **moved}


def stop_version(team, user, *, fail: bool = False):
    return make_version(team, user, [manual(), node("halt", "stop", {"fail": fail, "message": "no more"})],
                        [edge("start", "halt")])


def bare_run(version, key: str, status: str = S.QUEUED, **fields) -> Run:
    return Run.objects.create(team=version.flow.team, flow=version.flow, version=version, trigger_key=key,
                              status=status, **fields)


# -- the rollups move with the runs -------------------------------------------------------------


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.FAILED, S.CANCELLED, S.REORGED])
def test_a_run_entering_each_final_status_counts_once_in_that_status(team, alice, status):
    version = stop_version(team, alice)
    run = bare_run(version, "manual:1")
    Run.objects.filter(pk=run.pk).update(status=S.RUNNING)
    assert counts(version.flow) == zero()

    Run.objects.filter(pk=run.pk).update(status=status)
    Run.objects.filter(pk=run.pk).update(status=status)  # finished again: nothing moves

    assert counts(version.flow) == zero(**{status.lower(): 1})


def test_a_run_that_runs_to_its_end_in_the_engine_counts_once(team, alice):
    ok, failing = stop_version(team, alice), stop_version(team, alice, fail=True)
    for version in (ok, failing):
        run = start_manual_run(version, {}, user=alice)
        start.start_run(run.pk)
        start.start_run(run.pk)  # start_run delivered twice

    assert counts(ok.flow) == zero(succeeded=1)
    assert counts(failing.flow) == zero(failed=1)


def test_a_run_claimed_already_finished_counts_once_however_often_it_is_claimed(team, alice):
    version = stop_version(team, alice)
    claim = RunClaim(version_id=version.pk, flow_id=version.flow_id, team_id=team.pk, trigger_key="webhook:1",
                     trigger={"type": "webhook", "payload": {}})

    run, new = start_claimed(claim)
    again, new_again = start_claimed(claim)

    assert (new, again, new_again) == (True, None, False)
    assert Run.objects.get(pk=run.pk).status == S.SUCCEEDED
    assert counts(version.flow) == zero(succeeded=1)


def test_a_retry_takes_the_failure_back_and_counts_its_new_end(team, alice):
    version = stop_version(team, alice, fail=True)
    run = start_manual_run(version, {}, user=alice)
    start.start_run(run.pk)
    assert counts(version.flow) == zero(failed=1)

    # Out of FAILED, and into whatever the retry ends with (nothing failed to run again: it succeeds).
    retry_run(Run.objects.get(pk=run.pk), user=alice)
    assert Run.objects.get(pk=run.pk).status == S.SUCCEEDED
    assert counts(version.flow) == zero(succeeded=1)

    Run.objects.filter(pk=run.pk).update(status=S.RUNNING)
    assert counts(version.flow) == zero()
    Run.objects.filter(pk=run.pk).update(status=S.FAILED)
    assert counts(version.flow) == zero(failed=1)


def test_a_reorg_moves_finished_runs_to_reorged_and_unstarted_ones_to_cancelled(team, alice):
    version = stop_version(team, alice)
    chain = Chain.objects.create(slug="rollup-chain", name="Rollup chain", chain_id=990001)
    done = bare_run(version, "log:1", S.SUCCEEDED, chain=chain, block_hash="0xaa", started_at=timezone.now())
    waiting = bare_run(version, "log:2", S.QUEUED, chain=chain, block_hash="0xaa")
    assert counts(version.flow) == zero(succeeded=1)

    retract_blocks(chain, ["0xaa"], "reorged away")
    retract_blocks(chain, ["0xaa"], "reorged away")  # seen twice

    assert {r.pk: r.status for r in Run.objects.filter(pk__in=[done.pk, waiting.pk])} == {
        done.pk: S.REORGED, waiting.pk: S.CANCELLED}
    assert counts(version.flow) == zero(reorged=1, cancelled=1)


@pytest.mark.django_db(transaction=True)
def test_a_reorg_locks_its_runs_first_so_a_run_ending_meanwhile_cannot_deadlock_it(team, alice):
    # Retracting a block updated its runs one at a time: each update took the run row and then
    # its hour's rollup row (the trigger). A worker ending one of the later runs holds that run
    # and then needs the same rollup row (same flow, hour and shard): each waited on the other.
    from django.db import transaction

    from tests.executor.test_runner_guards import behind_a_lock

    version = stop_version(team, alice)
    chain = Chain.objects.create(slug="rollup-race", name="Rollup race", chain_id=990002)
    runs = [bare_run(version, "log:0", S.RUNNING, started_at=timezone.now())]
    while len(runs) < 2:  # a second run in the same rollup shard (run id % 8) as the first
        run = bare_run(version, f"log:{timezone.now().timestamp()}", S.RUNNING, started_at=timezone.now())
        if run.pk % 8 == runs[0].pk % 8:
            runs.append(run)
    Run.objects.filter(pk__in=[r.pk for r in runs]).update(chain=chain, block_hash="0xbb")
    # The worker ends the run the reorg reached last (it took them in whatever order the planner gave).
    reached = list(Run.objects.filter(chain=chain, block_hash="0xbb").values_list("pk", flat=True))
    ending = Run.objects.get(pk=reached[-1])

    def end_the_run(until_told) -> None:  # a worker recording the run's last step
        with transaction.atomic():
            Run.objects.select_for_update().get(pk=ending.pk)
            until_told()
            Run.objects.filter(pk=ending.pk).update(status=S.SUCCEEDED, finished_at=timezone.now())

    def retract() -> None:  # the listener's reorg, which waits for the ending run
        with transaction.atomic():
            retract_blocks(chain, ["0xbb"], "reorged away")

    errors = behind_a_lock(end_the_run, retract)

    assert errors == []
    assert set(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True)) == {S.REORGED}
    assert counts(version.flow) == zero(reorged=2)


def test_unfinished_and_deleted_runs_leave_the_counts_as_they_are(team, alice):
    version = stop_version(team, alice)
    bare_run(version, "manual:queued")
    bare_run(version, "manual:running", S.RUNNING)
    finished = bare_run(version, "manual:done", S.SUCCEEDED)

    Run.objects.filter(pk=finished.pk).delete()

    assert counts(version.flow) == zero(succeeded=1)  # the figures outlive the runs


def test_a_run_counts_in_the_hour_it_was_created_in(team, alice):
    version = stop_version(team, alice)
    run = bare_run(version, "manual:1", S.SUCCEEDED)
    then = timezone.now() - timedelta(days=10)
    Run.objects.filter(pk=run.pk).update(created_at=then)

    hours = {row.hour: row.succeeded for row in RunRollup.objects.filter(flow=version.flow) if row.succeeded}
    assert hours == {rollups.hour_of(then): 1}
    week = rollups.flow_figures(team.pk, timezone.now() - timedelta(days=7))
    assert week.get(version.flow_id, rollups.Figures()) == rollups.Figures()


def test_runs_of_one_hour_spread_over_shards_and_fold_into_one_row_once_the_hour_is_over(team, alice):
    version = stop_version(team, alice)
    for n in range(20):
        run = bare_run(version, f"manual:{n}", S.SUCCEEDED if n % 4 else S.FAILED)
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(hours=3))
    assert RunRollup.objects.filter(flow=version.flow).exclude(shard=0).exists()
    before = counts(version.flow)

    rollups.fold()

    rows = RunRollup.objects.filter(flow=version.flow).exclude(succeeded=0, failed=0, cancelled=0, reorged=0)
    assert [(row.shard, row.succeeded, row.failed) for row in rows] == [(0, 15, 5)]
    assert counts(version.flow) == before == zero(succeeded=15, failed=5)


def test_retention_deletes_rollup_hours_past_their_days_and_keeps_the_rest(team, alice, settings):
    settings.KWALA_ROLLUP_RETENTION_DAYS = 30
    version = stop_version(team, alice)
    old, recent = (bare_run(version, f"manual:{n}", S.SUCCEEDED) for n in range(2))
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=31))
    Run.objects.filter(pk=recent.pk).update(created_at=timezone.now() - timedelta(days=29))
    Run.objects.filter(pk__in=[old.pk, recent.pk]).update(status=S.FAILED)  # not due: failed runs are kept 90 days

    assert retention.prune() == 0  # nothing due, so the rollups are tidied

    assert [row.hour for row in RunRollup.objects.filter(flow=version.flow) if row.failed] == [
        rollups.hour_of(timezone.now() - timedelta(days=29))]


def test_rebuild_counts_the_runs_again(team, alice):
    version = stop_version(team, alice)
    for n, status in enumerate([S.SUCCEEDED, S.SUCCEEDED, S.FAILED, S.RUNNING]):
        bare_run(version, f"manual:{n}", status)
    RunRollup.objects.all().delete()

    rollups.rebuild(since=timezone.now() - timedelta(days=1))

    assert counts(version.flow) == zero(succeeded=2, failed=1)


# -- the flows page -----------------------------------------------------------------------------


def test_the_flows_page_shows_the_week_from_the_rollups_and_the_newest_run(team, alice):
    version = stop_version(team, alice)
    newest = bare_run(version, "manual:newest", S.RUNNING)
    # No runs behind these figures (pruned, say): the page reads the rollups, not the runs.
    RunRollup.objects.create(team=team, flow=version.flow, hour=rollups.hour_of(timezone.now()), shard=3,
                             succeeded=3, failed=1, cancelled=7)
    RunRollup.objects.create(team=team, flow=version.flow, hour=rollups.hour_of(timezone.now() - timedelta(days=8)),
                             failed=50)

    page = logged_in(alice).get(reverse("home"))

    assert page.status_code == 200
    row = page.context["rows"][0]
    assert (row["rate"], row["finished"], row["last_run"].pk) == (75, 4, newest.pk)
    assert "75% of 4" in page.content.decode()


def test_the_flows_page_of_another_team_shows_none_of_these_figures(team, alice, charlie):
    version = stop_version(team, alice)
    bare_run(version, "manual:1", S.SUCCEEDED)

    page = logged_in(charlie).get(reverse("home"))

    assert page.status_code == 200 and page.context["rows"] == []


# -- retention with the chain events ----------------------------------------------------------


def test_retention_deletes_a_runs_chain_event_with_its_last_run_and_events_that_fired_no_run(team, alice):
    version = stop_version(team, alice)
    chain = Chain.objects.create(slug="retention-chain", name="Retention chain", chain_id=990002)

    def event(n: int, days: float) -> Event:
        made = Event.objects.create(chain=chain, block_number=n, block_hash=f"0x{n:064x}", log_index=0,
                                    tx_hash=f"0x{n:064x}", address="0x" + "1" * 40)
        Event.objects.filter(pk=made.pk).update(created_at=timezone.now() - timedelta(days=days))
        return made

    shared, own, young_unused = event(1, 40), event(2, 40), event(4, 1)
    event(3, 40)  # fired no run
    for key, ev, status in (("log:a", shared, S.SUCCEEDED), ("log:b", shared, S.FAILED), ("log:c", own, S.SUCCEEDED)):
        run = bare_run(version, key, status, event=ev)
        StepRun.objects.create(run=run, step_id="halt", status="SUCCEEDED")
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=40))
    Notification.objects.create(team=team, run=Run.objects.get(trigger_key="log:b"), kind="RUN_FAILED", message="x")

    assert retention.prune() == 2
    assert retention.prune() == 0  # and the events no run fired on

    # The failed run is kept 90 days, and the event it fired on with it.
    assert set(Event.objects.values_list("pk", flat=True)) == {shared.pk, young_unused.pk}
    assert list(Run.objects.values_list("trigger_key", flat=True)) == ["log:b"]
    assert Notification.objects.count() == 1


def test_a_pass_with_a_time_budget_stops_and_the_next_goes_on(team, alice):
    version = stop_version(team, alice)
    for n in range(3):
        run = bare_run(version, f"manual:{n}", S.SUCCEEDED)
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=31))

    assert retention.prune(batch=1, max_seconds=0) == 0  # no time at all: nothing done, nothing lost
    assert retention.prune(batch=1, max_seconds=60) == 3
    assert not Run.objects.exists()


def test_the_sweepers_slice_comes_back_until_a_pass_finds_nothing_due(team, alice):
    # A slice that runs out of time before deleting anything (a cold cache, a busy database)
    # must not read as "nothing due": the sweeper would then wait KWALA_RETENTION_INTERVAL_SECONDS
    # with a day of runs still there.
    version = stop_version(team, alice)
    for n in range(3):
        run = bare_run(version, f"manual:{n}", S.SUCCEEDED)
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(days=31))

    assert retention.prune_slice(0) is True  # out of time at once: come back soon
    assert Run.objects.count() == 3
    assert retention.prune_slice(60) is True  # all deleted; the next slice tidies up
    assert not Run.objects.exists()
    assert retention.prune_slice(60) is False  # nothing due: wait for the interval


def test_a_run_that_finishes_behind_where_pruning_got_to_goes_in_the_next_pass(team, alice):
    version = stop_version(team, alice)
    long_ago = timezone.now() - timedelta(days=40)
    slow = bare_run(version, "manual:slow", S.RUNNING)
    quick = bare_run(version, "manual:quick", S.SUCCEEDED)
    Run.objects.filter(pk=slow.pk).update(created_at=long_ago)
    Run.objects.filter(pk=quick.pk).update(created_at=long_ago + timedelta(seconds=1))
    assert retention.prune() == 1  # the scan of the team's succeeded runs is past `slow` now

    Run.objects.filter(pk=slow.pk).update(status=S.SUCCEEDED)

    assert retention.prune() == 0  # from where it got to: nothing; so the next pass starts over
    assert retention.prune() == 1
    assert not Run.objects.exists()


# -- long lists, a page at a time -------------------------------------------------------------


def runs_at(version, n: int) -> list[Run]:
    """n runs, the same microsecond for every pair (a claim writes several runs with one time)."""
    now = timezone.now()
    made = []
    for i in range(n):
        run = bare_run(version, f"manual:page-{i}", S.SUCCEEDED)
        Run.objects.filter(pk=run.pk).update(created_at=now - timedelta(seconds=i // 2))
        made.append(run)
    return sorted(made, key=lambda r: (Run.objects.get(pk=r.pk).created_at, r.pk), reverse=True)


def test_the_runs_page_goes_older_and_newer_through_every_run_once(team, alice, monkeypatch):
    from executor import views

    monkeypatch.setattr(views, "PAGE_SIZE", 3)
    version = stop_version(team, alice)
    newest_first = [r.code for r in runs_at(version, 8)]
    client = logged_in(alice)

    seen, url = [], reverse("run_list")
    pages = []
    while url:
        page = client.get(url).context["page"]
        pages.append(page)
        seen += [r.code for r in page.items]
        url = f"{reverse('run_list')}?before={page.last.code}" if page.older else None
    assert seen == newest_first
    assert [p.newer for p in pages] == [False, True, True]

    back = client.get(f"{reverse('run_list')}?after={pages[-1].first.code}").context["page"]
    assert [r.code for r in back.items] == [r.code for r in pages[1].items] and back.newer and back.older
    assert client.get(reverse("run_list")).context["count"] == 8


def test_the_runs_page_ignores_a_cursor_from_another_team(team, alice, charlie):
    version = stop_version(team, alice)
    mine = bare_run(version, "manual:mine", S.SUCCEEDED)

    page = logged_in(charlie).get(f"{reverse('run_list')}?before={mine.code}")

    assert page.status_code == 200 and page.context["page"].items == []


def test_the_api_pages_with_next_before_and_caps_its_count(team, alice, monkeypatch):
    monkeypatch.setattr(paging, "COUNT_CAP", 5)
    version = stop_version(team, alice)
    newest_first = [str(r.code) for r in runs_at(version, 7)]
    api = api_client(alice)

    first = api.get("/api/v1/runs?limit=4").json()
    second = api.get(f"/api/v1/runs?limit=4&before={first['next_before']}").json()

    assert [r["code"] for r in first["items"] + second["items"]] == newest_first
    assert (first["count"], first["count_capped"], first["has_more"]) == (5, True, True)
    assert (second["has_more"], second["next_before"]) == (False, None)


def test_the_api_refuses_a_cursor_it_cannot_find(team, alice, charlie):
    version = stop_version(team, alice)
    mine = bare_run(version, "manual:mine", S.SUCCEEDED)

    answer = api_client(charlie).get(f"/api/v1/runs?before={mine.code}")

    assert answer.status_code == 404 and answer.json()["error"]["code"] == "run_not_found"


def test_the_alerts_page_goes_older_and_newer(team, alice, monkeypatch):
    from executor import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    version = stop_version(team, alice)
    for n in range(5):
        run = bare_run(version, f"manual:{n}", S.FAILED)
        Notification.objects.create(team=team, run=run, kind="RUN_FAILED", message=f"failed {n}")
    client = logged_in(alice)

    messages, url = [], reverse("notifications")
    while url:
        response = client.get(url)
        page = response.context["page"]
        messages += [a.message for a in page.items]
        cursor = response.content.decode().partition('href="?before=')[2].partition('"')[0]
        url = f"{reverse('notifications')}?before={cursor}" if page.older else None
    assert messages == [f"failed {n}" for n in reversed(range(5))]
    assert client.get(reverse("home")).context["unread_alerts"] == 5


def test_the_nav_counts_unread_alerts_up_to_99(team, alice):
    version = stop_version(team, alice)
    Notification.objects.bulk_create(
        Notification(team=team, run=bare_run(version, f"manual:{n}", S.FAILED), kind="RUN_FAILED", message="x")
        for n in range(100))

    assert logged_in(alice).get(reverse("home")).context["unread_alerts"] == "99+"


def test_the_list_queries_use_their_indexes(team, alice):
    """At scale, bench/history_scale.py; here, that the planner can take the index at all."""
    # On a near-empty table any index with a sort costs the same; forbidding the sort leaves the
    # planner the one index that reads rows in the list's order, if it can use it.
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute("EXPLAIN SELECT id FROM executor_run WHERE team_id = %s ORDER BY created_at DESC, id DESC "
                       "LIMIT 50", [team.pk])
        plan = " ".join(row[0] for row in cursor.fetchall())
        cursor.execute("RESET enable_seqscan")
        cursor.execute("RESET enable_sort")
    assert "run_team_created" in plan and "Sort" not in plan


def test_the_admin_run_list_counts_runs_only_up_to_the_cap(team, alice, django_user_model, monkeypatch):
    monkeypatch.setattr(paging, "COUNT_CAP", 3)
    version = stop_version(team, alice)
    for n in range(5):
        bare_run(version, f"manual:{n}", S.SUCCEEDED)
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")

    page = logged_in(root).get(reverse("admin:executor_run_changelist"))

    assert page.status_code == 200 and page.context["cl"].result_count == 3
