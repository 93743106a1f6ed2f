from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET, require_POST
from jinja2 import nodes as jinja_nodes

from executor.models import Chain, Notification, Run, StepRun, Transaction
from executor.paging import capped_count, keyset_page
from executor.permissions import get_run_for_user
from executor.runs.manual import RunError, rerun_from, retry_run
from flows.editor import palette
from flows.expressions import ExpressionError, explorer_url, parse_expression
from flows.models import Flow, FlowVersion
from flows.nodes import NODE_TYPES
from flows.permissions import Role, has_role, membership_for, require_membership

PAGE_SIZE = 50
PERIODS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}


@login_required
@require_GET
def run_list(request):
    """The team's runs, newest first, filtered by flow, status and period; a page at a time
    from where the last stopped (`before` / `after` a run's code), so every page costs the same."""
    membership = require_membership(request)
    team = membership.team
    runs = Run.objects.filter(team=team)
    flows = list(Flow.objects.filter(team=team).order_by("name").only("code", "name"))
    chosen = {"flow": request.GET.get("flow", ""), "status": request.GET.get("status", ""),
              "period": request.GET.get("period", "")}
    if chosen["flow"]:
        runs = runs.filter(flow_id=next((f.pk for f in flows if f.code == chosen["flow"]), None))
    if chosen["status"] in Run.Status.values:
        runs = runs.filter(status=chosen["status"])
    if chosen["period"] in PERIODS:
        runs = runs.filter(created_at__gte=timezone.now() - PERIODS[chosen["period"]])
    count, capped = capped_count(runs)
    page = keyset_page(runs.select_related("flow", "version"), PAGE_SIZE,
                       before=_run_cursor(team, request.GET.get("before")),
                       after=_run_cursor(team, request.GET.get("after")))
    query = "&".join(f"{k}={v}" for k, v in chosen.items() if v)
    context = {
        "membership": membership,
        "page": page,
        "count": count,
        "count_capped": capped,
        "filtered": filtered_runs(page.items),
        "ws": f"/ws/teams/{team.code}/runs/",
        "flows": flows,
        "statuses": Run.Status.choices,
        "periods": list(PERIODS),
        "chosen": chosen,
        "query": query,
    }
    template = "executor/run_list.html#runs" if request.htmx else "executor/run_list.html"
    return render(request, template, context)


def _run_cursor(team, code: str | None) -> tuple[datetime, int] | None:
    """The (created_at, id) of the team's run `code` a page starts from; None (the newest page) if there is none."""
    try:
        code = uuid.UUID(code or "")
    except ValueError:
        return None
    return Run.objects.filter(team=team, code=code).values_list("created_at", "pk").first()


def _steps(run: Run) -> dict[str, StepRun]:
    return {step.step_id: step for step in run.steps.all()}


# -- how a run reads on a page ---------------------------------------------------------------

S = StepRun.Status
# A step in one of these has run (or is running): an action that got this far acted.
RAN = (S.QUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED)


def _action_ids(version: FlowVersion) -> set[str]:
    return {step["id"] for step in (version.dag or {}).get("steps", [])
            if getattr(NODE_TYPES.get(step.get("type")), "category", "") == "action"}


def filtered_runs(runs: Iterable[Run]) -> set[int]:
    """The ids of the runs that succeeded without any action running: a condition (or a stop)
    ended them before anything was sent. A flow without actions is never "filtered"."""
    done = [run for run in runs if run.status == Run.Status.SUCCEEDED and _action_ids(run.version)]
    if not done:
        return set()
    acted = set(StepRun.objects.filter(run__in=done, status__in=RAN).values_list("run_id", "step_id"))
    return {run.pk for run in done if not any((run.pk, sid) in acted for sid in _action_ids(run.version))}


def _duration_ms(started_at, finished_at) -> int | None:
    if started_at is None or finished_at is None:
        return None
    return max(round((finished_at - started_at).total_seconds() * 1000), 0)


