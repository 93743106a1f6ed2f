"""The compiler: the graph the editor saves -> the DAG the runtime executes.

Pure Python, no ORM, no I/O. ``compile_graph`` collects every problem it can
find in one pass so the editor can mark all broken nodes at once; only when
there are none does it return the DAG (format described in docs/dag.md).
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from flows.expressions import ExpressionError, references
from flows.nodes import NODE_TYPES, NodeType, TriggerType, ValidationContext
from flows.nodes.base import ExpressionUse

__all__ = ["DAG_FORMAT", "CompileError", "Problem", "compile_graph", "graph_validator", "schema_problems"]

DAG_FORMAT = 1
SCHEMA_PATH = Path(__file__).with_name("schemas") / "graph.schema.json"
_ALWAYS_AVAILABLE = frozenset({"trigger", "flow", "now"})
# The one rule for node ids, the schema's: the compiler checks it, the editor numbers new nodes by it.
NODE_ID_PATTERN: str = json.loads(SCHEMA_PATH.read_text())["$defs"]["nodeId"]["pattern"]
_NODE_ID = re.compile(NODE_ID_PATTERN)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph. ``node_id``/``field`` are None when it is about
    the graph as a whole; ``field`` is a config path ("filters.0.value") or an
    edge ("edges.3")."""

    node_id: str | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class CompileError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))

    def as_list(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.problems]


@cache
def graph_validator() -> Draft202012Validator:
    """The JSON Schema validator, built once per process."""
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


