"""The MCP tools: the public API for AI assistants, built with the official `mcp` SDK.

Each tool is a thin adapter over a REST API endpoint (an operation of kwala_site.api's routers): it calls the same
function with a request that carries the token's membership, so permissions, team
scoping, validation and the rate limit are the API's own, and a refusal is the API's
error body (`{"error": {"code", "message", "details"}, "status"}`) in a tool error,
never a stack trace. The token is looked up again on every call, so a revoked token
or a changed role takes effect at once. The graph format the tools explain is built
from the node catalogue (flows.nodes), not written out here.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import pydantic
from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.http import HttpRequest
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resources import TextResource
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from ninja.errors import AuthenticationError, Throttled
from ninja.errors import ValidationError as NinjaValidationError
from ninja.pagination import LimitOffsetPagination
from ninja.responses import NinjaJSONEncoder, Status
from pydantic import Field

from flows import api as rest
from flows.mcp import api_request, bearer
from flows.nodes import NODE_TYPES, catalogue
from flows.teams import membership_for_token
from kwala_site import api as project_api
from kwala_site import overload
from kwala_site.api_common import ApiError, not_found

logger = logging.getLogger(__name__)

# -- what the tools teach -----------------------------------------------------------------

GRAPH_FORMAT = """\
A flow is a graph, {"nodes": [...], "edges": [...]}:
- node: {"id": "hook", "type": "<node type>", "name": "optional label", "config": {<field>: <value>}};
  ids match ^[A-Za-z_][A-Za-z0-9_]{0,63}$ so expressions can say steps.<id>; "position": {"x", "y"} is optional.
- edge: {"source": "<node id>", "source_port": "<an output port of the source>", "target": "<node id>"};
  an edge always enters the target's single input port.
- Exactly one trigger; every node reachable from it; no loops. Ports: triggers and most logic nodes
  have "out"; condition "true"/"false"; switch one port per case name plus "default"; every action
  "out" and "error" (a failed action with "error" wired goes on down that branch, otherwise the run
  fails); stop has none.
- Expressions (kind expression) and templates ({{ ... }} in kinds template, url, headers,
  template_value, emails) are Jinja. They read `trigger` (chain.event: trigger.args.<name>,
  trigger.contract, trigger.tx_hash, trigger.block_number; webhook: trigger.body; the manual
  trigger: trigger.payload), `steps.<id>.output` of an ancestor step, `secrets.<NAME>` (actions only),
  `flow` and `now`. A template_value leaf that is exactly "{{ expr }}" keeps its type.
- Values by field kind: chain = a chain id (list_chains); address/addresses = EIP-55 checksummed;
  abi_event / abi_function = a Solidity signature such as
  "Transfer(address indexed from, address indexed to, uint256 value)"; duration = seconds or
  "30s", "5m", "1h"; datetime = ISO 8601 with a zone; cron = a cron line; secret_ref / signer = the
  name of a team secret / signer key; retry = {"max_attempts": 1-25, "backoff_seconds": 0-86400};
  list = a list of objects with the item fields; json = any JSON; headers = {name: template}.
Node types (* required field; describe_node_types gives each field's kind, default, choices,
range and help):"""


def _field_summary(field: Mapping[str, Any]) -> str:
    text = field["name"] + ("*" if field["required"] else "")
    items = field.get("item_fields")
    if items:
        text += "[" + ", ".join(_field_summary(item) for item in items) + "]"
    return text


def node_type_lines(entries: list[dict]) -> list[str]:
    """One line per node type of the catalogue: its key, category, ports and fields."""
    lines = []
    for entry in entries:
        ports = ", ".join(entry["output_ports"]) or "none"
        fields = ", ".join(_field_summary(field) for field in entry["fields"]) or "none"
        lines.append(f"- {entry['key']} ({entry['category']}): {entry['description']} "
                     f"Out ports: {ports}. Fields: {fields}.")
    return lines


def graph_guide() -> str:
    """The graph format and the node types, for tool descriptions and the kwala://graph-format resource."""
    return "\n".join([GRAPH_FORMAT, *node_type_lines(catalogue())])


INSTRUCTIONS = """\
Kwala runs flows: one trigger (a contract event, a transaction, every N blocks, a contract state,
a schedule, a webhook, a manual run), then logic and actions. Every tool acts in the team of the
API token. To build a flow: describe_node_types and list_chains, create_flow (a draft),
validate_flow (the compiler's problems, per node and field), update_draft to fix them,
publish_flow to make it live. start_run tests a flow with a sample trigger (a dry run by
default), replay_flow backtests it over past blocks, list_runs / get_run / get_run_step show
what ran. A refusal is a tool error holding the REST API's error body."""