def as_json(value: Any) -> str:
    """Readable JSON for a page: indented, ints of any size exact (a browser's JSON.parse would round
    those above 2**53, so the page shows this text and copies it as it is)."""
    # Keys sorted: PostgreSQL's jsonb keeps them in its own order (shortest first), which reads as none.
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def run_state_data(run: Run) -> dict:
    """The run's status and each step's status, for the canvas (the DB is the truth, the
    websocket only says when to look again)."""
    steps = {
        step_id: {"status": status, "error": error[:300], "duration_ms": _duration_ms(started_at, finished_at)}
        for step_id, status, error, started_at, finished_at in run.steps.values_list(
            "step_id", "status", "error", "started_at", "finished_at")
    }
    action_ids = _action_ids(run.version)
    filtered = (run.status == Run.Status.SUCCEEDED and bool(action_ids)
                and not any(steps.get(sid, {}).get("status") in RAN for sid in action_ids))
    return {
        "run": str(run.code),
        "status": run.status,
        "filtered": filtered,
        "error": run.error[:1000],
        "dry_run": run.dry_run,
        "reorged": run.status == Run.Status.REORGED,
        "finished": run.status in Run.FINISHED,
        "steps": steps,
    }


def _explorer(chain: Chain | None, tx_hash: str) -> str:
    if chain is None or not chain.explorer_url:
        return ""
    try:
        return explorer_url(tx_hash, chain.explorer_url)
    except ExpressionError:
        return ""


def run_transactions(run: Run) -> list[dict]:
    """The transaction that fired the run (chain events and transactions) and those its steps sent,
    each with its explorer link when the chain has an explorer."""
    out = []
    trigger = run.trigger if isinstance(run.trigger, dict) else {}
    tx_hash = trigger.get("tx_hash") or trigger.get("hash")
    if isinstance(tx_hash, str) and len(tx_hash) == 66 and tx_hash.startswith("0x"):
        chain = run.chain or Chain.objects.filter(chain_id=trigger.get("chain_id") or -1).first()
        out.append({"what": "Trigger tx", "hash": tx_hash, "url": _explorer(chain, tx_hash), "status": ""})
    for tx in Transaction.objects.filter(run=run).select_related("chain", "step_run").order_by("created_at"):
        out.append({"what": f"Sent by {tx.step_run.step_id}", "hash": tx.tx_hash, "url": _explorer(tx.chain, tx.tx_hash),
                    "status": tx.get_status_display().lower()})
    return out


# The names an expression may read that a page can show; secrets are named, never shown.
_CONTEXT_ROOTS = ("trigger", "steps", "flow", "run", "now", "secrets")
_MISSING = object()


def _path_of(node: jinja_nodes.Node) -> list | None:
    """``trigger.args['to']`` -> ['trigger', 'args', 'to']; a computed subscript keeps what comes before it."""
    parts: list = []
    while True:
        if isinstance(node, jinja_nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, jinja_nodes.Getitem):
            if isinstance(node.arg, jinja_nodes.Const) and isinstance(node.arg.value, (str, int)):
                parts.append(node.arg.value)
            else:
                parts.clear()
            node = node.node
        elif isinstance(node, jinja_nodes.Name):
            parts.append(node.name)
            return parts[::-1]
        else:
            return None


def expression_paths(source: str) -> list[list]:
    """The longest context paths an expression reads (``trigger.args.value``, ``steps.x.output``), in order."""
    tree = parse_expression(source)
    found = [tree, *tree.find_all((jinja_nodes.Getattr, jinja_nodes.Getitem, jinja_nodes.Name))]
    inner = {id(n.node) for n in found if isinstance(n, (jinja_nodes.Getattr, jinja_nodes.Getitem))}
    paths: list[list] = []
    for node in found:
        if id(node) in inner or not isinstance(node, (jinja_nodes.Getattr, jinja_nodes.Getitem, jinja_nodes.Name)):
            continue
        path = _path_of(node)
        if path and path[0] in _CONTEXT_ROOTS and path not in paths:
            paths.append(path)
    return paths


