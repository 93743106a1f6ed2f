"""The REST API (django-ninja): /api/v1/, OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs.

Authentication is a personal token (``Authorization: Bearer kwl_...``) acting in
the token's team, or the browser session acting in the session's team. Every
lookup is scoped to that team, so another team's objects are 404 whatever their
code. Every error, including validation, 404, 403, 409 and 429, has one shape:
``{"error": {"code": "flow_not_found", "message": "...", "details": [...]}}``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Field, NinjaAPI, Query, Router, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.responses import Status
from ninja.security import HttpBearer
from ninja.security.session import SessionAuth
from ninja.throttling import BaseThrottle
from pydantic import AfterValidator

from executor.paging import COUNT_CAP, capped_count, older_than
from flows import audit, gallery
from flows.actions import (
    CompileError,
    ConflictError,
    InvalidGraph,
    NothingToPublish,
    compile_for,
    create_flow,
    current_graph,
    delete_flow_for_good,
    enabled_chains,
    live_version,
    publish_version,
    rotate_webhook_token,
    save_draft,
    unpublish_flow,
    webhook_path,
)
from flows.diff import diff_graphs
from flows.flowyaml import FlowYamlError, export_yaml, import_yaml
from flows.models import ApiToken, Flow, FlowVersion, Membership, Secret, SignerKey
from flows.permissions import current_membership, has_role
from flows.teams import (
    TeamError,
    do_change_role,
    do_create_signer,
    do_create_token,
    do_delete_secret,
    do_delete_signer,
    do_invite,
    do_remove_member,
    do_revoke_token,
    do_set_secret,
    membership_for_token,
)
from kwala_site import ratelimit

logger = logging.getLogger(__name__)
Role = Membership.Role


# -- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list | None = None):
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        super().__init__(message)


class ErrorBody(Schema):
    code: str = Field(description="Machine-readable, e.g. flow_not_found, validation_error, rate_limited")
    message: str
    details: list[Any] = []


class ErrorOut(Schema):
    error: ErrorBody


def not_found(kind: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"No such {kind.replace('_', ' ')} in your team.")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def error_response(request: HttpRequest, status: int, code: str, message: str, details=None) -> HttpResponse:
    response = api.create_response(
        request, {"error": {"code": code, "message": message, "details": details or []}}, status=status
    )
    return response


def _jsonable_errors(errors: list) -> list[dict]:
    out = []
    for item in errors:
        entry = {"loc": [str(p) for p in item.get("loc", [])], "message": str(item.get("msg", "")),
                 "type": str(item.get("type", ""))}
        out.append(entry)
    return out


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Membership | None:
        found = membership_for_token(token)
        if found is None:
            return None
        request.api_token, membership = found
        request.user = membership.user
        return membership


class TeamSession(SessionAuth):
    """The logged-in browser, acting in the team chosen in its session (CSRF checked on writes)."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Membership | None:
        return current_membership(request)


class RedisRateLimit(BaseThrottle):
    """A fixed window per token (or per user for sessions), counted in Redis so every process shares it."""

    def __init__(self) -> None:
        self._wait = 0

    def allow_request(self, request: HttpRequest) -> bool:
        limit = getattr(settings, "KWALA_API_RATE_LIMIT", 600)
        window = getattr(settings, "KWALA_API_RATE_WINDOW", 60)
        token = getattr(request, "api_token", None)
        who = f"t{token.token_hash[:24]}" if token is not None else f"u{getattr(request.user, 'pk', None) or 'anon'}"
        counted = ratelimit.hit(f"api:{who}", window)
        self._wait = counted.retry_after
        return not counted.over(limit)

    def wait(self) -> int:
        return max(self._wait, 1)


api = NinjaAPI(
    title="Kwala API",
    version="1",
    description=(
        "Flows, versions, runs, chains, templates, secrets, team members and tokens. "
        "Authenticate with `Authorization: Bearer <token>` (create one under Account → API tokens). "
        "Errors: `{\"error\": {\"code\", \"message\", \"details\"}}`."
    ),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
    auth=[BearerToken(), TeamSession()],
    throttle=[RedisRateLimit()],
)

COMMON_ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 422: ErrorOut,
                 429: ErrorOut}


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return error_response(request, exc.status, exc.code, exc.message, exc.details)


