"""Drafts, publishing and rollback: the versioning rules the editor and API rely on."""

from __future__ import annotations

import copy
import threading
from contextlib import contextmanager

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction

from executor.models import Chain
from flows import actions
from flows.graph import CompileError
from flows.models import AuditEvent, FlowVersion

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def transfer_graph(threshold: int = 10) -> dict:
    return {
        "nodes": [
            {
                "id": "transfer",
                "type": "chain.event",
                "name": "Big transfer",
                "position": {"x": 0, "y": 0},
                "config": {
                    "chain": 31337,
                    "addresses": [TOKEN],
                    "event": "Transfer(address indexed from, address indexed to, uint256 value)",
                },
            },
            {
                "id": "big",
                "type": "condition",
                "name": "Is it big?",
                "position": {"x": 250, "y": 0},
                "config": {"expression": f"trigger.args.value > {threshold}"},
            },
            {
                "id": "hook",
                "type": "http.request",
                "name": "Tell the sink",
                "position": {"x": 500, "y": 0},
                "config": {"method": "POST", "url": "https://example.com/hook", "body": {"v": "{{ trigger.args.value }}"}},
            },
        ],
        "edges": [
            {"source": "transfer", "source_port": "out", "target": "big"},
            {"source": "big", "source_port": "true", "target": "hook"},
        ],
    }


@contextmanager
def trigger_notices():
    """A LISTEN on the triggers channel; yields `next_notices(timeout)` -> the payloads that arrived."""
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as listener:
        listener.execute(f"LISTEN {actions.TRIGGERS_CHANNEL}")
        yield lambda timeout=2.0: [n.payload for n in listener.notifies(timeout=timeout, stop_after=1)]


@pytest.fixture
def chain(db):
    return Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)


@pytest.fixture
def flow(team, alice, chain):
    return actions.do_create_flow(team, alice, "Whale alert", graph=transfer_graph())


def test_a_new_flow_has_one_draft(flow):
    assert list(flow.versions.values_list("number", "status")) == [(1, "DRAFT")]


def test_saving_over_a_stale_revision_is_refused_and_writes_nothing(flow, alice, bob):
    opened_at = flow.revision
    actions.do_save_draft(flow, alice, transfer_graph(20), revision=opened_at)

    with pytest.raises(actions.ConflictError) as caught:
        actions.do_save_draft(flow, bob, transfer_graph(30), revision=opened_at)
    assert caught.value.current_revision == opened_at + 1
    assert "changed elsewhere" in str(caught.value)
    draft = flow.versions.get(status=FlowVersion.Status.DRAFT)
    assert draft.graph["nodes"][1]["config"]["expression"] == "trigger.args.value > 20"


def test_publishing_compiles_the_draft_and_makes_it_live(flow, alice):
    version = actions.do_publish_version(flow, alice)
    assert version.status == FlowVersion.Status.PUBLISHED
    assert version.published_at is not None
    assert version.dag["trigger"]["chain_id"] == 31337
    assert [step["id"] for step in version.dag["steps"]] == ["big", "hook"]


def test_publishing_the_next_version_retires_the_previous_one(flow, alice):
    first = actions.do_publish_version(flow, alice)
    actions.do_save_draft(flow, alice, transfer_graph(99), revision=flow.revision)
    second = actions.do_publish_version(flow, alice)
    first.refresh_from_db()
    assert (first.number, first.status) == (1, FlowVersion.Status.ARCHIVED)
    assert (second.number, second.status) == (2, FlowVersion.Status.PUBLISHED)
    assert flow.versions.filter(status=FlowVersion.Status.PUBLISHED).count() == 1


def test_a_published_version_is_never_edited_by_a_save(flow, alice):
    live = actions.do_publish_version(flow, alice)
    published_graph = copy.deepcopy(live.graph)
    draft = actions.do_save_draft(flow, alice, transfer_graph(5), revision=flow.revision)
    live.refresh_from_db()
    assert draft.pk != live.pk and draft.number == 2
    assert live.graph == published_graph


def test_a_draft_that_does_not_compile_is_saved_but_not_published(flow, alice):
    broken = transfer_graph()
    broken["nodes"][2]["config"]["url"] = ""
    actions.do_save_draft(flow, alice, broken, revision=flow.revision)
    with pytest.raises(CompileError) as caught:
        actions.do_publish_version(flow, alice)
    assert any(problem.node_id == "hook" for problem in caught.value.problems)
    assert not flow.versions.filter(status=FlowVersion.Status.PUBLISHED).exists()


def test_publishing_with_nothing_new_is_a_clear_error(flow, alice):
    actions.do_publish_version(flow, alice)
    with pytest.raises(actions.NothingToPublish):
        actions.do_publish_version(flow, alice)


def test_unpublish_archives_the_live_version(flow, alice):
    actions.do_publish_version(flow, alice)
    archived = actions.do_unpublish_flow(flow, alice)
    assert archived.status == FlowVersion.Status.ARCHIVED
    assert actions.live_version(flow) is None
    assert actions.do_unpublish_flow(flow, alice) is None


def test_rollback_makes_a_draft_of_an_old_version(flow, alice):
    first = actions.do_publish_version(flow, alice)
    actions.do_save_draft(flow, alice, transfer_graph(77), revision=flow.revision)
    actions.do_publish_version(flow, alice)
    draft = actions.do_rollback_to(flow, alice, first)
    assert draft.status == FlowVersion.Status.DRAFT
    assert draft.graph == first.graph
    assert actions.do_publish_version(flow, alice).number == 3


