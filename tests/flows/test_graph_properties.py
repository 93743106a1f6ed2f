from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.expressions import evaluate
from flows.flowyaml import export_yaml, import_yaml
from flows.graph import CompileError, _shape_is_valid, compile_graph, graph_validator
from flows.nodes import NODE_TYPES

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ids = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**300), max_value=2**300)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

# Config values that are sometimes right and often wrong, so the checks run deep.
CONFIG_POOL = {
    "chain": st.sampled_from([1, 0, -1, "1", 8453, None]),
    "addresses": st.sampled_from([[], ["0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"], ["0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"], "x", [1]]),
    "event": st.sampled_from(["Transfer(address indexed from, address indexed to, uint256 value)", "Bad(", {"abi": "[", "name": "X"}, {"abi": [], "name": ""}, 5]),
    "function": st.sampled_from(["balanceOf(address owner) view returns (uint256)", "f(uint7)", "sweep(address a, uint256 b)", None]),
    "expression": st.sampled_from(["trigger.x > 1", "steps.a.output", "steps.b.status == 'x'", "1 +", "__import__", "secrets.K", 3]),
    "text": st.sampled_from(["hi {{ steps.a.output }}", "{{ trigger.args.value|from_wei }}", "{% for %}", "", None, 7]),
    "url": st.sampled_from(["https://x.example/{{ steps.c.status }}", "ftp://x", "{{ flow.url }}", 1]),
    "duration": st.sampled_from([5, "5m", "forever", -1, 0, True]),
    "cases": st.sampled_from([[{"name": "a", "expression": "1"}], [{"name": "default", "expression": "1"}], "x", [1], []]),
    "fields": st.sampled_from([[{"name": "v", "expression": "trigger.args.value * 2"}], [{"name": "1", "expression": ")"}], None]),
    "args": st.sampled_from([[], ["0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"], "x", [1, 2]]),
    "filters": st.sampled_from([[], [{"arg": "value", "op": "gt", "value": 5}], [{"arg": "to", "op": "gt", "value": 1}], [{"arg": "nope", "value": 1}], [{}], "x"]),
    "cron": st.sampled_from(["0 * * * *", "61 * * * *", None]),
    "interval": st.sampled_from([60, "1h", None, "x"]),
    "timezone": st.sampled_from(["UTC", "Mars/Base", None, 5]),
    "body": json_value,
    "retry": st.sampled_from([{"max_attempts": 3}, {"max_attempts": 0}, "x", None]),
}


@st.composite
def random_graphs(draw):
    node_ids = draw(st.lists(ids, min_size=0, max_size=8))
    nodes = []
    for node_id in node_ids:
        type_ = draw(st.sampled_from([*NODE_TYPES, "nope"]))
        keys = draw(st.lists(st.sampled_from(sorted(CONFIG_POOL)), max_size=4, unique=True))
        config = {k: draw(CONFIG_POOL[k]) for k in keys}
        if type_ in NODE_TYPES and draw(st.booleans()):
            for spec in NODE_TYPES[type_].fields:
                if spec.name in CONFIG_POOL and spec.name not in config:
                    config[spec.name] = draw(CONFIG_POOL[spec.name])
        node = {"id": node_id, "type": type_, "config": config}
        if draw(st.booleans()):
            node["position"] = {"x": draw(st.integers(-5, 5)), "y": draw(st.integers(-5, 5))}
        nodes.append(node)
    pool = node_ids + ["ghost"]
    edges = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "source": st.sampled_from(pool),
                    "source_port": st.sampled_from(["out", "true", "false", "error", "default", "a", "x"]),
                    "target": st.sampled_from(pool),
                }
            ),
            max_size=12,
        )
    )
    return {"nodes": nodes, "edges": edges}


@SETTINGS
@given(random_graphs())
def test_random_graphs_compile_or_raise_compile_error(graph):
    try:
        dag = compile_graph(graph, chains={1: "ethereum"}, secret_names={"K"})
    except CompileError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert isinstance(problem.message, str) and problem.message
    else:
        assert dag["format"] == 1


@SETTINGS
@given(st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(["nodes", "edges", "id", "type", "config", "x"]), c, max_size=4), max_leaves=10))
def test_arbitrary_json_never_crashes_the_compiler(value):
    try:
        compile_graph(value)
    except CompileError:
        pass


@st.composite
def dags(draw):
    """Valid acyclic graphs: every node has an inbound edge from an earlier node."""
    count = draw(st.integers(1, 25))
    nodes = [{"id": "t", "type": "manual", "name": "Start", "config": {}, "position": {"x": 0, "y": 0}}]
    edges = []
    earlier = [("t", "out")]
    for i in range(count):
        node_id = f"n{i}"
        kind = draw(st.sampled_from(["delay", "condition", "join"] if len(earlier) > 1 else ["delay", "condition"]))
        sources = draw(st.lists(st.sampled_from(earlier), min_size=2 if kind == "join" else 1, max_size=3, unique=True))
        config = {"duration": 5} if kind == "delay" else {"expression": "trigger.payload > 1"} if kind == "condition" else {}
        position = {"x": draw(st.integers(0, 3)), "y": draw(st.integers(0, 3))}
        nodes.append({"id": node_id, "type": kind, "name": node_id, "config": config, "position": position})
        edges.extend({"source": s, "source_port": p, "target": node_id} for s, p in sources)
        ports = ["true", "false"] if kind == "condition" else ["out"]
        earlier.extend((node_id, p) for p in ports)
    return {"nodes": nodes, "edges": edges}