READ = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
ACTS = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True)

FlowCode = Annotated[str, Field(description="The flow's code (from list_flows or create_flow)", max_length=64)]
RunCode = Annotated[str, Field(description="The run's code (from list_runs)", max_length=64)]
Limit = Annotated[int, Field(ge=1, le=500)]
Offset = Annotated[int, Field(ge=0, le=10_000_000)]
GraphArg = Annotated[dict[str, Any], Field(description='The graph: {"nodes": [...], "edges": [...]}')]


# -- calling the API ---------------------------------------------------------------------------


def _error(status: int, body: dict, retry_after: int | None = None) -> CallToolResult:
    answer = {**body, "status": status}
    if retry_after is not None:  # what the API sends as Retry-After
        answer["retry_after"] = retry_after
    return CallToolResult(content=[TextContent(text=json.dumps(answer))], structured_content=answer, is_error=True)


def _result(data: Any) -> CallToolResult:
    if isinstance(data, Status):
        data = data.value
    data = json.loads(json.dumps(data, cls=NinjaJSONEncoder))
    if not isinstance(data, dict):
        data = {"items": data}
    return CallToolResult(content=[TextContent(text=json.dumps(data))], structured_content=data)


def call_api(token: str | None, tool: str, endpoint: Callable[..., Any], *args: Any, **kwargs: Any) -> CallToolResult:
    """Call a REST API endpoint as the token's membership; its refusals become tool errors.

    Runs in a thread (the ORM is synchronous): the token is checked and the API's rate
    limit counted first, as the API's own auth and throttle do. `endpoint` may build the
    API's request schemas: their validation errors are answered as the API's 422.
    """
    request = api_request(tool)
    try:
        found = membership_for_token(token) if token else None
        if found is None:
            raise AuthenticationError()
        request.api_token, request.auth = found
        request.user = request.auth.user
        throttle = project_api.RedisRateLimit()
        if not throttle.allow_request(request):
            raise Throttled(throttle.wait())
        try:
            answer = _result(endpoint(request, *args, **kwargs))
        except pydantic.ValidationError as exc:
            raise NinjaValidationError(exc.errors(include_url=False)) from None
    except Exception as exc:
        # The API's handlers answer (and log) exactly as the REST API does: 404s, 403s, compile
        # problems, and a 503 "try again" when PostgreSQL or the pool cannot give a connection.
        response = project_api.api.on_exception(request, exc)
        retry_after = exc.wait if isinstance(exc, Throttled) else (
            overload.RETRY_AFTER_SECONDS if response.status_code == 503 else None)
        answer = _error(response.status_code, json.loads(response.content), retry_after)
    finally:
        close_old_connections()  # with the web server's pool: the connection goes back to it
    # The access log of this door: uvicorn's only says POST /mcp.
    auth = getattr(request, "auth", None)
    logger.info("mcp %s by %s in team %s: %s", tool, auth.user.get_username() if auth else "-",
                auth.team.code if auth else "-", answer.structured_content["status"] if answer.is_error else 200)
    return answer


# Like the webhook door: the ORM in a thread of the shared pool, not the one sync thread.
_call_api_in_thread = sync_to_async(call_api, thread_sensitive=False)


def _token(ctx: Context) -> str | None:
    headers = ctx.headers
    if headers is not None:  # streamable HTTP: the request's own token, checked again here
        return bearer(headers.get("authorization"))
    return ctx.request_context.lifespan_context["token"]  # stdio: the token the command was given


async def _call(ctx: Context, tool: str, endpoint: Callable[..., Any], *args: Any, **kwargs: Any) -> CallToolResult:
    return await _call_api_in_thread(_token(ctx), tool, endpoint, *args, **kwargs)


def _page(limit: int, offset: int) -> LimitOffsetPagination.Input:
    return LimitOffsetPagination.Input(limit=limit, offset=offset)


