"""Writes that touch several rows: create, save, publish, unpublish, roll back.

Each function states its preconditions; views and the API call these and turn
their exceptions into clear messages. Trigger changes are announced with a
PostgreSQL NOTIFY inside the same transaction, so listeners hear of a publish
exactly when (and only if) it commits.
"""

from __future__ import annotations

from django.db import connection, transaction
from django.db.models import F, Max
from django.utils import timezone

from flows.graph import CompileError, compile_graph
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


def compile_context(team: Team) -> dict:
    """What the compiler checks names against: the enabled chains and the team's secrets and signer keys."""
    from executor.models import Chain

    # contract.write's `signer` is checked as a name reference but names a SignerKey, not a Secret:
    # without the signer names every flow that signs would fail to compile.
    return {
        "chains": dict(Chain.objects.filter(enabled=True).values_list("chain_id", "slug")),
        "secret_names": set(Secret.objects.filter(team=team).values_list("name", flat=True))
        | set(SignerKey.objects.filter(team=team).values_list("name", flat=True)),
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


def create_flow(team: Team, user, name: str, description: str = "", graph: dict | None = None) -> Flow:
    """A new flow with a first draft version."""
    with transaction.atomic():
        flow = Flow.objects.create(
            team=team,
            name=name,
            description=description,
            created_by=user,
            signing_secret=new_signing_secret(),
        )
        FlowVersion.objects.create(flow=flow, number=1, graph=graph or EMPTY_GRAPH, created_by=user)
    return flow


def current_graph(flow: Flow) -> tuple[FlowVersion | None, dict]:
    """The version the editor shows: the draft if there is one, else the live version, else the newest."""
    versions = list(flow.versions.order_by("-number"))
    for status in (FlowVersion.Status.DRAFT, FlowVersion.Status.PUBLISHED):
        for version in versions:
            if version.status == status:
                return version, version.graph
    return (versions[0], versions[0].graph) if versions else (None, EMPTY_GRAPH)


def save_draft(flow: Flow, user, graph: dict, *, revision: int) -> FlowVersion:
    """Save the editor's graph as the flow's draft.

    `revision` is the flow revision the editor started from; if anything changed
    the flow since, ConflictError is raised and nothing is written. The graph is
    saved even when it does not compile (drafts may be incomplete).
    """
    with transaction.atomic():
        _bump_revision(flow, revision)
        draft = FlowVersion.objects.select_for_update().filter(flow=flow, status=FlowVersion.Status.DRAFT).first()
        if draft is None:
            draft = FlowVersion.objects.create(flow=flow, number=_next_number(flow), graph=graph, created_by=user)
        else:
            draft.graph = graph
            draft.save(update_fields=["graph", "updated_at"])
    return draft


def publish_version(flow: Flow, user, *, revision: int | None = None) -> FlowVersion:
    """Compile the draft and make it the live version, retiring the previous one atomically.

    Raises NothingToPublish when there is no draft, CompileError with every
    problem when the draft does not compile, ConflictError on a stale revision.
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
    return draft


def unpublish_flow(flow: Flow, user) -> FlowVersion | None:
    """Stop the flow's trigger: its live version is archived. Returns it, or None if none was live."""
    with transaction.atomic():
        Flow.objects.select_for_update().get(pk=flow.pk)
        live = FlowVersion.objects.filter(flow=flow, status=FlowVersion.Status.PUBLISHED).first()
        if live is None:
            return None
        live.status = FlowVersion.Status.ARCHIVED
        live.save(update_fields=["status", "updated_at"])
        _bump_revision(flow, None)
        notify_triggers_changed(flow)
    return live


def rollback_to(flow: Flow, user, version: FlowVersion, *, revision: int | None = None) -> FlowVersion:
    """Make a new draft whose graph is `version`'s; publishing it makes the rollback live."""
    if version.flow_id != flow.pk:
        raise ValueError("version belongs to another flow")
    with transaction.atomic():
        _bump_revision(flow, revision)
        draft = FlowVersion.objects.select_for_update().filter(flow=flow, status=FlowVersion.Status.DRAFT).first()
        if draft is None:
            return FlowVersion.objects.create(
                flow=flow, number=_next_number(flow), graph=version.graph, created_by=user
            )
        draft.graph = version.graph
        draft.save(update_fields=["graph", "updated_at"])
        return draft


def live_version(flow: Flow) -> FlowVersion | None:
    return flow.versions.filter(status=FlowVersion.Status.PUBLISHED).first()


__all__ = [
    "CompileError",
    "ConflictError",
    "NothingToPublish",
    "TRIGGERS_CHANNEL",
    "create_flow",
    "current_graph",
    "live_version",
    "publish_version",
    "rollback_to",
    "save_draft",
    "unpublish_flow",
]
