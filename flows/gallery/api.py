"""The templates API (a django-ninja Router, added to the project's API in kwala_site.api):
list the gallery's templates and make a draft flow from one."""

from __future__ import annotations

from typing import Any

from ninja import Field, Query, Router, Schema
from ninja.responses import Status

from executor.interface import enabled_chains
from flows import gallery
from flows.actions import do_create_flow
from flows.api import FlowDetailOut, flow_out
from kwala_site.api_common import COMMON_ERRORS, ApiError, Role, Text, not_found, require_role

router = Router(tags=["templates"])


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


@router.get("/templates", response={200: list[TemplateOut], **COMMON_ERRORS})
def list_templates(request, q: str = Query("", max_length=100), category: str = Query("", max_length=40)):
    return [_template_out(t) for t in gallery.templates(q, category)]


def _template(slug: str) -> gallery.Template:
    template = gallery.get_template(slug)
    if template is None:
        raise not_found("template")
    return template


@router.get("/templates/{slug}", response={200: TemplateDetailOut, **COMMON_ERRORS})
def get_template(request, slug: str):
    return _template_out(_template(slug), detail=True)


@router.post("/templates/{slug}/use", response={201: FlowDetailOut, **COMMON_ERRORS})
def use_template(request, slug: str, payload: UseTemplateIn):
    """Create a draft flow from a template with these input values (400 lists the bad ones)."""

    membership = require_role(request, Role.EDITOR)
    template = _template(slug)
    chains = enabled_chains()
    try:
        values = gallery.clean_inputs(template, payload.inputs, chains=chains)
    except gallery.TemplateError as exc:
        raise ApiError(400, "invalid_inputs", "Some template inputs are not valid.",
                       [{"input": k, "message": v} for k, v in exc.errors.items()]) from None
    flow = do_create_flow(membership.team, request.user, payload.name or template.title, template.description,
                       graph=gallery.instantiate(template, values))
    return Status(201, flow_out(flow, detail=True))