def _run_step(request: HttpRequest, run: str, step_id: str) -> dict:
    """What the run page's side panel shows of one step, to every member of the team."""
    found = project_api.runs_api.team_run(request, run)
    node = next((n for n in found.version.graph.get("nodes", []) if n.get("id") == step_id), None)
    if node is None:
        raise not_found("step")
    step = found.steps.filter(step_id=step_id).first()
    data: dict[str, Any] = {"step_id": step_id, "type": node.get("type"), "name": node.get("name") or ""}
    if step is None:  # the trigger node has no step row; a step whose branch was not taken has none yet
        is_trigger = getattr(NODE_TYPES.get(node.get("type")), "category", "") == "trigger"
        return {**data, "status": "TRIGGER" if is_trigger else "NOT_RUN", "trigger": found.trigger if is_trigger else None}
    return {**data, "status": step.status, "attempt": step.attempt, "port": step.port, "error": step.error,
            "input": step.input, "output": step.output, "logs": step.logs, "started_at": step.started_at,
            "finished_at": step.finished_at}


def _describe(request: HttpRequest, node_type: str) -> dict:
    entries = catalogue()
    if node_type:
        entries = [e for e in entries if e["key"] == node_type]
        if not entries:
            raise ApiError(404, "node_type_not_found", f"No node type {node_type!r}: see describe_node_types.")
    return {"node_types": entries}


# -- the tools ----------------------------------------------------------------------------------
# Each takes the MCP context last and answers with what the API endpoint answers.


async def describe_node_types(
    node_type: Annotated[str, Field(description="One type's key (e.g. chain.event); empty for all", max_length=64)] = "",
    *, ctx: Context,
) -> CallToolResult:
    """The node catalogue: each node type's key, category, description, fields (name, kind, required,
    default, choices, min/max, help, item fields), input and output ports, and whether it has side effects."""
    return await _call(ctx, "describe_node_types", _describe, node_type)


async def list_chains(*, ctx: Context) -> CallToolResult:
    """The chains flows can use (chain id, slug, name) and how far each listener has read."""
    return await _call(ctx, "list_chains", project_api.runs_api.list_chains)


async def list_templates(
    q: Annotated[str, Field(description="Words in the title or description", max_length=100)] = "",
    category: Annotated[str, Field(max_length=40)] = "",
    *, ctx: Context,
) -> CallToolResult:
    """The gallery's ready-made flows and the inputs each asks for."""
    return await _call(ctx, "list_templates", project_api.gallery_api.list_templates, q=q, category=category)


async def get_template(slug: Annotated[str, Field(max_length=100)], *, ctx: Context) -> CallToolResult:
    """One template with its inputs and its graph."""
    return await _call(ctx, "get_template", project_api.gallery_api.get_template, slug)


async def use_template(
    slug: Annotated[str, Field(max_length=100)],
    inputs: Annotated[dict[str, str | int], Field(description="Input values by name (see get_template)")] | None = None,
    name: Annotated[str | None, Field(description="The new flow's name (default: the template's title)")] = None,
    *, ctx: Context,
) -> CallToolResult:
    """Create a draft flow from a template with these input values (editors). A bad input is listed by name."""
    return await _call(ctx, "use_template", lambda r: project_api.gallery_api.use_template(
        r, slug, project_api.gallery_api.UseTemplateIn(name=name, inputs=inputs or {})))


async def list_flows(
    q: Annotated[str, Field(description="Part of the flow's name", max_length=100)] = "",
    limit: Limit = 50, offset: Offset = 0, *, ctx: Context,
) -> CallToolResult:
    """The team's flows (code, name, revision, paused, live version), by name; `count` is the total."""
    return await _call(ctx, "list_flows", rest.list_flows, q=q, ninja_pagination=_page(limit, offset))


async def get_flow(flow: FlowCode, *, ctx: Context) -> CallToolResult:
    """One flow with its current graph (the draft if there is one, else the live version) and its revision."""
    return await _call(ctx, "get_flow", rest.get_flow, flow)


async def create_flow(
    name: Annotated[str, Field(min_length=1, max_length=120)],
    graph: GraphArg | None = None,
    description: Annotated[str, Field(max_length=5000)] = "",
    *, ctx: Context,
) -> CallToolResult:
    """Create a flow (editors) whose first draft is `graph`; nothing runs until publish_flow.
    A draft may still have problems: validate_flow lists them. A graph that is not shaped like one
    (see below) is refused as invalid_graph."""
    return await _call(ctx, "create_flow", lambda r: rest.create(
        r, rest.FlowIn(name=name, description=description, graph=graph)))


async def import_flow_yaml(
    yaml: Annotated[str, Field(min_length=1, max_length=1_000_000, description="Kwala flow YAML")],
    *, ctx: Context,
) -> CallToolResult:
    """Create a flow (editors) from Kwala flow YAML, as export_flow writes it: `kwala_flow: 1`, name,
    description, `nodes` and `edges` (the graph format of create_flow)."""
    return await _call(ctx, "import_flow_yaml", lambda r: rest.import_flow(r, rest.YamlIn(yaml=yaml)))


