"""The runs API (django-ninja Routers, added to the project's API in kwala_site.api):
/runs, /replays and /chains, and starting a flow's runs and replays (/flows/{code}/runs,
/flows/{code}/replay), built on executor's models.

Every lookup is scoped to the caller's team (its token's or the session's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from django.db import transaction
from django.utils import timezone
from ninja import Field, Query, Router, Schema
from ninja.responses import Status

from executor.models import Chain, ReplayJob, Run
from executor.paging import COUNT_CAP, capped_count, older_than
from executor.permissions import team_run_or_none
from executor.runs.manual import request_replay, rerun_from, retry_run, start_manual_run
from flows import audit
from flows.actions import compile_for, current_graph, live_version
from flows.api import team_flow
from flows.models import Flow, FlowVersion
from kwala_site.api_common import (
    COMMON_ERRORS,
    ApiError,
    JsonObject,
    Role,
    Text,
    not_found,
    require_role,
    uuid_or_404,
)

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


def run_out(run: Run, detail: bool = False) -> dict:
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


def team_run(request, code: str, role: str = Role.VIEWER) -> Run:
    """The run with this code in the caller's team (404 otherwise), if the caller has `role` (403)."""
    run = team_run_or_none(request.auth, uuid_or_404(code, "run"))
    if run is None:
        raise not_found("run")
    require_role(request, role)
    return run


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
        cursor = Run.objects.filter(team=team, code=uuid_or_404(before, "run")).values_list("created_at", "pk").first()
        if cursor is None:
            raise ApiError(404, "run_not_found", "The `before` run is not in your team (or no longer kept).")
        runs = older_than(runs, cursor)
    found = list(runs.select_related("flow", "version", "chain").order_by("-created_at", "-id")
                 [offset: offset + limit + 1])
    items, more = found[:limit], len(found) > limit
    return {"items": [run_out(r) for r in items], "count": count, "count_capped": capped, "has_more": more,
            "next_before": str(items[-1].code) if more else None}


@runs_router.get("/{code}", response={200: RunDetailOut, **COMMON_ERRORS})
def get_run(request, code: str):
    run = team_run_or_none(request.auth, uuid_or_404(code, "run"))
    if run is None:
        raise not_found("run")
    return run_out(run, detail=True)


class RerunIn(Schema):
    step_id: Text = Field(min_length=1, max_length=64, description="Run this step and everything after it again")


@runs_router.post("/{code}/retry", response={200: RunDetailOut, **COMMON_ERRORS})
def retry(request, code: str):
    """Run a failed run's failed steps again; steps that succeeded keep their results (409 unless FAILED)."""
    retry_run(team_run(request, code, Role.EDITOR), user=request.user)
    return run_out(team_run(request, code), detail=True)


@runs_router.post("/{code}/rerun", response={201: RunDetailOut, **COMMON_ERRORS})
def rerun(request, code: str, payload: RerunIn):
    """A new run of the same version and trigger, reusing every result not downstream of `step_id`."""
    new = rerun_from(team_run(request, code, Role.EDITOR), payload.step_id, user=request.user)
    return Status(201, run_out(team_run(request, str(new.code)), detail=True))


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


def replay_out(job: ReplayJob) -> dict:
    return {"job": str(job.code), "status": job.status, "from_block": job.from_block, "to_block": job.to_block,
            "dry_run": job.dry_run, "logs_seen": job.logs_seen, "matched": job.matched, "runs": job.run_codes,
            "error": job.error}


# -- starting a flow's runs and replays (under /flows, beside the flows router) ----------------

flow_runs_router = Router(tags=["flows"])


class StartRunIn(Schema):
    payload: JsonObject = Field(default_factory=dict, description="The trigger payload the run sees as `trigger`")
    dry_run: bool = Field(False, description="Run the logic, record what side effects would send, send nothing")
    draft: bool = Field(False, description="Test the draft, compiled now, instead of the live version")


class ReplayIn(Schema):
    from_block: int = Field(ge=0, le=2**63 - 1)
    to_block: int = Field(ge=0, le=2**63 - 1)
    dry_run: bool = Field(True, description="Backtest: runs execute with their side effects recorded, not performed")


@flow_runs_router.post("/{code}/runs", response={201: RunDetailOut, **COMMON_ERRORS})
def start_run(request, code: str, payload: StartRunIn):
    """Start a manual run of the live version, or a test run of the draft (`draft: true`), now."""
    flow, _ = team_flow(request, code, Role.EDITOR)
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
    return Status(201, run_out(team_run(request, str(run.code)), detail=True))


@flow_runs_router.post("/{code}/replay", response={202: ReplayOut, **COMMON_ERRORS})
def replay(request, code: str, payload: ReplayIn):
    """Queue a replay of the live version's contract-event trigger over blocks from_block..to_block.

    Live (`dry_run: false`): creates the runs the listener would have created;
    an event that already has a live run is not run twice. Dry run (backtest):
    the runs execute, and record what their side effects would have sent. A
    worker reads the blocks (a long range takes minutes): follow the job at
    GET /api/v1/replays/{job}.
    """
    flow, membership = team_flow(request, code, Role.EDITOR)
    version = live_version(flow)
    if version is None:
        raise ApiError(409, "not_published", "Only the live version can be replayed: publish it first.")
    job = request_replay(version, payload.from_block, payload.to_block, dry_run=payload.dry_run, user=request.user)
    audit.record(membership.team, request.user, "flow.replayed", flow.name, flow=flow.code, version=version.number,
                 from_block=payload.from_block, to_block=payload.to_block, dry_run=payload.dry_run,
                 job=str(job.code), via="api")
    return Status(202, replay_out(job))


# -- replays ------------------------------------------------------------------------------------

replays_router = Router(tags=["runs"])


@replays_router.get("/{code}", response={200: ReplayOut, **COMMON_ERRORS})
def get_replay(request, code: str):
    """A replay or backtest job: its status, what it read and matched, and the runs it created."""
    require_role(request, Role.VIEWER)
    job = ReplayJob.objects.filter(team=request.auth.team, code=uuid_or_404(code, "replay")).first()
    if job is None:
        raise not_found("replay")
    return replay_out(job)


# -- chains -------------------------------------------------------------------------------------

chains_router = Router(tags=["chains"])


class ChainOut(Schema):
    slug: str
    name: str
    chain_id: int
    enabled: bool
    head_block: int | None
    processed_block: int | None
    lag: int | None
    halted: bool


@chains_router.get("/chains", response={200: list[ChainOut], **COMMON_ERRORS})
def list_chains(request):
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