_NODE_KEYS = frozenset({"id", "type", "name", "config", "position"})
_EDGE_KEYS = frozenset({"id", "source", "source_port", "target"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_is_valid(graph: Any) -> bool:
    """Exactly the rules of graph.schema.json, hand-written for speed.

    jsonschema takes ~80 ms on a 1,000-node graph; this takes ~1 ms. When it says
    no, the real validator runs to produce the messages, so the schema file stays
    the single source of truth for what is reported (a property test checks the
    two agree).
    """
    if not isinstance(graph, dict) or set(graph) != {"nodes", "edges"}:
        return False
    nodes, edges = graph["nodes"], graph["edges"]
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return False
    if len(nodes) > 5000 or len(edges) > 20000:
        return False
    match = _NODE_ID.fullmatch
    for node in nodes:
        if not isinstance(node, dict) or not node.keys() <= _NODE_KEYS:
            return False
        node_id, node_type = node.get("id"), node.get("type")
        if not isinstance(node_id, str) or not match(node_id):
            return False
        if not isinstance(node_type, str) or not 1 <= len(node_type) <= 64:
            return False
        if not isinstance(node.get("config"), dict):
            return False
        if "name" in node and (not isinstance(node["name"], str) or len(node["name"]) > 200):
            return False
        if "position" in node:
            position = node["position"]
            if (
                not isinstance(position, dict)
                or position.keys() != {"x", "y"}
                or not _is_number(position["x"])
                or not _is_number(position["y"])
            ):
                return False
    for edge in edges:
        if not isinstance(edge, dict) or not edge.keys() <= _EDGE_KEYS:
            return False
        source, port, target = edge.get("source"), edge.get("source_port"), edge.get("target")
        if not (isinstance(source, str) and match(source) and isinstance(target, str) and match(target)):
            return False
        if not isinstance(port, str) or not 1 <= len(port) <= 64:
            return False
        if "id" in edge and (not isinstance(edge["id"], str) or len(edge["id"]) > 100):
            return False
    return True


def schema_problems(graph: Any) -> list[Problem]:
    if _shape_is_valid(graph):
        return []
    problems = []
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    for error in sorted(graph_validator().iter_errors(graph), key=lambda e: list(map(str, e.path))):
        path = list(error.path)
        node_id = None
        if len(path) >= 2 and path[0] == "nodes" and isinstance(nodes, list):
            node = nodes[path[1]] if isinstance(path[1], int) and path[1] < len(nodes) else None
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                node_id = node["id"]
        where = ".".join(str(p) for p in path)
        if path[:1] == ["nodes"] and len(path) >= 2:
            subject = f"Node {path[1] + 1}" if isinstance(path[1], int) else "Node"
            field = ".".join(str(p) for p in path[2:]) or None
        elif path[:1] == ["edges"] and len(path) >= 2:
            subject = f"Edge {path[1] + 1}" if isinstance(path[1], int) else "Edge"
            field = where
        else:
            subject, field = "The graph", where or None
        problems.append(Problem(node_id, field, f"{subject}: {_human_schema_message(error)}"))
    return problems


_TYPE_WORDS = {
    "object": "an object ({...})",
    "array": "a list ([...])",
    "string": "text",
    "number": "a number",
    "integer": "a whole number",
}


def _human_schema_message(error: Any) -> str:
    path = list(error.path)
    key = path[-1] if path else None
    if error.validator == "pattern" and key in ("id", "source", "target"):
        return (
            f"{error.instance!r} is not a valid node id (start with a letter or _, then "
            "letters, digits or _, at most 64)"
        )
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"'{missing[0]}' is missing" if missing else error.message
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"unexpected key {', '.join(map(repr, extra))}"
    if error.validator == "type":
        wanted = _TYPE_WORDS.get(str(error.validator_value), str(error.validator_value))
        subject = key if isinstance(key, str) else "it"
        return f"{subject} must be {wanted}"
    return error.message


def _sort_key(node: Mapping[str, Any]) -> tuple[float, float, str]:
    position = node.get("position")
    if isinstance(position, dict):
        x, y = position.get("x", 0), position.get("y", 0)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            return (float(y), float(x), node["id"])
    return (0.0, 0.0, node["id"])


def _display(node: Mapping[str, Any]) -> str:
    name = node.get("name")
    return f"'{name}'" if isinstance(name, str) and name else f"'{node['id']}'"


def _find_cycle(remaining: set[str], successors: Mapping[str, list[str]]) -> list[str]:
    """One cycle among nodes Kahn's algorithm could not order (every such node
    has an unordered predecessor, so walking predecessors-free successors loops)."""
    state: dict[str, int] = {}
    for start in sorted(remaining):
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, index = stack.pop()
            if index == 0:
                state[node] = 1
                path.append(node)
            nexts = [s for s in successors.get(node, ()) if s in remaining]
            if index < len(nexts):
                stack.append((node, index + 1))
                nxt = nexts[index]
                if state.get(nxt) == 1:
                    return path[path.index(nxt):] + [nxt]
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
    return []


def compile_graph(
    graph: Any,
    *,
    chains: Mapping[int, str] | None = None,
    secret_names: Collection[str] | None = None,
    signer_names: Collection[str] | None = None,
) -> dict[str, Any]:
    """Check ``graph`` and compile it to a DAG; raise CompileError with every problem.

    ``chains`` maps the configured chain ids to slugs, ``secret_names`` lists the
    team's secrets and ``signer_names`` its signer keys; pass None to skip those
    checks (e.g. when importing a file).
    """
    problems = schema_problems(graph)
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise CompileError(problems or [Problem(None, None, "The graph must have a list of nodes")])
    ctx = ValidationContext(chains=chains, secret_names=secret_names, signer_names=signer_names)

    # -- nodes: ids, types, the trigger ------------------------------------
    nodes: dict[str, dict[str, Any]] = {}
    types: dict[str, NodeType] = {}
    all_ids: set[str] = set()
    for raw in graph["nodes"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            continue
        node_id = raw["id"]
        if node_id in all_ids:
            problems.append(Problem(node_id, "id", f"Two nodes use the id '{node_id}'"))
            continue
        all_ids.add(node_id)
        node_type = NODE_TYPES.get(raw.get("type")) if isinstance(raw.get("type"), str) else None
        if node_type is None:
            if isinstance(raw.get("type"), str):
                problems.append(Problem(node_id, "type", f"Unknown node type '{raw['type']}'"))
            continue
        nodes[node_id] = raw
        types[node_id] = node_type

    triggers = [nid for nid, t in types.items() if isinstance(t, TriggerType)]
    if not triggers:
        problems.append(Problem(None, None, "The flow needs a trigger"))
    for extra in triggers[1:]:
        problems.append(
            Problem(extra, None, f"A flow has exactly one trigger; {_display(nodes[triggers[0]])} is already one")
        )
    trigger_id = triggers[0] if triggers else None

    # -- configs -------------------------------------------------------------
    configs: dict[str, dict[str, Any]] = {}
    normalized: dict[str, dict[str, Any] | None] = {}
    for node_id, node_type in types.items():
        config = nodes[node_id].get("config")
        config = config if isinstance(config, dict) else {}
        configs[node_id] = config
        found, normalized[node_id] = node_type.check_config(config, ctx)
        problems.extend(Problem(node_id, field, message) for field, message in found)

    # -- edges -----------------------------------------------------------------
    successors: dict[str, list[str]] = {nid: [] for nid in nodes}
    inputs: dict[str, list[dict[str, str]]] = {nid: [] for nid in nodes}
    by_port: dict[str, dict[str, list[str]]] = {}
    seen_edges: set[tuple[str, str, str]] = set()
    ports_cache: dict[str, list[str]] = {}
    for index, edge in enumerate(graph.get("edges") if isinstance(graph.get("edges"), list) else []):
        if not isinstance(edge, dict):
            continue
        source, port, target = edge.get("source"), edge.get("source_port"), edge.get("target")
        if not (isinstance(source, str) and isinstance(port, str) and isinstance(target, str)):
            continue
        where = f"edges.{index}"
        broken = False
        for end, node_id in (("starts", source), ("ends", target)):
            if node_id not in all_ids:
                problems.append(Problem(None, where, f"Edge {index + 1} {end} at node '{node_id}', which does not exist"))
                broken = True
        if broken or source not in nodes or target not in nodes:
            continue
        if source not in ports_cache:
            ports_cache[source] = types[source].output_ports(configs[source])
        ports = ports_cache[source]
        if port not in ports:
            listed = ", ".join(ports) if ports else "it has none"
            problems.append(
                Problem(source, where, f"{_display(nodes[source])} has no output port '{port}' (its ports: {listed})")
            )
            continue
        if not types[target].input_ports:
            problems.append(
                Problem(target, where, f"Nothing can connect into {_display(nodes[target])}: it is a trigger")
            )
            continue
        if (source, port, target) in seen_edges:
            problems.append(Problem(source, where, f"{_display(nodes[source])} is connected to '{target}' twice"))
            continue
        seen_edges.add((source, port, target))
        successors[source].append(target)
        inputs[target].append({"step": source, "port": port})
        by_port.setdefault(source, {}).setdefault(port, []).append(target)

    # -- order (Kahn, ties by position then id) and cycles -------------------
    indegree = {nid: len(inputs[nid]) for nid in nodes}
    heap = [(_sort_key(nodes[nid]), nid) for nid, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    order: list[str] = []
    while heap:
        _, nid = heapq.heappop(heap)
        order.append(nid)
        for succ in successors[nid]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                heapq.heappush(heap, (_sort_key(nodes[succ]), succ))
    if len(order) < len(nodes):
        remaining = set(nodes) - set(order)
        cycle = _find_cycle(remaining, successors)
        names = " → ".join(_display(nodes[n]) for n in cycle)
        problems.append(Problem(cycle[0] if cycle else None, None, f"The flow has a loop: {names}"))

    # -- reachability and ancestors (one bitset per node, in topological order)
    if trigger_id is not None:
        reached = {trigger_id}
        frontier = [trigger_id]
        while frontier:
            nid = frontier.pop()
            for succ in successors[nid]:
                if succ not in reached:
                    reached.add(succ)
                    frontier.append(succ)
        for nid, node in nodes.items():
            if nid not in reached and not isinstance(types[nid], TriggerType):
                problems.append(Problem(nid, None, f"{_display(node)} is not connected to the trigger"))
    bit = {nid: 1 << i for i, nid in enumerate(order)}
    ancestors: dict[str, int] = {}
    for nid in order:
        mask = 0
        for item in inputs[nid]:
            mask |= ancestors[item["step"]] | bit[item["step"]]
        ancestors[nid] = mask

    for nid in order:
        if types[nid].join == "all" and len(inputs[nid]) < 2:
            problems.append(Problem(nid, None, f"{_display(nodes[nid])} needs at least two incoming branches"))

    # -- expression references -------------------------------------------------
    for nid in order:
        if normalized[nid] is None:
            continue
        for use in types[nid].expressions(configs[nid]):
            problems.extend(
                _reference_problems(nid, use, types[nid], nodes, bit, ancestors[nid], trigger_id, secret_names)
            )

    if problems:
        raise CompileError(problems)
    assert trigger_id is not None
    return _build_dag(trigger_id, order, nodes, types, normalized, inputs, by_port)


def _reference_problems(
    node_id: str,
    use: ExpressionUse,
    node_type: NodeType,
    nodes: Mapping[str, Mapping[str, Any]],
    bit: Mapping[str, int],
    ancestor_mask: int,
    trigger_id: str | None,
    secret_names: Collection[str] | None,
) -> list[Problem]:
    try:
        refs = references(use.source, template=use.template)
    except ExpressionError:
        return []  # already reported by the field check
    problems = []
    label = use.label

    def say(message: str) -> None:
        problems.append(Problem(node_id, use.field, message))

    for ref in sorted(refs):
        root = ref[0]
        if root in _ALWAYS_AVAILABLE or root in node_type.local_names(use.field):
            continue
        if root == "steps":
            if len(ref) == 1:
                say(f"{label} uses 'steps' without naming a step (write steps.<id>.output)")
                continue
            step = ref[1]
            if step == trigger_id:
                say(f"{label} refers to the trigger as step '{step}'; use trigger.… instead")
            elif step not in nodes:
                say(f"{label} refers to step '{step}', which does not exist")
            elif step == node_id:
                say(f"{label} refers to this node's own output")
            elif not (step in bit and ancestor_mask & bit[step]):
                say(f"{label} refers to step '{step}' which does not run before this node")
        elif root == "secrets":
            if node_type.category != "action":
                # Triggers' and logic nodes' values are stored in the run, where the team reads them.
                say(f"{label} uses a secret: secrets can be used only in what an action sends out "
                    f"(a URL, headers, a body, a message), never in a {node_type.category} node's values")
            elif len(ref) == 1:
                say(f"{label} uses 'secrets' without naming one (write secrets.NAME)")
            elif secret_names is not None and ref[1] not in secret_names:
                say(f"{label} refers to secret '{ref[1]}', which does not exist")
        else:
            say(f"{label} uses unknown name '{root}' (use trigger, steps.<id>, secrets.<NAME>, flow or now)")
    return problems


def _build_dag(
    trigger_id: str,
    order: list[str],
    nodes: Mapping[str, Mapping[str, Any]],
    types: Mapping[str, NodeType],
    configs: Mapping[str, Mapping[str, Any] | None],
    inputs: Mapping[str, list[dict[str, str]]],
    by_port: Mapping[str, Mapping[str, list[str]]],
) -> dict[str, Any]:
    """Called only once there are no problems, so every config is normalized."""
    trigger_type = types[trigger_id]
    assert isinstance(trigger_type, TriggerType)
    trigger_config = configs[trigger_id]
    assert trigger_config is not None
    position = {nid: i for i, nid in enumerate(order)}

    def ordered(ids: list[str]) -> list[str]:
        return sorted(ids, key=position.__getitem__)

    steps = []
    for nid in order:
        if nid == trigger_id:
            continue
        node_type = types[nid]
        config = configs[nid]
        assert config is not None
        ports = node_type.output_ports(config)
        steps.append(
            {
                "id": nid,
                "type": node_type.key,
                "name": nodes[nid].get("name") or node_type.label,
                "config": config,
                "inputs": sorted(inputs[nid], key=lambda i: (position[i["step"]], i["port"])),
                "join": node_type.join,
                "side_effect": node_type.side_effect,
                "successors": {port: ordered(by_port.get(nid, {}).get(port, [])) for port in ports},
            }
        )
    return {
        "format": DAG_FORMAT,
        "trigger": trigger_type.trigger_spec(trigger_id, trigger_config),
        "entry": ordered(by_port.get(trigger_id, {}).get("out", [])),
        "steps": steps,
    }
