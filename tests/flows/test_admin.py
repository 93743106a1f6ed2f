from __future__ import annotations

from django.contrib.auth.models import Permission
from django.urls import reverse

from flows import audit
from flows.actions import do_create_flow
from flows.models import Flow, Membership, Secret
from tests.team_fixtures import logged_in


def make_staff(user, *models):
    user.is_staff = True
    user.save()
    for codename in models:
        user.user_permissions.add(Permission.objects.get(codename=codename))


def test_staff_who_are_not_superusers_see_only_their_teams_objects(alice, charlie, team):
    do_create_flow(team, alice, "Acme flow")
    do_create_flow(Membership.objects.get(user=charlie).team, charlie, "Other flow")
    make_staff(alice, "view_flow", "change_flow", "view_auditevent", "view_secret")
    page = logged_in(alice).get(reverse("admin:flows_flow_changelist")).content
    assert b"Acme flow" in page and b"Other flow" not in page
    other = Flow.objects.get(name="Other flow")
    assert logged_in(alice).get(reverse("admin:flows_flow_change", args=[other.pk])).status_code == 302


def test_a_superuser_sees_every_team(alice, charlie, team, django_user_model):
    do_create_flow(Membership.objects.get(user=charlie).team, charlie, "Other flow")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    assert b"Other flow" in logged_in(root).get(reverse("admin:flows_flow_changelist")).content


def test_the_audit_log_is_read_only_in_the_admin(alice, team, django_user_model):
    event = audit.record(team, alice, "team.created", "Acme DAO")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    client = logged_in(root)
    page = client.get(reverse("admin:flows_auditevent_change", args=[event.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    client.post(reverse("admin:flows_auditevent_delete", args=[event.pk]), {"post": "yes"})
    assert audit.events_for(team).count() == 1


def test_secret_values_are_never_shown_in_the_admin(alice, team, django_user_model):
    secret = Secret(team=team, name="SLACK_URL")
    secret.set_value("canary-admin-value")
    secret.save()
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    page = logged_in(root).get(reverse("admin:flows_secret_change", args=[secret.pk])).content
    assert b"SLACK_URL" in page
    assert b"canary-admin-value" not in page and secret.value_encrypted.encode() not in page


def test_the_pause_action_pauses_flows(alice, team, django_user_model):
    flow = do_create_flow(team, alice, "To pause")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    logged_in(root).post(
        reverse("admin:flows_flow_changelist"), {"action": "pause_flows", "_selected_action": [flow.pk]}
    )
    flow.refresh_from_db()
    assert flow.paused


def test_a_chain_cursor_can_be_reset_to_a_block(chains, django_user_model):
    from executor.models import ChainCursor

    cursor = ChainCursor.objects.create(chain=chains[0], block_number=500, block_hash="0xabc", halted=True,
                                        recent_blocks=[[500, "0xabc", "0xdef"]])
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    logged_in(root).post(
        reverse("admin:executor_chaincursor_changelist"),
        {"action": "reset_cursor", "_selected_action": [cursor.pk], "block_number": "120"},
    )
    cursor.refresh_from_db()
    assert (cursor.block_number, cursor.recent_blocks, cursor.halted) == (120, [], False)


def test_the_admin_finds_runs_by_tx_hash(alice, team, django_user_model, chains):
    from executor.models import Event, Run

    flow = do_create_flow(team, alice, "Runs")
    event = Event.objects.create(chain=chains[0], block_number=1, block_hash="0x" + "1" * 64, log_index=0,
                                 tx_hash="0x" + "ab" * 32, address="0x" + "0" * 40)
    Run.objects.create(team=team, flow=flow, version=flow.versions.get(), trigger_key="log:1", event=event)
    Run.objects.create(team=team, flow=flow, version=flow.versions.get(), trigger_key="log:2")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    page = logged_in(root).get(reverse("admin:executor_run_changelist"), {"q": "0x" + "ab" * 32})
    assert page.context["cl"].result_count == 1


def test_the_retry_action_retries_failed_runs_and_reports_the_others(alice, team, django_user_model):
    from executor.models import Run, StepRun

    flow = do_create_flow(team, alice, "Runs", graph={
        "nodes": [{"id": "t", "type": "manual", "config": {}},
                  {"id": "h", "type": "http.request", "config": {"url": "https://example.com/x"}}],
        "edges": [{"source": "t", "source_port": "out", "target": "h"}]})
    from flows.actions import do_publish_version

    version = do_publish_version(flow, alice)
    failed = Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:1",
                                status=Run.Status.FAILED, error="boom")
    StepRun.objects.create(run=failed, step_id="h", status=StepRun.Status.FAILED, attempt=2, error="HTTP 500")
    done = Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:2",
                              status=Run.Status.SUCCEEDED)
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pw-123")
    response = logged_in(root).post(
        reverse("admin:executor_run_changelist"),
        {"action": "retry_failed_runs", "_selected_action": [failed.pk, done.pk]}, follow=True,
    )
    shown = [str(m) for m in response.context["messages"]]
    assert "Retried 1 run(s)." in shown and any(str(done.code) in m and "Only a failed run" in m for m in shown)
    failed.refresh_from_db()
    done.refresh_from_db()
    assert (failed.status, done.status) == (Run.Status.RUNNING, Run.Status.SUCCEEDED)
    assert failed.steps.get().status == StepRun.Status.QUEUED
    # The team sees that an operator retried its run.
    (entry,) = audit.events_for(team, action="run.retried")
    assert (entry.actor, entry.target) == (root, str(failed.code))


def test_staff_without_the_change_permission_cannot_retry_runs(alice, team):
    from executor.models import Run

    flow = do_create_flow(team, alice, "Runs")
    run = Run.objects.create(team=team, flow=flow, version=flow.versions.get(), trigger_key="manual:1",
                             status=Run.Status.FAILED)
    make_staff(alice, "view_run")
    client = logged_in(alice)
    client.post(reverse("admin:executor_run_changelist"), {"action": "retry_failed_runs", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED


def test_team_scoped_staff_see_no_other_team_s_name_in_the_filters(alice, charlie, team):
    do_create_flow(team, alice, "Acme flow")
    do_create_flow(Membership.objects.get(user=charlie).team, charlie, "Other flow")
    make_staff(alice, "view_flow", "view_auditevent", "view_run")
    for name in ("admin:flows_flow_changelist", "admin:flows_auditevent_changelist", "admin:executor_run_changelist"):
        page = logged_in(alice).get(reverse(name)).content.decode()
        assert "Other DAO" not in page, name


def test_staff_who_are_not_superusers_cannot_see_or_change_chains_or_their_endpoints(alice, chains):
    from executor.models import Chain

    make_staff(alice, "view_chain", "change_chain", "add_chain", "view_rpcendpoint", "change_rpcendpoint",
               "view_chaincursor", "change_chaincursor")
    chain = Chain.objects.first()
    client = logged_in(alice)
    assert client.get(reverse("admin:executor_chain_changelist")).status_code == 403
    assert client.get(reverse("admin:executor_chain_change", args=[chain.pk])).status_code == 403
    assert client.post(reverse("admin:executor_chain_add"), {"slug": "evil", "name": "Evil", "chain_id": 666}
                       ).status_code == 403
    assert client.get(reverse("admin:executor_chaincursor_changelist")).status_code == 403
    assert not Chain.objects.filter(slug="evil").exists()
    assert "Chains" not in client.get(reverse("admin:index")).content.decode()
