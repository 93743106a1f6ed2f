"""The editor's and run pages' views: what each role may see and do, and what they answer."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from executor.models import Run, StepRun
from flows import actions
from flows.models import Membership
from tests.e2e.editor_helpers import local_chain, sample_graph

pytestmark = pytest.mark.django_db


@pytest.fixture
def flow(team, alice):
    local_chain()
    return actions.create_flow(team, alice, "Payments", graph=sample_graph())


@pytest.fixture
def viewer(team):
    user = get_user_model().objects.create_user("vera", "vera@example.com", "vera-password-1")
    Membership.objects.create(team=team, user=user, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def run(flow, alice):
    version = actions.publish_version(flow, alice)
    run = Run.objects.create(team=flow.team, flow=flow, version=version, trigger_key="manual:1",
                             trigger={"payload": {}}, status=Run.Status.FAILED, error="boom")
    StepRun.objects.create(run=run, step_id="condition_1", status=StepRun.Status.SUCCEEDED,
                           input={"x": 1}, output={"result": True})
    StepRun.objects.create(run=run, step_id="http_request_1", status=StepRun.Status.FAILED, error="refused")
    return run


def as_user(client, user):
    client.force_login(user)
    return client


def post_json(client, url, data, **headers):
    return client.post(url, json.dumps(data), content_type="application/json", **headers)


def test_the_inspector_renders_a_form_for_each_node_type(client, alice, flow):
    as_user(client, alice)
    for node_id in ("manual_1", "condition_1", "http_request_1"):
        response = client.get(f"/flows/{flow.code}/nodes/{node_id}/")
        assert response.status_code == 200, response.content[:2000]
        assert b'id="inspector-form"' in response.content