@api.exception_handler(TeamError)
def _team_error(request, exc: TeamError):
    return error_response(request, exc.status, exc.code, exc.message)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    return error_response(request, 422, "validation_error", "The request is not valid.", _jsonable_errors(exc.errors))


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc):
    return error_response(request, 401, "unauthorized", "Send a valid token: Authorization: Bearer <token>.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    codes = {400: "invalid_body", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 429: "rate_limited"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "bad_request"), str(exc))


@api.exception_handler(Http404)
def _not_found(request, exc):
    return error_response(request, 404, "not_found", "Not found.")


@api.exception_handler(InvalidGraph)
def _invalid_graph(request, exc: InvalidGraph):
    return error_response(request, 422, "invalid_graph", "The graph is malformed.", exc.as_list())


@api.exception_handler(CompileError)
def _compile_error(request, exc: CompileError):
    return error_response(request, 422, "compile_error", "The flow does not compile.", exc.as_list())


@api.exception_handler(ConflictError)
def _conflict(request, exc: ConflictError):
    return error_response(request, 409, "conflict", str(exc), [{"current_revision": exc.current_revision}])


@api.exception_handler(NothingToPublish)
def _nothing(request, exc):
    return error_response(request, 409, "nothing_to_publish", str(exc))


@api.exception_handler(FlowYamlError)
def _bad_yaml(request, exc: FlowYamlError):
    return error_response(request, 400, "invalid_yaml", exc.message, [{"line": exc.line}] if exc.line else [])


def _run_error(request, exc):
    return error_response(request, 409, "run_error", str(exc))


def _replay_error(request, exc):
    return error_response(request, 422, "replay_error", str(exc))


def _register_executor_errors() -> None:
    from executor.replay import ReplayError
    from executor.runs.manual import RunError

    api.add_exception_handler(RunError, _run_error)
    api.add_exception_handler(ReplayError, _replay_error)


_register_executor_errors()


@api.exception_handler(Exception)
def _unexpected(request, exc):
    from kwala_site.overload import is_overload, overloaded

    if is_overload(exc):
        return overloaded(request)
    logger.exception("API error on %s %s", request.method, request.path)
    return error_response(request, 500, "internal_error", "Something went wrong on our side; it has been logged.")


def _membership(request: HttpRequest, role: str = Role.VIEWER) -> Membership:
    membership: Membership = request.auth
    if not has_role(membership, role):
        raise forbidden(f"This needs the {Role(role).label.lower()} role or higher in {membership.team.name}.")
    return membership


def _flow(request: HttpRequest, code: str, role: str = Role.VIEWER) -> tuple[Flow, Membership]:
    membership = request.auth
    flow = Flow.objects.filter(team=membership.team, code=code).first()
    if flow is None:
        raise not_found("flow")
    return flow, _membership(request, role)


# -- schemas ----------------------------------------------------------------------------------


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _no_nul(value: Any) -> Any:
    # PostgreSQL text and jsonb cannot hold NUL; refuse it here rather than fail in the database.
    if _has_nul(value):
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_no_nul)]


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


class CompileOut(Schema):
    ok: bool
    problems: list[ProblemOut]


class YamlIn(Schema):
    yaml: Text = Field(min_length=1, max_length=1_000_000)


class YamlOut(Schema):
    yaml: str


def _flow_out(flow: Flow, detail: bool = False) -> dict:
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


def _version_out(version: FlowVersion, detail: bool = False) -> dict:
    data = {"code": str(version.code), "number": version.number, "status": version.status,
            "created_at": version.created_at, "published_at": version.published_at}
    if detail:
        data["graph"] = version.graph
        data["dag"] = version.dag
    return data


# -- flows ------------------------------------------------------------------------------------

flows_router = Router(tags=["flows"])


@flows_router.get("", response={200: list[FlowOut], **COMMON_ERRORS})
@paginate(LimitOffsetPagination)
def list_flows(request, q: str = Query("", max_length=100)):
    flows = Flow.objects.filter(team=request.auth.team).order_by("name", "pk")
    if q:
        flows = flows.filter(name__icontains=q)
    return [_flow_out(f) for f in flows]


@flows_router.post("", response={201: FlowDetailOut, **COMMON_ERRORS})
def create(request, payload: FlowIn):
    membership = _membership(request, Role.EDITOR)
    graph = payload.graph.dict() if payload.graph else None
    flow = create_flow(membership.team, request.user, payload.name, payload.description, graph=graph)
    return Status(201, _flow_out(flow, detail=True))


@flows_router.post("/import", response={201: FlowDetailOut, **COMMON_ERRORS})
def import_flow(request, payload: YamlIn):
    """Create a flow from Kwala flow YAML (as exported by GET /flows/{code}/export)."""
    membership = _membership(request, Role.EDITOR)
    meta, graph = import_yaml(payload.yaml)
    name = str(meta.get("name") or "Imported flow")[:120]
    flow = create_flow(membership.team, request.user, name, str(meta.get("description") or "")[:5000], graph=graph)
    return Status(201, _flow_out(flow, detail=True))


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


