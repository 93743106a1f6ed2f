"""The flow editor's pages: the canvas, the side panel (node inspector), the ABI helper,
versions and their diff, YAML export and import, and trigger samples. Saving, publishing and
test runs go through the REST API (flows/api.py), which the canvas calls with the session.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import trigger_client_event

from executor import interface as executor
from flows import actions, editor
from flows.editor.diff import diff_graphs, is_empty
from flows.editor.forms import ROW_ACTION, ImportForm, NodeForm, edit_rows
from flows.flowyaml import FlowYamlError, export_yaml, import_yaml, translate_kwala_yaml
from flows.graph import CompileError
from flows.models import Flow, FlowVersion, Secret
from flows.nodes import NODE_TYPES, ValidationContext
from flows.permissions import Role, get_flow_for_user, has_role


def _chains() -> list[tuple[int, str]]:
    return list(executor.chain_names().items())  # named as in the gallery's forms


def _secret_names(flow: Flow) -> list[str]:
    return list(Secret.objects.filter(team=flow.team).order_by("name").values_list("name", flat=True))


def _visible_secret_names(flow: Flow, node: dict, can_edit: bool) -> list[str]:
    """The team's secret names for editors; a viewer sees only those the node already names
    (the secrets page needs editor rights, so the side panel must not list them either)."""
    if can_edit:
        return _secret_names(flow)
    node_type = NODE_TYPES[node["type"]]
    config = node.get("config") or {}
    return sorted({config[s.name] for s in node_type.fields if s.kind == "secret_ref" and config.get(s.name)})


def _problems(flow: Flow, graph: dict) -> list[dict]:
    try:
        actions.compile_for(flow, graph)
    except CompileError as exc:
        return exc.as_list()
    return []


def _state(flow: Flow) -> dict:
    """What the canvas shows: the graph, the revision it edits, and what is wrong with it."""
    version, graph = actions.current_graph(flow)
    live = actions.live_version(flow)
    return {
        "revision": flow.revision,
        "graph": graph,
        "problems": _problems(flow, graph),
        "version": version.number if version else None,
        "draft": bool(version and version.status == FlowVersion.Status.DRAFT),
        "live": live.number if live else None,
    }


@login_required
@require_GET
def flow_editor(request, code):
    flow, membership = get_flow_for_user(request.user, code)
    state = _state(flow)
    return render(
        request,
        "flows/editor.html",
        {
            "flow": flow,
            "membership": membership,
            "can_edit": has_role(membership, Role.EDITOR),
            "state": state,
            "catalogue": editor.palette(),
            "rules": editor.rules(),
            "urls": {
                # Saving, publishing and test runs go through the API, with the session, in the flow's team.
                "team": flow.team.code,
                "graph": reverse("api:put_draft", args=[flow.code]),
                "node": reverse("node_inspector", args=[flow.code, "NODE"]),
                "publish": reverse("api:publish", args=[flow.code]),
                "unpublish": reverse("api:unpublish", args=[flow.code]),
                "test_run": reverse("api:start_run", args=[flow.code]),
                "run_state": reverse("run_state", args=["00000000-0000-0000-0000-000000000000"]),
                "run_page": reverse("run_detail", args=["00000000-0000-0000-0000-000000000000"]),
                "step": reverse("run_step", args=["00000000-0000-0000-0000-000000000000", "STEP"]),
                "ws_flow": f"/ws/flows/{flow.code}/runs/",
            },
        },
    )


def _node_context(flow: Flow, graph: dict, node: dict, form: NodeForm, *, can_edit: bool, saved: bool,
                  problems: list[tuple[str, str]]) -> dict:
    node_type = NODE_TYPES[node["type"]]
    loose = []
    field_problems: dict[str, list[str]] = {}
    for path, message in problems:
        field = form.field_for_problem(path)
        if field is None or (field not in form.fields and field not in form.row_counts):
            loose.append(message)
        else:
            field_problems.setdefault(field, []).append(message)
    abi_fields = [s.name for s in node_type.fields if s.kind in ("abi_event", "abi_function")]
    notes: dict[str, list[str]] = {}
    if not problems:
        for path, message in node_type.notes(node.get("config") or {}):
            notes.setdefault(path, []).append(message)
    return {
        "notes": notes,
        "flow": flow,
        "node": node,
        "node_type": node_type,
        "form": form,
        "entries": form.layout(field_problems),
        "can_edit": can_edit,
        "saved": saved,
        "has_problems": bool(problems),
        "loose_problems": loose,
        "picker": editor.picker_entries(graph, node["id"], _secret_names(flow)) if can_edit else [],
        "abi_fields": [(name, node_type.field(name).kind.removeprefix("abi_")) for name in abi_fields],
        "demo_contracts": sorted(editor.demo_contracts()),
        "webhook_path": _webhook_path(flow, node) if can_edit else None,
    }


def _webhook_path(flow: Flow, node: dict) -> str | None:
    """The webhook trigger's URL path, for its editors; None for other nodes, "" before a token exists."""
    if node.get("type") != "webhook":
        return None
    token = flow.webhook_token()
    return f"/hooks/{flow.code}/{token}/" if token else ""