async def export_flow(flow: FlowCode, *, ctx: Context) -> CallToolResult:
    """The flow's current graph as Kwala flow YAML."""
    return await _call(ctx, "export_flow", rest.export, flow)


async def update_draft(
    flow: FlowCode,
    graph: GraphArg,
    revision: Annotated[int, Field(ge=1, description="The flow's revision you based the change on (get_flow)")],
    *, ctx: Context,
) -> CallToolResult:
    """Replace the flow's draft graph (editors). Refused as a conflict when the flow moved past
    `revision`; get_flow gives the current revision. Answers the draft version."""
    return await _call(ctx, "update_draft", lambda r: rest.put_draft(
        r, flow, rest.DraftIn(graph=graph, revision=revision)))


async def update_flow(
    flow: FlowCode,
    name: Annotated[str | None, Field(min_length=1, max_length=120)] = None,
    description: Annotated[str | None, Field(max_length=5000)] = None,
    paused: Annotated[bool | None, Field(description="true pauses a live flow, false resumes it")] = None,
    *, ctx: Context,
) -> CallToolResult:
    """Rename a flow, change its description, or pause / resume it (editors)."""
    return await _call(ctx, "update_flow", lambda r: rest.update_flow(
        r, flow, rest.FlowPatch(name=name, description=description, paused=paused)))


async def validate_flow(flow: FlowCode, *, ctx: Context) -> CallToolResult:
    """Compile the flow's current draft against the team's chains, secrets and signers without
    publishing: {"ok", "problems": [{"node_id", "field", "message"}]} (node_id null: the whole graph)."""
    return await _call(ctx, "validate_flow", rest.check_flow, flow)


async def publish_flow(
    flow: FlowCode,
    revision: Annotated[int | None, Field(ge=1, le=2**31 - 1, description="Refused if the flow moved past it")] = None,
    *, ctx: Context,
) -> CallToolResult:
    """Compile the draft and make it the live version (editors): its trigger starts firing at once.
    A draft with problems is refused with them (compile_error)."""
    return await _call(ctx, "publish_flow", rest.publish, flow, revision=revision)


async def unpublish_flow(flow: FlowCode, *, ctx: Context) -> CallToolResult:
    """Take the live version down (editors): the trigger stops firing; the flow and its versions stay."""
    return await _call(ctx, "unpublish_flow", rest.unpublish, flow)


async def list_versions(flow: FlowCode, limit: Limit = 50, offset: Offset = 0, *, ctx: Context) -> CallToolResult:
    """The flow's versions, newest first (number, status DRAFT / PUBLISHED / ARCHIVED, dates)."""
    return await _call(ctx, "list_versions", rest.list_versions, code=flow, ninja_pagination=_page(limit, offset))


async def get_version(flow: FlowCode, number: Annotated[int, Field(ge=1, le=2**31 - 1)], *,
                      ctx: Context) -> CallToolResult:
    """One version with its graph and compiled DAG."""
    return await _call(ctx, "get_version", rest.get_version, flow, number)


async def start_run(
    flow: FlowCode,
    payload: Annotated[dict[str, Any], Field(description="The sample trigger: what the flow's trigger would hand "
                                                         "the run (trigger.args, ... for a contract event), or "
                                                         "trigger.payload for a manual trigger")] | None = None,
    dry_run: Annotated[bool, Field(description="true: run the logic and record what actions would send, "
                                               "send nothing; false: act for real")] = True,
    draft: Annotated[bool, Field(description="true: test the draft, compiled now; false: the live version")] = False,
    *, ctx: Context,
) -> CallToolResult:
    """Start a run now with a sample trigger (editors): a test run of the draft or a manual run of the
    live version. A dry run by default. Follow it with get_run."""
    return await _call(ctx, "start_run", lambda r: project_api.runs_api.start_run(
        r, flow, project_api.runs_api.StartRunIn(payload=payload or {}, dry_run=dry_run, draft=draft)))


async def replay_flow(
    flow: FlowCode,
    from_block: Annotated[int, Field(ge=0, le=2**63 - 1)],
    to_block: Annotated[int, Field(ge=0, le=2**63 - 1)],
    dry_run: Annotated[bool, Field(description="true: a backtest, whose actions are recorded, not performed")] = True,
    *, ctx: Context,
) -> CallToolResult:
    """Replay the live version's contract-event trigger over past blocks (editors). A worker reads
    the blocks: follow the job with get_replay. Live (dry_run false), an event that already ran is
    not run twice."""
    return await _call(ctx, "replay_flow", lambda r: project_api.runs_api.replay(
        r, flow, project_api.runs_api.ReplayIn(from_block=from_block, to_block=to_block, dry_run=dry_run)))


