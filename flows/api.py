"""The flows API (a django-ninja Router, added to the project's API in kwala_site.api):
flows, their drafts and versions, publishing, import and export (a flow's runs and replays are
started through executor.api's flow_runs_router, under the same /flows prefix).

The project's API (kwala_site.api) authenticates the caller (a personal token acting in the
token's team, or the browser session, CSRF-checked, acting in the session's team); every
lookup here is scoped to that team, so another team's flows are 404 whatever their code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.responses import Status

from flows.actions import (
    CompileError,
    compile_for,
    current_graph,
    do_create_flow,
    do_delete_flow,
    do_pause_flow,
    do_publish_version,
    do_resume_flow,
    do_rotate_webhook_token,
    do_save_draft,
    do_unpublish_flow,
    live_version,
    webhook_path,
)
from flows.editor.diff import diff_graphs, is_empty
from flows.flowyaml import export_yaml, import_yaml
from flows.models import Flow, FlowVersion, Membership
from flows.permissions import has_role, team_flow_or_none
from kwala_site.api_common import COMMON_ERRORS, ApiError, JsonObject, Role, Text, not_found, require_role

router = Router(tags=["flows"])


def team_flow(request: HttpRequest, code: str, role: str = Role.VIEWER) -> tuple[Flow, Membership]:
    """The flow with this code in the caller's team (404 otherwise), if the caller has `role` (403)."""
    flow = team_flow_or_none(request.auth, code)
    if flow is None:
        raise not_found("flow")
    return flow, require_role(request, role)


# -- schemas ----------------------------------------------------------------------------------


class Graph(Schema):
    nodes: list[JsonObject] = []
    edges: list[JsonObject] = []


class FlowOut(Schema):
    code: str
    name: str
    description: str
    revision: int
    paused: bool
    live_version: int | None
    created_at: datetime
    updated_at: datetime


class FlowDetailOut(FlowOut):
    graph: dict[str, Any]
    draft_version: int | None


class FlowIn(Schema):
    name: Text = Field(min_length=1, max_length=120)
    description: Text = Field("", max_length=5000)
    graph: Graph | None = None


class FlowPatch(Schema):
    name: Text | None = Field(None, min_length=1, max_length=120)
    description: Text | None = Field(None, max_length=5000)
    paused: bool | None = None


class DraftIn(Schema):
    graph: Graph
    revision: int = Field(ge=1, description="The flow revision the change is based on (409 if stale)")


class VersionOut(Schema):
    code: str
    number: int
    status: str
    created_at: datetime
    published_at: datetime | None


class VersionDetailOut(VersionOut):
    graph: dict[str, Any]
    dag: dict[str, Any] | None


class ProblemOut(Schema):
    node_id: str | None
    field: str | None
    message: str


class DraftOut(VersionOut):
    revision: int = Field(description="The flow's revision after this save: send it with the next change")
    problems: list[ProblemOut] = Field(description="What keeps the draft from compiling (a draft may be incomplete)")
    live_version: int | None
    differs_from_live: bool = Field(description="False when the draft is the live graph again (or nothing is live: true)")


class PublishedOut(VersionOut):
    revision: int = Field(description="The flow's revision after publishing: send it with the next change")


class CompileOut(Schema):
    ok: bool
    problems: list[ProblemOut]


class YamlIn(Schema):
    yaml: Text = Field(min_length=1, max_length=1_000_000)


class YamlOut(Schema):
    yaml: str


def flow_out(flow: Flow, detail: bool = False) -> dict:
    live = live_version(flow)
    data = {
        "code": flow.code, "name": flow.name, "description": flow.description, "revision": flow.revision,
        "paused": flow.paused, "live_version": live.number if live else None,
        "created_at": flow.created_at, "updated_at": flow.updated_at,
    }
    if detail:
        version, graph = current_graph(flow)
        data["graph"] = graph
        data["draft_version"] = version.number if version and version.status == FlowVersion.Status.DRAFT else None
    return data


def version_out(version: FlowVersion, detail: bool = False) -> dict:
    data = {"code": str(version.code), "number": version.number, "status": version.status,
            "created_at": version.created_at, "published_at": version.published_at}
    if detail:
        data["graph"] = version.graph
        data["dag"] = version.dag
    return data


