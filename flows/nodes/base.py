"""What every node type declares: its fields, ports, output shape and checks.

A node type is a plain class instance listed in ``flows.nodes.NODE_TYPES``.
Field specs are neutral (no Django forms) so the editor can render them from
JSON and the compiler can check them without a database.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from eth_utils import is_address, to_checksum_address

from flows import abi as abi_lib
from flows.expressions import (
    ExpressionError,
    parse_expression,
    parse_template,
    template_leaves,
)

FIELD_KINDS = frozenset(
    {
        "text", "int", "bool", "choice", "address", "addresses", "chain", "expression",
        "template", "url", "duration", "cron", "timezone", "datetime", "abi_event",
        "abi_function", "json", "template_value", "headers", "secret_ref", "signer", "list",
        "int_list", "emails", "retry",
    }
)
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DURATION_PART = re.compile(r"(\d+)\s*([smhd])")
_DURATION = re.compile(r"^\s*(?:\d+\s*[smhd]\s*)+$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Problems = list[tuple[str, str]]

# How a node is drawn: the editor and run page (static/js/canvas.js, from each catalogue entry's
# "look") and the server previews (flows/editor/graph_svg.py) read these, so they cannot drift apart.
NODE_WIDTH = 210
NODE_HEADER = 44  # a node with one output port is this tall
PORT_ROW = 20  # each further output port adds this
CATEGORY_COLOURS = {"trigger": "#7c3aed", "logic": "#0369a1", "action": "#047857"}


def node_height(output_count: int) -> int:
    return NODE_HEADER + ((output_count - 1) * PORT_ROW + 8 if output_count > 1 else 0)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    label: str
    kind: str
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    item_fields: tuple[FieldSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"Unknown field kind {self.kind!r}")

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "label": self.label,
            "kind": self.kind,
            "required": self.required,
            "default": self.default,
            "help": self.help,
        }
        if self.choices:
            data["choices"] = list(self.choices)
        if self.min is not None:
            data["min"] = self.min
        if self.max is not None:
            data["max"] = self.max
        if self.item_fields:
            data["item_fields"] = [f.as_dict() for f in self.item_fields]
        return data


@dataclass(frozen=True)
class ValidationContext:
    """What the compiler knows about the world: configured chains, secret names and signer key names.

    ``None`` means "unknown, skip that check" (e.g. when importing a file).
    """

    chains: Mapping[int, str] | None = None
    secret_names: Collection[str] | None = None
    signer_names: Collection[str] | None = None


@dataclass(frozen=True)
class ExpressionUse:
    """One expression or template inside a node's config, for the reference check."""

    field: str
    label: str
    source: str
    template: bool


