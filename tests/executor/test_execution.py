"""The execution model: logic inline, side effects queued, the log written in batches (see docs/dag.md).

These drive executor.runs in the test's own process and transaction, so
nothing is sent to a broker; what matters is what PostgreSQL holds.
"""

from __future__ import annotations

import ipaddress
import json
import threading

import pytest
from django.db import connection

from executor import ssrf
from executor.models import Run, RunEvent, StepRun
from executor.runs import engine, start
from executor.runs.manual import start_manual_run
from executor.runs.store import RunLog, record_run_events
from tests.executor.conftest import edge, make_version, manual, node, steps_of
from tests.sinks import Reply

S = StepRun.Status


def hook(node_id: str) -> dict:
    return node(node_id, "http.request", {"method": "POST", "url": f"http://127.0.0.1:9/{node_id}", "body": {}})


def branching(team, user):
    return make_version(
        team, user,
        [
            manual(),
            node("big", "condition", {"expression": "trigger.payload.amount > 10"}),
            node("double", "transform", {"fields": [{"name": "x", "expression": "trigger.payload.amount * 2"}]}),
            hook("tell"),
            node("small_note", "transform", {"fields": [{"name": "y", "expression": "1"}]}),
            hook("small"),
        ],
        [
            edge("start", "big"),
            edge("big", "double", "true"),
            edge("double", "tell"),
            edge("big", "small_note", "false"),
            edge("small_note", "small"),
        ],
    )


def log_of(run: Run) -> list[tuple[str, str | None, str]]:
    return [(e.kind, e.data.get("step"), e.data["status"]) for e in RunEvent.objects.filter(run=run).order_by("seq")]


@pytest.mark.django_db
def test_logic_steps_run_inline_and_the_untaken_branch_is_skipped_in_one_pass(team, alice):
    run = start_manual_run(branching(team, alice), {"amount": 21}, user=alice)

    start.start_run(run.pk)

    steps = steps_of(run)
    assert (steps["big"].status, steps["big"].port, steps["big"].output) == (S.SUCCEEDED, "true", {"result": True})
    assert (steps["double"].status, steps["double"].output) == (S.SUCCEEDED, {"x": 42})
    assert steps["double"].started_at >= steps["big"].finished_at
    assert steps["small_note"].status == steps["small"].status == S.SKIPPED
    # Only the action waits for a worker.
    assert steps["tell"].status == S.QUEUED
    log = log_of(run)
    assert log[:3] == [("run.status", None, "QUEUED"), ("run.status", None, "RUNNING"),
                       ("step.status", "big", "SUCCEEDED")]
    # One event per step, each after the step it depends on (the order between branches is the compiler's).
    assert sorted(log[3:]) == [("step.status", "double", "SUCCEEDED"), ("step.status", "small", "SKIPPED"),
                               ("step.status", "small_note", "SKIPPED"), ("step.status", "tell", "QUEUED")]
    assert log.index(("step.status", "double", "SUCCEEDED")) < log.index(("step.status", "tell", "QUEUED"))
    assert log.index(("step.status", "small_note", "SKIPPED")) < log.index(("step.status", "small", "SKIPPED"))
    assert [e.seq for e in RunEvent.objects.filter(run=run).order_by("seq")] == list(range(1, 8))


@pytest.mark.django_db
def test_start_run_delivered_twice_runs_each_step_once(team, alice):
    run = start_manual_run(branching(team, alice), {"amount": 3}, user=alice)

    start.start_run(run.pk)
    first = log_of(run)
    start.start_run(run.pk)

    assert log_of(run) == first
    assert StepRun.objects.filter(run=run).count() == 5
    steps = steps_of(run)
    assert [steps[s].attempt for s in ("big", "small_note")] == [1, 1]
    assert steps["small"].status == S.QUEUED and steps["tell"].status == S.SKIPPED


@pytest.mark.django_db
def test_an_inline_stop_ends_the_run_and_cancels_what_was_queued(team, alice):
    version = make_version(
        team, alice,
        [manual(), hook("first"), node("halt", "stop", {"fail": True, "message": "no more"})],
        [edge("start", "first"), edge("start", "halt")],
    )
    run = start_manual_run(version, {}, user=alice)

    start.start_run(run.pk)

    run.refresh_from_db()
    assert (run.status, run.error) == (Run.Status.FAILED, "no more")
    steps = steps_of(run)
    assert steps["halt"].status == S.SUCCEEDED
    assert steps["first"].status == S.CANCELLED
    assert log_of(run)[-1] == ("run.status", None, "FAILED")


