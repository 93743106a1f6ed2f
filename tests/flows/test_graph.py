from __future__ import annotations

import copy

import pytest

from flows.graph import CompileError, Problem, compile_graph

USDC = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
VAULT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
TRANSFER_TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
CHAINS = {1: "ethereum", 8453: "base"}
SECRETS = {"SLACK_URL", "DISCORD_URL", "TG_TOKEN", "HOOK_SECRET"}
SIGNERS = {"DEPLOYER_KEY"}


def node(node_id, type_, config=None, *, x=0, y=0, name=None):
    return {
        "id": node_id,
        "type": type_,
        "name": name or node_id,
        "config": config or {},
        "position": {"x": x, "y": y},
    }


def edge(source, target, port="out"):
    return {"source": source, "source_port": port, "target": target}


def transfer_trigger(**overrides):
    config = {"chain": 1, "addresses": [USDC], "event": TRANSFER}
    config.update(overrides)
    return node("t", "chain.event", config, name="USDC transfer")


def problems_of(graph, **kwargs) -> list[Problem]:
    with pytest.raises(CompileError) as info:
        compile_graph(graph, chains=CHAINS, secret_names=SECRETS, signer_names=SIGNERS, **kwargs)
    return info.value.problems


def assert_problem(graph, node_id, field, fragment, **kwargs):
    problems = problems_of(graph, **kwargs)
    matching = [p for p in problems if p.node_id == node_id and p.field == field and fragment in p.message]
    assert matching, f"no problem ({node_id}, {field}, ~{fragment!r}) in {problems}"
    return matching[0]


def assert_order_respects_edges(dag, graph):
    order = [dag["trigger"]["node_id"]] + [s["id"] for s in dag["steps"]]
    index = {nid: i for i, nid in enumerate(order)}
    for e in graph["edges"]:
        assert index[e["source"]] < index[e["target"]]


def whale_graph():
    return {
        "nodes": [
            transfer_trigger(
                filters=[
                    {"arg": "to", "op": "in", "value": [VAULT, USDC]},
                    {"arg": "value", "op": "gt", "value": "1000000000"},
                ],
                condition="trigger.args.value > 10**9",
                confirmations=2,
            ),
            node("big", "condition", {"expression": "trigger.args.value > 10**12"}, y=100, name="Big?"),
            node("slack", "notify.slack", {"webhook_secret": "SLACK_URL", "text": "{{ trigger.args.value|format_units(6) }} USDC"}, y=200),
            node("log", "http.request", {"url": "https://example.com/log", "body": {"value": "{{ trigger.args.value }}", "big": "{{ steps.big.output.result }}"}}, x=200, y=200),
        ],
        "edges": [edge("t", "big"), edge("big", "slack", "true"), edge("big", "log", "false")],
    }


# -- valid graphs ----------------------------------------------------------------


def test_it_compiles_an_event_trigger_spec_the_listener_can_index():
    dag = compile_graph(whale_graph(), chains=CHAINS, secret_names=SECRETS)
    trigger = dag["trigger"]
    assert dag["format"] == 1
    assert trigger["type"] == "chain.event"
    assert trigger["node_id"] == "t"
    assert trigger["chain_id"] == 1
    assert trigger["addresses"] == [USDC]
    assert trigger["topic0"] == TRANSFER_TOPIC0
    # "to" is the second indexed argument: topics[2]; the list is OR-ed, sorted.
    assert trigger["topic_filters"][0] is None
    assert trigger["topic_filters"][2] is None
    assert trigger["topic_filters"][1] == sorted(
        ["0x" + "0" * 24 + USDC[2:].lower(), "0x" + "0" * 24 + VAULT[2:].lower()]
    )
    assert trigger["arg_filters"] == [{"arg": "value", "type": "uint256", "op": "gt", "value": 1000000000}]
    assert trigger["condition"] == "trigger.args.value > 10**9"
    assert trigger["confirmations"] == 2
    assert [p["name"] for p in trigger["event_abi"]["inputs"]] == ["from", "to", "value"]