@SETTINGS
@given(dags(), st.randoms(use_true_random=False))
def test_compiled_order_respects_every_edge_and_is_stable(graph, random):
    dag = compile_graph(graph)
    order = [dag["trigger"]["node_id"]] + [s["id"] for s in dag["steps"]]
    position = {nid: i for i, nid in enumerate(order)}
    assert sorted(order) == sorted(n["id"] for n in graph["nodes"])
    for edge in graph["edges"]:
        assert position[edge["source"]] < position[edge["target"]]
    for step in dag["steps"]:
        for port, targets in step["successors"].items():
            for target in targets:
                assert {"step": step["id"], "port": port} in next(s for s in dag["steps"] if s["id"] == target)["inputs"]
    shuffled = {"nodes": list(graph["nodes"]), "edges": list(graph["edges"])}
    random.shuffle(shuffled["nodes"])
    random.shuffle(shuffled["edges"])
    assert compile_graph(shuffled) == dag


yaml_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff\x85\u2028\u2029") | st.sampled_from("\n\t "),
    max_size=30,
)
yaml_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**256), max_value=2**256) | st.floats(allow_nan=False) | yaml_text,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(yaml_text, c, max_size=4),
    max_leaves=15,
)


@st.composite
def flows(draw):
    node_ids = draw(st.lists(ids, max_size=6, unique=True))
    nodes = []
    for node_id in node_ids:
        node = {"id": node_id, "type": draw(st.sampled_from(sorted(NODE_TYPES))), "config": draw(st.dictionaries(yaml_text, yaml_json, max_size=4))}
        if draw(st.booleans()):
            node["name"] = draw(yaml_text)
        if draw(st.booleans()):
            node["position"] = {"x": draw(st.integers(-1000, 1000) | st.floats(-1e6, 1e6)), "y": draw(st.integers(-1000, 1000))}
        nodes.append(node)
    edges = []
    if node_ids:
        for _ in range(draw(st.integers(0, 5))):
            edge = {"source": draw(st.sampled_from(node_ids)), "source_port": draw(st.sampled_from(["out", "true", "error"])), "target": draw(st.sampled_from(node_ids))}
            if draw(st.booleans()):
                edge["id"] = draw(st.from_regex(r"e[0-9]{1,3}", fullmatch=True))
            edges.append(edge)
    meta = {"name": draw(yaml_text), "description": draw(yaml_text)}
    return meta, {"nodes": nodes, "edges": edges}


@SETTINGS
@given(flows())
def test_yaml_round_trip_is_exact(flow):
    meta, graph = flow
    assert import_yaml(export_yaml(meta, graph)) == (meta, graph)


near_graphs = st.fixed_dictionaries(
    {
        "nodes": st.lists(
            st.fixed_dictionaries(
                {"id": st.one_of(ids, st.just("bad-id"), st.just("ok\n"), st.integers()), "type": st.sampled_from(["manual", "", 5]), "config": st.sampled_from([{}, [], None])},
                optional={"name": st.sampled_from(["n", 5, "x" * 201]), "position": st.sampled_from([{"x": 1, "y": 2}, {"x": True, "y": 1}, {"x": 1}, {"x": 1.5, "y": 2, "z": 0}]), "extra": st.just(1)},
            ),
            max_size=4,
        ),
        "edges": st.lists(
            st.fixed_dictionaries(
                {"source": st.sampled_from(["a", "1a", 3]), "source_port": st.sampled_from(["out", "", 4]), "target": ids},
                optional={"id": st.sampled_from(["e1", 5, "x" * 101]), "more": st.just(1)},
            ),
            max_size=3,
        ),
    },
    optional={"extra": st.just(1)},
)


@SETTINGS
@given(near_graphs)
def test_the_fast_shape_check_agrees_with_the_json_schema(graph):
    assert _shape_is_valid(graph) == graph_validator().is_valid(graph)


uint256 = st.integers(min_value=0, max_value=2**256 - 1)


@SETTINGS
@given(uint256, uint256, st.integers(min_value=1, max_value=2**256 - 1))
def test_uint256_arithmetic_matches_python(a, b, c):
    ctx = {"trigger": {"args": {"a": a, "b": b, "c": c}}}
    assert evaluate("(trigger.args.a * trigger.args.b) // trigger.args.c", ctx) == (a * b) // c
    assert evaluate("trigger.args.a + trigger.args.b - trigger.args.c", ctx) == a + b - c
    assert evaluate("trigger.args.a % trigger.args.c", ctx) == a % c