def test_creating_a_flow_and_rolling_it_back_are_in_the_audit_log(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Audited", graph=transfer_graph())
    first = actions.do_publish_version(flow, alice)
    actions.do_save_draft(flow, alice, transfer_graph(77), revision=flow.revision)
    actions.do_publish_version(flow, alice)
    actions.do_rollback_to(flow, alice, first)

    entries = list(AuditEvent.objects.filter(team=team).order_by("pk").values_list("action", "data"))
    assert [action for action, _ in entries] == ["flow.created", "flow.published", "flow.published",
                                                 "flow.rolled_back"]
    assert entries[0][1] == {"flow": flow.code}
    assert entries[-1][1] == {"flow": flow.code, "version": 1, "draft": 3}


@pytest.mark.django_db(transaction=True)
def test_publish_is_announced_to_listeners_only_when_it_commits(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Announced", graph=transfer_graph())
    with trigger_notices() as next_notices:
        actions.do_publish_version(flow, alice)
        assert next_notices() == [flow.code]


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_publishes_leave_exactly_one_live_version(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Raced", graph=transfer_graph())
    errors = []

    def publish():
        try:
            actions.do_publish_version(flow, alice)
        except actions.NothingToPublish as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1
    assert flow.versions.filter(status=FlowVersion.Status.PUBLISHED).count() == 1
    assert settings.DATABASES["default"]["NAME"].startswith("test_")


@pytest.mark.django_db(transaction=True)
def test_pausing_and_resuming_are_announced_to_listeners_when_they_commit(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Paused", graph=transfer_graph())
    actions.do_publish_version(flow, alice)
    with trigger_notices() as next_notices:
        assert actions.do_pause_flow(flow, alice) is True
        assert next_notices() == [flow.code]
        assert actions.do_pause_flow(flow, alice) is False  # already paused: no change, no announcement
        assert next_notices(0.5) == []
        assert actions.do_resume_flow(flow, alice) is True
        assert next_notices() == [flow.code]
    flow.refresh_from_db()
    assert not flow.paused
    actions_logged = [e.action for e in AuditEvent.objects.filter(team=team).order_by("id")]
    assert actions_logged == ["flow.created", "flow.published", "flow.paused", "flow.resumed"]


@pytest.mark.django_db(transaction=True)
def test_pausing_through_the_api_is_the_same_write_as_in_the_admin(team, alice, chain):
    from tests.team_fixtures import api_client

    flow = actions.do_create_flow(team, alice, "Paused by API", graph=transfer_graph())
    actions.do_publish_version(flow, alice)
    client = api_client(alice)
    with trigger_notices() as next_notices:
        response = client.patch(f"/api/v1/flows/{flow.code}", {"paused": True}, content_type="application/json")
        assert response.status_code == 200 and response.json()["paused"] is True
        assert next_notices() == [flow.code]
        response = client.patch(f"/api/v1/flows/{flow.code}", {"paused": False}, content_type="application/json")
        assert response.json()["paused"] is False
        assert next_notices() == [flow.code]
    actions_logged = [e.action for e in AuditEvent.objects.filter(team=team, target=flow.name).order_by("id")]
    assert actions_logged == ["flow.created", "flow.published", "flow.paused", "flow.resumed"]


@pytest.mark.django_db(transaction=True)
def test_a_pause_that_rolls_back_is_never_announced(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Not paused", graph=transfer_graph())
    with trigger_notices() as next_notices:
        with pytest.raises(RuntimeError), transaction.atomic():
            actions.do_pause_flow(flow, alice)
            raise RuntimeError("something after the pause failed")
        assert next_notices(0.5) == []
    flow.refresh_from_db()
    assert not flow.paused
    assert not AuditEvent.objects.filter(team=team).exclude(action="flow.created").exists()


def test_the_trigger_index_drops_a_paused_flow_and_takes_it_back_on_resume(team, alice, chain):
    from executor.listener import load_triggers

    flow = actions.do_create_flow(team, alice, "Indexed", graph=transfer_graph())
    actions.do_publish_version(flow, alice)
    assert len(load_triggers()[31337].logs) == 1
    actions.do_pause_flow(flow, alice)
    assert 31337 not in load_triggers() or len(load_triggers()[31337].logs) == 0
    actions.do_resume_flow(flow, alice)
    assert len(load_triggers()[31337].logs) == 1


@pytest.mark.parametrize(
    "graph",
    [
        {"nodes": [{}, {"id": "a", "position": "x"}], "edges": []},
        {"nodes": [{"id": ["x"], "type": "manual", "position": {"x": 0, "y": 0}, "config": {}}], "edges": []},
        {"nodes": [{"id": "a", "type": "manual", "position": {"x": float("nan"), "y": 0}, "config": {}}], "edges": []},
        "not a graph",
    ],
)
def test_a_malformed_graph_is_refused_and_nothing_is_written(flow, alice, graph):
    before = flow.versions.get().graph
    with pytest.raises(actions.InvalidGraph):
        actions.do_save_draft(flow, alice, graph, revision=flow.revision)
    flow.refresh_from_db()
    assert flow.versions.get().graph == before
    with pytest.raises(actions.InvalidGraph):
        actions.do_create_flow(flow.team, alice, "Junk", graph=graph)