def _path_text(path: list) -> str:
    text = str(path[0])
    for part in path[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if str(part).isidentifier() else f"[{part!r}]"
    return text


def _lookup(value: Any, path: list) -> Any:
    for part in path:
        in_dict = isinstance(value, dict) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value)
        if not (in_dict or in_list):
            return _MISSING
        value = value[part]
    return value


def logic_input(run: Run, step: StepRun, node: dict, rows: dict[str, StepRun]) -> dict | None:
    """What a condition or switch compared: its expression(s) and the values they read.

    The engine stores no input for logic steps; the values are read back from the run's
    trigger and its steps' outputs, which had their final values when the step ran (a step
    reads only steps upstream of it). `now` is when the step ran.
    """
    config = node.get("config") or {}
    if node.get("type") == "condition":
        shown: dict[str, Any] = {"expression": config.get("expression", "")}
        sources = [config.get("expression", "")]
    elif node.get("type") == "switch":
        cases = [{"name": c.get("name"), "expression": c.get("expression", "")} for c in config.get("cases") or []]
        shown, sources = {"cases": cases}, [c["expression"] for c in cases]
    else:
        return None
    context = {
        "trigger": run.trigger,
        "steps": {sid: {"output": r.output, "status": r.status, "error": r.error}
                  for sid, r in rows.items() if r.status in (S.SUCCEEDED, S.FAILED)},
        "flow": {"code": run.flow.code, "name": run.flow.name, "version": run.version.number},
        "run": {"code": str(run.code), "dry_run": run.dry_run},
        "now": step.started_at.isoformat() if step.started_at else None,
    }
    values: dict[str, Any] = {}
    missing: list[str] = []
    for source in sources:
        try:
            paths = expression_paths(source)
        except ExpressionError as exc:
            shown["problem"] = str(exc)
            continue
        for path in paths:
            if path[0] == "secrets":
                values[_path_text(path)] = "(secret, not shown)"
                continue
            value = _lookup(context, path)
            if value is _MISSING:
                missing.append(_path_text(path))
            else:
                values[_path_text(path)] = value
    shown["values"] = values
    if missing:
        shown["not_set"] = missing
    return shown


def _require_editor(request, run: Run) -> None:
    membership = membership_for(request.user, run.team_id)
    if membership is None or not has_role(membership, Role.EDITOR):
        raise Http404("No such run")


@login_required
@require_GET
def run_detail(request, code):
    run = get_run_for_user(request.user, code)
    membership = membership_for(request.user, run.team_id)
    graph = run.version.graph
    labels = {n["id"]: n.get("name") or getattr(NODE_TYPES.get(n.get("type")), "label", n.get("type"))
              for n in graph.get("nodes", [])}
    state = run_state_data(run)
    return render(
        request,
        "executor/run_detail.html",
        {
            "run": run,
            "membership": membership,
            "can_edit": has_role(membership, Role.EDITOR),
            "graph": graph,
            "state": state,
            "duration_ms": _duration_ms(run.started_at, run.finished_at),
            "transactions": run_transactions(run),
            "steps": sorted(_steps(run).values(), key=lambda s: (s.queued_at or s.started_at or run.created_at)),
            "labels": labels,
            "catalogue": palette(),
            "urls": {
                "state": reverse("run_state", args=[run.code]),
                "step": reverse("run_step", args=[run.code, "STEP"]),
                "ws": f"/ws/runs/{run.code}/",
            },
        },
    )


@login_required
@require_GET
def run_state(request, code):
    return JsonResponse(run_state_data(get_run_for_user(request.user, code)))