@login_required
@require_POST
def webhook_token(request, code):
    """Make (or, with rotate=1, replace) the flow's webhook URL token; editors only, audited."""
    flow, membership = get_flow_for_user(request.user, code)
    if not has_role(membership, Role.EDITOR):
        raise Http404("No such flow")
    if request.POST.get("rotate") == "1" or not flow.webhook_token():
        actions.do_rotate_webhook_token(flow, request.user)
    return render(request, "flows/inspector.html#webhook-url",
                  {"flow": flow, "webhook_path": _webhook_path(flow, {"type": "webhook"}), "rotated": True})


@login_required
@require_http_methods(["GET", "POST"])
def node_inspector(request, code, node_id):
    """The settings form of one node (a fragment for the side panel).

    POST saves the node's name and config into the draft when the form parses,
    even if the node type's checks find problems: drafts may be incomplete, and
    the problems are shown inline on the fields they concern."""
    flow, membership = get_flow_for_user(request.user, code)
    can_edit = has_role(membership, Role.EDITOR)
    if request.method == "POST" and not can_edit:
        raise Http404("No such flow")
    _, graph = actions.current_graph(flow)
    node = editor.find_node(graph, node_id)
    if node is None or node.get("type") not in NODE_TYPES:
        raise Http404("No such node")
    node_type = NODE_TYPES[node["type"]]
    ctx = actions.compile_context(flow.team)
    vctx = ValidationContext(chains=ctx["chains"], secret_names=ctx["secret_names"])
    form_kwargs = {"chains": _chains(), "secret_names": _visible_secret_names(flow, node, can_edit)}
    template = "flows/inspector.html#inspector"
    if request.method == "GET":
        form = NodeForm(node_type, node, **form_kwargs)
        problems = node_type.validate(node.get("config") or {}, vctx)
        return render(request, template, _node_context(flow, graph, node, form, can_edit=can_edit,
                                                       saved=False, problems=problems))
    if ROW_ACTION in request.POST:
        # Adding or removing a row of a list setting: show the form again, save nothing.
        data = edit_rows(request.POST, {s.name: s for s in node_type.fields}, request.POST[ROW_ACTION])
        form = NodeForm(node_type, node, data, **form_kwargs)
        return render(request, template, _node_context(flow, graph, node, form, can_edit=True,
                                                       saved=False, problems=[]))
    form = NodeForm(node_type, node, request.POST, **form_kwargs)
    if not form.is_valid():
        context = _node_context(flow, graph, node, form, can_edit=True, saved=False, problems=[])
        return render(request, template, context, status=422)
    try:
        revision = int(request.headers.get("X-Kwala-Revision", ""))
    except ValueError:
        return HttpResponse("The editor did not say which revision it edits; reload the page.", status=400)
    node["config"] = form.config()
    name = form.node_name()
    if name:
        node["name"] = name
    else:
        node.pop("name", None)
    try:
        actions.do_save_draft(flow, request.user, graph, revision=revision)
    except actions.ConflictError as exc:
        response = render(request, "flows/inspector.html#conflict", {"message": str(exc)}, status=409)
        return trigger_client_event(response, "kwala:conflict", {"message": str(exc)})
    problems = node_type.validate(node["config"], vctx)
    # Shown as saved (rows left empty dropped), so problem paths match the rows on screen.
    form = NodeForm(node_type, node, **form_kwargs)
    response = render(request, template, _node_context(flow, graph, node, form, can_edit=True,
                                                       saved=True, problems=problems))
    return trigger_client_event(
        response,
        "kwala:node-saved",
        {
            "revision": flow.revision,
            "problems": _problems(flow, graph),
            "node": {"id": node["id"], "name": node.get("name", ""), "config": node["config"],
                     "ports": editor.output_ports(node)},
        },
    )