@flows_router.post("/import-oz-monitor", response={201: OzImportOut, **COMMON_ERRORS})
def import_oz_monitor(request, payload: OzMonitorIn):
    """Create flows from an OpenZeppelin Monitor configuration (see docs/dag.md); plain secret values
    are stored as team secrets only for admins, editors get them listed to fill in."""
    from flows import ozmonitor

    membership = _membership(request, Role.EDITOR)
    files = {"networks": payload.networks, "monitors": payload.monitors, "triggers": payload.triggers}
    try:
        config = ozmonitor.read_files(files)
    except ozmonitor.OzConfigError as exc:
        raise ApiError(400, "invalid_config", str(exc)) from None
    result = ozmonitor.import_oz_monitor(membership.team, request.user, config, publish=payload.publish,
                                         store_secrets=has_role(membership, Role.ADMIN), via="api")
    return Status(201, result.as_dict())


@flows_router.get("/{code}", response={200: FlowDetailOut, **COMMON_ERRORS})
def get_flow(request, code: str):
    flow, _ = _flow(request, code)
    return _flow_out(flow, detail=True)


@flows_router.patch("/{code}", response={200: FlowDetailOut, **COMMON_ERRORS})
def update_flow(request, code: str, payload: FlowPatch):
    flow, _ = _flow(request, code, Role.EDITOR)
    fields = [name for name in ("name", "description", "paused") if getattr(payload, name) is not None]
    for name in fields:
        setattr(flow, name, getattr(payload, name))
    if fields:
        flow.save(update_fields=[*fields, "updated_at"])
    return _flow_out(flow, detail=True)


@flows_router.delete("/{code}", response={204: None, **COMMON_ERRORS})
def delete_flow(request, code: str):
    flow, _ = _flow(request, code, Role.ADMIN)
    if live_version(flow) is not None:
        raise ApiError(409, "flow_is_live", "Unpublish the flow before deleting it.")
    delete_flow_for_good(flow, request.user)
    return Status(204, None)


@flows_router.put("/{code}/draft", response={200: VersionOut, **COMMON_ERRORS})
def put_draft(request, code: str, payload: DraftIn):
    flow, _ = _flow(request, code, Role.EDITOR)
    return _version_out(save_draft(flow, request.user, payload.graph.dict(), revision=payload.revision))


@flows_router.post("/{code}/compile", response={200: CompileOut, **COMMON_ERRORS})
def check_flow(request, code: str):
    """Compile the current draft (or live graph) and list every problem, without publishing."""
    flow, _ = _flow(request, code)
    _, graph = current_graph(flow)
    try:
        compile_for(flow, graph)
    except CompileError as exc:
        return {"ok": False, "problems": exc.as_list()}
    return {"ok": True, "problems": []}


@flows_router.post("/{code}/publish", response={200: VersionOut, **COMMON_ERRORS})
def publish(request, code: str, revision: int | None = Query(None, ge=1, le=2**31 - 1,
                                                            description="409 if the flow moved past it")):
    flow, _ = _flow(request, code, Role.EDITOR)
    version = publish_version(flow, request.user, revision=revision, via="api")
    return _version_out(version)


@flows_router.post("/{code}/unpublish", response={200: FlowOut, **COMMON_ERRORS})
def unpublish(request, code: str):
    flow, _ = _flow(request, code, Role.EDITOR)
    if unpublish_flow(flow, request.user, via="api") is None:
        raise ApiError(409, "not_published", "The flow has no live version.")
    flow.refresh_from_db()
    return _flow_out(flow)


@flows_router.get("/{code}/versions", response={200: list[VersionOut], **COMMON_ERRORS})
@paginate(LimitOffsetPagination)
def list_versions(request, code: str):
    flow, _ = _flow(request, code)
    return [_version_out(v) for v in flow.versions.order_by("-number")]


def _version(flow: Flow, number: int) -> FlowVersion:
    version = flow.versions.filter(number=number).first() if 1 <= number < 2**31 else None
    if version is None:
        raise not_found("version")
    return version


@flows_router.get("/{code}/versions/{number}", response={200: VersionDetailOut, **COMMON_ERRORS})
def get_version(request, code: str, number: int):
    flow, _ = _flow(request, code)
    return _version_out(_version(flow, number), detail=True)