def test_it_orders_steps_and_lists_inputs_and_successors():
    graph = whale_graph()
    dag = compile_graph(graph, chains=CHAINS, secret_names=SECRETS)
    assert [s["id"] for s in dag["steps"]] == ["big", "slack", "log"]
    assert dag["entry"] == ["big"]
    big, slack, log = dag["steps"]
    assert big["successors"] == {"true": ["slack"], "false": ["log"]}
    assert slack["inputs"] == [{"step": "big", "port": "true"}]
    assert log["inputs"] == [{"step": "big", "port": "false"}]
    assert slack["successors"] == {"out": [], "error": []}
    assert (big["side_effect"], slack["side_effect"], log["side_effect"]) == (False, True, True)
    assert {s["join"] for s in dag["steps"]} == {"any"}
    assert_order_respects_edges(dag, graph)


def test_it_normalizes_config_with_defaults():
    dag = compile_graph(whale_graph(), chains=CHAINS, secret_names=SECRETS)
    log = dag["steps"][2]["config"]
    assert log["method"] == "POST"
    assert log["timeout"] == 10
    assert log["retry"] == {"max_attempts": 1, "backoff_seconds": 10}


def test_ties_are_broken_by_position_then_id():
    graph = {
        "nodes": [
            node("t", "manual"),
            node("b", "delay", {"duration": "1m"}, x=0, y=100),
            node("a", "delay", {"duration": "1m"}, x=100, y=100),
            node("c", "delay", {"duration": "1m"}, x=0, y=50),
        ],
        "edges": [edge("t", "a"), edge("t", "b"), edge("t", "c")],
    }
    dag = compile_graph(graph)
    assert [s["id"] for s in dag["steps"]] == ["c", "b", "a"]
    assert dag["entry"] == ["c", "b", "a"]


def every_node_graph():
    nodes = [
        node("start", "manual", {"sample_payload": {"amount": 5}}),
        node("route", "switch", {"cases": [{"name": "big", "expression": "trigger.payload.amount > 10"}, {"name": "small", "expression": "trigger.payload.amount > 0"}]}, y=100),
        node("shape", "transform", {"fields": [{"name": "double", "expression": "trigger.payload.amount * 2"}]}, y=200),
        node("wait", "delay", {"duration": "1h30m"}, x=200, y=200),
        node("gather", "join", {}, y=300),
        node("post", "http.request", {"method": "PUT", "url": "https://api.example.com/{{ steps.route.output.case }}", "headers": {"Authorization": "Bearer {{ secrets.HOOK_SECRET }}"}, "body": {"double": "{{ steps.shape.output.double }}"}, "expected_status": [200, 201], "retry": {"max_attempts": 3}}, y=400),
        node("discord", "notify.discord", {"webhook_secret": "DISCORD_URL", "content": "failed: {{ steps.post.error }}"}, x=300, y=500),
        node("balance", "contract.read", {"chain": 8453, "address": USDC, "function": "balanceOf(address owner) view returns (uint256)", "args": [VAULT]}, y=500),
        node("sweep", "contract.write", {"chain": 8453, "address": VAULT, "function": "function sweep(address token, uint256 amount)", "args": [USDC, "{{ steps.balance.output.result }}"], "signer": "DEPLOYER_KEY", "gas_limit": 200000}, y=600),
        node("tg", "notify.telegram", {"bot_token_secret": "TG_TOKEN", "chat_id": "-100123", "text": "swept {{ steps.sweep.output.tx_hash }}"}, y=700),
        node("mail", "notify.email", {"to": ["ops@example.com"], "subject": "Swept", "body": "{{ flow.name }} at {{ now }}"}, y=800),
        node("done", "stop", {"fail": False, "message": "ok"}, y=900),
    ]
    edges = [
        edge("start", "route"),
        edge("route", "shape", "big"),
        edge("route", "wait", "small"),
        edge("route", "gather", "default"),
        edge("shape", "gather"),
        edge("wait", "gather"),
        edge("gather", "post"),
        edge("post", "discord", "error"),
        edge("post", "balance"),
        edge("balance", "sweep"),
        edge("sweep", "tg"),
        edge("tg", "mail"),
        edge("mail", "done"),
    ]
    return {"nodes": nodes, "edges": edges}