@router.get("", response={200: list[FlowOut], **COMMON_ERRORS})
@paginate(LimitOffsetPagination)
def list_flows(request, q: str = Query("", max_length=100)):
    flows = Flow.objects.filter(team=request.auth.team).order_by("name", "pk")
    if q:
        flows = flows.filter(name__icontains=q)
    return [flow_out(f) for f in flows]


@router.post("", response={201: FlowDetailOut, **COMMON_ERRORS})
def create(request, payload: FlowIn):
    membership = require_role(request, Role.EDITOR)
    graph = payload.graph.dict() if payload.graph else None
    flow = do_create_flow(membership.team, request.user, payload.name, payload.description, graph=graph)
    return Status(201, flow_out(flow, detail=True))


@router.post("/import", response={201: FlowDetailOut, **COMMON_ERRORS})
def import_flow(request, payload: YamlIn):
    """Create a flow from Kwala flow YAML (as exported by GET /flows/{code}/export)."""
    membership = require_role(request, Role.EDITOR)
    meta, graph = import_yaml(payload.yaml)
    name = str(meta.get("name") or "Imported flow")[:120]
    flow = do_create_flow(membership.team, request.user, name, str(meta.get("description") or "")[:5000], graph=graph)
    return Status(201, flow_out(flow, detail=True))


class OzMonitorIn(Schema):
    networks: dict[str, JsonObject | Text] = Field({}, description="networks/<file>.json: its content")
    monitors: dict[str, JsonObject | Text] = Field(description="monitors/<file>.json: its content")
    triggers: dict[str, JsonObject | Text] = Field({}, description="triggers/<file>.json: its content")
    publish: bool = Field(False, description="Publish each flow that compiles and has nothing left to fill in")


class OzImportOut(Schema):
    flows: list[dict[str, Any]]
    secrets_stored: list[str]
    secrets_to_fill: list[dict[str, str]]
    missing_networks: list[dict[str, Any]]
    refused: list[dict[str, Any]]
    warnings: list[str]


@router.post("/import-oz-monitor", response={201: OzImportOut, **COMMON_ERRORS})
def import_oz_monitor(request, payload: OzMonitorIn):
    """Create flows from an OpenZeppelin Monitor configuration (see docs/dag.md); plain secret values
    are stored as team secrets only for admins, editors get them listed to fill in."""
    from flows import ozmonitor

    membership = require_role(request, Role.EDITOR)
    files = {"networks": payload.networks, "monitors": payload.monitors, "triggers": payload.triggers}
    try:
        config = ozmonitor.read_files(files)
    except ozmonitor.OzConfigError as exc:
        raise ApiError(400, "invalid_config", str(exc)) from None
    result = ozmonitor.import_oz_monitor(membership.team, request.user, config, publish=payload.publish,
                                         store_secrets=has_role(membership, Role.ADMIN), via="api")
    return Status(201, result.as_dict())


@router.get("/{code}", response={200: FlowDetailOut, **COMMON_ERRORS})
def get_flow(request, code: str):
    flow, _ = team_flow(request, code)
    return flow_out(flow, detail=True)


@router.patch("/{code}", response={200: FlowDetailOut, **COMMON_ERRORS})
def update_flow(request, code: str, payload: FlowPatch):
    flow, _ = team_flow(request, code, Role.EDITOR)
    fields = [name for name in ("name", "description") if getattr(payload, name) is not None]
    for name in fields:
        setattr(flow, name, getattr(payload, name))
    if fields:
        flow.save(update_fields=[*fields, "updated_at"])
    if payload.paused is not None:
        # As the admin's pause: the listeners hear of it on commit, and it is audited.
        (do_pause_flow if payload.paused else do_resume_flow)(flow, request.user)
    return flow_out(flow, detail=True)


@router.delete("/{code}", response={204: None, **COMMON_ERRORS})
def delete_flow(request, code: str):
    flow, _ = team_flow(request, code, Role.ADMIN)
    if live_version(flow) is not None:
        raise ApiError(409, "flow_is_live", "Unpublish the flow before deleting it.")
    do_delete_flow(flow, request.user)
    return Status(204, None)


def _problems(flow: Flow, graph: dict) -> list[dict]:
    try:
        compile_for(flow, graph)
    except CompileError as exc:
        return exc.as_list()
    return []