@flows_router.get("/{code}/diff", response={200: dict[str, Any], **COMMON_ERRORS})
def diff(request, code: str, base: int = Query(..., ge=1, le=2**31 - 1, alias="from"),
         head: int = Query(..., ge=1, le=2**31 - 1, alias="to")):
    """What changed between two versions: nodes added, removed and changed (field by field), and edges."""
    flow, _ = _flow(request, code)
    return diff_graphs(_version(flow, base).graph, _version(flow, head).graph)


@flows_router.get("/{code}/export", response={200: YamlOut, **COMMON_ERRORS})
def export(request, code: str):
    flow, _ = _flow(request, code)
    _, graph = current_graph(flow)
    return {"yaml": export_yaml({"name": flow.name, "description": flow.description}, graph)}


class WebhookOut(Schema):
    url: str


def _webhook_url(request: HttpRequest, path: str) -> dict:
    return {"url": request.build_absolute_uri(path)}


@flows_router.get("/{code}/webhook", response={200: WebhookOut, **COMMON_ERRORS})
def webhook(request, code: str):
    """The flow's inbound webhook URL, with its token (editors only: the token is a credential)."""
    flow, _ = _flow(request, code, Role.EDITOR)
    return _webhook_url(request, webhook_path(flow, request.user))


@flows_router.post("/{code}/webhook/rotate", response={200: WebhookOut, **COMMON_ERRORS})
def rotate_webhook(request, code: str):
    """A new token for the flow's inbound webhook URL; the old URL stops working at once. Audited."""
    flow, _ = _flow(request, code, Role.EDITOR)
    rotate_webhook_token(flow, request.user)
    return _webhook_url(request, webhook_path(flow, request.user))


api.add_router("/flows", flows_router)


# -- runs -------------------------------------------------------------------------------------

runs_router = Router(tags=["runs"])


class StepOut(Schema):
    step_id: str
    status: str
    attempt: int
    error: str
    started_at: datetime | None
    finished_at: datetime | None


class RunOut(Schema):
    code: str
    flow: str
    version: int
    status: str
    trigger_key: str
    dry_run: bool
    chain_id: int | None
    block_number: int | None
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunDetailOut(RunOut):
    steps: list[StepOut]


class RunPage(Schema):
    items: list[RunOut]
    count: int = Field(description="Runs matching the filters, counted up to 10,000 (see count_capped)")
    count_capped: bool = Field(description="There are more than 10,000: count says 10,000")
    has_more: bool = Field(description="Older runs match the filters beyond this page")
    next_before: str | None = Field(description="Pass as `before` for the next page (the code of this page's last run)")


def _run_out(run, detail: bool = False) -> dict:
    data = {
        "code": str(run.code), "flow": run.flow.code, "version": run.version.number, "status": run.status,
        "trigger_key": run.trigger_key, "dry_run": run.dry_run,
        "chain_id": run.chain.chain_id if run.chain_id else None, "block_number": run.block_number,
        "error": run.error, "created_at": run.created_at, "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
    if detail:
        data["steps"] = [
            {"step_id": s.step_id, "status": s.status, "attempt": s.attempt, "error": s.error,
             "started_at": s.started_at, "finished_at": s.finished_at}
            for s in run.steps.order_by("queued_at", "pk")
        ]
    return data


RunStatus = Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "REORGED"]


def _utc(moment: datetime, name: str) -> datetime:
    """`moment` in UTC (naive: taken as UTC): PostgreSQL refuses offsets past ±15:59 that ISO 8601 allows."""
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise ApiError(422, "validation_error", f"{name} is out of range.") from None


