"""Runs on a real worker: order, data, branches, joins, retries, failures and dry runs."""

from __future__ import annotations

import socket

import pytest
from standardwebhooks.webhooks import Webhook

from executor.models import Notification, Run, RunEvent, StepRun
from executor.runs.manual import retry_run, start_manual_run
from tests.executor.conftest import edge, make_version, manual, node, steps_of, wait_for_run
from tests.sinks import Reply

S = StepRun.Status
pytestmark = pytest.mark.django_db(transaction=True)


def hook(node_id: str, url: str, body=None, **config) -> dict:
    return node(node_id, "http.request", {"method": "POST", "url": url, "body": body, **config})


def branching_flow(team, user, sink_url: str):
    return make_version(
        team,
        user,
        [
            manual(),
            node("big", "condition", {"expression": "trigger.payload.amount > 10"}),
            node("double", "transform", {"fields": [{"name": "x", "expression": "trigger.payload.amount * 2"}]}),
            hook("tell", f"{sink_url}/tell", {"amount": "{{ trigger.payload.amount }}"}),
            node("both", "join", {}),
            hook("done", f"{sink_url}/done", {"x": "{{ steps.double.output.x }}",
                                               "status": "{{ steps.tell.output.status_code }}"}),
            hook("small", f"{sink_url}/small", {"amount": "{{ trigger.payload.amount }}"}),
            hook("after_small", f"{sink_url}/after_small", {}),
        ],
        [
            edge("start", "big"),
            edge("big", "double", "true"),
            edge("big", "tell", "true"),
            edge("double", "both"),
            edge("tell", "both"),
            edge("both", "done"),
            edge("big", "small", "false"),
            edge("small", "after_small"),
        ],
    )


def test_a_branching_flow_runs_parallel_steps_then_the_join_with_their_data(executor_worker, http_sink, team, alice):
    version = branching_flow(team, alice, http_sink.url)
    run = wait_for_run(start_manual_run(version, {"amount": 21}, user=alice))

    assert run.status == Run.Status.SUCCEEDED, run.error
    steps = steps_of(run)
    assert {k: v.status for k, v in steps.items()} == {
        "big": S.SUCCEEDED, "double": S.SUCCEEDED, "tell": S.SUCCEEDED, "both": S.SUCCEEDED,
        "done": S.SUCCEEDED, "small": S.SKIPPED, "after_small": S.SKIPPED,
    }
    assert steps["big"].port == "true"
    assert steps["both"].output == {"double": {"x": 42}, "tell": steps["tell"].output}
    (done,) = http_sink.to("/done")
    assert done.json() == {"x": 42, "status": 200}
    (tell,) = http_sink.to("/tell")
    assert tell.json() == {"amount": 21}
    # The join ran only after both branches finished.
    assert steps["both"].started_at >= max(steps["double"].finished_at, steps["tell"].finished_at)
    assert http_sink.to("/small") == []


def test_the_false_branch_runs_and_the_true_branch_with_its_join_is_skipped(executor_worker, http_sink, team, alice):
    version = branching_flow(team, alice, http_sink.url)
    run = wait_for_run(start_manual_run(version, {"amount": 3}, user=alice))

    assert run.status == Run.Status.SUCCEEDED, run.error
    statuses = {k: v.status for k, v in steps_of(run).items()}
    assert statuses["small"] == statuses["after_small"] == S.SUCCEEDED
    assert statuses["double"] == statuses["tell"] == statuses["both"] == statuses["done"] == S.SKIPPED
    assert http_sink.to("/small")[0].json() == {"amount": 3}


def test_every_status_change_is_in_the_run_log_in_order(executor_worker, http_sink, team, alice):
    version = branching_flow(team, alice, http_sink.url)
    run = wait_for_run(start_manual_run(version, {"amount": 21}, user=alice))

    events = list(RunEvent.objects.filter(run=run).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert (events[0].kind, events[0].data["status"]) == ("run.status", "QUEUED")
    assert (events[-1].kind, events[-1].data["status"]) == ("run.status", "SUCCEEDED")
    done = [e.data["status"] for e in events if e.kind == "step.status" and e.data["step"] == "done"]
    assert done == ["QUEUED", "RUNNING", "SUCCEEDED"]


def test_outgoing_requests_are_signed_so_the_receiver_can_verify_them(executor_worker, http_sink, team, alice):
    version = make_version(team, alice, [manual(), hook("tell", f"{http_sink.url}/signed", {"hello": "world"})],
                           [edge("start", "tell")])
    run = wait_for_run(start_manual_run(version, {}, user=alice))

    (request,) = http_sink.to("/signed")
    assert Webhook(version.flow.signing_secret).verify(request.body, request.headers) == {"hello": "world"}
    assert request.headers["Idempotency-Key"] == f"{run.code}:tell"
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 32).verify(request.body, request.headers)


