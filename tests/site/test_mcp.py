"""The MCP server, driven by the SDK's own client: over stdio (`manage.py mcp --token`, a real
child process) and over streamable HTTP (/mcp on the real uvicorn), with real tokens, a real
worker and, for the assistant's flow, a contract event on anvil.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import httpx2
import pytest
from anyio.from_thread import start_blocking_portal
from django.core.management import CommandError, call_command
from django.utils import timezone
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from executor import api as rest
from flows.actions import do_create_flow, do_publish_version
from flows.mcp import tools
from flows.models import ApiToken, Flow, FlowVersion, Membership
from flows.nodes import NODE_TYPES
from kwala_site.dev.devchain import transact
from tests.executor.chainkit import BIG, deploy_zoo, listener_for, make_chain
from tests.team_fixtures import token_for

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent.parent


class Assistant:
    """An MCP client session driven from a synchronous test: the client lives in a portal's event loop,
    so the test itself can use the ORM and web3 between calls."""

    def __init__(self, portal, client: Client):
        self.portal = portal
        self.client = client

    def tools(self) -> dict:
        return {tool.name: tool for tool in self.portal.call(self.client.list_tools).tools}

    def read(self, uri: str) -> str:
        return self.portal.call(self.client.read_resource, uri).contents[0].text

    def _call(self, tool: str, arguments: dict):
        return self.portal.call(self.client.call_tool, tool, arguments)

    def call(self, tool: str, /, **arguments) -> dict:
        result = self._call(tool, arguments)
        assert not result.is_error, f"{tool} failed: {result.content[0].text}"
        return result.structured_content

    def refused(self, tool: str, /, **arguments) -> dict:
        """The error body of a call that must fail: {"error": {"code", "message", "details"}, "status"}."""
        result = self._call(tool, arguments)
        assert result.is_error, f"{tool} should have been refused: {result.structured_content}"
        return result.structured_content

    def until(self, what: str, predicate, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen in {timeout}s")
            time.sleep(0.2)
        return value


@contextmanager
def _session(transport) -> Iterator[Assistant]:
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(transport) as client:
        yield Assistant(portal, client)


@asynccontextmanager
async def _http_client(url: str, token: str | None, mode: str):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def over_http(server, token: str | None, mode: str = "auto") -> Iterator[Assistant]:
    """`mode`: "auto" (the SDK's default: the 2026 protocol when the server has it), "legacy" (the
    initialize handshake most editors' clients still speak)."""
    return _session(_http_client(f"{server.url}/mcp", token, mode))


@contextmanager
def over_stdio(env: dict, token: str, log_dir: Path, mode: str = "auto") -> Iterator[Assistant]:
    params = StdioServerParameters(command=sys.executable, args=["manage.py", "mcp", "--token", token], env=env,
                                   cwd=str(ROOT))
    with open(log_dir / "mcp-stdio.log", "a") as log, \
            _session(Client(stdio_client(params, errlog=log), mode=mode)) as assistant:
        yield assistant


def zoo_graph(chain_id: int, zoo_address: str, url: str | None, port: str = "out") -> dict:
    hook = {"method": "POST", "body": {"id": "{{ trigger.args.id }}", "value": "{{ trigger.args.value }}"}}
    if url:
        hook["url"] = url
    return {
        "nodes": [
            {"id": "big", "type": "chain.event", "name": "Big number",
             "config": {"chain": chain_id, "addresses": [zoo_address], "event": BIG}},
            {"id": "hook", "type": "http.request", "name": "Tell the sink", "config": hook},
        ],
        "edges": [{"source": "big", "source_port": port, "target": "hook"}],
    }


# -- an assistant, end to end ------------------------------------------------------------------


def test_an_assistant_builds_validates_publishes_and_fires_a_flow_on_anvil(
    fresh_anvil, team, alice, child_env, service_logs, dramatiq_worker, http_sink
):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    chain_row = make_chain(fresh_anvil)
    url = f"{http_sink.url}/mcp-big"

    with over_stdio(child_env, token_for(alice), service_logs) as assistant:
        tools = assistant.tools()
        assert {"describe_node_types", "create_flow", "validate_flow", "update_draft", "publish_flow", "list_runs",
                "get_run", "get_run_step", "replay_flow", "get_replay"} <= set(tools)
        # What it learns first: the node types and the chains.
        catalogue = assistant.call("describe_node_types", node_type="chain.event")["node_types"]
        assert [f["name"] for f in catalogue[0]["fields"] if f["required"]] == ["chain", "event"]
        (chain,) = assistant.call("list_chains")["items"]
        assert chain["chain_id"] == fresh_anvil.chain_id

        # A first draft with two mistakes: an edge from a port the trigger lacks, and no URL.
        flow = assistant.call("create_flow", name="Big numbers to the sink",
                              graph=zoo_graph(chain["chain_id"], zoo.address, None, port="done"))
        checked = assistant.call("validate_flow", flow=flow["code"])
        assert checked["ok"] is False
        problems = {(p["node_id"], p["field"]) for p in checked["problems"]}
        assert ("hook", "url") in problems and any(node == "big" for node, _ in problems), checked
        refused = assistant.refused("publish_flow", flow=flow["code"])
        assert (refused["status"], refused["error"]["code"]) == (422, "compile_error")

        # Fixed, checked again, published.
        assistant.call("update_draft", flow=flow["code"], revision=flow["revision"],
                       graph=zoo_graph(chain["chain_id"], zoo.address, url))
        assert assistant.call("validate_flow", flow=flow["code"]) == {"ok": True, "problems": []}
        version = assistant.call("publish_flow", flow=flow["code"])
        assert (version["number"], version["status"]) == (1, "PUBLISHED")
        assert assistant.call("get_flow", flow=flow["code"])["live_version"] == 1

        # The event on anvil; the listener claims the run and the worker calls the sink.
        listener = listener_for(chain_row)
        listener.step()
        receipt = transact(w3, zoo.functions.emitBig(7, 2**70))
        listener.step()
        (delivered,) = http_sink.wait_for("/mcp-big")
        assert delivered.json() == {"id": 7, "value": str(2**70)}

        runs = assistant.until("a succeeded run", lambda: [
            r for r in assistant.call("list_runs", flow=flow["code"])["items"] if r["status"] == "SUCCEEDED"])
        assert (len(runs), runs[0]["block_number"], runs[0]["dry_run"]) == (1, receipt["blockNumber"], False)
        run = assistant.call("get_run", run=runs[0]["code"])
        assert [(s["step_id"], s["status"]) for s in run["steps"]] == [("hook", "SUCCEEDED")]
        hook = assistant.call("get_run_step", run=run["code"], step_id="hook")
        assert hook["port"] == "out" and hook["output"]["status_code"] == 200
        trigger = assistant.call("get_run_step", run=run["code"], step_id="big")
        assert trigger["status"] == "TRIGGER" and trigger["trigger"]["args"]["id"] == 7

        # A backtest of the same block: a worker reads it and dry-runs what matched.
        job = assistant.call("replay_flow", flow=flow["code"], from_block=receipt["blockNumber"],
                             to_block=receipt["blockNumber"])
        assert (job["status"], job["dry_run"]) == ("QUEUED", True)
        done = assistant.until("the backtest", lambda: (
            lambda j: j if j["status"] in ("SUCCEEDED", "FAILED") else None)(
            assistant.call("get_replay", job=job["job"])))
        assert (done["status"], done["matched"], len(done["runs"])) == ("SUCCEEDED", 1, 1), done
    assert len(http_sink.to("/mcp-big")) == 1  # the backtest sent nothing


# -- over HTTP --------------------------------------------------------------------------------

MANUAL_YAML = """\
kwala_flow: 1
name: Greeter
nodes:
  - id: start
    type: manual
    config: {}
  - id: hook
    type: http.request
    config:
      url: SINK_URL
      body: {who: "{{ trigger.payload.who }}"}
edges:
  - {source: start, source_port: out, target: hook}
"""


def test_over_http_an_editor_imports_yaml_and_test_runs_the_draft_with_a_sample(
    asgi_server, team, bob, dramatiq_worker, http_sink
):
    with over_http(asgi_server, token_for(bob)) as assistant:
        flow = assistant.call("import_flow_yaml", yaml=MANUAL_YAML.replace("SINK_URL", f"{http_sink.url}/mcp-dry"))
        assert flow["name"] == "Greeter" and flow["live_version"] is None
        assert "type: http.request" in assistant.call("export_flow", flow=flow["code"])["yaml"]
        refused = assistant.refused("start_run", flow=flow["code"], payload={"who": "ada"})
        assert (refused["status"], refused["error"]["code"]) == (409, "not_published")

        started = assistant.call("start_run", flow=flow["code"], payload={"who": "ada"}, draft=True)
        assert started["dry_run"] is True
        run = assistant.until("the test run to finish", lambda: (
            lambda r: r if r["status"] in ("SUCCEEDED", "FAILED") else None)(
            assistant.call("get_run", run=started["code"])))
        assert run["status"] == "SUCCEEDED", run
        hook = assistant.call("get_run_step", run=run["code"], step_id="hook")
        assert hook["status"] == "SUCCEEDED" and "ada" in str(hook["input"]) + str(hook["output"])
    assert http_sink.to("/mcp-dry") == []  # a dry run records what it would send and sends nothing


def test_the_tools_answer_with_the_apis_error_bodies(asgi_server, team, alice):
    with over_http(asgi_server, token_for(alice)) as assistant:
        missing = assistant.refused("get_flow", flow="nope")
        assert missing == {"status": 404, "error": {"code": "flow_not_found", "message": "No such flow in your team.",
                                                    "details": []}}
        malformed = assistant.refused("create_flow", name="Bad", graph={"nodes": [{"id": "1x"}], "edges": []})
        assert (malformed["status"], malformed["error"]["code"]) == (422, "invalid_graph")
        assert malformed["error"]["details"]
        flow = assistant.call("create_flow", name="Empty")
        stale = assistant.refused("update_draft", flow=flow["code"], revision=flow["revision"] + 5,
                                  graph={"nodes": [], "edges": []})
        assert (stale["status"], stale["error"]["code"]) == (409, "conflict")
        nul = assistant.refused("create_flow", name="a\x00b")
        assert (nul["status"], nul["error"]["code"]) == (422, "validation_error")
        unknown = assistant.refused("describe_node_types", node_type="chain.nope")
        assert unknown["status"] == 404


# -- who may do what ----------------------------------------------------------------------------


@pytest.fixture
def alices_flow(team, alice) -> Flow:
    manual = {"nodes": [{"id": "start", "type": "manual", "config": {}}], "edges": []}
    return do_create_flow(team, alice, "Alice's flow", graph=manual)


def test_a_token_of_another_team_cannot_see_or_change_this_teams_flows(asgi_server, alice, charlie, alices_flow):
    code = alices_flow.code
    with over_http(asgi_server, token_for(charlie)) as outsider:
        assert outsider.call("list_flows") == {"items": [], "count": 0}
        for tool, arguments in [
            ("get_flow", {}), ("validate_flow", {}), ("export_flow", {}), ("list_versions", {}),
            ("publish_flow", {}), ("unpublish_flow", {}), ("update_flow", {"paused": True}),
            ("update_draft", {"revision": 1, "graph": {"nodes": [], "edges": []}}),
            ("start_run", {"draft": True}), ("replay_flow", {"from_block": 1, "to_block": 2}),
        ]:
            refused = outsider.refused(tool, flow=code, **arguments)
            assert (refused["status"], refused["error"]["code"]) == (404, "flow_not_found"), tool
    alices_flow.refresh_from_db()
    assert (alices_flow.revision, alices_flow.paused, alices_flow.versions.count()) == (1, False, 1)
    with over_http(asgi_server, token_for(alice)) as owner:
        assert [f["code"] for f in owner.call("list_flows")["items"]] == [code]


def test_a_viewer_token_reads_but_cannot_publish_change_or_run(asgi_server, team, alice, make_member, alices_flow):
    viewer = make_member("VIEWER")
    code = alices_flow.code
    with over_http(asgi_server, token_for(viewer)) as assistant:
        assert assistant.call("get_flow", flow=code)["name"] == "Alice's flow"
        assert assistant.call("validate_flow", flow=code)["ok"] is True
        for tool, arguments in [
            ("publish_flow", {"flow": code}), ("start_run", {"flow": code, "draft": True}),
            ("update_draft", {"flow": code, "revision": 1, "graph": {"nodes": [], "edges": []}}),
            ("create_flow", {"name": "Mine"}), ("update_flow", {"flow": code, "paused": True}),
        ]:
            refused = assistant.refused(tool, **arguments)
            assert refused["status"] == 403, tool
            assert refused["error"] == {"code": "forbidden", "details": [],
                                        "message": "This needs the editor role or higher in Acme DAO."}
    assert not FlowVersion.objects.filter(flow=alices_flow, status=FlowVersion.Status.PUBLISHED).exists()
    assert Flow.objects.filter(team=team).count() == 1


def test_without_a_valid_token_the_http_endpoint_answers_401(asgi_server, alice):
    revoked = token_for(alice)
    ApiToken.objects.update(revoked_at=timezone.now())
    expected = {"error": {"code": "unauthorized", "message": "Send a valid token: Authorization: Bearer <token>.",
                          "details": []}}
    for headers in [{}, {"Authorization": "Bearer kwl_not-a-token"}, {"Authorization": f"Bearer {revoked}"},
                    {"Authorization": f"Basic {revoked}"}]:
        response = httpx.post(f"{asgi_server.url}/mcp", headers={"Accept": "application/json, text/event-stream",
                                                                 **headers},
                              json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert (response.status_code, response.json()) == (401, expected), headers
        assert response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(Exception), over_http(asgi_server, None) as assistant:  # noqa: B017 (the SDK's own error)
        assistant.tools()
    bad_host = httpx.post(f"{asgi_server.url}/mcp", headers={"Host": "evil.example", "Authorization": "Bearer x"})
    assert bad_host.status_code == 400


def test_a_token_revoked_during_a_stdio_session_is_refused_at_its_next_call(team, alice, child_env, service_logs):
    token = token_for(alice)
    with over_stdio(child_env, token, service_logs, mode="legacy") as assistant:
        assert assistant.call("list_flows")["count"] == 0
        ApiToken.objects.update(revoked_at=timezone.now())
        refused = assistant.refused("list_flows")
        assert (refused["status"], refused["error"]["code"]) == (401, "unauthorized")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_clients_of_either_protocol_era_are_served_over_http(asgi_server, team, alice, alices_flow, mode):
    with over_http(asgi_server, token_for(alice), mode=mode) as assistant:
        assert "publish_flow" in assistant.tools()
        assert [f["code"] for f in assistant.call("list_flows")["items"]] == [alices_flow.code]
        assert assistant.refused("get_run", run="nope")["error"]["code"] == "run_not_found"


def test_a_role_lowered_during_a_session_counts_at_the_next_call(asgi_server, team, bob, alices_flow):
    with over_http(asgi_server, token_for(bob)) as assistant:
        assert assistant.call("update_flow", flow=alices_flow.code, paused=True)["paused"] is True
        Membership.objects.filter(user=bob).update(role=Membership.Role.VIEWER)
        assert assistant.refused("update_flow", flow=alices_flow.code, paused=False)["status"] == 403


def test_manage_py_mcp_refuses_a_token_it_cannot_use(team, alice):
    with pytest.raises(CommandError, match="not valid"):
        call_command("mcp", "--token", "kwl_not-a-token")
    with pytest.raises(CommandError, match="Give a token"):
        call_command("mcp")


# -- in-process: what the tools say, and overload ------------------------------------------------


def test_the_graph_tools_teach_every_node_type_and_its_required_fields_from_the_catalogue():
    with _session(Client(tools.build_server("kwl_unused"))) as assistant:
        listed = assistant.tools()
        for name in ("create_flow", "update_draft"):
            description = listed[name].description
            assert '"source_port"' in description
            for key, node_type in NODE_TYPES.items():
                line = next(line for line in description.splitlines() if line.startswith(f"- {key} ("))
                assert node_type.description in line
                for field in node_type.fields:
                    assert field.name + ("*" if field.required else "") in line, (key, field.name)
        assert "chain.event" in assistant.read("kwala://graph-format")
        assert '"key": "http.request"' in assistant.read("kwala://node-types")


def test_a_database_gone_mid_session_is_a_tool_error_that_says_to_retry(child_env, service_logs, alice):
    from tests.tcpproxy import postgres_proxy

    proxy, url = postgres_proxy()
    env = {**child_env, "DATABASE_URL": url}
    try:
        with over_stdio(env, token_for(alice), service_logs) as assistant:
            assistant.call("list_flows")  # through the proxy
            proxy.cut()  # PostgreSQL is gone, as far as the server can tell
            answer = assistant.refused("list_flows")
    finally:
        proxy.close()
    assert answer == {"status": 503, "retry_after": 2, "error": {
        "code": "overloaded", "details": [], "message": "The server is busy; try again in a moment."}}


def test_tool_calls_count_against_the_tokens_api_rate_limit(team, alice, settings):
    settings.KWALA_API_RATE_LIMIT = 2
    token = token_for(alice)
    # What every tool does in its thread, called here so the test's own settings and connection apply.
    assert not tools.call_api(token, "list_chains", rest.list_chains).is_error
    assert not tools.call_api(token, "list_chains", rest.list_chains).is_error
    limited = tools.call_api(token, "list_chains", rest.list_chains).structured_content
    assert (limited["status"], limited["error"]["code"]) == (429, "rate_limited") and limited["retry_after"] >= 1


def test_a_published_flow_is_live_for_the_assistant(asgi_server, team, alice, alices_flow):
    do_publish_version(alices_flow, alice)
    with over_http(asgi_server, token_for(alice)) as assistant:
        versions = assistant.call("list_versions", flow=alices_flow.code)
        assert [(v["number"], v["status"]) for v in versions["items"]] == [(1, "PUBLISHED")]
        assert assistant.call("get_version", flow=alices_flow.code, number=1)["dag"]["format"] == 1
        assert assistant.call("unpublish_flow", flow=alices_flow.code)["live_version"] is None
