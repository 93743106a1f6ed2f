"""Flows as code: our own YAML format, and import of Kwala workflow YAML.

``export_yaml``/``import_yaml`` round-trip exactly (``import(export(x)) == x``),
so a flow can live in a repository and be reviewed as text. Only
``yaml.safe_load`` is used: a flow file never constructs Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import yaml
from eth_utils import is_address, to_checksum_address

from flows import abi as abi_lib
from flows.graph import graph_validator
from flows.nodes.base import parse_datetime, parse_duration

__all__ = [
    "DEFAULT_SIGNER",
    "FLOW_YAML_VERSION",
    "FlowYamlError",
    "export_yaml",
    "import_kwala_yaml",
    "import_yaml",
]

FLOW_YAML_VERSION = 1
DEFAULT_SIGNER = "DEFAULT_SIGNER"
_RESERVED = ("kwala_flow", "nodes", "edges")
_NODE_KEY_ORDER = ("id", "type", "name", "position", "config")
_EDGE_KEY_ORDER = ("id", "source", "source_port", "target")


class FlowYamlError(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"Line {line}: {message}" if line else message)


# ---------------------------------------------------------------------------
# export


class _Inline(dict):
    """A mapping written on one line: positions and edges."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_inline(dumper: yaml.SafeDumper, data: _Inline) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Multi-line templates read best as literal blocks; PyYAML falls back to a
    # quoted style by itself when a block cannot hold the text exactly.
    style = "|" if "\n" in data and not data.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(_Inline, _represent_inline)
_Dumper.add_representer(str, _represent_str)


def _ordered(mapping: Mapping[str, Any], first: tuple[str, ...]) -> dict[str, Any]:
    out = {key: mapping[key] for key in first if key in mapping}
    out.update({key: mapping[key] for key in mapping if key not in out})
    return out


def export_yaml(meta: Mapping[str, Any], graph: Mapping[str, Any]) -> str:
    """A flow as a YAML document: meta keys first, then nodes, then edges."""
    clash = [key for key in meta if key in _RESERVED]
    if clash:
        raise FlowYamlError(f"Meta key '{clash[0]}' is reserved")
    doc: dict[str, Any] = {"kwala_flow": FLOW_YAML_VERSION}
    doc.update(_ordered(meta, ("name", "description")))
    nodes = []
    for node in graph.get("nodes", []):
        item = _ordered(node, _NODE_KEY_ORDER)
        if isinstance(item.get("position"), dict):
            item["position"] = _Inline(_ordered(item["position"], ("x", "y")))
        nodes.append(item)
    doc["nodes"] = nodes
    doc["edges"] = [_Inline(_ordered(edge, _EDGE_KEY_ORDER)) for edge in graph.get("edges", [])]
    # A huge width: folding long signatures and templates over lines makes diffs noisy.
    return yaml.dump(
        doc,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=1_000_000,
    )


# ---------------------------------------------------------------------------
# import


# A flow file is small; anything bigger is a mistake or an attack.
MAX_YAML_CHARS = 2_000_000


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases: a few hundred bytes of nested *aliases expand to
    gigabytes ("billion laughs"), and flow files never need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in flow files", event.start_mark
            )
        return super().compose_node(parent, index)


