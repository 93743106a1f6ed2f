from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import render

from executor.models import Run
from flows.permissions import require_membership


@login_required
def run_list(request):
    membership = require_membership(request)
    runs = Run.objects.filter(team=membership.team).select_related("flow", "version").order_by("-created_at")
    page = Paginator(runs, 50).get_page(request.GET.get("page"))
    return render(request, "executor/run_list.html", {"membership": membership, "page": page})