@login_required
@require_POST
def abi_helper(request, code):
    """The events or functions of a pasted ABI or a demo contract, to pick from."""
    flow, _ = get_flow_for_user(request.user, code, Role.EDITOR)
    kind = "event" if request.POST.get("kind") == "event" else "function"
    target = request.POST.get("target", "")
    contract = request.POST.get("contract", "")
    text = request.POST.get("abi", "").strip()
    error = None
    choices: list[dict] = []
    if contract:
        abi = editor.demo_contracts().get(contract)
        if abi is None:
            error = "No such demo contract."
    elif text:
        try:
            abi = json.loads(text)
            if isinstance(abi, dict) and "abi" in abi:
                abi = abi["abi"]  # a whole artifact was pasted
        except ValueError as exc:
            abi, error = None, f"This is not valid JSON: {exc}"
    else:
        abi, error = None, "Paste an ABI or choose a demo contract."
    if abi is not None and error is None:
        try:
            choices = editor.abi_choices(abi, kind)
        except ValueError as exc:
            error = str(exc)
        if not choices and error is None:
            error = f"This ABI has no {kind}s."
    return render(
        request,
        "flows/inspector.html#abi-choices",
        {"choices": choices, "error": error, "kind": kind, "target": target, "flow": flow},
    )


@login_required
@require_GET
def flow_versions(request, code):
    flow, membership = get_flow_for_user(request.user, code)
    versions = list(flow.versions.select_related("created_by").order_by("-number"))
    numbers = [v.number for v in versions]
    diff = None
    old = new = None
    if len(versions) >= 2:
        try:
            new_n = int(request.GET.get("new", numbers[0]))
            old_n = int(request.GET.get("old", numbers[1]))
        except ValueError:
            new_n, old_n = numbers[0], numbers[1]
        by_number = {v.number: v for v in versions}
        old, new = by_number.get(old_n), by_number.get(new_n)
        if old and new:
            diff = diff_graphs(old.graph, new.graph)
    context = {
        "flow": flow,
        "membership": membership,
        "can_edit": has_role(membership, Role.EDITOR),
        "versions": versions,
        "old": old,
        "new": new,
        "diff": diff,
        "unchanged": diff is not None and is_empty(diff),
        "diff_svg": _diff_picture(old.graph, new.graph, diff) if diff else None,
    }
    template = "flows/versions.html#diff" if request.htmx else "flows/versions.html"
    return render(request, template, context)