@runs_router.get("", response={200: RunPage, **COMMON_ERRORS})
def list_runs(
    request,
    flow: str = Query("", max_length=16),
    status: RunStatus | None = None,
    within_seconds: int | None = Query(None, ge=1, le=366 * 86400, description="Only runs created this recently"),
    finished_after: datetime | None = Query(None, description="Only runs that finished at or after this time"),
    finished_before: datetime | None = Query(None, description="Only runs that finished before this time"),
    before: str = Query("", max_length=64, description="Only runs older than this run (a code: next_before)"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=COUNT_CAP, description="Runs to skip; past 10,000 page with `before`"),
):
    """The team's runs, newest first. Page through them with `before` (each page's `next_before`):
    every page costs the same. `count` counts the runs matching the filters up to 10,000."""
    from executor.models import Run

    team = request.auth.team
    runs = Run.objects.filter(team=team)
    if flow:
        # By the flow's id, which the planner can weigh against its statistics.
        runs = runs.filter(flow_id=Flow.objects.filter(team=team, code=flow).values_list("pk", flat=True).first())
    if status:
        runs = runs.filter(status=status)
    if within_seconds:
        runs = runs.filter(created_at__gte=timezone.now() - timedelta(seconds=within_seconds))
    if finished_after:
        runs = runs.filter(finished_at__gte=_utc(finished_after, "finished_after"))
    if finished_before:
        # A run is created before it finishes: the bound lets the index start there.
        runs = runs.filter(finished_at__lt=_utc(finished_before, "finished_before"),
                           created_at__lt=_utc(finished_before, "finished_before"))
    count, capped = capped_count(runs)
    if before:
        cursor = Run.objects.filter(team=team, code=_uuid_or_404(before, "run")).values_list("created_at", "pk").first()
        if cursor is None:
            raise ApiError(404, "run_not_found", "The `before` run is not in your team (or no longer kept).")
        runs = older_than(runs, cursor)
    found = list(runs.select_related("flow", "version", "chain").order_by("-created_at", "-id")
                 [offset: offset + limit + 1])
    items, more = found[:limit], len(found) > limit
    return {"items": [_run_out(r) for r in items], "count": count, "count_capped": capped, "has_more": more,
            "next_before": str(items[-1].code) if more else None}


@runs_router.get("/{code}", response={200: RunDetailOut, **COMMON_ERRORS})
def get_run(request, code: str):
    from executor.models import Run

    run = Run.objects.filter(team=request.auth.team, code=_uuid_or_404(code, "run")).select_related(
        "flow", "version", "chain"
    ).first()
    if run is None:
        raise not_found("run")
    return _run_out(run, detail=True)


def _uuid_or_404(value: str, kind: str):
    import uuid

    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found(kind) from None


def _run(request, code: str, role: str = Role.VIEWER):
    from executor.models import Run

    run = Run.objects.filter(team=request.auth.team, code=_uuid_or_404(code, "run")).select_related(
        "flow", "version", "chain"
    ).first()
    if run is None:
        raise not_found("run")
    _membership(request, role)
    return run


class RerunIn(Schema):
    step_id: Text = Field(min_length=1, max_length=64, description="Run this step and everything after it again")


@runs_router.post("/{code}/retry", response={200: RunDetailOut, **COMMON_ERRORS})
def retry(request, code: str):
    """Run a failed run's failed steps again; steps that succeeded keep their results (409 unless FAILED)."""
    from executor.runs.manual import retry_run

    retry_run(_run(request, code, Role.EDITOR), user=request.user)
    return _run_out(_run(request, code), detail=True)


@runs_router.post("/{code}/rerun", response={201: RunDetailOut, **COMMON_ERRORS})
def rerun(request, code: str, payload: RerunIn):
    """A new run of the same version and trigger, reusing every result not downstream of `step_id`."""
    from executor.runs.manual import rerun_from

    new = rerun_from(_run(request, code, Role.EDITOR), payload.step_id, user=request.user)
    return Status(201, _run_out(_run(request, str(new.code)), detail=True))


api.add_router("/runs", runs_router)


class StartRunIn(Schema):
    payload: JsonObject = Field(default_factory=dict, description="The trigger payload the run sees as `trigger`")
    dry_run: bool = Field(False, description="Run the logic, record what side effects would send, send nothing")
    draft: bool = Field(False, description="Test the draft, compiled now, instead of the live version")


class ReplayIn(Schema):
    from_block: int = Field(ge=0, le=2**63 - 1)
    to_block: int = Field(ge=0, le=2**63 - 1)
    dry_run: bool = Field(True, description="Backtest: runs execute with their side effects recorded, not performed")


class ReplayOut(Schema):
    job: str = Field(description="The replay job's code: GET /api/v1/replays/{job} follows it")
    status: str = Field(description="QUEUED, RUNNING, SUCCEEDED or FAILED")
    from_block: int
    to_block: int
    dry_run: bool
    logs_seen: int | None = Field(description="Logs read in the range (once the job ran)")
    matched: int | None = Field(description="Logs the trigger matched (once the job ran)")
    runs: list[str] = Field(description="Codes of the runs created (events that already ran live are not run again)")
    error: str = Field(description="Why the job failed (e.g. a range beyond the chain head)")


def _replay_out(job) -> dict:
    return {"job": str(job.code), "status": job.status, "from_block": job.from_block, "to_block": job.to_block,
            "dry_run": job.dry_run, "logs_seen": job.logs_seen, "matched": job.matched, "runs": job.run_codes,
            "error": job.error}


