"""The templates gallery: browse and search, preview, and "Use this template"."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render

from executor.interface import chain_names
from flows import gallery
from flows.actions import do_create_flow
from flows.editor.graph_svg import graph_svg
from flows.models import Membership, Secret, SignerKey
from flows.permissions import require_membership
from flows.teams.views import flow_page_url

Role = Membership.Role


@login_required
def gallery_page(request):
    require_membership(request)
    query = request.GET.get("q", "").strip()[:100]
    category = request.GET.get("category", "").strip()[:40]
    context = {
        "templates": [(t, graph_svg(t.graph, title=t.title)) for t in gallery.templates(query, category)],
        "categories": gallery.categories(),
        "query": query,
        "category": category,
    }
    template_name = "gallery/gallery.html"
    if request.htmx and request.htmx.target == "gallery-results":
        template_name += "#results"
    return render(request, template_name, context)


def _chains() -> dict[int, str]:
    return chain_names()


@login_required
def use_template(request, slug: str):
    membership = require_membership(request)
    template = gallery.get_template(slug)
    if template is None:
        raise Http404("No such template")
    can_use = membership.role != Role.VIEWER
    chains = _chains()
    errors: dict[str, str] = {}
    values = {i.name: i.default for i in template.inputs}
    name = template.title
    if request.method == "POST":
        if not can_use:
            raise Http404("No such template")
        values.update({i.name: request.POST.get(i.name, "") for i in template.inputs})
        name = request.POST.get("flow_name", "").strip()[:120] or template.title
        try:
            cleaned = gallery.clean_inputs(template, values, chains=chains)
        except gallery.TemplateError as exc:
            errors = exc.errors
        else:
            flow = do_create_flow(
                membership.team, request.user, name, template.description, graph=gallery.instantiate(template, cleaned)
            )
            messages.success(request, f"Created {flow.name} as a draft from the template.")
            return redirect(flow_page_url(flow))
    context = {
        "template": template,
        "svg": graph_svg(template.graph, title=template.title),
        "chains": chains,
        # Only those who may use the template (editors) see what the team's secrets and signers are called.
        "secret_names": list(Secret.objects.filter(team=membership.team).values_list("name", flat=True))
        if can_use else [],
        "signer_names": list(SignerKey.objects.filter(team=membership.team).values_list("name", flat=True))
        if can_use else [],
        "fields": [(i, values.get(i.name), errors.get(i.name)) for i in template.inputs],
        "flow_name": name,
        "errors": errors,
        "can_use": can_use,
        "membership": membership,
    }
    return render(request, "gallery/use.html", context, status=400 if errors else 200)