def _load(text: str) -> Any:
    if not isinstance(text, str):
        raise FlowYamlError("Expected YAML text")
    if len(text) > MAX_YAML_CHARS:
        raise FlowYamlError(f"The file is larger than {MAX_YAML_CHARS:,} characters")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        raise FlowYamlError(f"Invalid YAML: {problem}", line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise FlowYamlError(f"Invalid YAML: {exc}") from None
    except RecursionError:
        raise FlowYamlError("Invalid YAML: nested too deeply") from None


def _line_of(text: str, path: list[Any]) -> int | None:
    """The line of the YAML node at ``path`` (or its nearest parent)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            match = node.value[key]
        else:
            match = None
        if match is None:
            break
        node = match
        line = node.start_mark.line + 1
    return line


def import_yaml(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse a flow YAML document into (meta, graph); the graph shape is checked
    against the JSON Schema, the rest is the compiler's job."""
    doc = _load(text)
    if not isinstance(doc, dict):
        raise FlowYamlError("A flow file must be a mapping with nodes and edges", line=1)
    version = doc.get("kwala_flow", FLOW_YAML_VERSION)
    if version != FLOW_YAML_VERSION:
        raise FlowYamlError(
            f"kwala_flow: version {version!r} is not supported (expected {FLOW_YAML_VERSION})",
            line=_line_of(text, ["kwala_flow"]),
        )
    if "nodes" not in doc:
        raise FlowYamlError("'nodes' is missing", line=1)
    graph = {"nodes": doc.get("nodes"), "edges": doc.get("edges", [])}
    errors = sorted(graph_validator().iter_errors(graph), key=lambda e: list(map(str, e.path)))
    if errors:
        error = errors[0]
        path = list(error.path)
        where = ".".join(str(p) for p in path) or "graph"
        raise FlowYamlError(f"{where}: {error.message}", line=_line_of(text, path))
    meta = {key: value for key, value in doc.items() if key not in _RESERVED}
    for key in ("name", "description"):
        if key in meta and not isinstance(meta[key], str):
            raise FlowYamlError(f"{key} must be text", line=_line_of(text, [key]))
    if len(meta.get("name") or "") > 120:
        raise FlowYamlError("name must be at most 120 characters", line=_line_of(text, ["name"]))
    return meta, graph


# ---------------------------------------------------------------------------
# Kwala workflow YAML

_KWALA_TOP = {"Name", "Trigger", "Actions", "Execution"}
_KWALA_TRIGGER = {
    "TriggerSourceContract", "TriggerChainID", "TriggerEventName", "TriggerEventFilter",
    "RepeatEvery", "ExecuteAfter", "ExpiresIn", "ActionStatusNotificationPOSTURL",
}
_KWALA_ACTION = {
    "Name", "Type", "APIEndpoint", "APIPayload", "TargetContract", "TargetFunction",
    "TargetParams", "ChainID", "RetriesUntilSuccess",
}
_RE_EVENT = re.compile(r"re\.event\((\d+)\)")


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "NA"))