def test_a_failing_step_is_retried_with_backoff_until_it_succeeds(executor_worker, http_sink, team, alice):
    http_sink.script("/flaky", Reply(status=503), Reply(status=502))
    version = make_version(
        team, alice,
        [manual(), hook("call", f"{http_sink.url}/flaky", {"n": 1}, retry={"max_attempts": 3, "backoff_seconds": 1})],
        [edge("start", "call")],
    )
    run = wait_for_run(start_manual_run(version, {}, user=alice))

    assert run.status == Run.Status.SUCCEEDED
    requests = http_sink.to("/flaky")
    assert len(requests) == 3
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 1
    gaps = [b.at - a.at for a, b in zip(requests, requests[1:], strict=False)]
    # Backoff of 1 s then 2 s, each jittered down to no less than half.
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0
    row = steps_of(run)["call"]
    assert row.attempt == 3 and row.output["status_code"] == 200


def test_a_permanent_error_is_not_retried_and_fails_the_run_with_one_notification(
    executor_worker, http_sink, team, alice
):
    http_sink.script("/gone", Reply(status=404, body={"error": "no such thing"}))
    version = make_version(
        team, alice,
        [manual(), hook("call", f"{http_sink.url}/gone", {}, retry={"max_attempts": 5, "backoff_seconds": 1}),
         hook("next", f"{http_sink.url}/next", {})],
        [edge("start", "call"), edge("call", "next")],
    )
    run = wait_for_run(start_manual_run(version, {}, user=alice))

    assert run.status == Run.Status.FAILED
    assert "404" in run.error
    assert len(http_sink.to("/gone")) == 1
    assert steps_of(run)["next"].status == S.CANCELLED
    assert Notification.objects.filter(run=run, team=team, kind=Notification.Kind.RUN_FAILED).count() == 1


def test_a_failure_with_an_error_branch_takes_it_and_the_run_succeeds(executor_worker, http_sink, team, alice):
    http_sink.script("/broken", Reply(status=500))
    version = make_version(
        team, alice,
        [manual(), hook("call", f"{http_sink.url}/broken", {}),
         hook("on_ok", f"{http_sink.url}/ok", {}),
         hook("on_error", f"{http_sink.url}/error", {"why": "{{ steps.call.error }}"})],
        [edge("start", "call"), edge("call", "on_ok"), edge("call", "on_error", "error")],
    )
    run = wait_for_run(start_manual_run(version, {}, user=alice))

    assert run.status == Run.Status.SUCCEEDED
    steps = steps_of(run)
    assert (steps["call"].status, steps["call"].port) == (S.FAILED, "error")
    assert steps["on_ok"].status == S.SKIPPED
    assert "500" in http_sink.to("/error")[0].json()["why"]
    assert not Notification.objects.filter(run=run).exists()


def test_a_failed_run_can_be_retried_and_keeps_what_already_succeeded(executor_worker, http_sink, team, alice):
    http_sink.script("/once", Reply(status=400))
    version = make_version(
        team, alice,
        [manual(), hook("first", f"{http_sink.url}/first", {}), hook("second", f"{http_sink.url}/once", {})],
        [edge("start", "first"), edge("first", "second")],
    )
    run = wait_for_run(start_manual_run(version, {}, user=alice))
    assert run.status == Run.Status.FAILED

    run = wait_for_run(retry_run(run))

    assert run.status == Run.Status.SUCCEEDED
    assert len(http_sink.to("/first")) == 1
    assert len(http_sink.to("/once")) == 2