@flows_router.post("/{code}/runs", response={201: RunDetailOut, **COMMON_ERRORS})
def start_run(request, code: str, payload: StartRunIn):
    """Start a manual run of the live version, or a test run of the draft (`draft: true`), now."""
    from executor.runs.manual import start_manual_run

    flow, _ = _flow(request, code, Role.EDITOR)
    if payload.draft:
        with transaction.atomic():
            version, graph = current_graph(flow)
            if version is None:
                raise ApiError(409, "no_version", "This flow has no graph to run yet.")
            dag = compile_for(flow, graph)
            if version.status == FlowVersion.Status.DRAFT:
                # The draft runs as compiled now; publishing compiles it again.
                version.dag = dag
                version.save(update_fields=["dag", "updated_at"])
            run = start_manual_run(version, payload.payload, user=request.user, dry_run=payload.dry_run)
    else:
        version = live_version(flow)
        if version is None:
            raise ApiError(409, "not_published", "The flow has no live version: publish it, or send draft: true.")
        run = start_manual_run(version, payload.payload, user=request.user, dry_run=payload.dry_run)
    return Status(201, _run_out(_run(request, str(run.code)), detail=True))


@flows_router.post("/{code}/replay", response={202: ReplayOut, **COMMON_ERRORS})
def replay(request, code: str, payload: ReplayIn):
    """Queue a replay of the live version's contract-event trigger over blocks from_block..to_block.

    Live (`dry_run: false`): creates the runs the listener would have created;
    an event that already has a live run is not run twice. Dry run (backtest):
    the runs execute, and record what their side effects would have sent. A
    worker reads the blocks (a long range takes minutes): follow the job at
    GET /api/v1/replays/{job}.
    """
    from executor.runs.manual import request_replay

    flow, membership = _flow(request, code, Role.EDITOR)
    version = live_version(flow)
    if version is None:
        raise ApiError(409, "not_published", "Only the live version can be replayed: publish it first.")
    job = request_replay(version, payload.from_block, payload.to_block, dry_run=payload.dry_run, user=request.user)
    audit.record(membership.team, request.user, "flow.replayed", flow.name, flow=flow.code, version=version.number,
                 from_block=payload.from_block, to_block=payload.to_block, dry_run=payload.dry_run,
                 job=str(job.code), via="api")
    return Status(202, _replay_out(job))


replays_router = Router(tags=["runs"])


@replays_router.get("/{code}", response={200: ReplayOut, **COMMON_ERRORS})
def get_replay(request, code: str):
    """A replay or backtest job: its status, what it read and matched, and the runs it created."""
    from executor.models import ReplayJob

    _membership(request, Role.VIEWER)
    job = ReplayJob.objects.filter(team=request.auth.team, code=_uuid_or_404(code, "replay")).first()
    if job is None:
        raise not_found("replay")
    return _replay_out(job)


api.add_router("/replays", replays_router)


# -- chains and templates ----------------------------------------------------------------------

misc_router = Router()


class ChainOut(Schema):
    slug: str
    name: str
    chain_id: int
    enabled: bool
    head_block: int | None
    processed_block: int | None
    lag: int | None
    halted: bool


@misc_router.get("/chains", response={200: list[ChainOut], **COMMON_ERRORS}, tags=["chains"])
def list_chains(request):
    from executor.models import Chain

    out = []
    for chain in Chain.objects.select_related("cursor").order_by("chain_id"):
        cursor = getattr(chain, "cursor", None)
        out.append({
            "slug": chain.slug, "name": chain.name, "chain_id": chain.chain_id, "enabled": chain.enabled,
            "head_block": cursor.head_block if cursor else None,
            "processed_block": cursor.block_number if cursor else None,
            "lag": cursor.lag if cursor else None, "halted": cursor.halted if cursor else False,
        })
    return out


class TemplateInputOut(Schema):
    name: str
    label: str
    kind: str
    default: Any = None
    help: str = ""


class TemplateOut(Schema):
    slug: str
    title: str
    description: str
    category: str
    inputs: list[TemplateInputOut]


class TemplateDetailOut(TemplateOut):
    graph: dict[str, Any]


class UseTemplateIn(Schema):
    name: Text | None = Field(None, min_length=1, max_length=120)
    inputs: dict[str, Text | int] = {}


def _template_out(t: gallery.Template, detail: bool = False) -> dict:
    data = {"slug": t.slug, "title": t.title, "description": t.description, "category": t.category,
            "inputs": [i.as_dict() for i in t.inputs]}
    if detail:
        data["graph"] = t.graph
    return data