def test_it_compiles_every_logic_and_action_type():
    graph = every_node_graph()
    dag = compile_graph(graph, chains=CHAINS, secret_names=SECRETS, signer_names=SIGNERS)
    by_id = {s["id"]: s for s in dag["steps"]}
    assert {s["type"] for s in dag["steps"]} == {
        "switch", "transform", "delay", "join", "http.request", "notify.discord",
        "contract.read", "contract.write", "notify.telegram", "notify.email", "stop",
    }
    assert by_id["route"]["successors"] == {"big": ["shape"], "small": ["wait"], "default": ["gather"]}
    assert by_id["gather"]["join"] == "all"
    assert by_id["gather"]["inputs"] == [
        {"step": "route", "port": "default"},
        {"step": "shape", "port": "out"},
        {"step": "wait", "port": "out"},
    ]
    assert by_id["wait"]["config"]["duration"] == 5400
    assert by_id["post"]["config"]["retry"] == {"max_attempts": 3, "backoff_seconds": 10}
    assert by_id["post"]["successors"] == {"out": ["balance"], "error": ["discord"]}
    assert by_id["balance"]["side_effect"] is False
    assert by_id["balance"]["config"]["selector"] == "0x70a08231"
    assert by_id["sweep"]["side_effect"] is True
    assert by_id["sweep"]["config"]["function_abi"]["name"] == "sweep"
    assert by_id["done"]["successors"] == {}
    assert dag["trigger"] == {"type": "manual", "node_id": "start", "sample_payload": {"amount": 5}}
    assert_order_respects_edges(dag, graph)


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        (node("t", "chain.block", {"chain": 1, "every": 10, "confirmations": 3}), {"type": "chain.block", "node_id": "t", "chain_id": 1, "every": 10, "confirmations": 3}),
        (
            node("t", "schedule", {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris"}),
            {"type": "schedule", "node_id": "t", "cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "interval_seconds": None, "start_at": None, "expire_at": None},
        ),
        (
            node("t", "schedule", {"interval": "5m", "start_at": "2030-01-01T00:00:00Z", "expire_at": "2030-02-01T00:00:00+00:00"}),
            {"type": "schedule", "node_id": "t", "cron": None, "timezone": "UTC", "interval_seconds": 300, "start_at": "2030-01-01T00:00:00+00:00", "expire_at": "2030-02-01T00:00:00+00:00"},
        ),
        (
            node("t", "webhook", {"verification": "hmac-sha256", "secret": "HOOK_SECRET"}),
            {"type": "webhook", "node_id": "t", "verification": "hmac-sha256", "secret": "HOOK_SECRET", "signature_header": "X-Signature-256",
             "timestamp_header": None},
        ),
        (node("t", "webhook", {}), {"type": "webhook", "node_id": "t", "verification": "none", "secret": None, "signature_header": None,
                                              "timestamp_header": None}),
    ],
)
def test_it_compiles_each_trigger_type(trigger, expected):
    graph = {"nodes": [trigger, node("w", "delay", {"duration": 5})], "edges": [edge("t", "w")]}
    assert compile_graph(graph, chains=CHAINS, secret_names=SECRETS)["trigger"] == expected


def test_it_compiles_a_contract_state_trigger():
    trigger = node("t", "chain.state", {"chain": 1, "address": VAULT, "function": "balanceOf(address owner) view returns (uint256)", "args": [USDC], "every": 5, "condition": "result < 10**18"})
    graph = {"nodes": [trigger, node("w", "delay", {"duration": 5})], "edges": [edge("t", "w")]}
    spec = compile_graph(graph, chains=CHAINS)["trigger"]
    assert spec["selector"] == "0x70a08231"
    assert spec["address"] == VAULT
    assert (spec["every"], spec["condition"], spec["args"]) == (5, "result < 10**18", [USDC])


def test_an_empty_address_list_means_any_contract():
    graph = whale_graph()
    graph["nodes"][0]["config"]["addresses"] = []
    assert compile_graph(graph, chains=CHAINS, secret_names=SECRETS)["trigger"]["addresses"] == []


def test_it_accepts_an_event_from_a_pasted_abi():
    graph = whale_graph()
    abi = [{"type": "event", "name": "Transfer", "anonymous": False, "inputs": [
        {"name": "from", "type": "address", "indexed": True},
        {"name": "to", "type": "address", "indexed": True},
        {"name": "value", "type": "uint256", "indexed": False}]}]
    graph["nodes"][0]["config"]["event"] = {"abi": abi, "name": "Transfer"}
    assert compile_graph(graph, chains=CHAINS, secret_names=SECRETS)["trigger"]["topic0"] == TRANSFER_TOPIC0


def test_checks_for_chains_and_secrets_are_skipped_when_unknown():
    graph = whale_graph()
    graph["nodes"][0]["config"]["chain"] = 999
    compile_graph(graph)  # chains=None, secret_names=None


def test_a_write_is_signed_by_a_signer_key_of_the_team_not_by_a_secret():
    graph = every_node_graph()
    assert compile_graph(graph, chains=CHAINS, signer_names=SIGNERS)  # secrets unknown: not checked
    graph["nodes"][8]["config"]["signer"] = "HOOK_SECRET"
    assert Problem("sweep", "signer", "Signer key 'HOOK_SECRET' does not exist") in problems_of(graph)
    graph["nodes"][8]["config"]["signer"] = "not a name"
    assert Problem("sweep", "signer", "Signer key must be a signer key name (letters, digits and _)") in problems_of(graph)
    graph["nodes"][8]["config"]["signer"] = "ANY_KEY"
    compile_graph(graph, chains=CHAINS, secret_names=SECRETS)  # signer_names=None: not checked


def test_it_does_not_modify_its_input():
    graph = every_node_graph()
    before = copy.deepcopy(graph)
    compile_graph(graph, chains=CHAINS, secret_names=SECRETS)
    assert graph == before


# -- invalid graphs: every kind of problem -----------------------------------------


def test_it_rejects_a_graph_that_is_not_an_object():
    assert problems_of([]) == [Problem(None, None, "The graph: it must be an object ({...})")]
    assert problems_of({"nodes": "x", "edges": []}) == [
        Problem(None, "nodes", "The graph: nodes must be a list ([...])")
    ]


def test_it_reports_schema_problems_in_plain_words():
    graph = whale_graph()
    graph["nodes"][1]["id"] = "big-1"
    del graph["nodes"][2]["type"]
    graph["nodes"][3]["colour"] = "red"
    graph["edges"][0]["source_port"] = 5
    problems = problems_of(graph)
    messages = [p.message for p in problems]
    assert "Node 2: 'big-1' is not a valid node id (start with a letter or _, then letters, digits or _, at most 64)" in messages
    assert "Node 3: 'type' is missing" in messages
    assert "Node 4: unexpected key 'colour'" in messages
    assert "Edge 1: source_port must be text" in messages
    assert any(p.node_id == "log" and p.message == "Node 4: unexpected key 'colour'" for p in problems)


def test_it_rejects_duplicate_ids():
    graph = whale_graph()
    graph["nodes"].append(node("big", "delay", {"duration": 1}))
    assert_problem(graph, "big", "id", "Two nodes use the id 'big'")


def test_it_rejects_unknown_node_types():
    graph = whale_graph()
    graph["nodes"][1]["type"] = "teleport"
    assert_problem(graph, "big", "type", "Unknown node type 'teleport'")


def test_it_requires_a_trigger():
    graph = {"nodes": [node("a", "delay", {"duration": 1})], "edges": []}
    assert_problem(graph, None, None, "The flow needs a trigger")


def test_it_allows_only_one_trigger():
    graph = whale_graph()
    graph["nodes"].append(node("t2", "manual"))
    graph["edges"].append(edge("t2", "log"))
    assert_problem(graph, "t2", None, "exactly one trigger; 'USDC transfer' is already one")


def test_it_rejects_cycles_and_names_the_nodes_in_them():
    graph = whale_graph()
    graph["nodes"].append(node("again", "delay", {"duration": 1}, name="Again"))
    graph["edges"] += [edge("log", "again"), edge("again", "big")]
    problem = assert_problem(graph, "again", None, "The flow has a loop")
    assert problem.message == "The flow has a loop: 'Again' → 'Big?' → 'log' → 'Again'"


def test_it_rejects_a_self_loop():
    graph = whale_graph()
    graph["edges"].append(edge("log", "log"))
    assert_problem(graph, "log", None, "The flow has a loop: 'log' → 'log'")


def test_it_rejects_nodes_not_connected_to_the_trigger():
    graph = whale_graph()
    graph["nodes"].append(node("orphan", "delay", {"duration": 1}, name="Orphan"))
    assert_problem(graph, "orphan", None, "'Orphan' is not connected to the trigger")


def test_it_rejects_edges_to_missing_nodes():
    graph = whale_graph()
    graph["edges"].append(edge("big", "ghost", "true"))
    assert_problem(graph, None, "edges.3", "Edge 4 ends at node 'ghost', which does not exist")


def test_it_rejects_unknown_output_ports():
    graph = whale_graph()
    graph["edges"][1]["source_port"] = "maybe"
    assert_problem(graph, "big", "edges.1", "'Big?' has no output port 'maybe' (its ports: true, false)")


def test_it_rejects_edges_out_of_a_stop_node():
    graph = whale_graph()
    graph["nodes"].append(node("end", "stop"))
    graph["edges"] += [edge("slack", "end"), edge("end", "log")]
    assert_problem(graph, "end", "edges.4", "has no output port 'out' (its ports: it has none)")


def test_it_rejects_edges_into_a_trigger():
    graph = whale_graph()
    graph["edges"].append(edge("log", "t"))
    assert_problem(graph, "t", "edges.3", "Nothing can connect into 'USDC transfer': it is a trigger")


def test_it_rejects_duplicate_edges():
    graph = whale_graph()
    graph["edges"].append(edge("t", "big"))
    assert_problem(graph, "t", "edges.3", "connected to 'big' twice")


def test_a_join_needs_two_branches():
    graph = whale_graph()
    graph["nodes"].append(node("j", "join", name="Gather"))
    graph["edges"].append(edge("log", "j"))
    assert_problem(graph, "j", None, "'Gather' needs at least two incoming branches")


@pytest.mark.parametrize(
    ("node_index", "key", "value", "field", "message"),
    [
        (1, "expression", None, "expression", "Condition is required"),
        (1, "expression", "trigger.args.value >", "expression", "Condition: Syntax error"),
        (2, "text", "{% for %}", "text", "Message: Syntax error"),
        (1, "colour", "red", "colour", "Unknown setting 'colour'"),
        (3, "timeout", 0, "timeout", "Timeout must be at least 1 seconds"),
        (3, "method", "BREW", "method", "Method must be one of: GET, POST, PUT, PATCH, DELETE"),
        (3, "url", "ftp://x", "url", "URL must start with http:// or https://"),
        (3, "headers", {"Bad Header": "x"}, "headers.Bad Header", "'Bad Header' is not a valid header name"),
        (3, "retry", {"max_attempts": 0}, "retry", "max_attempts must be a whole number from 1 to 25"),
        (0, "confirmations", -1, "confirmations", "Confirmations must be at least 0"),
        (0, "chain", 137, "chain", "Chain 137 is not configured on this server"),
        (0, "event", "Transfer(address indexed from, uint7 value)", "event", "Event: 'uint7' is not a valid Solidity type"),
        (0, "event", "event Ping(uint256 a) anonymous", "event", "Ping is anonymous"),
        (0, "filters", [{"arg": "amount", "value": 1}], "filters.0.arg", "The event has no argument 'amount' (from, to, value)"),
        (0, "filters", [{"arg": "to", "op": "gt", "value": 1}], "filters.0.op", "'gt' only works on numbers, not address"),
        (0, "filters", [{"arg": "value", "op": "in", "value": 5}], "filters.0.value", "'in' needs a non-empty list"),
        (0, "filters", [{"arg": "value", "value": "lots"}], "filters.0.value", "Filter on 'value': 'lots' is not a valid uint256"),
        (2, "webhook_secret", "NOPE", "webhook_secret", "Secret 'NOPE' does not exist"),
        (2, "webhook_url", "https://hooks.slack.com/x", "webhook_url", "either a webhook URL or a secret"),
    ],
)
def test_it_reports_bad_config_per_field(node_index, key, value, field, message):
    graph = whale_graph()
    target = graph["nodes"][node_index]
    if value is None:
        target["config"].pop(key, None)
    else:
        target["config"][key] = value
    assert_problem(graph, target["id"], field, message)


def test_it_rejects_addresses_that_are_not_checksummed_and_shows_the_right_form():
    graph = whale_graph()
    graph["nodes"][0]["config"]["addresses"] = [USDC.lower(), USDC.upper().replace("0X", "0x"), "0x1234"]
    problems = problems_of(graph)
    assert Problem("t", "addresses.0", f"Contract addresses: {USDC.lower()} is not checksummed (EIP-55); did you mean {USDC}?") in problems
    assert any(p.field == "addresses.1" and f"did you mean {USDC}?" in p.message for p in problems)
    assert Problem("t", "addresses.2", "Contract addresses: '0x1234' is not an Ethereum address") in problems


def test_it_checks_schedule_settings():
    def schedule(config):
        return {"nodes": [node("t", "schedule", config), node("w", "delay", {"duration": 5})], "edges": [edge("t", "w")]}

    assert_problem(schedule({"cron": "61 * * * *"}), "t", "cron", "is not a valid cron expression")
    assert_problem(schedule({"cron": "0 * * * *", "timezone": "Mars/Olympus"}), "t", "timezone", "is not a known time zone")
    assert_problem(schedule({"cron": "0 * * * *", "interval": 60}), "t", "interval", "not both")
    assert_problem(schedule({}), "t", "cron", "Set a cron expression, an interval, or a start time")
    assert_problem(schedule({"interval": 60, "start_at": "2030-01-01T00:00:00"}), "t", "start_at", "with a time zone")
    assert_problem(
        schedule({"interval": 60, "start_at": "2030-01-02T00:00:00Z", "expire_at": "2030-01-01T00:00:00Z"}),
        "t", "expire_at", "Stop time must be after the start time",
    )


def test_it_checks_webhook_and_switch_settings():
    graph = {"nodes": [node("t", "webhook", {"verification": "standard-webhooks"}), node("s", "switch", {"cases": [{"name": "a", "expression": "true"}, {"name": "a", "expression": "false"}, {"name": "default", "expression": "1"}]})], "edges": [edge("t", "s")]}
    problems = problems_of(graph)
    assert Problem("t", "secret", "Choose the secret that signs the requests") in problems
    assert Problem("s", "cases.1.name", "Case 'a' is listed twice") in problems
    assert Problem("s", "cases.2.name", "'default' is taken by the fallback port") in problems


def test_it_checks_contract_calls():
    graph = every_node_graph()
    by_id = {n["id"]: n for n in graph["nodes"]}
    by_id["sweep"]["config"]["value_wei"] = 10**18
    by_id["balance"]["config"]["args"] = []
    by_id["balance"]["config"]["function"] = "balanceOf(address owner view returns (uint256)"
    problems = problems_of(graph)
    assert Problem("sweep", "value_wei", "sweep is not payable, so it cannot receive value") in problems
    assert any(p.node_id == "balance" and p.field == "function" and "Unbalanced" in p.message for p in problems)
    by_id["balance"]["config"]["function"] = "balanceOf(address owner) view returns (uint256)"
    by_id["sweep"]["config"]["function"] = "sweep(address token, uint256 amount) view"
    problems = problems_of(graph)
    assert Problem("balance", "args", "balanceOf takes 1 arguments, got 0") in problems
    assert Problem("sweep", "function", "sweep is view; use Read contract") in problems


def test_an_expression_may_only_use_upstream_steps():
    graph = whale_graph()
    graph["nodes"][2]["config"]["text"] = "{{ steps.log.output.body }}"
    assert_problem(graph, "slack", "text", "Message refers to step 'log' which does not run before this node")


def test_a_condition_cannot_read_a_step_that_runs_after_it():
    graph = whale_graph()
    graph["nodes"][1]["config"]["expression"] = "steps.slack.output.status_code == 200"
    problem = assert_problem(graph, "big", "expression", "refers to step 'slack'")
    assert problem.message == "Condition refers to step 'slack' which does not run before this node"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ steps.ghost.output }}", "Message refers to step 'ghost', which does not exist"),
        ("{{ steps.slack.output }}", "Message refers to this node's own output"),
        ("{{ steps.t.output }}", "Message refers to the trigger as step 't'; use trigger.… instead"),
        ("{{ steps }}", "Message uses 'steps' without naming a step"),
        ("{{ secrets.MISSING }}", "Message refers to secret 'MISSING', which does not exist"),
        ("{{ secrets }}", "Message uses 'secrets' without naming one"),
        ("{{ os.environ }}", "Message uses unknown name 'os'"),
    ],
)
def test_it_rejects_bad_references(text, message):
    graph = whale_graph()
    graph["nodes"][2]["config"]["text"] = text
    assert_problem(graph, "slack", "text", message)