def _diff_picture(old: dict, new: dict, diff: dict) -> dict:
    """Boxes and lines for an SVG of the newer graph with the removed nodes ghosted in."""
    added = {n["id"] for n in diff["nodes"]["added"]}
    changed = {c["id"] for c in diff["nodes"]["changed"]} | {r["id"] for r in diff["nodes"]["renamed"]}
    moved = {m["id"] for m in diff["nodes"]["moved"]}
    boxes = {}
    for node in new.get("nodes", []):
        nid = node["id"]
        state = "added" if nid in added else "changed" if nid in changed else "moved" if nid in moved else "same"
        boxes[nid] = (node, state)
    for node in diff["nodes"]["removed"]:
        boxes[node["id"]] = (node, "removed")
    pos = {}
    for index, (nid, (node, _)) in enumerate(boxes.items()):
        p = node.get("position") or {"x": 40 + 240 * (index % 4), "y": 40 + 120 * (index // 4)}
        pos[nid] = (p["x"], p["y"])
    if not pos:
        return {"width": 200, "height": 80, "nodes": [], "edges": []}
    min_x = min(x for x, _ in pos.values()) - 20
    min_y = min(y for _, y in pos.values()) - 20
    w, h = 180, 56
    nodes = [
        {"x": pos[nid][0] - min_x, "y": pos[nid][1] - min_y, "w": w, "h": h, "state": state,
         "label": node.get("name") or NODE_TYPES.get(node.get("type"), None).label
         if node.get("type") in NODE_TYPES else node.get("type", "?"), "id": nid}
        for nid, (node, state) in boxes.items()
    ]
    added_edges = {(e["source"], e["source_port"], e["target"]) for e in diff["edges"]["added"]}
    edges = []
    for edge, state in [(e, "same") for e in new.get("edges", [])] + [(e, "removed") for e in diff["edges"]["removed"]]:
        key = (edge["source"], edge["source_port"], edge["target"])
        if edge["source"] not in pos or edge["target"] not in pos:
            continue
        sx, sy = pos[edge["source"]]
        tx, ty = pos[edge["target"]]
        edges.append({
            "x1": sx - min_x + w, "y1": sy - min_y + h / 2, "x2": tx - min_x, "y2": ty - min_y + h / 2,
            "state": "added" if key in added_edges else state, "port": edge["source_port"],
        })
    width = max(n["x"] for n in nodes) + w + 20
    height = max(n["y"] for n in nodes) + h + 20
    return {"width": width, "height": height, "nodes": nodes, "edges": edges}


@login_required
@require_POST
def version_rollback(request, code, number):
    flow, _ = get_flow_for_user(request.user, code, Role.EDITOR)
    version = get_object_or_404(FlowVersion, flow=flow, number=number)
    draft = actions.do_rollback_to(flow, request.user, version)
    messages.success(request, f"Version {version.number}'s graph is now the draft (v{draft.number}); "
                              "publish it to make it live.")
    return redirect("flow_editor", code=flow.code)


@login_required
@require_GET
def flow_export(request, code):
    flow, _ = get_flow_for_user(request.user, code)
    _, graph = actions.current_graph(flow)
    text = export_yaml({"name": flow.name, "description": flow.description}, graph)
    response = HttpResponse(text, content_type="application/yaml; charset=utf-8")
    slug = "".join(c if c.isalnum() else "-" for c in flow.name.lower()).strip("-") or "flow"
    response["Content-Disposition"] = f'attachment; filename="{slug}.kwala.yaml"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def flow_import(request, code):
    """Replace the draft's graph with an imported YAML file (revision-checked)."""
    flow, membership = get_flow_for_user(request.user, code, Role.EDITOR)
    if request.method == "POST" and "oz_config" in request.FILES:
        return _oz_monitor_import(request, flow, membership)
    form = ImportForm(request.POST or None, initial={"revision": flow.revision})
    warnings: list[str] = []
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["text"]
        try:
            if form.cleaned_data["format"] == "kwala":
                imported = translate_kwala_yaml(text, chains=actions.compile_context(flow.team)["chains"])
                graph, warnings = imported.graph, imported.warnings
            else:
                _, graph = import_yaml(text)
        except FlowYamlError as exc:
            form.add_error("text", str(exc))
            warnings = exc.warnings
        else:
            try:
                actions.do_save_draft(flow, request.user, graph, revision=form.cleaned_data["revision"])
            except actions.ConflictError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Imported into the draft.")
                for warning in warnings:  # what a Kwala file holds that does not map
                    messages.warning(request, warning)
                return redirect("flow_editor", code=flow.code)
    return render(request, "flows/import.html",
                  {"flow": flow, "membership": membership, "form": form, "warnings": warnings},
                  status=422 if form.errors else 200)


def _oz_monitor_import(request, flow, membership):
    """An OpenZeppelin Monitor config (a zip of its directory) becomes new draft flows of the team;
    this flow is left as it is. Plain secrets are stored only for admins."""
    from flows import ozmonitor

    upload = request.FILES["oz_config"]
    context = {"flow": flow, "membership": membership, "form": ImportForm(initial={"revision": flow.revision})}
    try:
        if upload.size > ozmonitor.MAX_TOTAL_BYTES:
            raise ozmonitor.OzConfigError("The zip is larger than 20 MiB")
        config = ozmonitor.read_zip(upload.read())
    except ozmonitor.OzConfigError as exc:
        context["oz_error"] = str(exc)
        return render(request, "flows/import.html", context, status=422)
    result = ozmonitor.import_oz_monitor(membership.team, request.user, config, publish=False,
                                         store_secrets=has_role(membership, Role.ADMIN), via="editor")
    context.update(oz_result=result, oz_lines=list(ozmonitor.summary_lines(result))[len(result.flows):])
    return render(request, "flows/import.html", context)


@login_required
@require_GET
def flow_samples(request, code):
    """What the trigger would hand a run now (recent events, the latest block, a webhook request,
    the schedule's window), to test the flow with: the picker fragment for htmx, else JSON for
    prefilling the sample (each sample as JSON text, so big ints stay exact)."""
    flow, _ = get_flow_for_user(request.user, code, Role.EDITOR)
    _, graph = actions.current_graph(flow)
    try:
        samples, error = executor.trigger_samples(flow, graph), None
    except executor.SampleError as exc:
        samples, error = None, str(exc)
    if not request.htmx:
        return JsonResponse({"error": error}, status=422) if error else JsonResponse(samples.as_json())
    return render(request, "executor/samples.html", {"samples": samples, "error": error})