@misc_router.get("/templates", response={200: list[TemplateOut], **COMMON_ERRORS}, tags=["templates"])
def list_templates(request, q: str = Query("", max_length=100), category: str = Query("", max_length=40)):
    return [_template_out(t) for t in gallery.templates(q, category)]


def _template(slug: str) -> gallery.Template:
    template = gallery.get_template(slug)
    if template is None:
        raise not_found("template")
    return template


@misc_router.get("/templates/{slug}", response={200: TemplateDetailOut, **COMMON_ERRORS}, tags=["templates"])
def get_template(request, slug: str):
    return _template_out(_template(slug), detail=True)


@misc_router.post("/templates/{slug}/use", response={201: FlowDetailOut, **COMMON_ERRORS}, tags=["templates"])
def use_template(request, slug: str, payload: UseTemplateIn):
    """Create a draft flow from a template with these input values (400 lists the bad ones)."""

    membership = _membership(request, Role.EDITOR)
    template = _template(slug)
    chains = enabled_chains()
    try:
        values = gallery.clean_inputs(template, payload.inputs, chains=chains)
    except gallery.TemplateError as exc:
        raise ApiError(400, "invalid_inputs", "Some template inputs are not valid.",
                       [{"input": k, "message": v} for k, v in exc.errors.items()]) from None
    flow = create_flow(membership.team, request.user, payload.name or template.title, template.description,
                       graph=gallery.instantiate(template, values))
    return Status(201, _flow_out(flow, detail=True))


# -- secrets and signer keys ---------------------------------------------------------------------


class SecretOut(Schema):
    name: str
    created_at: datetime
    updated_at: datetime


class SecretIn(Schema):
    value: Text = Field(min_length=1, max_length=65536, description="Write-only: never returned")


class SignerOut(Schema):
    code: str
    name: str
    address: str
    created_at: datetime


class SignerIn(Schema):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    private_key: str | None = Field(None, max_length=100, description="Write-only; omit to generate a new key")


@misc_router.get("/secrets", response={200: list[SecretOut], **COMMON_ERRORS}, tags=["secrets"])
def list_secrets(request):
    membership = _membership(request, Role.EDITOR)
    return list(Secret.objects.filter(team=membership.team).order_by("name"))


@misc_router.put("/secrets/{name}", response={200: SecretOut, 201: SecretOut, **COMMON_ERRORS}, tags=["secrets"])
def put_secret(request, name: str, payload: SecretIn):
    """Create or replace a secret. The value is encrypted and never returned by any endpoint."""
    membership = _membership(request, Role.ADMIN)
    secret, created = do_set_secret(membership, name, payload.value)
    return Status(201 if created else 200, secret)


@misc_router.delete("/secrets/{name}", response={204: None, **COMMON_ERRORS}, tags=["secrets"])
def delete_secret(request, name: str):
    membership = _membership(request, Role.ADMIN)
    secret = Secret.objects.filter(team=membership.team, name=name).first()
    if secret is None:
        raise not_found("secret")
    do_delete_secret(membership, secret)
    return Status(204, None)


@misc_router.get("/signers", response={200: list[SignerOut], **COMMON_ERRORS}, tags=["secrets"])
def list_signers(request):
    membership = _membership(request, Role.EDITOR)
    return list(SignerKey.objects.filter(team=membership.team).order_by("name"))


@misc_router.post("/signers", response={201: SignerOut, **COMMON_ERRORS}, tags=["secrets"])
def create_signer(request, payload: SignerIn):
    membership = _membership(request, Role.ADMIN)
    return Status(201, do_create_signer(membership, payload.name, payload.private_key))


@misc_router.delete("/signers/{code}", response={204: None, **COMMON_ERRORS}, tags=["secrets"])
def delete_signer(request, code: str):
    membership = _membership(request, Role.ADMIN)
    signer = SignerKey.objects.filter(team=membership.team, code=code).first()
    if signer is None:
        raise not_found("signer")
    do_delete_signer(membership, signer)
    return Status(204, None)


# -- team members, invitations, tokens, audit ---------------------------------------------------


class MemberOut(Schema):
    username: str
    email: str
    role: str
    joined_at: datetime


class RoleIn(Schema):
    role: Literal["OWNER", "ADMIN", "EDITOR", "VIEWER"]


class InviteIn(Schema):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$")
    role: Literal["OWNER", "ADMIN", "EDITOR", "VIEWER"] = "VIEWER"


