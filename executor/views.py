from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from executor.models import Notification, Run, StepRun
from executor.runs.manual import RunError, rerun_from, retry_run
from flows.editor import palette
from flows.models import Flow
from flows.nodes import NODE_TYPES
from flows.permissions import Role, get_run_for_user, has_role, membership_for, require_membership

PAGE_SIZE = 50
PERIODS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}


@login_required
@require_GET
def run_list(request):
    """The team's runs, newest first, filtered by flow, status and period."""
    membership = require_membership(request)
    runs = Run.objects.filter(team=membership.team).select_related("flow", "version").order_by("-created_at")
    flows = list(Flow.objects.filter(team=membership.team).order_by("name").only("code", "name"))
    chosen = {"flow": request.GET.get("flow", ""), "status": request.GET.get("status", ""),
              "period": request.GET.get("period", "")}
    if chosen["flow"]:
        runs = runs.filter(flow__code=chosen["flow"])
    if chosen["status"] in Run.Status.values:
        runs = runs.filter(status=chosen["status"])
    if chosen["period"] in PERIODS:
        runs = runs.filter(created_at__gte=timezone.now() - PERIODS[chosen["period"]])
    page = Paginator(runs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = "&".join(f"{k}={v}" for k, v in chosen.items() if v)
    context = {
        "membership": membership,
        "page": page,
        "flows": flows,
        "statuses": Run.Status.choices,
        "periods": list(PERIODS),
        "chosen": chosen,
        "query": query,
    }
    template = "executor/run_list.html#runs" if request.htmx else "executor/run_list.html"
    return render(request, template, context)


def _steps(run: Run) -> dict[str, StepRun]:
    return {step.step_id: step for step in run.steps.all()}


def run_state_data(run: Run) -> dict:
    """The run's status and each step's status, for the canvas (the DB is the truth, the
    websocket only says when to look again)."""
    steps = {
        step_id: {"status": status, "error": error[:300]}
        for step_id, status, error in run.steps.values_list("step_id", "status", "error")
    }
    return {
        "run": str(run.code),
        "status": run.status,
        "error": run.error[:1000],
        "dry_run": run.dry_run,
        "reorged": run.status == Run.Status.REORGED,
        "finished": run.status in Run.FINISHED,
        "steps": steps,
    }


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
    return render(
        request,
        "executor/run_detail.html",
        {
            "run": run,
            "membership": membership,
            "can_edit": has_role(membership, Role.EDITOR),
            "graph": graph,
            "state": run_state_data(run),
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
    """One step's input, output, error and logs (a fragment for the side panel)."""
    run = get_run_for_user(request.user, code)
    step = run.steps.filter(step_id=step_id).first()
    node = next((n for n in run.version.graph.get("nodes", []) if n.get("id") == step_id), None)
    if node is None:
        raise Http404("No such step")
    membership = membership_for(request.user, run.team_id)
    return render(
        request,
        "executor/run_detail.html#step",
        {"run": run, "step": step, "node": node, "step_id": step_id,
         "label": node.get("name") or getattr(NODE_TYPES.get(node.get("type")), "label", step_id),
         "is_trigger": getattr(NODE_TYPES.get(node.get("type")), "category", "") == "trigger",
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
    """The team's alerts (failed runs), newest first; POST marks them all read."""
    membership = require_membership(request)
    alerts = Notification.objects.filter(team=membership.team).select_related("run", "run__flow")
    if request.method == "POST":
        alerts.filter(read_at=None).update(read_at=timezone.now())
        return redirect("notifications")
    page = Paginator(alerts, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "executor/notifications.html", {"membership": membership, "page": page})