def test_references_inside_nested_bodies_are_checked():
    graph = whale_graph()
    graph["nodes"][3]["config"]["body"] = {"items": [{"v": "{{ steps.slack.output }}"}]}
    assert_problem(graph, "log", "body.items.0.v", "Body refers to step 'slack' which does not run before this node")


def test_a_state_trigger_condition_may_use_result_but_others_may_not():
    graph = whale_graph()
    graph["nodes"][1]["config"]["expression"] = "result > 1"
    assert_problem(graph, "big", "expression", "uses unknown name 'result'")


def test_it_collects_every_problem_at_once():
    graph = whale_graph()
    graph["nodes"][0]["config"]["addresses"] = [USDC.lower()]
    graph["nodes"][1]["config"]["expression"] = "steps.log.status"
    graph["nodes"][2]["config"]["webhook_secret"] = "NOPE"
    graph["edges"].append(edge("big", "log", "maybe"))
    graph["nodes"].append(node("orphan", "delay", {"duration": 1}))
    problems = problems_of(graph)
    assert {(p.node_id, p.field) for p in problems} == {
        ("t", "addresses.0"),
        ("big", "expression"),
        ("slack", "webhook_secret"),
        ("big", "edges.3"),
        ("orphan", None),
    }
    assert all(set(p.as_dict()) == {"node_id", "field", "message"} for p in problems)


