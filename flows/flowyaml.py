"""Flows as code: our own YAML format, and import of Kwala workflow YAML.

``export_yaml``/``import_yaml`` round-trip exactly (``import(export(x)) == x``),
so a flow can live in a repository and be reviewed as text. Only
``yaml.safe_load`` is used: a flow file never constructs Python objects.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from croniter import croniter
from eth_utils import is_address, to_checksum_address

from flows import abi as abi_lib
from flows.expressions import ExpressionError, references
from flows.graph import graph_validator
from flows.nodes.base import parse_duration

__all__ = [
    "DEFAULT_SIGNER",
    "FLOW_YAML_VERSION",
    "FlowYamlError",
    "KwalaImport",
    "export_yaml",
    "import_kwala_yaml",
    "import_yaml",
    "translate_kwala_yaml",
]

FLOW_YAML_VERSION = 1
DEFAULT_SIGNER = "DEFAULT_SIGNER"
_RESERVED = ("kwala_flow", "nodes", "edges")
_NODE_KEY_ORDER = ("id", "type", "name", "position", "config")
_EDGE_KEY_ORDER = ("id", "source", "source_port", "target")


class FlowYamlError(Exception):
    """What is wrong with a flow file; ``problems`` lists every (line, message) found."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        self.problems: list[tuple[int | None, str]] = [(line, message)]
        self.warnings: list[str] = []  # a Kwala import's warnings, to show with the problems
        super().__init__(f"Line {line}: {message}" if line else message)

    @classmethod
    def of(cls, problems: list[tuple[int | None, str]]) -> FlowYamlError:
        """One error for several problems; ``line`` is the first one's."""
        if len(problems) == 1:
            return cls(problems[0][1], line=problems[0][0])
        texts = [f"Line {line}: {message}" if line else message for line, message in problems]
        error = cls("\n".join(texts), line=problems[0][0])
        error.problems = list(problems)
        error.args = (f"{len(problems)} problems:\n" + "\n".join(f"  {t}" for t in texts),)
        return error


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
#
# Every field of Kwala's documented format (kwala.network/docs: YAML workflow
# basics, triggers, actions, price triggers) is accepted. `NA`, `N/A` and empty
# values mean absent. A field that maps becomes part of the graph; a field with
# a value and no equivalent here becomes a warning naming it; what makes the
# workflow impossible to build is a problem. Every problem of a file is
# reported at once, each with its line.

_KWALA_TOP = ("Name", "Trigger", "Actions", "Execution")
_KWALA_TRIGGER = (
    "TriggerSourceContract", "TriggerChainID", "TriggerEventName", "TriggerEventFilter",
    "TriggerSourceContractABI", "TriggerPrice",
    "RecurringSourceContract", "RecurringChainID", "RecurringEventName", "RecurringEventFilter",
    "RecurringSourceContractABI", "RecurringPrice",
    "RepeatEvery", "ExecuteAfter", "ExpiresIn", "Meta",
    "ActionStatusNotificationPOSTURL", "ActionStatusNotificationAPIKey",
)
_KWALA_ACTION = (
    "Name", "Type", "APIEndpoint", "APIPayload", "TargetContract", "TargetFunction", "TargetParams",
    "ChainID", "EncodedABI", "Bytecode", "EncodedGoContract", "InitializationArgs", "Metadata",
    "RetriesUntilSuccess",
)
_KWALA_EXECUTION = ("Mode",)
_ABSENT_TEXT = frozenset({"", "na", "n/a"})

_RE_EVENT = re.compile(r"re\.event\((\d+)\)")
_RE_EVENT_BRACED = re.compile(r"\{\{\s*re\.event\((\d+)\)\s*\}\}")
_FILTER_OP = re.compile(r"^(>=|<=|==|!=|>|<)\s*(.+)$", re.DOTALL)
_FILTER_OPS = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte", "==": "eq", "!=": "ne"}
_HEX_ADDRESS = re.compile(r"""(['"]?)\b(0x[0-9a-fA-F]{40})\b\1""")

# Kwala's status callback carries an API key; its header name is not documented.
STATUS_API_KEY_SECRET = "KWALA_STATUS_API_KEY"  # noqa: S105 (the secret's name, not its value)
STATUS_API_KEY_HEADER = "X-API-Key"

# A Kwala price trigger names a token in Kwala's dashboard and fires when the target
# price is within a band around the live price (0.5% for BTC in Kwala's table). Here it
# reads a Chainlink-style aggregator named by TriggerSourceContract.
PRICE_FEED_FUNCTION = "latestAnswer() view returns (int256)"
PRICE_FEED_DECIMALS = 8
PRICE_BAND = Decimal("0.005")

# Unix times before this are durations ("2592000" = 30 days from now), as Kwala reads them.
_FIRST_TIMESTAMP = 1_000_000_000


class _Invalid(Exception):
    """A value that cannot be used; the caller knows which field it was."""


