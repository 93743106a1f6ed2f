"""The team hears about a failed run once, in the app."""

from __future__ import annotations

import pytest
from django.urls import reverse

from executor.models import Notification, Run
from flows.models import Flow, FlowVersion
from tests.team_fixtures import logged_in


@pytest.fixture
def alert(team, alice):
    flow = Flow.objects.create(team=team, name="Treasury report", created_by=alice)
    version = FlowVersion.objects.create(flow=flow, number=1, graph={}, status=FlowVersion.Status.PUBLISHED)
    run = Run.objects.create(team=team, flow=flow, version=version, trigger_key="manual:1", status=Run.Status.FAILED)
    return Notification.objects.create(team=team, run=run, kind=Notification.Kind.RUN_FAILED,
                                       message="step 'report' failed: SMTP refused")


def test_members_see_their_teams_alerts_with_an_unread_count(alert, bob):
    page = logged_in(bob).get(reverse("notifications"))
    assert page.status_code == 200
    assert b"SMTP refused" in page.content
    assert page.context["unread_alerts"] == 1


def test_marking_alerts_read_clears_the_count(alert, bob):
    client = logged_in(bob)
    assert client.post(reverse("notifications")).status_code == 302
    alert.refresh_from_db()
    assert alert.read_at is not None
    assert client.get(reverse("notifications")).context["unread_alerts"] == 0


def test_an_outsider_never_sees_another_teams_alerts(alert, charlie):
    page = logged_in(charlie).get(reverse("notifications"))
    assert b"SMTP refused" not in page.content
    logged_in(charlie).post(reverse("notifications"))
    alert.refresh_from_db()
    assert alert.read_at is None


def test_anonymous_visitors_are_sent_to_log_in(client, alert):
    response = client.get(reverse("notifications"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