@pytest.mark.django_db
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_failed_run_alerts_the_team_once_but_a_failed_dry_run_does_not(team, alice, dry_run):
    from executor.models import Notification

    version = make_version(team, alice, [manual(), node("halt", "stop", {"fail": True, "message": "no more"})],
                           [edge("start", "halt")])
    run = start_manual_run(version, {}, user=alice, dry_run=dry_run)
    start.start_run(run.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    # A test run that fails is the editor's answer, not an incident: it stays off the Alerts page.
    assert Notification.objects.filter(run=run).count() == (0 if dry_run else 1)


@pytest.mark.django_db(transaction=True)
def test_the_failure_webhook_is_told_of_a_failed_run_and_one_it_cannot_reach_is_counted(team, alice, http_sink,
                                                                                       settings):
    from executor.models import Notification
    from kwala_site import counters

    version = make_version(team, alice, [manual(), node("halt", "stop", {"fail": True, "message": "no more"})],
                           [edge("start", "halt")])
    settings.KWALA_FAILURE_WEBHOOK_URL = f"{http_sink.url}/failed"
    told = start_manual_run(version, {}, user=alice)
    start.start_run(told.pk)  # outside a transaction: the webhook is told once the failure is committed
    (posted,) = http_sink.to("/failed")
    assert posted.json()["run"] == str(told.code) and "no more" in posted.json()["text"]

    settings.KWALA_FAILURE_WEBHOOK_URL = "http://127.0.0.1:9/failed"  # nothing listens there
    before = counters.read().get("failure_webhook_failed", 0)
    untold = start_manual_run(version, {}, user=alice)
    start.start_run(untold.pk)
    untold.refresh_from_db()
    assert untold.status == Run.Status.FAILED
    assert Notification.objects.filter(run=untold).count() == 1  # the team still sees it
    assert counters.read()["failure_webhook_failed"] == before + 1


@pytest.mark.django_db
def test_a_broken_inline_expression_fails_the_step_and_the_run(team, alice):
    version = make_version(
        team, alice,
        [manual(), node("check", "condition", {"expression": "trigger.payload.missing.deeper > 1"}), hook("after")],
        [edge("start", "check"), edge("check", "after", "true")],
    )
    run = start_manual_run(version, {}, user=alice)

    start.start_run(run.pk)

    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert steps_of(run)["check"].status == S.FAILED
    assert steps_of(run)["after"].status == S.CANCELLED


@pytest.mark.django_db
def test_events_written_together_get_consecutive_seqs_in_the_order_added(team, alice):
    run = start_manual_run(branching(team, alice), {}, user=alice)
    log = RunLog(run)
    for index in range(5):
        log.add("note", {"status": "x", "n": index})

    written = log.flush()

    assert [e.seq for e in written] == [2, 3, 4, 5, 6]
    stored = list(RunEvent.objects.filter(run=run, kind="note").order_by("seq"))
    assert [(e.seq, e.data["n"]) for e in stored] == [(2, 0), (3, 1), (4, 2), (5, 3), (6, 4)]
    run.refresh_from_db()
    assert run.event_seq == 6


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_share_or_skip_a_seq(team, alice):
    version = branching(team, alice)
    # Not dispatched: a session worker must not add events of its own.
    run = Run.objects.create(team=team, flow=version.flow, version=version, trigger_key="test:seqs")
    run = Run.objects.select_related("flow").get(pk=run.pk)

    def write(batch: int) -> None:
        try:
            for index in range(20):
                record_run_events(run, [("note", {"status": "x", "w": batch, "n": index})] * (1 + index % 3))
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(b,)) for b in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 4 * sum(1 + i % 3 for i in range(20))


def test_connection_pools_are_kept_per_name_and_address():
    address = ipaddress.ip_address("127.0.0.1")
    one = ssrf.Target(url="http://a.test/", scheme="http", host="a.test", port=80, address=address)
    again = ssrf.Target(url="http://a.test/other", scheme="http", host="a.test", port=80, address=address)
    other_name = ssrf.Target(url="http://b.test/", scheme="http", host="b.test", port=80, address=address)

    assert ssrf.pooled_transport(one) is ssrf.pooled_transport(again)
    # A connection checked for one name is never reused for another name on the same address.
    assert ssrf.pooled_transport(one) is not ssrf.pooled_transport(other_name)


def test_threads_calling_one_host_keep_their_connections_alive(http_sink):
    """More threads than httpcore keeps idle connections for, on one host: with the pool's
    keep-alive limit below its connection limit, every pass of httpcore's pool closed all idle
    connections once there were more than that many (httpcore 1.0.9's surplus check counts every
    connection, encode/httpcore#1110), even one just handed to a waiting request, which then
    failed ("[Errno 9] Bad file descriptor", or a reset). 16 threads × 40 requests opened ~500
    connections; the session's pool keeps one per concurrent caller."""
    callers, each = 16, 40
    http_sink.script("/pooled", *[Reply(delay=0.001 * (n % 6)) for n in range(callers * each)])
    failures = []

    def call():
        for _ in range(each):
            target = ssrf.resolve(f"{http_sink.url}/pooled")
            request = ssrf.build_request(target, "POST", headers={}, content=b"{}", timeout=10)
            try:
                response = ssrf.send(target, request)
                response.read()
                response.close()
            except Exception as exc:  # noqa: BLE001 (every failure is the finding)
                failures.append(repr(exc))

    threads = [threading.Thread(target=call) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert len(http_sink.to("/pooled")) == callers * each
    # One connection per caller, and a few more when two waiting requests were offered the same one.
    assert http_sink.connections <= 2 * callers


@pytest.mark.django_db
def test_integers_beyond_javascripts_exact_range_go_out_as_strings(team, alice):
    """1500000000000000000000 wei went out as a JSON number, which JavaScript receivers round."""
    body = {"value": "{{ trigger.payload.value }}", "small": "{{ trigger.payload.small }}",
            "list": "{{ trigger.payload.list }}", "flag": True}
    version = make_version(team, alice, [manual(), node("post", "http.request",
                                                        {"method": "POST", "url": "http://127.0.0.1:9/x", "body": body})],
                           [edge("start", "post")])
    payload = {"value": 1500000000000000000000, "small": 7, "list": [2**53, -(2**60), 2**53 - 1]}
    run = start_manual_run(version, payload, user=alice, dry_run=True)
    start.start_run(run.pk)
    engine.run_step(steps_of(run)["post"].pk)  # a dry run: recorded, not sent
    sent = json.loads(steps_of(run)["post"].output["would_send"]["body"])
    assert sent == {"value": "1500000000000000000000", "small": 7,
                    "list": ["9007199254740992", "-1152921504606846976", 9007199254740991], "flag": True}
