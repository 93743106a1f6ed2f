from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models.functions import Lower
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from executor import interface as executor
from flows import actions
from flows.editor.forms import NewFlowForm
from flows.models import Flow, FlowVersion
from flows.permissions import Role, has_role, require_membership

STATS_WINDOW = timedelta(days=7)


@login_required
def home(request):
    """The team's flows, each with its newest run and its success rate over the last 7 days
    (from the run rollups: this page never counts runs)."""
    membership = require_membership(request)
    flows = Flow.objects.filter(team=membership.team).order_by(Lower("name"), "name")  # "whale alert" among the W's
    live = dict(
        FlowVersion.objects.filter(flow__team=membership.team, status=FlowVersion.Status.PUBLISHED).values_list(
            "flow_id", "number"
        )
    )
    figures = executor.flow_figures(membership.team_id, timezone.now() - STATS_WINDOW)
    last_runs = executor.last_runs(membership.team_id)
    rows = []
    for flow in flows:
        week = figures.get(flow.pk, executor.Figures())
        rows.append({"flow": flow, "live": live.get(flow.pk), "last_run": last_runs.get(flow.pk),
                     "rate": week.success_rate, "finished": week.finished})
    return render(
        request,
        "flows/home.html",
        {
            "membership": membership,
            "rows": rows,
            "health": executor.chain_health(),
            "can_edit": has_role(membership, Role.EDITOR),
            "form": NewFlowForm(),
        },
    )


@login_required
@require_POST
def flow_create(request):
    membership = require_membership(request, Role.EDITOR)
    form = NewFlowForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the flow a name (up to 120 characters).")
        return redirect("home")
    flow = actions.do_create_flow(membership.team, request.user, form.cleaned_data["name"])
    return redirect("flow_editor", code=flow.code)


def page_not_found(request, exception=None):
    return render(request, "404.html", status=404)


def server_error(request):
    import sys

    from django.http import HttpResponseServerError
    from django.template import loader

    from kwala_site.overload import is_overload, overloaded

    if is_overload(sys.exc_info()[1]):
        return overloaded(request)
    # No context processors that could fail again: a bare template.
    return HttpResponseServerError(loader.get_template("500.html").render())
