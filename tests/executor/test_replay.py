"""Replay and backtest over past blocks."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from executor.models import Run
from executor.replay import ReplayError, replay_blocks
from kwala_site.dev.devchain import transact
from tests.executor.chainkit import BIG, deploy_zoo, event_graph, listener_for, make_chain, publish


@pytest.fixture
def history(anvil_a, team, alice):
    w3 = anvil_a.web3()
    zoo = deploy_zoo(w3)
    chain = make_chain(anvil_a)
    first = w3.eth.block_number + 1
    for _ in range(3):
        transact(w3, zoo.functions.emitBatch(2))
    version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address], condition="trigger.args.id != 4"))
    return chain, version, first, w3.eth.block_number


def test_a_replay_creates_the_missed_runs_once(history):
    chain, version, first, last = history
    result = replay_blocks(version, chain, first, last, dry_run=False)
    assert (result.logs_seen, result.matched, len(result.run_ids)) == (6, 5, 5)
    assert replay_blocks(version, chain, first, last, dry_run=False).run_ids == []
    runs = Run.objects.filter(version=version)
    assert sorted(r.trigger["args"]["id"] for r in runs) == [0, 1, 2, 3, 5]
    assert all(r.trigger_key.startswith("log:31337:") and not r.dry_run for r in runs)


def test_a_dry_run_never_collides_with_live_runs(history):
    chain, version, first, last = history
    replay_blocks(version, chain, first, last, dry_run=False)
    dry = replay_blocks(version, chain, first, last, dry_run=True)
    assert len(dry.run_ids) == 5
    dry_runs = Run.objects.filter(pk__in=dry.run_ids)
    assert all(r.dry_run and r.trigger_key.startswith("replay:") for r in dry_runs)
    assert len(replay_blocks(version, chain, first, last, dry_run=True).run_ids) == 5  # a new backtest


def test_live_listening_after_a_replay_does_not_duplicate(history):
    chain, version, first, last = history
    listener = listener_for(chain)
    from executor.listener import start_cursor_at

    start_cursor_at(chain, listener.client.get_block(first - 1))
    replay_blocks(version, chain, first, last, dry_run=False)
    listener.step()
    assert Run.objects.filter(version=version).count() == 5


def test_bad_ranges_are_clear_errors(history):
    chain, version, first, last = history
    with pytest.raises(ReplayError, match="after"):
        replay_blocks(version, chain, last, first, dry_run=True)
    with pytest.raises(ReplayError, match="at most"):
        replay_blocks(version, chain, 0, 10**9, dry_run=True)
    with pytest.raises(ReplayError, match="beyond the chain head"):
        replay_blocks(version, chain, first, last + 100, dry_run=True)


def test_the_command_reports_and_refuses_bad_input(history, capsys):
    chain, version, first, last = history
    call_command("replay", version.flow.code, "--from", str(first), "--to", str(last), "--dry-run")
    assert "6 log(s)" in capsys.readouterr().out and Run.objects.filter(dry_run=True).count() == 5
    with pytest.raises(CommandError, match="No flow"):
        call_command("replay", "nope", "--from", "1", "--to", "2")
    with pytest.raises(CommandError, match="after"):
        call_command("replay", version.flow.code, "--from", "5", "--to", "2")


def test_a_backtest_job_run_twice_creates_its_dry_runs_once_and_the_sweeper_resends_a_lost_one(history, alice):
    from datetime import timedelta

    from django.utils import timezone

    from executor.models import ReplayJob
    from executor.runs.manual import request_replay, run_replay_job
    from executor.sweeper import sweep

    chain, version, first, last = history
    job = request_replay(version, first, last, dry_run=True, user=alice)
    # Its message was lost: after the grace period the sweeper sends it again.
    ReplayJob.objects.filter(pk=job.pk).update(queued_at=timezone.now() - timedelta(minutes=5))
    assert sweep(grace_seconds=1)["replay_jobs"] == 1
    run_replay_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.matched, len(job.run_codes)) == (ReplayJob.Status.SUCCEEDED, 5, 5)
    # A worker died in it and the sweeper queued it again: running it again adds no run.
    ReplayJob.objects.filter(pk=job.pk).update(status=ReplayJob.Status.QUEUED)
    run_replay_job(job.pk)
    assert Run.objects.filter(version=version, dry_run=True).count() == 5
    run_replay_job(job.pk)  # a duplicate delivery of a finished job does nothing
    assert ReplayJob.objects.get(pk=job.pk).status == ReplayJob.Status.SUCCEEDED


def test_a_replay_request_that_cannot_work_is_refused_before_it_is_queued(history, alice):
    from executor.models import ReplayJob
    from executor.runs.manual import request_replay

    chain, version, first, last = history
    with pytest.raises(ReplayError, match="after"):
        request_replay(version, last, first, dry_run=True, user=alice)
    assert not ReplayJob.objects.exists()