@login_required
@require_GET
def run_step(request, code, step_id):
    """One step's input, output, error and logs (a fragment for the side panel), as exact JSON."""
    run = get_run_for_user(request.user, code)
    node = next((n for n in run.version.graph.get("nodes", []) if n.get("id") == step_id), None)
    if node is None:
        raise Http404("No such step")
    rows = _steps(run)
    step = rows.get(step_id)
    membership = membership_for(request.user, run.team_id)
    node_type = NODE_TYPES.get(node.get("type"))
    shown_input = step.input if step is not None else None
    if step is not None and shown_input is None and step.status in (S.SUCCEEDED, S.FAILED):
        shown_input = logic_input(run, step, node, rows)
    retry = (node.get("config") or {}).get("retry") or {}
    return render(
        request,
        "executor/run_detail.html#step",
        {"run": run, "step": step, "node": node, "step_id": step_id,
         "label": node.get("name") or getattr(node_type, "label", step_id),
         "is_trigger": getattr(node_type, "category", "") == "trigger",
         "input_json": as_json(shown_input) if shown_input is not None else "",
         "output_json": as_json(step.output) if step is not None and step.output is not None else "",
         "trigger_json": as_json(run.trigger),
         "duration_ms": _duration_ms(step.started_at, step.finished_at) if step is not None else None,
         "started": f"{timezone.localtime(step.started_at):%H:%M:%S.%f}"[:-3] if step and step.started_at else "",
         "max_attempts": retry.get("max_attempts") if isinstance(retry, dict) else None,
         "can_edit": has_role(membership, Role.EDITOR)},
    )


@login_required
@require_POST
def run_retry(request, code):
    run = get_run_for_user(request.user, code)
    _require_editor(request, run)
    if run.status != Run.Status.FAILED:
        messages.error(request, "Only a failed run can be retried.")
        return redirect("run_detail", code=run.code)
    try:
        new_run = retry_run(run, user=request.user)
    except RunError as exc:
        messages.error(request, str(exc))
        return redirect("run_detail", code=run.code)
    messages.success(request, "Retrying the failed steps.")
    return redirect("run_detail", code=getattr(new_run, "code", run.code))


@login_required
@require_POST
def run_rerun(request, code):
    run = get_run_for_user(request.user, code)
    _require_editor(request, run)
    step_id = request.POST.get("step", "")
    if step_id not in {s["id"] for s in run.version.graph.get("nodes", [])}:
        messages.error(request, "Choose a step of this run to re-run from.")
        return redirect("run_detail", code=run.code)
    if run.status not in Run.FINISHED:
        messages.error(request, "Wait for the run to finish before re-running part of it.")
        return redirect("run_detail", code=run.code)
    try:
        new_run = rerun_from(run, step_id, user=request.user)
    except RunError as exc:
        messages.error(request, str(exc))
        return redirect("run_detail", code=run.code)
    messages.success(request, f"Re-running from {step_id}.")
    return redirect("run_detail", code=getattr(new_run, "code", run.code))


@login_required
def notifications(request):
    """The team's alerts (failed runs), newest first, a page at a time; POST marks them all read.

    A page starts from the time of the alert the last one ended (`before`) or began with
    (`after`): alerts are made one at a time, each at its own microsecond.
    """
    membership = require_membership(request)
    alerts = Notification.objects.filter(team=membership.team).select_related("run", "run__flow")
    if request.method == "POST":
        alerts.filter(read_at=None).update(read_at=timezone.now())
        return redirect("notifications")
    before, after = _time_cursor(request.GET.get("before")), _time_cursor(request.GET.get("after"))
    page = keyset_page(alerts, PAGE_SIZE, before=before and (before, 0), after=after and (after, sys.maxsize))
    return render(request, "executor/notifications.html", {"membership": membership, "page": page})


def _time_cursor(value: str | None) -> datetime | None:
    moment = parse_datetime(value or "")  # None for anything else
    return moment if moment is not None and moment.tzinfo is not None else None