@dataclass(frozen=True)
class KwalaImport:
    meta: dict[str, Any]
    graph: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _absent(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() in _ABSENT_TEXT
    if isinstance(value, list):
        return all(_absent(v) for v in value)
    if isinstance(value, dict):
        return all(_absent(v) for v in value.values())
    return False


def _dotted(path: list[Any]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


class _Report:
    """Problems and warnings of one file, each with the line of the field it names."""

    def __init__(self, text: str) -> None:
        try:
            self._root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (yaml.YAMLError, RecursionError):
            self._root = None
        self.problems: list[tuple[int | None, str]] = []
        self.warnings: list[tuple[int | None, str]] = []

    def line(self, path: list[Any]) -> int | None:
        # Keys match whatever their case: Kwala's own pages write both TriggerChainID and triggerChainID.
        node = self._root
        line = node.start_mark.line + 1 if node is not None else None
        for key in path:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if str(k.value).lower() == str(key).lower()), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                match = node.value[key]
            else:
                match = None
            if match is None:
                break
            node = match
            line = node.start_mark.line + 1
        return line

    def _entry(self, path: list[Any], message: str) -> tuple[int | None, str]:
        return self.line(path), f"{_dotted(path)}: {message}" if path else message

    def problem(self, path: list[Any], message: str) -> None:
        self.problems.append(self._entry(path, message))

    def warn(self, path: list[Any], message: str) -> None:
        self.warnings.append(self._entry(path, message))

    def raise_problems(self) -> None:
        if self.problems:
            error = FlowYamlError.of(sorted(self.problems, key=lambda p: p[0] or 0))
            error.warnings = self.warning_texts()
            raise error

    def warning_texts(self) -> list[str]:
        ordered = sorted(self.warnings, key=lambda w: w[0] or 0)
        return [f"Line {line}: {text}" if line else text for line, text in ordered]


class _Fields:
    """A Kwala section with its keys in Kwala's spelling; remembers which fields were used."""

    def __init__(self, raw: Mapping[Any, Any], known: tuple[str, ...], path: list[Any], report: _Report,
                 what: str) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.used: set[str] = set()
        spelling = {name.lower(): name for name in known}
        for key, value in raw.items():
            name = spelling.get(str(key).lower())
            if name is None:
                if not _absent(value):
                    report.warn([*path, str(key)], f"not a field of Kwala's {what} format; ignored")
                continue
            if name in self.values:
                report.problem([*path, str(key)], f"{name} is given twice")
                continue
            self.values[name] = value

    def get(self, name: str) -> Any:
        self.used.add(name)
        value = self.values.get(name)
        return None if _absent(value) else value

    def peek(self, name: str) -> Any:
        value = self.values.get(name)
        return None if _absent(value) else value

    def at(self, name: str) -> list[Any]:
        return [*self.path, name]

    def leftovers(self) -> list[str]:
        return [name for name, value in self.values.items() if name not in self.used and not _absent(value)]


def _int_value(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _Invalid(f"must be a whole number, got {value!r}")


def _address_value(value: Any) -> str:
    # YAML 1.1 reads an unquoted 0x... address as a hexadecimal integer: take it back.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**160:
        value = "0x" + format(value, "040x")
    if not isinstance(value, str) or not is_address(value.strip()):
        raise _Invalid(f"{value!r} is not an Ethereum address")
    return to_checksum_address(value.strip())


def _chain_value(value: Any, chains: Mapping[int, str] | None) -> int:
    chain_id = _int_value(value)
    if chains is not None and chain_id not in chains:
        raise _Invalid(f"chain {chain_id} is not configured on this server")
    return chain_id


def _time_value(value: Any) -> datetime:
    """A unix time or an ISO date-time (UTC when it names no zone)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, str) and value.strip().isdigit()
    ):
        return datetime.fromtimestamp(int(value), tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _Invalid(f"{value!r} is not a unix time or an ISO date-time")


def _read_abi(value: Any) -> list[dict[str, Any]]:
    """A pasted ABI: a YAML list, JSON text, or base64 of JSON text (what Kwala's dashboard writes)."""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith(("[", "{")):
            try:
                text = base64.b64decode("".join(text.split()), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise _Invalid("is neither a JSON ABI nor base64 of one") from None
        value = text
    try:
        return abi_lib.parse_abi_json(value)
    except abi_lib.AbiError as exc:
        raise _Invalid(str(exc)) from None


def _param_text(param: Mapping[str, Any], *, event: bool) -> str:
    type_str = param["type"]
    if type_str.startswith("tuple"):
        inner = ", ".join(_param_text(c, event=False) for c in param.get("components") or [])
        type_str = f"({inner}){type_str[len('tuple'):]}"
    words = [type_str]
    if event and param.get("indexed"):
        words.append("indexed")
    if param.get("name"):
        words.append(param["name"])
    return " ".join(words)


def _event_value(fragment: dict[str, Any]) -> Any:
    """The chain.event "event" value for an ABI fragment: signature text that keeps the
    names and `indexed` markers (readable in the editor), or the fragment itself."""
    text = f"{fragment['name']}({', '.join(_param_text(p, event=True) for p in fragment['inputs'])})"
    if fragment.get("anonymous"):
        text += " anonymous"
    try:
        again = abi_lib.parse_event_signature(text)
    except abi_lib.AbiError:
        again = None
    same = again is not None and abi_lib.event_topic0(again) == abi_lib.event_topic0(fragment) and [
        (p["name"], bool(p.get("indexed"))) for p in again["inputs"]
    ] == [(p.get("name") or "", bool(p.get("indexed"))) for p in fragment["inputs"]]
    return text if same else {"abi": [fragment], "name": abi_lib.signature_of(fragment)}


class _EventArgs:
    """Rewrites ``re.event(N)`` into an expression on the trigger's output."""

    def __init__(self, event: dict[str, Any] | None) -> None:
        self.inputs = event["inputs"] if event else None

    def expression(self, index: int) -> str:
        if self.inputs is None:
            raise _Invalid(f"re.event({index}) needs an event trigger")
        if index >= len(self.inputs):
            raise _Invalid(f"re.event({index}) but the event has {len(self.inputs)} arguments")
        name = self.inputs[index]["name"]
        return f"trigger.args.{name}" if name else f"trigger.args_list[{index}]"

    def rewrite(self, value: Any, path: list[Any], report: _Report) -> Any:
        if isinstance(value, str):
            def sub(match: re.Match[str]) -> str:
                try:
                    return "{{ " + self.expression(int(match.group(1))) + " }}"
                except _Invalid as exc:
                    report.problem(path, str(exc))
                    return match.group(0)

            # "{{re.event(0)}}" as some Kwala examples write it is the same as re.event(0).
            return _RE_EVENT.sub(sub, _RE_EVENT_BRACED.sub(lambda m: f"re.event({m.group(1)})", value))
        if isinstance(value, dict):
            return {str(k): self.rewrite(v, [*path, str(k)], report) for k, v in value.items()}
        if isinstance(value, list):
            return [self.rewrite(v, [*path, i], report) for i, v in enumerate(value)]
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


def _sentinel(value: Any) -> str | None:
    """ExecuteAfter/RepeatEvery keywords: event, immediate, oracle_price, address_tracking, block:N."""
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    if word in ("event", "immediate", "oracle_price", "address_tracking") or word.startswith("block:"):
        return word
    return None


class _Trigger:
    """Builds the trigger node from the Trigger section; records what it could not map."""

    def __init__(self, f: _Fields, report: _Report, chains: Mapping[int, str] | None, now: datetime) -> None:
        self.f, self.report, self.chains, self.now = f, report, chains, now
        self.args = _EventArgs(None)

    def build(self) -> dict[str, Any] | None:
        f = self.f
        repeat, execute_after = f.get("RepeatEvery"), f.get("ExecuteAfter")
        words = {_sentinel(repeat), _sentinel(execute_after)}
        if f.peek("TriggerEventName") is not None or f.peek("RecurringEventName") is not None:
            node = self._event(repeat, execute_after)
        elif f.peek("TriggerPrice") is not None or f.peek("RecurringPrice") is not None or "oracle_price" in words:
            node = self._price(repeat)
        elif "address_tracking" in words:
            node = self._address_tracking(
                "ExecuteAfter" if _sentinel(execute_after) == "address_tracking" else "RepeatEvery")
        else:
            node = self._schedule(repeat, execute_after)
        if node is not None:
            self._expiry(node)
        self._leftovers(node)
        return node

    # -- event --------------------------------------------------------------

    def _source(self, prefix: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """chain.event config and event fragment from the Trigger* or Recurring* fields."""
        f, report = self.f, self.report
        signature = str(f.get(f"{prefix}EventName")).strip()
        fragment: dict[str, Any] | None = None
        abi_field = f"{prefix}SourceContractABI"
        abi_value = f.get(abi_field)
        if abi_value is None and prefix == "Trigger" and self._recurring_is_trigger():
            # The same event: the Recurring* ABI is as good as the trigger's own.
            abi_field = "RecurringSourceContractABI"
            abi_value = f.get(abi_field)
        abi: list[dict[str, Any]] | None = None
        if abi_value is not None:
            try:
                abi = _read_abi(abi_value) or None  # "W10=" (an empty list) is Kwala's "no ABI"
            except _Invalid as exc:
                report.warn(f.at(abi_field), f"{exc}; the event is read from {prefix}EventName alone")
        parsed: dict[str, Any] | None = None
        parse_error = None
        try:
            parsed = abi_lib.parse_event_signature(signature)
        except abi_lib.AbiError as exc:
            parse_error = str(exc)
        if abi is not None:
            key = abi_lib.signature_of(parsed) if parsed is not None else signature
            try:
                fragment = abi_lib.find_fragment(abi, "event", key)
            except abi_lib.AbiError as exc:
                if parsed is None:
                    report.problem(f.at(f"{prefix}EventName"), str(exc))
                    return None
                report.warn(f.at(abi_field), f"{exc}; the event is read from {prefix}EventName alone")
        if fragment is None:
            if parsed is None:
                hint = "" if "(" in signature else (
                    f"; '{signature}' is only a name: give the full signature, e.g. "
                    "Transfer(address indexed from, address indexed to, uint256 value), "
                    f"or the contract's ABI in {prefix}SourceContractABI"
                )
                report.problem(f.at(f"{prefix}EventName"), f"{parse_error}{hint}")
                return None
            fragment = parsed
            if fragment["inputs"] and not any(p["indexed"] for p in fragment["inputs"]):
                report.warn(
                    f.at(f"{prefix}EventName"),
                    f"{signature} marks no argument `indexed` and no ABI was given: which arguments "
                    "are indexed is inferred from each log's topics; to be explicit, write the "
                    f"markers (e.g. {fragment['name']}(uint256 indexed id, ...)) or paste the ABI in "
                    f"{prefix}SourceContractABI",
                )
        if fragment.get("anonymous"):
            report.problem(f.at(f"{prefix}EventName"), f"{fragment['name']} is anonymous; events are "
                           "matched by their topic, which anonymous events do not have")
            return None
        # The signature as written when it is the source; an ABI's fragment as signature text.
        event_value = signature if fragment is parsed else _event_value(fragment)
        config: dict[str, Any] = {"chain": None, "addresses": [], "event": event_value}
        chain = f.get(f"{prefix}ChainID")
        if chain is None:
            report.problem(f.at(f"{prefix}ChainID"), "is required for an event trigger")
        else:
            try:
                config["chain"] = _chain_value(chain, self.chains)
            except _Invalid as exc:
                report.problem(f.at(f"{prefix}ChainID"), str(exc))
        contract = f.get(f"{prefix}SourceContract")
        if contract is not None:
            try:
                config["addresses"] = [_address_value(contract)]
            except _Invalid as exc:
                report.problem(f.at(f"{prefix}SourceContract"), str(exc))
        event_filter = f.get(f"{prefix}EventFilter")
        if event_filter is not None:
            self._filters(event_filter, fragment, config, f.at(f"{prefix}EventFilter"))
        return config, fragment

    def _event(self, repeat: Any, execute_after: Any) -> dict[str, Any] | None:
        f, report = self.f, self.report
        prefix = "Trigger" if f.peek("TriggerEventName") is not None else "Recurring"
        source = self._source(prefix)
        if prefix == "Trigger" and f.peek("RecurringEventName") is not None:
            self._recurring()
        elif prefix == "Recurring":
            # Trigger* fields that repeat the Recurring* ones (contract, chain) are the same source.
            for name in ("TriggerSourceContract", "TriggerChainID", "TriggerSourceContractABI", "TriggerEventFilter"):
                if _same_value(f.peek(name), f.peek(name.replace("Trigger", "Recurring", 1))):
                    f.used.add(name)
        if source is None:
            return None
        config, fragment = source
        self.args = _EventArgs(fragment)
        for name in ("TriggerPrice", "RecurringPrice"):
            if f.get(name) is not None:
                report.warn(f.at(name), "a flow has one trigger and this one starts on the event; "
                            "the price is not watched (import it as its own workflow)")
        word = _sentinel(repeat)
        if repeat is None:
            report.warn(f.at("RepeatEvery"), "is NA, so Kwala would run once; this flow runs on every "
                        "matching event (unpublish it after the first run to run once)")
        elif word != "event":
            report.warn(f.at("RepeatEvery"), f"{repeat!r} after an event has no equivalent: this flow runs "
                        "on every matching event (without TriggerEventName, RepeatEvery makes a schedule)")
        word = _sentinel(execute_after)
        if execute_after is not None and word not in ("event", "immediate"):
            if word is not None and word.startswith("block:"):
                try:
                    block = _int_value(word.removeprefix("block:"))
                except _Invalid as exc:
                    report.problem(f.at("ExecuteAfter"), str(exc))
                else:
                    self._add_condition(config, f"trigger.block_number >= {block}")
            else:
                report.warn(f.at("ExecuteAfter"), f"{execute_after!r}: the flow listens from publication "
                            "on (no delayed start for an event trigger); publish it when it should start")
        name = fragment["name"]
        return {"id": "trigger", "type": "chain.event", "name": f"{name} event", "config": config}

    _RECURRING = tuple(n for n in _KWALA_TRIGGER if n.startswith("Recurring") and n != "RecurringPrice")

    def _recurring_is_trigger(self) -> bool:
        """Kwala's Recurring* fields name the event that repeats the workflow; usually it
        is the Trigger* event, and then they add nothing (but perhaps an ABI)."""
        f = self.f
        return all(
            f.peek(n) is None or _same_value(f.peek(n), f.peek(n.replace("Recurring", "Trigger", 1)))
            for n in self._RECURRING if n != "RecurringSourceContractABI"
        )

    def _recurring(self) -> None:
        f = self.f
        f.used.update(self._RECURRING)
        if self._recurring_is_trigger():
            return
        listed = ", ".join(n for n in self._RECURRING if f.peek(n) is not None)
        self.report.warn(f.at("RecurringEventName"), f"a second event source ({listed}) has no equivalent "
                         "in one flow: this flow runs on the Trigger* event only; import the workflow again "
                         "with the Recurring* values as Trigger* values for the other source")

    def _filters(self, value: Any, fragment: dict[str, Any], config: dict[str, Any], path: list[Any]) -> None:
        report = self.report
        if isinstance(value, str):
            self._filter_expression(value, fragment, config, path)
            return
        if not isinstance(value, dict):
            report.problem(path, f"expected a mapping of argument to value, got {value!r}")
            return
        inputs = fragment["inputs"]
        by_name = {p["name"]: (i, p) for i, p in enumerate(inputs) if p["name"]}
        filters = []
        for key, raw in value.items():
            where = [*path, str(key)]
            match = _RE_EVENT.fullmatch(str(key).strip())
            position = int(match.group(1)) if match else key if isinstance(key, int) else None
            if position is not None:
                if position >= len(inputs):
                    report.problem(where, f"the event has {len(inputs)} arguments")
                    continue
                param = inputs[position]
                if not param["name"]:
                    report.problem(where, f"argument {position} has no name to filter on; name the "
                                   "arguments in the signature or paste the ABI")
                    continue
            elif str(key) in by_name:
                param = by_name[str(key)][1]
            else:
                names = ", ".join(by_name) or "the signature names none"
                report.problem(where, f"the event has no argument '{key}' ({names})")
                continue
            if _absent(raw):
                continue
            try:
                filters.extend(_filter_items(param, raw))
            except _Invalid as exc:
                report.problem(where, str(exc))
        if filters:
            config["filters"] = filters

    def _filter_expression(self, text: str, fragment: dict[str, Any], config: dict[str, Any],
                           path: list[Any]) -> None:
        """Kwala's filter expressions (``re.event(2) > 500 && re.event(0) == 0x...``) -> a condition."""
        args = _EventArgs(fragment)
        try:
            expr = _RE_EVENT.sub(lambda m: args.expression(int(m.group(1))), text)
        except _Invalid as exc:
            self.report.problem(path, str(exc))
            return
        expr = expr.replace("&&", " and ").replace("||", " or ")
        expr = re.sub(r"!(?!=)", " not ", expr)
        # Addresses compare as checksummed text, the way the trigger gives them.
        expr = _HEX_ADDRESS.sub(lambda m: f'"{to_checksum_address(m.group(2))}"', expr)
        expr = " ".join(expr.split())
        try:
            roots = {ref[0] for ref in references(expr, template=False)}
        except ExpressionError as exc:
            self.report.problem(path, f"{text!r} cannot be read as a condition: {exc}")
            return
        unknown = sorted(roots - {"trigger", "now", "flow"})
        if unknown:
            self.report.problem(path, f"{text!r} uses {', '.join(unknown)}: refer to the event's arguments "
                                "as re.event(N), or give a mapping {argument: value}")
            return
        self._add_condition(config, expr)

    @staticmethod
    def _add_condition(config: dict[str, Any], expr: str) -> None:
        config["condition"] = f"({config['condition']}) and ({expr})" if config.get("condition") else expr

    # -- price --------------------------------------------------------------

    def _price(self, repeat: Any) -> dict[str, Any] | None:
        f, report = self.f, self.report
        name = "TriggerPrice" if f.peek("TriggerPrice") is not None else "RecurringPrice"
        raw = f.get(name)
        other = f.get("RecurringPrice" if name == "TriggerPrice" else "TriggerPrice")
        if raw is None:
            report.problem(f.at("TriggerPrice"), "ExecuteAfter/RepeatEvery say oracle_price but no price is given")
            return None
        price = _price_value(raw)
        if price is None:
            report.problem(f.at(name), f"{raw!r} is not a price")
            return None
        if other is not None and _price_value(other) != price:
            report.warn(f.at("RecurringPrice"), f"{other!r} differs from {name} {raw!r}: the flow watches "
                        f"{name} only")
        feed_field = "TriggerSourceContract" if f.peek("TriggerSourceContract") is not None else "RecurringSourceContract"
        chain_field = "TriggerChainID" if f.peek("TriggerChainID") is not None else "RecurringChainID"
        feed, chain = f.get(feed_field), f.get(chain_field)
        for twin, value in (("RecurringSourceContract", feed), ("RecurringChainID", chain)):
            if _same_value(f.peek(twin), value):
                f.used.add(twin)  # the same feed, named twice
        if feed is None or chain is None:
            report.problem(
                f.at(name),
                "Kwala chooses the token's price feed in its dashboard and the file does not say which: give "
                "the feed's address (a Chainlink-style aggregator with latestAnswer()) in "
                "TriggerSourceContract and its chain in TriggerChainID",
            )
            return None
        config: dict[str, Any] = {"function": PRICE_FEED_FUNCTION, "args": [], "every": 1}
        for key, field_name, value, read in (("chain", chain_field, chain, lambda v: _chain_value(v, self.chains)),
                                             ("address", feed_field, feed, _address_value)):
            try:
                config[key] = read(value)
            except _Invalid as exc:
                report.problem(f.at(field_name), str(exc))
        if "chain" not in config or "address" not in config:
            return None
        scale = Decimal(10) ** PRICE_FEED_DECIMALS
        # Kwala fires when the target is within the band around the live price, i.e. when
        # target/(1+band) <= live <= target/(1-band).
        low = math.ceil(price * scale / (1 + PRICE_BAND))
        high = math.floor(price * scale / (1 - PRICE_BAND))
        config["condition"] = f"result >= {low} and result <= {high}"
        band = f"{low / scale:.6g}–{high / scale:.6g}"
        report.warn(
            f.at(name),
            f"{raw} maps to reading latestAnswer() of {config['address']} every block: the flow runs when "
            f"the price enters {band} (Kwala's ±{(PRICE_BAND * 100).normalize()}% band), assuming the feed has "
            f"{PRICE_FEED_DECIMALS} decimals like Chainlink's USD feeds; edit the trigger's condition if not",
        )
        if _sentinel(repeat) != "oracle_price":
            report.warn(f.at("RepeatEvery"), "Kwala would run once; this flow runs each time the price "
                        "comes back into the band")
        return {"id": "trigger", "type": "chain.state", "name": f"Price near {raw}", "config": config}

    def _address_tracking(self, word_field: str) -> dict[str, Any] | None:
        """`address_tracking`: a chain.transaction trigger on the transactions sent to TriggerSourceContract."""
        f, report = self.f, self.report
        address, chain = f.get("TriggerSourceContract"), f.get("TriggerChainID")
        if address is None or chain is None:
            report.problem(f.at(word_field), "address tracking needs the address in TriggerSourceContract and its "
                                             "chain in TriggerChainID")
            return None
        config: dict[str, Any] = {"status": "any"}
        for key, field_name, value, read in (
                ("chain", "TriggerChainID", chain, lambda v: _chain_value(v, self.chains)),
                ("to", "TriggerSourceContract", address, lambda v: [_address_value(v)])):
            try:
                config[key] = read(value)
            except _Invalid as exc:
                report.problem(f.at(field_name), str(exc))
        if "chain" not in config or "to" not in config:
            return None
        report.warn(f.at(word_field), f"address tracking maps to a transaction trigger on every transaction sent to "
                                      f"{config['to'][0]}, succeeded or failed; transactions it sends are a second "
                                      "flow (a transaction trigger with From set)")
        return {"id": "trigger", "type": "chain.transaction", "name": "Transaction to the address", "config": config}

    # -- time ---------------------------------------------------------------

    def _schedule(self, repeat: Any, execute_after: Any) -> dict[str, Any] | None:
        f, report = self.f, self.report
        config: dict[str, Any] = {}
        word = _sentinel(repeat)
        if word == "event":
            report.warn(f.at("RepeatEvery"), "'event' but no TriggerEventName: there is no event to repeat on, "
                        "so the workflow runs once")
        elif repeat is not None:
            text = str(repeat).strip()
            try:
                config["interval"] = parse_duration(repeat)
            except (ValueError, TypeError):
                if croniter.is_valid(text) and len(text.split()) == 5:
                    config["cron"] = text
                else:
                    report.problem(f.at("RepeatEvery"), f"{repeat!r} is not 'event', an interval (seconds, 5m, "
                                   "1h) or a cron expression")
                    return None
        word = _sentinel(execute_after)
        start: datetime | None = None
        if word is not None and word.startswith("block:"):
            if config:
                report.warn(f.at("ExecuteAfter"), f"{execute_after!r}: a start at a block has no equivalent "
                            "for a schedule; it starts at publication")
            else:
                report.problem(f.at("ExecuteAfter"), f"{execute_after!r}: running at a block number has no "
                               "equivalent here; give a time (unix or ISO) instead")
                return None
        elif execute_after is not None and word not in ("event", "immediate"):
            try:
                start = _time_value(execute_after)
            except _Invalid as exc:
                report.problem(f.at("ExecuteAfter"), str(exc))
                return None
        elif "cron" not in config:
            # "immediate": as soon as it is published, then every interval.
            start = self.now.replace(microsecond=0)
        if start is not None:
            config["start_at"] = start.isoformat()
        if "interval" in config or "cron" in config:
            return {"id": "trigger", "type": "schedule", "name": "Schedule", "config": config}
        return {"id": "trigger", "type": "schedule", "name": "Run once", "config": config}

    def _expiry(self, node: dict[str, Any]) -> None:
        f, report = self.f, self.report
        raw = f.get("ExpiresIn")
        if raw is None:
            return
        try:
            seconds = _int_value(raw)
        except _Invalid:
            seconds = None
        try:
            if seconds is not None and seconds < _FIRST_TIMESTAMP:
                expire = self.now.replace(microsecond=0) + timedelta(seconds=seconds)
                report.warn(f.at("ExpiresIn"), f"{raw} is read as a duration: the flow stops at "
                            f"{expire.isoformat()}")
            else:
                expire = _time_value(raw)
        except _Invalid as exc:
            report.problem(f.at("ExpiresIn"), str(exc))
            return
        if expire <= self.now:
            report.warn(f.at("ExpiresIn"), f"{expire.isoformat()} has passed: the flow will never run")
        if node["type"] == "chain.state":
            report.warn(f.at("ExpiresIn"), f"a price trigger cannot expire here; unpublish the flow at "
                        f"{expire.isoformat()}")
            return
        node["config"]["expire_at"] = expire.isoformat()

    def _leftovers(self, node: dict[str, Any] | None) -> None:
        f = self.f
        f.used.update({"Meta", "ActionStatusNotificationPOSTURL", "ActionStatusNotificationAPIKey"})
        for name in f.leftovers():
            kind = f"this workflow's {node['type']}" if node else "this workflow's"
            self.report.warn(f.at(name), f"is not used by {kind} trigger; ignored")


def _price_value(value: Any) -> Decimal | None:
    try:
        price = Decimal(str(value).strip().lstrip("$"))
    except InvalidOperation:
        return None
    return price if price.is_finite() and price > 0 else None


def _same_value(a: Any, b: Any) -> bool:
    """Equal as Kwala means them: addresses in any case, signatures with any spacing."""

    def norm(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 2**32:
            return "0x" + format(value, "040x")  # an unquoted address
        if isinstance(value, (int, dict, list)) or value is None:
            return value
        return "".join(str(value).split()).lower()

    return norm(a) == norm(b)


def _filter_items(param: Mapping[str, Any], raw: Any) -> list[dict[str, Any]]:
    """Kwala filter values -> chain.event filters: ``"0x.."`` (equal), ``">1000"``, ``"<=5"``,
    ``">=1,<=9"`` (a range) and a list (any of)."""
    type_str = abi_lib.canonical_type(param)
    numeric = type_str.startswith(("uint", "int"))
    arg = param["name"]
    if isinstance(raw, list):
        return [{"arg": arg, "op": "in", "value": [_filter_value(type_str, v) for v in raw]}]
    if isinstance(raw, str):
        parts = [p.strip() for p in raw.split(",")] if numeric else [raw.strip()]
        out = []
        for part in parts:
            match = _FILTER_OP.match(part)
            if match is None:
                if len(parts) > 1:
                    raise _Invalid(f"{raw!r}: each part of a range needs an operator (>=1,<=9)")
                return [{"arg": arg, "op": "eq", "value": _filter_value(type_str, raw)}]
            op = _FILTER_OPS[match.group(1)]
            if op not in ("eq", "ne") and not numeric:
                raise _Invalid(f"{raw!r}: '{match.group(1)}' only compares numbers, not {type_str}")
            out.append({"arg": arg, "op": op, "value": _filter_value(type_str, match.group(2).strip())})
        return out
    return [{"arg": arg, "op": "eq", "value": _filter_value(type_str, raw)}]


def _filter_value(type_str: str, value: Any) -> Any:
    if type_str == "address":
        return _address_value(value)
    if isinstance(value, str):
        text = value.strip().strip("'\"")
        if type_str.startswith(("uint", "int")) and re.fullmatch(r"-?\d+", text):
            return int(text)
        if type_str == "bool" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        return text
    return value


def _kwala_action(
    index: int,
    f: _Fields,
    node_id: str,
    args: _EventArgs,
    chains: Mapping[int, str] | None,
    signer: str,
    report: _Report,
) -> dict[str, Any] | None:
    """The node for one action, or None when it is left out (deploy) or broken (a problem)."""
    kind_raw = f.get("Type")
    kind = str(kind_raw or "").strip().lower()
    name = str(f.get("Name") or f"Action {index + 1}")
    config: dict[str, Any]
    f.used.add("Metadata")
    if f.peek("Metadata") is not None:
        report.warn(f.at("Metadata"), "a note only; there is no place for it on a step, so it is left out")
    if kind in ("post", "api"):
        url = f.get("APIEndpoint")
        payload = f.get("APIPayload")
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError:
                pass  # sent as text
        body = args.rewrite(payload, f.at("APIPayload"), report) if payload is not None else None
        if not isinstance(url, str):
            report.problem(f.at("APIEndpoint"), f"is required for a '{kind}' action")
            return None
        config = {"method": "POST", "url": args.rewrite(url.strip(), f.at("APIEndpoint"), report)}
        if body is not None:
            config["body"] = body
        node_type = "http.request"
        unused = "only for 'call' and 'deploy' actions"
    elif kind == "call":
        node_type = "contract.write"
        config = _call_config(f, args, chains, signer, report)
        if config is None:
            return None
        unused = "only for 'post' and 'deploy' actions"
    elif kind == "deploy":
        # No step deploys contracts, and no Kwala action can read another's result, so
        # leaving it out keeps the rest of the workflow working as written.
        report.warn(f.at("Type"), f"'{name}' deploys a contract, which has no equivalent here: the action is "
                    "left out; deploy the contract yourself (its Bytecode and InitializationArgs are in the file)")
        f.used.update(_KWALA_ACTION)
        return None
    else:
        report.problem(f.at("Type"), f"{kind_raw!r} is not supported (use call, post or deploy)")
        return None
    retries = f.get("RetriesUntilSuccess")
    if retries is not None:
        try:
            extra = _int_value(retries)
        except _Invalid as exc:
            report.problem(f.at("RetriesUntilSuccess"), str(exc))
        else:
            # Kwala tries once and then retries N times; max_attempts counts every try.
            attempts = extra + 1
            if attempts > 25:
                report.warn(f.at("RetriesUntilSuccess"), f"{extra} retries is more than the 24 allowed here; "
                            "the step is tried 25 times")
                attempts = 25
            if attempts > 1:
                config["retry"] = {"max_attempts": attempts}
    for left in f.leftovers():
        message = unused if left in ("TargetContract", "TargetFunction", "TargetParams", "ChainID", "APIEndpoint",
                                     "APIPayload", "Bytecode", "EncodedGoContract", "InitializationArgs") else None
        report.warn(f.at(left), f"{message or 'has no use here'}; ignored")
    return {"id": node_id, "type": node_type, "name": name, "config": config}


def _call_config(
    f: _Fields, args: _EventArgs, chains: Mapping[int, str] | None, signer: str, report: _Report
) -> dict[str, Any] | None:
    ok = True
    signature = f.get("TargetFunction")
    encoded = f.get("EncodedABI")
    function: dict[str, Any] | None = None
    function_value: Any = None
    if signature is None:
        report.problem(f.at("TargetFunction"), "is required for a 'call' action")
        ok = False
    else:
        text = str(signature).strip()
        try:
            function = abi_lib.parse_function_signature(text)
            function_value = text
            if encoded is not None:
                report.warn(f.at("EncodedABI"), "ignored: the call is encoded from TargetFunction and TargetParams")
        except abi_lib.AbiError as exc:
            # A bare name ("transfer") can be found in an ABI given in EncodedABI.
            try:
                if encoded is None:
                    raise _Invalid(str(exc))
                function = abi_lib.find_fragment(_read_abi(encoded), "function", text.removeprefix("function "))
                function_value = {"abi": [function], "name": abi_lib.signature_of(function)}
            except (_Invalid, abi_lib.AbiError) as inner:
                hint = "" if "(" in text else (
                    f"; '{text}' is only a name: give the full signature, e.g. function transfer(address to, "
                    "uint256 amount)"
                )
                report.problem(f.at("TargetFunction"), f"{inner}{hint}")
                ok = False
    params = f.get("TargetParams") or []
    if not isinstance(params, list):
        report.problem(f.at("TargetParams"), "must be a list")
        ok = False
    elif function is not None and len(params) != len(function["inputs"]):
        report.problem(f.at("TargetParams"), f"{function['name']} takes {len(function['inputs'])} arguments, "
                       f"got {len(params)}")
        ok = False
    config: dict[str, Any] = {}
    for name, key, read in (("ChainID", "chain", lambda v: _chain_value(v, chains)),
                            ("TargetContract", "address", _address_value)):
        value = f.get(name)
        if value is None:
            report.problem(f.at(name), "is required for a 'call' action")
            ok = False
            continue
        try:
            config[key] = read(value)
        except _Invalid as exc:
            report.problem(f.at(name), str(exc))
            ok = False
    call_args = args.rewrite(params, f.at("TargetParams"), report) if isinstance(params, list) else []
    if not ok:
        return None
    return {
        "chain": config["chain"],
        "address": config["address"],
        "function": function_value,
        "args": call_args,
        "signer": signer,
    }


def translate_kwala_yaml(
    text: str,
    *,
    chains: Mapping[int, str] | None = None,
    signer: str = DEFAULT_SIGNER,
    now: datetime | None = None,
) -> KwalaImport:
    """Translate a Kwala workflow YAML into a flow: meta, graph and the warnings about what
    does not map. See docs/dag.md for the mapping.

    Raises FlowYamlError listing every problem of the file. Kwala workflows do not name a
    key, so every `call` action is signed by the team's signer key named `signer`;
    publishing checks that the team has it. `now` is when "immediately" and durations start.
    """
    now = now or datetime.now(UTC)
    doc = _load(text)
    if not isinstance(doc, dict):
        raise FlowYamlError("A Kwala workflow must be a mapping with Name, Trigger and Actions", line=1)
    report = _Report(text)
    top = _Fields(doc, _KWALA_TOP, [], report, "workflow")
    name = top.get("Name")
    if name is None:
        report.problem(["Name"], "is required")

    trigger_node: dict[str, Any] | None = None
    args = _EventArgs(None)
    status_url = status_key = None
    description = "Imported from a Kwala workflow"
    trigger_raw = top.get("Trigger")
    if not isinstance(trigger_raw, dict):
        report.problem(["Trigger"], "is required, as a mapping of trigger fields")
    else:
        trigger_fields = _Fields(trigger_raw, _KWALA_TRIGGER, ["Trigger"], report, "trigger")
        builder = _Trigger(trigger_fields, report, chains, now)
        trigger_node = builder.build()
        args = builder.args
        meta_note = trigger_fields.get("Meta")
        if meta_note is not None:
            note = meta_note if isinstance(meta_note, str) else json.dumps(meta_note)
            description = f"{description}. Meta: {note}"
        status_url = trigger_fields.get("ActionStatusNotificationPOSTURL")
        status_key = trigger_fields.get("ActionStatusNotificationAPIKey")
        if status_key is not None and status_url is None:
            report.warn(["Trigger", "ActionStatusNotificationAPIKey"], "there is no "
                        "ActionStatusNotificationPOSTURL to send it to; ignored")

    execution_raw = top.get("Execution") or {}
    mode = "sequential"
    if not isinstance(execution_raw, dict):
        report.problem(["Execution"], "must be a mapping with Mode")
    else:
        execution = _Fields(execution_raw, _KWALA_EXECUTION, ["Execution"], report, "execution")
        mode = str(execution.get("Mode") or "sequential").strip().lower()
        if mode not in ("sequential", "parallel"):
            report.problem(["Execution", "Mode"], f"{mode!r} is not sequential or parallel")
            mode = "sequential"

    actions = top.get("Actions")
    action_nodes: list[dict[str, Any]] = []
    if not isinstance(actions, list) or not actions:
        report.problem(["Actions"], "must be a non-empty list")
        actions = []
    taken = {"trigger", "status_join", "status_report"}
    for index, action in enumerate(actions):
        if not isinstance(action, dict):
            report.problem(["Actions", index], "must be a mapping of action fields")
            continue
        fields = _Fields(action, _KWALA_ACTION, ["Actions", index], report, "action")
        action_name = fields.peek("Name")
        node_id = _slug(str(action_name) if action_name is not None else f"action_{index + 1}", taken)
        node = _kwala_action(index, fields, node_id, args, chains, signer, report)
        if node is not None:
            action_nodes.append(node)
    if actions and not action_nodes and not report.problems:
        report.problem(["Actions"], "no action is left to run once the ones with no equivalent are left out")
    report.raise_problems()
    assert trigger_node is not None

    for position, node in enumerate(action_nodes):
        if mode == "sequential":
            node["position"] = {"x": 0, "y": 150 * (position + 1)}
        else:
            node["position"] = {"x": 260 * position, "y": 150}
    trigger_node["position"] = {"x": 0, "y": 0}
    nodes = [trigger_node, *action_nodes]
    edges: list[dict[str, Any]] = []
    if mode == "sequential":
        previous = "trigger"
        for node in action_nodes:
            edges.append({"source": previous, "source_port": "out", "target": node["id"]})
            previous = node["id"]
    else:
        edges.extend({"source": "trigger", "source_port": "out", "target": n["id"]} for n in action_nodes)

    if status_url is not None:
        last_y = max(n["position"]["y"] for n in nodes) + 150
        report_config: dict[str, Any] = {
            "method": "POST",
            "url": str(status_url).strip(),
            "body": {
                "workflow": str(name),
                "actions": [
                    {"name": n["name"], "status": "{{ steps." + n["id"] + ".status }}"} for n in action_nodes
                ],
            },
        }
        if status_key is not None:
            # Never the key itself: a graph is readable by the whole team and kept in every version.
            report_config["headers"] = {STATUS_API_KEY_HEADER: "{{ secrets." + STATUS_API_KEY_SECRET + " }}"}
            report.warn(["Trigger", "ActionStatusNotificationAPIKey"], (
                f"sent as the {STATUS_API_KEY_HEADER} header from the team secret {STATUS_API_KEY_SECRET}; the key "
                "in the file is not copied into the flow: create that secret with it before publishing"
            ))
        status_node = {
            "id": "status_report",
            "type": "http.request",
            "name": "Report action status",
            "position": {"x": 0, "y": last_y + (150 if mode == "parallel" else 0)},
            "config": report_config,
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
        nodes.append(status_node)

    meta = {"name": str(name), "description": description}
    return KwalaImport(meta, {"nodes": nodes, "edges": edges}, report.warning_texts())


def import_kwala_yaml(
    text: str, *, chains: Mapping[int, str] | None = None, signer: str = DEFAULT_SIGNER
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, graph) of a Kwala workflow, without its warnings; callers that can show them
    use translate_kwala_yaml."""
    result = translate_kwala_yaml(text, chains=chains, signer=signer)
    return result.meta, result.graph
