"""Writes that touch several rows: create, save, publish, unpublish, pause, roll back.

One `do_*` function per write (as in flows.teams), with its audit entry inside: the
editor (through the API), the API, the admin and the CLI all call the same one. Each
states its preconditions; callers turn its exceptions into clear messages. Trigger changes are announced with a
PostgreSQL NOTIFY inside the same transaction, so listeners hear of a publish
exactly when (and only if) it commits.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from flows import audit
from flows.graph import CompileError, Problem, compile_graph, schema_problems
from flows.models import Flow, FlowVersion, Secret, SignerKey, Team

TRIGGERS_CHANNEL = "kwala_triggers"
EMPTY_GRAPH = {"nodes": [], "edges": []}


class ConflictError(Exception):
    """The flow changed since the editor loaded it (stale revision)."""

    def __init__(self, current_revision: int):
        self.current_revision = current_revision
        super().__init__(
            "This flow was changed elsewhere since you opened it (now at revision "
            f"{current_revision}). Reload to see the latest version; your change was not saved."
        )


class NothingToPublish(Exception):
    pass


class InvalidGraph(CompileError):
    """The graph is not even shaped like a graph (a draft may be incomplete, not malformed)."""


def check_graph_shape(graph: Any) -> None:
    """Raise InvalidGraph unless `graph` matches graph.schema.json and is plain JSON."""
    problems = schema_problems(graph)
    if not problems:
        try:
            json.dumps(graph, allow_nan=False)
        except (ValueError, TypeError):
            problems = [Problem(None, None, "The graph holds a value that is not JSON (NaN, Infinity or binary data).")]
    if problems:
        raise InvalidGraph(problems)


def compile_context(team: Team) -> dict:
    """What the compiler checks names against: the enabled chains, the team's secrets and signer keys."""
    from executor import interface

    return {
        "chains": interface.enabled_chains(),
        "secret_names": set(Secret.objects.filter(team=team).values_list("name", flat=True)),
        "signer_names": set(SignerKey.objects.filter(team=team).values_list("name", flat=True)),
    }


def compile_for(flow: Flow, graph: dict) -> dict:
    """Compile `graph` against the flow's team; raises CompileError with every problem."""
    return compile_graph(graph, **compile_context(flow.team))


def notify_triggers_changed(flow: Flow) -> None:
    """Tell every listener (LISTEN kwala_triggers) to reload; delivered on commit."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [TRIGGERS_CHANNEL, flow.code])


def _bump_revision(flow: Flow, expected: int | None) -> int:
    """Conditionally bump the flow's revision; raise ConflictError if `expected` is stale."""
    rows = Flow.objects.filter(pk=flow.pk)
    if expected is not None:
        rows = rows.filter(revision=expected)
    if rows.update(revision=F("revision") + 1, updated_at=timezone.now()) == 0:
        raise ConflictError(Flow.objects.values_list("revision", flat=True).get(pk=flow.pk))
    flow.refresh_from_db(fields=["revision", "updated_at"])
    return flow.revision


def _next_number(flow: Flow) -> int:
    return (flow.versions.aggregate(n=Max("number"))["n"] or 0) + 1


def new_signing_secret() -> str:
    """A Standard Webhooks secret: "whsec_" + standard base64 (url-safe base64 does not decode)."""
    import base64
    import os

    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def do_create_flow(team: Team, user, name: str, description: str = "", graph: dict | None = None) -> Flow:
    """A new flow with a first draft version; InvalidGraph if `graph` is malformed."""
    if graph is not None:
        check_graph_shape(graph)
    with transaction.atomic():
        flow = Flow.objects.create(
            team=team,
            name=name,
            description=description,
            created_by=user,
            signing_secret=new_signing_secret(),
        )
        FlowVersion.objects.create(flow=flow, number=1, graph=graph or EMPTY_GRAPH, created_by=user)
        audit.record(team, user, "flow.created", flow.name, flow=flow.code)
    return flow


def current_graph(flow: Flow) -> tuple[FlowVersion | None, dict]:
    """The version the editor shows: the draft if there is one, else the live version, else the newest."""
    versions = list(flow.versions.order_by("-number"))
    for status in (FlowVersion.Status.DRAFT, FlowVersion.Status.PUBLISHED):
        for version in versions:
            if version.status == status:
                return version, version.graph
    return (versions[0], versions[0].graph) if versions else (None, EMPTY_GRAPH)


def do_save_draft(flow: Flow, user, graph: dict, *, revision: int) -> FlowVersion:
    """Save the editor's graph as the flow's draft (no audit entry: the editor saves as you
    type; publishing, which makes a draft act, is audited).

    `revision` is the flow revision the editor started from; if anything changed
    the flow since, ConflictError is raised and nothing is written. The graph is
    saved even when it does not compile (drafts may be incomplete), but never when
    it is malformed (InvalidGraph).
    """
    check_graph_shape(graph)
    with transaction.atomic():
        _bump_revision(flow, revision)
        draft = FlowVersion.objects.select_for_update().filter(flow=flow, status=FlowVersion.Status.DRAFT).first()
        if draft is None:
            draft = FlowVersion.objects.create(flow=flow, number=_next_number(flow), graph=graph, created_by=user)
        else:
            draft.graph = graph
            draft.save(update_fields=["graph", "updated_at"])
    return draft