def test_a_dry_run_records_what_it_would_send_without_sending(executor_worker, http_sink, team, alice):
    from flows.models import Secret

    secret = Secret(team=team, name="API_TOKEN")
    secret.set_value("tok-very-secret-123")
    secret.save()
    version = make_version(
        team, alice,
        [manual(), hook("call", f"{http_sink.url}/dry", {"a": "{{ trigger.payload.a }}"},
                        headers={"Authorization": "Bearer {{ secrets.API_TOKEN }}"})],
        [edge("start", "call")],
    )
    run = wait_for_run(start_manual_run(version, {"a": 7}, user=alice, dry_run=True))

    assert run.status == Run.Status.SUCCEEDED
    assert http_sink.to("/dry") == []
    would = steps_of(run)["call"].output["would_send"]
    assert (would["method"], would["url"], would["body"]) == ("POST", f"{http_sink.url}/dry", '{"a":7}')
    assert would["headers"]["Authorization"] == "Bearer [secret API_TOKEN]"
    everything = str(list(StepRun.objects.filter(run=run).values())) + str(list(RunEvent.objects.values()))
    assert "tok-very-secret-123" not in everything


def test_notify_steps_use_each_services_request_format(executor_worker, http_sink, smtp_sink, team, alice):
    from flows.models import Secret

    token = Secret(team=team, name="BOT_TOKEN")
    token.set_value("123:bot-secret")
    token.save()
    http_sink.script("/telegram/bot123:bot-secret/sendMessage", Reply(body={"ok": True, "result": {"message_id": 9}}))
    http_sink.script("/discord", Reply(body={"id": "555"}))
    version = make_version(
        team, alice,
        [
            manual(),
            node("slack", "notify.slack", {"webhook_url": f"{http_sink.url}/slack", "text": "hi {{ trigger.payload.who }}"}),
            node("discord", "notify.discord", {"webhook_url": f"{http_sink.url}/discord", "content": "yo"}),
            node("tg", "notify.telegram", {"bot_token_secret": "BOT_TOKEN", "chat_id": "42", "text": "hey"}),
            node("mail", "notify.email", {"to": ["ops@example.com"], "subject": "Alert", "body": "for {{ trigger.payload.who }}"}),
        ],
        [edge("start", "slack"), edge("start", "discord"), edge("start", "tg"), edge("start", "mail")],
    )
    run = wait_for_run(start_manual_run(version, {"who": "ann"}, user=alice))

    assert run.status == Run.Status.SUCCEEDED, run.error
    assert http_sink.to("/slack")[0].json() == {"text": "hi ann"}
    discord = http_sink.to("/discord")[0]
    assert discord.path == "/discord?wait=true" and discord.json() == {"content": "yo"}
    assert http_sink.to("/telegram/bot123:bot-secret/sendMessage")[0].json() == {"chat_id": "42", "text": "hey"}
    assert steps_of(run)["tg"].output == {"message_id": 9}
    (mail,) = smtp_sink.wait_for(1)
    assert mail["to"] == ["ops@example.com"] and "for ann" in mail["data"] and "Subject: Alert" in mail["data"]
    assert "bot-secret" not in str(list(StepRun.objects.filter(run=run).values()))


def test_a_request_cut_off_after_it_was_sent_is_not_reported_as_a_failure_to_connect(
    executor_worker, http_sink, team, alice
):
    http_sink.script("/cut", Reply(hang_up=True))  # then 200
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nobody listens on
    version = make_version(
        team, alice,
        [manual(), hook("cut", f"{http_sink.url}/cut", {}, retry={"max_attempts": 2, "backoff_seconds": 1}),
         hook("nobody", f"http://127.0.0.1:{closed.getsockname()[1]}/", {})],
        [edge("start", "cut"), edge("cut", "nobody")],
    )
    try:
        run = wait_for_run(start_manual_run(version, {}, user=alice))
    finally:
        closed.close()

    # The first attempt reached the server, which hung up: said so, and retried like any transient failure.
    assert len(http_sink.to("/cut")) == 2
    retried = RunEvent.objects.get(run=run, kind="step.status", data__step="cut", data__status="QUEUED",
                                   data__has_key="retry_at")
    assert retried.data["error"].startswith("the connection broke before an answer (the request may have been")
    assert steps_of(run)["cut"].status == S.SUCCEEDED
    # Nothing listening: the request never left.
    assert steps_of(run)["nobody"].error.startswith("could not connect")
    assert run.status == Run.Status.FAILED