# -- the node catalogue ------------------------------------------------------------


def test_the_catalogue_lists_every_type_as_json():
    import json

    from flows.nodes import NODE_TYPES, catalogue

    entries = json.loads(json.dumps(catalogue()))
    assert [e["key"] for e in entries] == list(NODE_TYPES)
    by_key = {e["key"]: e for e in entries}
    assert by_key["chain.event"]["category"] == "trigger"
    assert by_key["chain.event"]["input_ports"] == []
    assert by_key["http.request"]["output_ports"] == ["out", "error"]
    assert by_key["condition"]["output_ports"] == ["true", "false"]
    ops = next(f for f in by_key["chain.event"]["fields"] if f["name"] == "filters")["item_fields"][1]
    assert ops["choices"] == ["eq", "ne", "gt", "gte", "lt", "lte", "in"]
    # How a node looks and which ports a config names come from the node type, for the browser too.
    assert by_key["switch"]["ports_from"] == ["cases", "name"] and by_key["condition"]["ports_from"] is None
    assert {e["look"]["colour"] for e in entries if e["category"] == "trigger"} == {"#7c3aed"}
    assert all(e["look"]["width"] == 210 and e["look"]["header"] == 44 for e in entries)
    switch = NODE_TYPES["switch"]
    assert switch.output_ports({"cases": [{"name": "big"}, {"name": ""}, "x", {"name": "small"}]}) == [
        "big", "small", "default"]


def test_output_shapes_follow_the_config():
    from flows.nodes import NODE_TYPES

    shape = NODE_TYPES["chain.event"].output_shape({"event": TRANSFER})
    assert shape["args"]["fields"] == {
        "from": {"type": "address", "description": ""},
        "to": {"type": "address", "description": ""},
        "value": {"type": "uint256", "description": ""},
    }
    assert NODE_TYPES["chain.event"].output_shape({"event": "broken("})["args"]["fields"] == {}
    assert NODE_TYPES["switch"].output_ports({"cases": [{"name": "a"}, {"name": "b"}]}) == ["a", "b", "default"]
    assert set(NODE_TYPES["transform"].output_shape({"fields": [{"name": "v", "expression": "1"}]})) == {"v"}
    read = NODE_TYPES["contract.read"].output_shape({"function": "getReserves() view returns (uint112 r0, uint112 r1, uint32 ts)"})
    assert set(read["outputs"]["fields"]) == {"r0", "r1", "ts"}