def do_publish_version(flow: Flow, user, *, revision: int | None = None, via: str = "app") -> FlowVersion:
    """Compile the draft and make it the live version, retiring the previous one atomically; audited.

    Raises NothingToPublish when there is no draft, CompileError with every
    problem when the draft does not compile, ConflictError on a stale revision.
    `via` says where it was done (editor, api, cli, ...) in the audit entry.
    """

    with transaction.atomic():
        Flow.objects.select_for_update().get(pk=flow.pk)
        draft = FlowVersion.objects.filter(flow=flow, status=FlowVersion.Status.DRAFT).first()
        if draft is None:
            raise NothingToPublish("There are no unpublished changes to publish.")
        dag = compile_for(flow, draft.graph)
        _bump_revision(flow, revision)
        FlowVersion.objects.filter(flow=flow, status=FlowVersion.Status.PUBLISHED).update(
            status=FlowVersion.Status.ARCHIVED
        )
        draft.dag = dag
        draft.status = FlowVersion.Status.PUBLISHED
        draft.published_at = timezone.now()
        draft.save(update_fields=["dag", "status", "published_at", "updated_at"])
        notify_triggers_changed(flow)
        audit.record(flow.team, user, "flow.published", flow.name, flow=flow.code, version=draft.number, via=via)
    return draft


def do_unpublish_flow(flow: Flow, user, *, via: str = "app") -> FlowVersion | None:
    """Stop the flow's trigger: its live version is archived (audited). Returns it, or None if none was live."""

    with transaction.atomic():
        Flow.objects.select_for_update().get(pk=flow.pk)
        live = live_version(flow)
        if live is None:
            return None
        live.status = FlowVersion.Status.ARCHIVED
        live.save(update_fields=["status", "updated_at"])
        _bump_revision(flow, None)
        notify_triggers_changed(flow)
        audit.record(flow.team, user, "flow.unpublished", flow.name, flow=flow.code, version=live.number, via=via)
    return live


def do_pause_flow(flow: Flow, user) -> bool:
    """Stop the flow's triggers from firing; runs already started carry on.

    Sets Flow.paused and tells the listeners in the same transaction, so they drop the
    flow's triggers when (and only if) the pause commits. Returns False, changing
    nothing, when the flow was already paused.
    """
    return _set_paused(flow, user, paused=True)


def do_resume_flow(flow: Flow, user) -> bool:
    """Let a paused flow's triggers fire again (from the blocks after the resume); False if it was not paused."""
    return _set_paused(flow, user, paused=False)


def _set_paused(flow: Flow, user, *, paused: bool) -> bool:

    with transaction.atomic():
        changed = Flow.objects.filter(pk=flow.pk, paused=not paused).update(paused=paused, updated_at=timezone.now())
        flow.paused = paused
        if not changed:
            return False
        notify_triggers_changed(flow)
        audit.record(flow.team, user, "flow.paused" if paused else "flow.resumed", flow.name, flow=flow.code)
    return True


def do_rollback_to(flow: Flow, user, version: FlowVersion, *, revision: int | None = None) -> FlowVersion:
    """Make a new draft whose graph is `version`'s; publishing it makes the rollback live."""
    if version.flow_id != flow.pk:
        raise ValueError("version belongs to another flow")
    with transaction.atomic():
        _bump_revision(flow, revision)
        draft = FlowVersion.objects.select_for_update().filter(flow=flow, status=FlowVersion.Status.DRAFT).first()
        if draft is None:
            draft = FlowVersion.objects.create(
                flow=flow, number=_next_number(flow), graph=version.graph, created_by=user
            )
        else:
            draft.graph = version.graph
            draft.save(update_fields=["graph", "updated_at"])
        audit.record(flow.team, user, "flow.rolled_back", flow.name, flow=flow.code, version=version.number,
                     draft=draft.number)
        return draft


def live_version(flow: Flow) -> FlowVersion | None:
    return flow.versions.filter(status=FlowVersion.Status.PUBLISHED).first()


__all__ = [
    "CompileError",
    "ConflictError",
    "NothingToPublish",
    "TRIGGERS_CHANNEL",
    "current_graph",
    "do_create_flow",
    "do_delete_flow",
    "do_pause_flow",
    "do_publish_version",
    "do_resume_flow",
    "do_rollback_to",
    "do_rotate_webhook_token",
    "do_save_draft",
    "do_unpublish_flow",
    "live_version",
]


# -- inbound webhook URLs ------------------------------------------------------------------


def do_rotate_webhook_token(flow: Flow, user) -> str:
    """Give the flow's inbound webhook a new random URL token and return it; audited.

    The old URL stops working at once. Call only for an editor of the flow: the
    token is the webhook's credential when it checks no signature.
    """
    from flows import audit, crypto

    token = secrets.token_urlsafe(24)
    flow.webhook_token_encrypted = crypto.encrypt(token, flow.webhook_token_context)
    flow.save(update_fields=["webhook_token_encrypted", "updated_at"])
    audit.record(flow.team, user, "flow.webhook_token_rotated", flow.code)
    return token


def webhook_path(flow: Flow, user) -> str:
    """The flow's inbound webhook path, making its token on first use; for editors only."""
    token = flow.webhook_token() or do_rotate_webhook_token(flow, user)
    return f"/hooks/{flow.code}/{token}/"


def do_delete_flow(flow: Flow, user) -> None:
    """Delete a flow with its versions and runs; audited (the entry outlives the flow)."""

    with transaction.atomic():
        audit.record(flow.team, user, "flow.deleted", flow.name, flow=flow.code)
        flow.delete()