async def get_replay(job: Annotated[str, Field(max_length=64)], *, ctx: Context) -> CallToolResult:
    """A replay or backtest job: its status, the logs it read and matched, and the runs it created."""
    return await _call(ctx, "get_replay", project_api.runs_api.get_replay, job)


async def list_runs(
    flow: Annotated[str, Field(description="Only this flow's runs", max_length=16)] = "",
    status: Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "REORGED"] | None = None,
    within_seconds: Annotated[int | None, Field(ge=1, le=366 * 86400, description="Created this recently")] = None,
    before: Annotated[str, Field(description="Only runs older than this run: the last page's next_before",
                                 max_length=64)] = "",
    limit: Limit = 50, offset: Annotated[int, Field(ge=0, le=10_000)] = 0, *, ctx: Context,
) -> CallToolResult:
    """The team's runs, newest first (code, flow, version, status, trigger key, chain, block, error);
    the next page is `before` = next_before."""
    return await _call(ctx, "list_runs", project_api.runs_api.list_runs, flow=flow, status=status, within_seconds=within_seconds,
                       finished_after=None, finished_before=None, before=before, limit=limit, offset=offset)


async def get_run(run: RunCode, *, ctx: Context) -> CallToolResult:
    """One run and its steps (step id, status, attempt, error, times)."""
    return await _call(ctx, "get_run", project_api.runs_api.get_run, run)


async def get_run_step(run: RunCode, step_id: Annotated[str, Field(max_length=64)], *,
                       ctx: Context) -> CallToolResult:
    """One step of a run as the run page shows it: status, port taken, error, input, output and logs
    (secret values appear as [secret NAME]); for the trigger node, the trigger the run started from."""
    return await _call(ctx, "get_run_step", _run_step, run, step_id)


async def retry_run(run: RunCode, *, ctx: Context) -> CallToolResult:
    """Run a failed run's failed steps again (editors); steps that succeeded keep their results."""
    return await _call(ctx, "retry_run", project_api.runs_api.retry, run)


async def rerun_from_step(run: RunCode, step_id: Annotated[str, Field(min_length=1, max_length=64)], *,
                          ctx: Context) -> CallToolResult:
    """A new run of the same version and trigger (editors) that runs `step_id` and everything after it
    again, reusing every other result."""
    return await _call(ctx, "rerun_from_step", lambda r: project_api.runs_api.rerun(r, run, project_api.runs_api.RerunIn(step_id=step_id)))


TOOLS: list[tuple[Callable[..., Any], ToolAnnotations]] = [
    (describe_node_types, READ), (list_chains, READ), (list_templates, READ), (get_template, READ),
    (use_template, WRITE), (list_flows, READ), (get_flow, READ), (create_flow, WRITE), (import_flow_yaml, WRITE),
    (export_flow, READ), (update_draft, WRITE), (update_flow, WRITE), (validate_flow, READ), (publish_flow, ACTS),
    (unpublish_flow, ACTS), (list_versions, READ), (get_version, READ), (start_run, ACTS), (replay_flow, ACTS),
    (get_replay, READ), (list_runs, READ), (get_run, READ), (get_run_step, READ), (retry_run, ACTS),
    (rerun_from_step, ACTS),
]
# The tools that take a graph carry the format and the node types in their description.
TAKES_A_GRAPH = {create_flow, update_draft}


def build_server(token: str | None = None) -> MCPServer:
    """The MCP server with every tool; `token` is the stdio token (over HTTP each request brings its own)."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer):
        yield {"token": token}

    server = MCPServer("kwala", title="Kwala", instructions=INSTRUCTIONS, lifespan=lifespan)
    guide = graph_guide()
    for fn, hints in TOOLS:
        description = inspect.cleandoc(fn.__doc__ or "")
        if fn in TAKES_A_GRAPH:
            description += "\n\n" + guide
        server.add_tool(fn, description=description, annotations=hints, structured_output=False)
    server.add_resource(TextResource(uri="kwala://graph-format", name="graph-format", mime_type="text/markdown",
                                     description="How a flow's graph is written, and the node types", text=guide))
    server.add_resource(TextResource(uri="kwala://node-types", name="node-types", mime_type="application/json",
                                     description="The node catalogue", text=json.dumps(catalogue())))
    return server