def parse_duration(value: Any) -> int:
    """``90`` / ``"90s"`` / ``"5m"`` / ``"1h30m"`` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise TypeError("not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative duration")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        if _DURATION.match(text):
            return sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    raise ValueError("not a duration")


def parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("not a datetime")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@lru_cache(maxsize=8192)
def _checksummed(value: str) -> str | None:
    # keccak per address is the compiler's hottest call; flows reuse few addresses.
    return to_checksum_address(value) if is_address(value) else None


def check_address(label: str, value: Any) -> str | None:
    """The message for a bad address, or None. Only EIP-55 checksummed text passes."""
    checksummed = _checksummed(value) if isinstance(value, str) else None
    if checksummed is None:
        return f"{label}: {value!r} is not an Ethereum address"
    if checksummed != value:
        return f"{label}: {value} is not checksummed (EIP-55); did you mean {checksummed}?"
    return None


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_field(spec: FieldSpec, value: Any, ctx: ValidationContext, path: str) -> Problems:
    """Check one value against its spec; an absent optional value is fine."""
    label = spec.label
    if _is_empty(value) or (spec.kind in ("addresses", "list", "emails") and value == []):
        if spec.required and not (spec.kind == "addresses" and value == []):
            return [(path, f"{label} is required")]
        return []
    kind = spec.kind
    problems: Problems = []

    def bad(message: str) -> Problems:
        return [(path, message)]

    if kind == "text":
        if not isinstance(value, str):
            return bad(f"{label} must be text")
    elif kind == "int":
        if not is_int(value):
            return bad(f"{label} must be a whole number")
        if spec.min is not None and value < spec.min:
            return bad(f"{label} must be at least {spec.min}")
        if spec.max is not None and value > spec.max:
            return bad(f"{label} must be at most {spec.max}")
    elif kind == "bool":
        if not isinstance(value, bool):
            return bad(f"{label} must be true or false")
    elif kind == "choice":
        if value not in spec.choices:
            return bad(f"{label} must be one of: {', '.join(spec.choices)}")
    elif kind == "address":
        message = check_address(label, value)
        if message:
            return bad(message)
    elif kind == "addresses":
        if not isinstance(value, list):
            return bad(f"{label} must be a list of addresses")
        seen: set[str] = set()
        for index, item in enumerate(value):
            message = check_address(label, item)
            if message:
                problems.append((f"{path}.{index}", message))
            elif item in seen:
                problems.append((f"{path}.{index}", f"{label}: {item} is listed twice"))
            else:
                seen.add(item)
    elif kind == "chain":
        if not is_int(value) or value <= 0:
            return bad(f"{label} must be a chain id (a positive whole number)")
        if ctx.chains is not None and value not in ctx.chains:
            return bad(f"Chain {value} is not configured on this server")
    elif kind in ("expression", "template", "url"):
        if not isinstance(value, str):
            return bad(f"{label} must be text")
        try:
            (parse_expression if kind == "expression" else parse_template)(value)
        except ExpressionError as exc:
            return bad(f"{label}: {exc.message}")
        if kind == "url" and "{{" not in value.split("//", 1)[0] and not value.startswith(
            ("http://", "https://", "{{")
        ):
            return bad(f"{label} must start with http:// or https://")
    elif kind == "template_value":
        for leaf_path, text in template_leaves(value):
            try:
                parse_template(text)
            except ExpressionError as exc:
                where = f"{path}.{leaf_path}" if leaf_path else path
                problems.append((where, f"{label}: {exc.message}"))
    elif kind == "headers":
        if not isinstance(value, dict):
            return bad(f"{label} must be a mapping of header name to value")
        for name, text in value.items():
            if not _HEADER_NAME.match(str(name)):
                problems.append((f"{path}.{name}", f"{label}: '{name}' is not a valid header name"))
            elif not isinstance(text, str):
                problems.append((f"{path}.{name}", f"{label}: the value of '{name}' must be text"))
            else:
                try:
                    parse_template(text)
                except ExpressionError as exc:
                    problems.append((f"{path}.{name}", f"{label}: {exc.message}"))
    elif kind == "duration":
        try:
            seconds = parse_duration(value)
        except (ValueError, TypeError):
            return bad(f"{label} must be seconds or a duration like 30s, 5m, 1h")
        if spec.min is not None and seconds < spec.min:
            return bad(f"{label} must be at least {spec.min} seconds")
        if spec.max is not None and seconds > spec.max:
            return bad(f"{label} must be at most {spec.max} seconds")
    elif kind == "cron":
        if not isinstance(value, str) or not croniter.is_valid(value):
            return bad(f"{label}: {value!r} is not a valid cron expression")
    elif kind == "timezone":
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            return bad(f"{label}: {value!r} is not a known time zone (e.g. Europe/Paris)")
    elif kind == "datetime":
        try:
            parse_datetime(value)
        except (ValueError, TypeError):
            return bad(f"{label} must be an ISO date and time with a time zone, e.g. 2025-01-31T09:00:00Z")
    elif kind in ("abi_event", "abi_function"):
        try:
            (abi_lib.resolve_event if kind == "abi_event" else abi_lib.resolve_function)(value)
        except abi_lib.AbiError as exc:
            return bad(f"{label}: {exc}")
    elif kind == "secret_ref":
        if not isinstance(value, str) or not _SECRET_NAME.match(value):
            return bad(f"{label} must be a secret name (letters, digits and _)")
        if ctx.secret_names is not None and value not in ctx.secret_names:
            return bad(f"Secret '{value}' does not exist")
    elif kind == "signer":
        if not isinstance(value, str) or not _SECRET_NAME.match(value):
            return bad(f"{label} must be a signer key name (letters, digits and _)")
        if ctx.signer_names is not None and value not in ctx.signer_names:
            return bad(f"Signer key '{value}' does not exist")
    elif kind == "list":
        if not isinstance(value, list):
            return bad(f"{label} must be a list")
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                problems.append((f"{path}.{index}", f"{label}: item {index + 1} must be an object"))
                continue
            for sub in spec.item_fields:
                problems.extend(check_field(sub, item.get(sub.name), ctx, f"{path}.{index}.{sub.name}"))
            for extra in sorted(set(item) - {s.name for s in spec.item_fields}):
                problems.append((f"{path}.{index}.{extra}", f"{label}: unknown field '{extra}'"))
    elif kind == "int_list":
        if not isinstance(value, list) or not all(is_int(v) for v in value):
            return bad(f"{label} must be a list of whole numbers")
        for v in value:
            if (spec.min is not None and v < spec.min) or (spec.max is not None and v > spec.max):
                return bad(f"{label}: {v} is out of range {spec.min}-{spec.max}")
    elif kind == "emails":
        if not isinstance(value, list) or not value:
            return bad(f"{label} must be a list of email addresses")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not (_EMAIL.match(item) or "{{" in item):
                problems.append((f"{path}.{index}", f"{label}: {item!r} is not an email address"))
    elif kind == "retry":
        if not isinstance(value, dict) or set(value) - {"max_attempts", "backoff_seconds"}:
            return bad(f"{label} must be {{max_attempts, backoff_seconds}}")
        attempts = value.get("max_attempts", 1)
        if not is_int(attempts) or not 1 <= attempts <= 25:
            return bad(f"{label}: max_attempts must be a whole number from 1 to 25")
        backoff = value.get("backoff_seconds", 10)
        if not is_int(backoff) or not 0 <= backoff <= 86400:
            return bad(f"{label}: backoff_seconds must be from 0 to 86400")
    return problems


def normalize_field(spec: FieldSpec, value: Any) -> Any:
    """The canonical form of an already-valid value (defaults applied by the caller)."""
    if value is None:
        return None
    if spec.kind == "duration":
        return parse_duration(value)
    if spec.kind == "datetime":
        return parse_datetime(value).isoformat()
    if spec.kind == "retry":
        return {"max_attempts": value.get("max_attempts", 1), "backoff_seconds": value.get("backoff_seconds", 10)}
    if spec.kind == "list":
        return [
            {sub.name: normalize_field(sub, item.get(sub.name, sub.default)) for sub in spec.item_fields}
            for item in value
        ]
    return value


class NodeType:
    """Base for all node types. Subclasses set the class attributes and may
    override ``check`` (cross-field rules), ``output_ports`` and ``output_shape``."""

    key: str = ""
    category: str = ""  # trigger / logic / action
    label: str = ""
    description: str = ""
    fields: tuple[FieldSpec, ...] = ()
    input_ports: tuple[str, ...] = ("in",)
    static_output_ports: tuple[str, ...] = ("out",)
    # Output ports named by a list field of the config, before the static ones: (list field, key).
    # The browser derives the ports from this too, as the config is edited (see describe()).
    ports_from: tuple[str, str] | None = None
    side_effect: bool = False
    join: str = "any"
    # Side-effect-free logic that the engine runs in the transaction that made it ready,
    # with no message of its own (executor.runs.engine).
    inline: bool = False
    # How long a step of this type may legitimately take on top of the base lease: a step still
    # working when its lease runs out would be taken over and run twice.
    lease_extra_seconds: float = 0

    @property
    def secret_fields(self) -> tuple[str, ...]:
        """The fields that name a team secret (revealed to the step that runs, never shown)."""
        return tuple(spec.name for spec in self.fields if spec.kind == "secret_ref")

    def lease_seconds_extra(self, config: Mapping[str, Any]) -> float:
        """lease_extra_seconds, for this step's config."""
        return self.lease_extra_seconds

    def output_ports(self, config: Mapping[str, Any]) -> list[str]:
        if self.ports_from is None:
            return list(self.static_output_ports)
        field, key = self.ports_from
        items = config.get(field)
        names = [item.get(key) for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        return [n for n in names if isinstance(n, str) and n] + list(self.static_output_ports)

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Field name -> {"type", "description"} so the editor can offer a data picker."""
        return {}

    def local_names(self, field_path: str) -> frozenset[str]:
        """Extra names an expression in this field may use (e.g. ``result``)."""
        return frozenset()

    def field(self, name: str) -> FieldSpec:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def validate(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        """Every problem with ``config`` as (field path, message) pairs."""
        return self.check_config(config, ctx)[0]

    def check_config(
        self, config: Mapping[str, Any], ctx: ValidationContext
    ) -> tuple[Problems, dict[str, Any] | None]:
        """Problems, and the normalized config when there are none (the compiler
        keeps it rather than normalizing twice)."""
        problems: Problems = []
        known = {spec.name for spec in self.fields}
        for extra in sorted(set(config) - known):
            problems.append((extra, f"Unknown setting '{extra}'"))
        for spec in self.fields:
            problems.extend(check_field(spec, config.get(spec.name), ctx, spec.name))
        if problems:
            return problems, None
        normalized = self.normalize(config)
        problems = self.check(normalized, ctx)
        return problems, None if problems else normalized

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        """Cross-field rules, run on the normalized config once every field is valid."""
        return []

    def notes(self, config: Mapping[str, Any]) -> Problems:
        """Things worth knowing about a valid config that do not stop it compiling, as
        (field, message) pairs; the editor shows them under the field."""
        return []

    def normalize(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in self.fields:
            value = config.get(spec.name)
            if _is_empty(value):
                value = spec.default
            out[spec.name] = normalize_field(spec, value)
        return out

    def expressions(self, config: Mapping[str, Any]) -> list[ExpressionUse]:
        return list(_expressions_in(self.fields, config, ""))

    def describe(self) -> dict[str, Any]:
        """The catalogue entry the editor renders its palette and forms from."""
        return {
            "key": self.key,
            "category": self.category,
            "label": self.label,
            "description": self.description,
            "fields": [f.as_dict() for f in self.fields],
            "input_ports": list(self.input_ports),
            "output_ports": list(self.static_output_ports),
            "ports_from": list(self.ports_from) if self.ports_from else None,
            "side_effect": self.side_effect,
            "look": {"colour": CATEGORY_COLOURS[self.category], "width": NODE_WIDTH, "header": NODE_HEADER,
                     "port_row": PORT_ROW},
        }


def _expressions_in(
    specs: tuple[FieldSpec, ...], config: Mapping[str, Any], prefix: str
) -> Iterator[ExpressionUse]:
    for spec in specs:
        value = config.get(spec.name)
        path = f"{prefix}{spec.name}"
        if _is_empty(value):
            continue
        if spec.kind == "expression" and isinstance(value, str):
            yield ExpressionUse(path, spec.label, value, False)
        elif spec.kind in ("template", "url") and isinstance(value, str):
            yield ExpressionUse(path, spec.label, value, True)
        elif spec.kind in ("template_value", "headers", "emails"):
            for leaf_path, text in template_leaves(value):
                yield ExpressionUse(f"{path}.{leaf_path}" if leaf_path else path, spec.label, text, True)
        elif spec.kind == "list" and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _expressions_in(spec.item_fields, item, f"{path}.{index}.")


class TriggerType(NodeType, ABC):
    """Triggers start a run: no input port, one ``out`` port, and a spec the
    listener/scheduler indexes directly."""

    category = "trigger"
    input_ports = ()

    @abstractmethod
    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        """What the listener or scheduler indexes: every trigger type says it."""


RETRY_FIELD = FieldSpec(
    "retry", "Retry", "retry", default={"max_attempts": 1, "backoff_seconds": 10},
    help="How many times to try this step before it fails, and the wait between tries.",
)