def _int_field(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise FlowYamlError(f"{field} must be a whole number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise FlowYamlError(f"{field} must be a whole number, got {value!r}")


def _address_field(value: Any, field: str) -> str:
    # YAML 1.1 reads an unquoted 0x... address as a hexadecimal integer: take it back.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**160:
        value = "0x" + format(value, "040x")
    if not isinstance(value, str) or not is_address(value.strip()):
        raise FlowYamlError(f"{field}: {value!r} is not an Ethereum address")
    return to_checksum_address(value.strip())


def _chain_field(value: Any, field: str, chains: Mapping[int, str] | None) -> int:
    chain_id = _int_field(value, field)
    if chains is not None and chain_id not in chains:
        raise FlowYamlError(f"{field}: chain {chain_id} is not configured on this server")
    return chain_id


def _time_field(value: Any, field: str) -> str:
    """A unix time or an ISO date-time -> ISO text in UTC."""
    if isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        return datetime.fromtimestamp(int(value), tz=UTC).isoformat()
    try:
        return parse_datetime(value).isoformat()
    except (ValueError, TypeError):
        raise FlowYamlError(f"{field}: {value!r} is not a unix time or an ISO date-time") from None


class _EventArgs:
    """Rewrites ``re.event(N)`` into an expression on the trigger's decoded args."""

    def __init__(self, event: dict[str, Any] | None) -> None:
        self.inputs = event["inputs"] if event else None

    def expression(self, index: int, field: str) -> str:
        if self.inputs is None:
            raise FlowYamlError(f"{field}: re.event({index}) needs an event trigger")
        if index >= len(self.inputs):
            raise FlowYamlError(
                f"{field}: re.event({index}) but the event has {len(self.inputs)} arguments"
            )
        name = self.inputs[index]["name"]
        return f"trigger.args.{name}" if name else f"trigger.args_list[{index}]"

    def rewrite(self, value: Any, field: str) -> Any:
        if isinstance(value, str):
            whole = _RE_EVENT.fullmatch(value.strip())
            if whole:
                return "{{ " + self.expression(int(whole.group(1)), field) + " }}"
            return _RE_EVENT.sub(
                lambda m: "{{ " + self.expression(int(m.group(1)), field) + " }}", value
            )
        if isinstance(value, dict):
            return {str(k): self.rewrite(v, f"{field}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.rewrite(v, f"{field}[{i}]") for i, v in enumerate(value)]
        return value


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower()[:40] or "action"
    if base[0].isdigit():
        base = f"a_{base}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _kwala_trigger(
    trigger: Mapping[str, Any], chains: Mapping[int, str] | None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Returns the trigger node and the event fragment (None for time triggers)."""
    def get(key: str) -> Any:
        value = trigger.get(key)
        return None if _absent(value) else value

    event_sig = get("TriggerEventName")
    repeat, execute_after, expires = get("RepeatEvery"), get("ExecuteAfter"), get("ExpiresIn")
    if event_sig is not None:
        try:
            event = abi_lib.parse_event_signature(str(event_sig))
        except abi_lib.AbiError as exc:
            raise FlowYamlError(f"Trigger.TriggerEventName: {exc}") from None
        if get("TriggerChainID") is None:
            raise FlowYamlError("Trigger.TriggerChainID is required for an event trigger")
        if repeat is not None and str(repeat).strip().lower() != "event":
            raise FlowYamlError(
                f"Trigger.RepeatEvery: {repeat!r} cannot be combined with an event trigger "
                "(use 'event' or NA)"
            )
        if execute_after is not None and str(execute_after).strip().lower() not in ("event", "immediate"):
            raise FlowYamlError(
                f"Trigger.ExecuteAfter: {execute_after!r} is not supported with an event trigger "
                "(use 'event', 'immediate' or NA)"
            )
        config: dict[str, Any] = {
            "chain": _chain_field(get("TriggerChainID"), "Trigger.TriggerChainID", chains),
            "addresses": [],
            "event": str(event_sig),
        }
        contract = get("TriggerSourceContract")
        if contract is not None:
            config["addresses"] = [_address_field(contract, "Trigger.TriggerSourceContract")]
        event_filter = get("TriggerEventFilter")
        if event_filter is not None:
            if not isinstance(event_filter, dict):
                raise FlowYamlError(
                    "Trigger.TriggerEventFilter: only a mapping of argument name to value is "
                    f"supported, got {event_filter!r}"
                )
            config["filters"] = [{"arg": str(k), "op": "eq", "value": v} for k, v in event_filter.items()]
        if expires is not None:
            config["expire_at"] = _time_field(expires, "Trigger.ExpiresIn")
        node = {"id": "trigger", "type": "chain.event", "name": f"{event['name']} event", "config": config}
        return node, event

    if get("TriggerEventFilter") is not None:
        raise FlowYamlError("Trigger.TriggerEventFilter needs a TriggerEventName")
    config = {}
    if repeat is not None:
        try:
            config["interval"] = parse_duration(repeat)
        except (ValueError, TypeError):
            raise FlowYamlError(
                f"Trigger.RepeatEvery: {repeat!r} is not 'event' or an interval (seconds, 5m, 1h)"
            ) from None
    immediate = execute_after is None or str(execute_after).strip().lower() == "immediate"
    if not immediate:
        config["start_at"] = _time_field(execute_after, "Trigger.ExecuteAfter")
    if expires is not None:
        config["expire_at"] = _time_field(expires, "Trigger.ExpiresIn")
    if not config:
        # "run once, now": the closest Kwala node is a manual trigger.
        return {"id": "trigger", "type": "manual", "name": "Run once", "config": {}}, None
    return {"id": "trigger", "type": "schedule", "name": "Schedule", "config": config}, None


def _kwala_action(
    index: int,
    action: Any,
    node_id: str,
    args: _EventArgs,
    chains: Mapping[int, str] | None,
    signer: str,
) -> dict[str, Any]:
    where = f"Actions[{index}]"
    if not isinstance(action, dict):
        raise FlowYamlError(f"{where} must be a mapping")
    unknown = sorted(set(action) - _KWALA_ACTION)
    if unknown:
        raise FlowYamlError(f"{where}.{unknown[0]} is not a Kwala action field this importer knows")

    def get(key: str) -> Any:
        value = action.get(key)
        return None if _absent(value) else value

    kind = str(get("Type") or "").strip().lower()
    name = str(get("Name") or f"Action {index + 1}")
    retries = get("RetriesUntilSuccess")
    config: dict[str, Any]
    if kind == "post":
        for key in ("TargetContract", "TargetFunction", "TargetParams"):
            if get(key) is not None:
                raise FlowYamlError(f"{where}.{key} is only for 'call' actions")
        url = get("APIEndpoint")
        if not isinstance(url, str):
            raise FlowYamlError(f"{where}.APIEndpoint is required for a 'post' action")
        payload = get("APIPayload")
        if payload is not None and not isinstance(payload, (dict, list)):
            raise FlowYamlError(f"{where}.APIPayload must be a mapping")
        config = {"method": "POST", "url": args.rewrite(url, f"{where}.APIEndpoint")}
        if payload is not None:
            config["body"] = args.rewrite(payload, f"{where}.APIPayload")
        node_type = "http.request"
    elif kind == "call":
        for key in ("APIEndpoint", "APIPayload"):
            if get(key) is not None:
                raise FlowYamlError(f"{where}.{key} is only for 'post' actions")
        signature = get("TargetFunction")
        if signature is None:
            raise FlowYamlError(f"{where}.TargetFunction is required for a 'call' action")
        try:
            function = abi_lib.parse_function_signature(str(signature))
        except abi_lib.AbiError as exc:
            raise FlowYamlError(f"{where}.TargetFunction: {exc}") from None
        params = get("TargetParams") or []
        if not isinstance(params, list):
            raise FlowYamlError(f"{where}.TargetParams must be a list")
        if len(params) != len(function["inputs"]):
            raise FlowYamlError(
                f"{where}.TargetParams: {function['name']} takes {len(function['inputs'])} "
                f"arguments, got {len(params)}"
            )
        if get("ChainID") is None:
            raise FlowYamlError(f"{where}.ChainID is required for a 'call' action")
        if get("TargetContract") is None:
            raise FlowYamlError(f"{where}.TargetContract is required for a 'call' action")
        config = {
            "chain": _chain_field(get("ChainID"), f"{where}.ChainID", chains),
            "address": _address_field(get("TargetContract"), f"{where}.TargetContract"),
            "function": str(signature).strip(),
            "args": args.rewrite(params, f"{where}.TargetParams"),
            "signer": signer,
        }
        node_type = "contract.write"
    else:
        raise FlowYamlError(f"{where}.Type: {get('Type')!r} is not supported (use 'call' or 'post')")
    if retries is not None:
        attempts = _int_field(retries, f"{where}.RetriesUntilSuccess")
        if not 1 <= attempts <= 25:
            raise FlowYamlError(f"{where}.RetriesUntilSuccess must be from 1 to 25")
        config["retry"] = {"max_attempts": attempts}
    return {"id": node_id, "type": node_type, "name": name, "config": config}


def import_kwala_yaml(
    text: str, *, chains: Mapping[int, str] | None = None, signer: str = DEFAULT_SIGNER
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Translate a Kwala workflow YAML into (meta, graph). See docs/dag.md for the mapping.

    Kwala workflows do not name a key, so every `call` action is signed by the team's
    signer key named `signer`; publishing checks that the team has it.
    """
    doc = _load(text)
    if not isinstance(doc, dict):
        raise FlowYamlError("A Kwala workflow must be a mapping with Name, Trigger and Actions", line=1)
    unknown = sorted(set(doc) - _KWALA_TOP)
    if unknown:
        raise FlowYamlError(
            f"{unknown[0]} is not a Kwala workflow field this importer knows",
            line=_line_of(text, [unknown[0]]),
        )
    for key in ("Name", "Trigger", "Actions"):
        if _absent(doc.get(key)):
            raise FlowYamlError(f"{key} is required", line=1)
    trigger = doc["Trigger"]
    if not isinstance(trigger, dict):
        raise FlowYamlError("Trigger must be a mapping", line=_line_of(text, ["Trigger"]))
    unknown = sorted(set(trigger) - _KWALA_TRIGGER)
    if unknown:
        raise FlowYamlError(
            f"Trigger.{unknown[0]} is not a Kwala trigger field this importer knows",
            line=_line_of(text, ["Trigger", unknown[0]]),
        )
    actions = doc["Actions"]
    if not isinstance(actions, list) or not actions:
        raise FlowYamlError("Actions must be a non-empty list", line=_line_of(text, ["Actions"]))
    execution = doc.get("Execution") or {}
    if not isinstance(execution, dict) or set(execution) - {"Mode"}:
        raise FlowYamlError("Execution may only hold Mode", line=_line_of(text, ["Execution"]))
    mode = str(execution.get("Mode") or "sequential").strip().lower()
    if mode not in ("sequential", "parallel"):
        raise FlowYamlError(
            f"Execution.Mode: {mode!r} is not sequential or parallel",
            line=_line_of(text, ["Execution", "Mode"]),
        )

    def fail_at(path: list[Any], exc: FlowYamlError) -> FlowYamlError:
        return FlowYamlError(exc.message, line=_line_of(text, path))

    try:
        trigger_node, event = _kwala_trigger(trigger, chains)
    except FlowYamlError as exc:
        raise fail_at(["Trigger"], exc) from None
    trigger_node["position"] = {"x": 0, "y": 0}
    args = _EventArgs(event)
    taken = {"trigger", "status_join", "status_report"}
    action_nodes = []
    for index, action in enumerate(actions):
        name = action.get("Name") if isinstance(action, dict) else None
        node_id = _slug(str(name) if not _absent(name) else f"action_{index + 1}", taken)
        try:
            node = _kwala_action(index, action, node_id, args, chains, signer)
        except FlowYamlError as exc:
            raise fail_at(["Actions", index], exc) from None
        if mode == "sequential":
            node["position"] = {"x": 0, "y": 150 * (index + 1)}
        else:
            node["position"] = {"x": 260 * index, "y": 150}
        action_nodes.append(node)

    nodes = [trigger_node, *action_nodes]
    edges: list[dict[str, Any]] = []
    if mode == "sequential":
        previous = "trigger"
        for node in action_nodes:
            edges.append({"source": previous, "source_port": "out", "target": node["id"]})
            previous = node["id"]
    else:
        edges.extend({"source": "trigger", "source_port": "out", "target": n["id"]} for n in action_nodes)

    status_url = trigger.get("ActionStatusNotificationPOSTURL")
    if not _absent(status_url):
        last_y = max(n["position"]["y"] for n in nodes) + 150
        report = {
            "id": "status_report",
            "type": "http.request",
            "name": "Report action status",
            "position": {"x": 0, "y": last_y + (150 if mode == "parallel" else 0)},
            "config": {
                "method": "POST",
                "url": str(status_url).strip(),
                "body": {
                    "workflow": str(doc["Name"]),
                    "actions": [
                        {"name": n["name"], "status": "{{ steps." + n["id"] + ".status }}"}
                        for n in action_nodes
                    ],
                },
            },
        }
        if mode == "sequential":
            # A failure stops the chain and goes straight to the report.
            for node in action_nodes:
                edges.append({"source": node["id"], "source_port": "error", "target": "status_report"})
            edges.append({"source": action_nodes[-1]["id"], "source_port": "out", "target": "status_report"})
        else:
            join = {"id": "status_join", "type": "join", "name": "All actions settled", "config": {},
                    "position": {"x": 0, "y": last_y}}
            for node in action_nodes:
                for port in ("out", "error"):
                    edges.append({"source": node["id"], "source_port": port, "target": "status_join"})
            edges.append({"source": "status_join", "source_port": "out", "target": "status_report"})
            nodes.append(join)
        nodes.append(report)

    meta = {"name": str(doc["Name"]), "description": "Imported from a Kwala workflow"}
    return meta, {"nodes": nodes, "edges": edges}