@router.put("/{code}/draft", response={200: DraftOut, **COMMON_ERRORS})
def put_draft(request, code: str, payload: DraftIn):
    """Save the graph as the draft (what the editor's autosave sends). A draft may be incomplete:
    the answer lists what keeps it from compiling, with the revision to send next."""
    flow, _ = team_flow(request, code, Role.EDITOR)
    graph = payload.graph.dict()
    version = do_save_draft(flow, request.user, graph, revision=payload.revision)
    live = live_version(flow)
    return {**version_out(version), "revision": flow.revision, "problems": _problems(flow, graph),
            "live_version": live.number if live else None,
            "differs_from_live": live is None or not is_empty(diff_graphs(live.graph, graph))}


@router.post("/{code}/compile", response={200: CompileOut, **COMMON_ERRORS})
def check_flow(request, code: str):
    """Compile the current draft (or live graph) and list every problem, without publishing."""
    flow, _ = team_flow(request, code)
    _, graph = current_graph(flow)
    problems = _problems(flow, graph)
    return {"ok": not problems, "problems": problems}


@router.post("/{code}/publish", response={200: PublishedOut, **COMMON_ERRORS})
def publish(request, code: str, revision: int | None = Query(None, ge=1, le=2**31 - 1,
                                                            description="409 if the flow moved past it")):
    flow, _ = team_flow(request, code, Role.EDITOR)
    version = do_publish_version(flow, request.user, revision=revision, via="api")
    return {**version_out(version), "revision": flow.revision}


@router.post("/{code}/unpublish", response={200: FlowOut, **COMMON_ERRORS})
def unpublish(request, code: str):
    flow, _ = team_flow(request, code, Role.EDITOR)
    if do_unpublish_flow(flow, request.user, via="api") is None:
        raise ApiError(409, "not_published", "The flow has no live version.")
    flow.refresh_from_db()
    return flow_out(flow)


@router.get("/{code}/versions", response={200: list[VersionOut], **COMMON_ERRORS})
@paginate(LimitOffsetPagination)
def list_versions(request, code: str):
    flow, _ = team_flow(request, code)
    return [version_out(v) for v in flow.versions.order_by("-number")]


def _version(flow: Flow, number: int) -> FlowVersion:
    version = flow.versions.filter(number=number).first() if 1 <= number < 2**31 else None
    if version is None:
        raise not_found("version")
    return version


@router.get("/{code}/versions/{number}", response={200: VersionDetailOut, **COMMON_ERRORS})
def get_version(request, code: str, number: int):
    flow, _ = team_flow(request, code)
    return version_out(_version(flow, number), detail=True)


@router.get("/{code}/diff", response={200: dict[str, Any], **COMMON_ERRORS})
def diff(request, code: str, base: int = Query(..., ge=1, le=2**31 - 1, alias="from"),
         head: int = Query(..., ge=1, le=2**31 - 1, alias="to")):
    """What changed between two versions: nodes added, removed and changed (field by field), and edges."""
    flow, _ = team_flow(request, code)
    return diff_graphs(_version(flow, base).graph, _version(flow, head).graph)


@router.get("/{code}/export", response={200: YamlOut, **COMMON_ERRORS})
def export(request, code: str):
    flow, _ = team_flow(request, code)
    _, graph = current_graph(flow)
    return {"yaml": export_yaml({"name": flow.name, "description": flow.description}, graph)}


class WebhookOut(Schema):
    url: str


def _webhook_url(request: HttpRequest, path: str) -> dict:
    return {"url": request.build_absolute_uri(path)}


@router.get("/{code}/webhook", response={200: WebhookOut, **COMMON_ERRORS})
def webhook(request, code: str):
    """The flow's inbound webhook URL, with its token (editors only: the token is a credential)."""
    flow, _ = team_flow(request, code, Role.EDITOR)
    return _webhook_url(request, webhook_path(flow, request.user))


@router.post("/{code}/webhook/rotate", response={200: WebhookOut, **COMMON_ERRORS})
def rotate_webhook(request, code: str):
    """A new token for the flow's inbound webhook URL; the old URL stops working at once. Audited."""
    flow, _ = team_flow(request, code, Role.EDITOR)
    do_rotate_webhook_token(flow, request.user)
    return _webhook_url(request, webhook_path(flow, request.user))
