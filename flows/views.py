from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.shortcuts import render

from executor.listener_health import chain_health
from flows.models import Flow, FlowVersion
from flows.permissions import require_membership


@login_required
def home(request):
    membership = require_membership(request)
    flows = (
        Flow.objects.filter(team=membership.team)
        .prefetch_related(
            Prefetch(
                "versions",
                queryset=FlowVersion.objects.filter(status=FlowVersion.Status.PUBLISHED),
                to_attr="published",
            )
        )
        .order_by("name")
    )
    return render(
        request,
        "flows/home.html",
        {"membership": membership, "flows": flows, "health": chain_health()},
    )


def page_not_found(request, exception=None):
    return render(request, "404.html", status=404)


def server_error(request):
    # No context processors that could fail again: a bare template.
    from django.http import HttpResponseServerError
    from django.template import loader

    return HttpResponseServerError(loader.get_template("500.html").render())