class InviteOut(Schema):
    code: str
    email: str
    role: str
    expires_at: datetime


def _member_out(m: Membership) -> dict:
    return {"username": m.user.get_username(), "email": m.user.email, "role": m.role, "joined_at": m.created_at}


def _member(request, username: str) -> Membership:
    target = Membership.objects.select_related("user", "team").filter(
        team=request.auth.team, user__username=username
    ).first()
    if target is None:
        raise not_found("member")
    return target


@misc_router.get("/members", response={200: list[MemberOut], **COMMON_ERRORS}, tags=["team"])
def list_members(request):
    members = Membership.objects.filter(team=request.auth.team).select_related("user").order_by("user__username")
    return [_member_out(m) for m in members]


@misc_router.patch("/members/{username}", response={200: MemberOut, **COMMON_ERRORS}, tags=["team"])
def change_member_role(request, username: str, payload: RoleIn):
    membership = _membership(request, Role.ADMIN)
    return _member_out(do_change_role(membership, _member(request, username), payload.role))


@misc_router.delete("/members/{username}", response={204: None, **COMMON_ERRORS}, tags=["team"])
def remove_member(request, username: str):
    target = _member(request, username)
    if target.pk != request.auth.pk:
        _membership(request, Role.ADMIN)
    do_remove_member(request.auth, target)
    return Status(204, None)


@misc_router.post("/invitations", response={201: InviteOut, **COMMON_ERRORS}, tags=["team"])
def invite(request, payload: InviteIn):
    """Invite by email; the link is emailed, never returned."""
    from django.core.mail import send_mail
    from django.urls import reverse

    membership = _membership(request, Role.ADMIN)
    invitation, token = do_invite(membership, payload.email, payload.role)
    link = request.build_absolute_uri(reverse("accept_invitation", args=[token]))
    send_mail(
        f"You are invited to {membership.team.name} on Kwala",
        f"{request.user.get_username()} invited you to {membership.team.name} on Kwala. Accept (once, within 7 days):\n{link}\n",
        settings.DEFAULT_FROM_EMAIL, [invitation.email],
    )
    return Status(201, invitation)


class TokenOut(Schema):
    prefix: str
    name: str
    team: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The token itself: shown this once, store it now")


class TokenIn(Schema):
    name: Text = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="Empty: the token does not expire.")


def _token_out(t: ApiToken) -> dict:
    return {"prefix": t.prefix, "name": t.name, "team": t.team.code, "created_at": t.created_at,
            "last_used_at": t.last_used_at, "revoked_at": t.revoked_at, "expires_at": t.expires_at}


@misc_router.get("/tokens", response={200: list[TokenOut], **COMMON_ERRORS}, tags=["tokens"])
def list_tokens(request):
    return [_token_out(t) for t in ApiToken.objects.filter(user=request.user).select_related("team")]


@misc_router.post("/tokens", response={201: TokenCreatedOut, **COMMON_ERRORS}, tags=["tokens"])
def create_token(request, payload: TokenIn):
    """A new personal token; only from a logged-in browser session, never with a token (a leaked
    token must not be able to mint others that outlive its revocation)."""
    if getattr(request, "api_token", None) is not None:
        raise forbidden("An API token cannot create tokens: create them on your account page.")
    token, plaintext = do_create_token(request.auth, payload.name, expires_in_days=payload.expires_in_days)
    return Status(201, {**_token_out(token), "token": plaintext})


@misc_router.delete("/tokens/{prefix}", response={204: None, **COMMON_ERRORS}, tags=["tokens"])
def revoke_token(request, prefix: str):
    token = ApiToken.objects.select_related("team").filter(user=request.user, prefix=prefix).first()
    if token is None:
        raise not_found("token")
    do_revoke_token(request.user, token)
    return Status(204, None)


class AuditOut(Schema):
    action: str
    actor: str
    target: str
    data: dict[str, Any]
    created_at: datetime


@misc_router.get("/audit", response={200: list[AuditOut], **COMMON_ERRORS}, tags=["team"])
@paginate(LimitOffsetPagination)
def list_audit(request, action: str = Query("", max_length=40), actor: str = Query("", max_length=150),
               target: str = Query("", max_length=200)):
    membership = _membership(request, Role.ADMIN)
    return [
        {"action": e.action, "actor": e.actor_name, "target": e.target, "data": e.data, "created_at": e.created_at}
        for e in audit.events_for(membership.team, action=action, actor=actor, target=target)
    ]


api.add_router("", misc_router)

__all__ = ["ApiError", "api"]
