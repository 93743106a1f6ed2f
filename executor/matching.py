"""Which active triggers does a log (or a block) fire? Pure Python: no ORM, no I/O.

The listener compiles the published versions' trigger specs (flows.nodes.triggers
trigger_spec) into a TriggerIndex per chain. A log is looked up by
(address, topic0) and by topic0 alone for any-address triggers, so the cost per
log depends on the triggers that could match it, not on how many exist. Only
those candidates decode the log (once per event ABI), check topic filters,
argument filters (exact big ints) and finally their condition expression.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from itertools import combinations
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_utils import to_checksum_address

from flows.abi import canonical_type
from flows.expressions import evaluate


class MatchError(Exception):
    """A trigger spec that cannot be compiled (the version is skipped, with a log line)."""


# -- values ----------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def checksum(address: str) -> str:
    """EIP-55 form of an address; cached because checksumming hashes (keccak) and the same
    contracts and senders come back in log after log."""
    return to_checksum_address(address)


def _topic_value(type_str: str, raw_topic: str) -> Any:
    """A static indexed argument from its 32-byte topic, without the generic ABI decoder
    for the common types (this is the per-log hot path)."""
    if type_str == "address":
        return checksum("0x" + raw_topic[-40:].lower())
    if type_str.startswith("uint") or type_str == "bool":
        value = int(raw_topic, 16)
        return bool(value) if type_str == "bool" else value
    if type_str == "bytes32":
        return raw_topic.lower()
    return to_json_value(type_str, abi_decode([type_str], bytes.fromhex(raw_topic[2:]))[0])


def to_json_value(type_str: str, value: Any) -> Any:
    """A decoded ABI value as JSON: ints stay exact ints, bytes become 0x-hex,
    addresses are checksummed, tuples and arrays become lists."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, (tuple, list)):
        inner = _array_item_type(type_str)
        if inner is not None:
            return [to_json_value(inner, v) for v in value]
        members = _tuple_member_types(type_str)
        return [to_json_value(t, v) for t, v in zip(members, value, strict=False)]
    if type_str == "address" and isinstance(value, str):
        return checksum(value)
    return value


def _array_item_type(type_str: str) -> str | None:
    if type_str.endswith("]"):
        return type_str[: type_str.rindex("[")]
    return None


def _tuple_member_types(type_str: str) -> list[str]:
    if not (type_str.startswith("(") and type_str.endswith(")")):
        return []
    inner, depth, parts, start = type_str[1:-1], 0, [], 0
    for i, ch in enumerate(inner):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for p in parts if p]


def comparable(value: Any) -> Any:
    """A value in the form filters compare: ints exact, text and hex lower-case, lists as tuples."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str):
        return value.lower() if value.startswith("0x") else value
    if isinstance(value, (list, tuple)):
        return tuple(comparable(v) for v in value)
    return value


def _filter_value(type_str: str, value: Any) -> Any:
    """A filter value from the spec (big ints arrive as decimal strings) in comparable form."""
    if type_str.startswith(("uint", "int")) and not _array_item_type(type_str):
        if isinstance(value, bool):
            raise MatchError(f"{value!r} is not a number")
        if isinstance(value, str):
            return int(value.replace("_", ""), 0)
        return int(value)
    return comparable(value)


_OPS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True)
class ArgFilter:
    arg: str
    op: str
    value: Any  # comparable form; a frozenset for "in"

    def holds(self, actual: Any) -> bool:
        actual = comparable(actual)
        if self.op == "in":
            return actual in self.value
        try:
            return _OPS[self.op](actual, self.value)
        except TypeError:  # e.g. gt between a number and text
            return False


# -- events -----------------------------------------------------------------------------


_DYNAMIC_INDEXED = ("string", "bytes")


class EventDecoder:
    """Decodes one event ABI's logs into (args by name, args in order, how the layout was found).

    A signature that marks no argument `indexed` (as Kwala workflow files write them) has
    the same topic0 as the real event, so its logs arrive; when a log has more topics
    than such a signature allows, the indexed layout is inferred from the log itself
    (see `_infer`) instead of the log being dropped. The third element is None for a
    log decoded as declared, else a note for the run's trigger payload.
    """

    def __init__(self, event_abi: Mapping[str, Any]):
        self.name = event_abi["name"]
        self.abi = event_abi
        self.params = [(p.get("name") or str(i), canonical_type(p), bool(p.get("indexed"))) for i, p in enumerate(event_abi["inputs"])]
        self.indexed = [(n, t) for n, t, idx in self.params if idx]
        self.data_types = [t for _, t, idx in self.params if not idx]
        self.topic_count = 1 + len(self.indexed)
        # No `indexed` marker at all: the markers were probably left out, so other layouts may be tried.
        self.may_infer = bool(self.params) and not self.indexed
        self._layouts: dict[tuple[int, ...], EventDecoder] = {}

    def decode(self, log: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any], dict[str, Any] | None] | None:
        """None when the log does not have this event's shape (same topic0, other indexing)."""
        topics = log["topics"]
        if len(topics) != self.topic_count:
            return self._infer(log) if self.may_infer else None
        try:
            data = bytes.fromhex(log["data"][2:])
            data_values = iter(abi_decode(self.data_types, data, strict=False)) if self.data_types else iter(())
            topic_values = iter(topics[1:])
            args: dict[str, Any] = {}
            ordered: list[Any] = []
            for name, type_str, indexed in self.params:
                if indexed:
                    raw_topic = next(topic_values)
                    if type_str in _DYNAMIC_INDEXED or type_str.endswith(("]", ")")):
                        # Only the hash of the value is on chain.
                        value = raw_topic
                    else:
                        value = _topic_value(type_str, raw_topic)
                else:
                    value = to_json_value(type_str, next(data_values))
                args[name] = value
                ordered.append(value)
        except (DecodingError, ValueError, OverflowError, StopIteration):
            return None
        return args, ordered, None

    def _infer(self, log: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any], dict[str, Any]] | None:
        """Decode with the indexed layout the log's topics and data fit.

        Each choice of len(topics) - 1 arguments as the indexed ones is tried in order
        (leading arguments first, the usual Solidity convention): every topic must be a
        valid value of its argument's type, and the data must decode strictly as the
        others, to its exact length. The first layout that fits is used; when another
        fits too, the note says the choice is a guess (the run page shows it).
        """
        topics = log["topics"]
        count = len(topics) - 1
        if count > min(len(self.params), 3) or len(self.params) > 16:
            return None
        try:
            data = bytes.fromhex(log["data"][2:])
        except ValueError:
            return None
        fits: list[tuple[int, ...]] = []
        for layout in combinations(range(len(self.params)), count):
            if not all(_fits_topic(self.params[i][1], topics[j + 1]) for j, i in enumerate(layout)):
                continue
            if not _fits_data([t for i, (_, t, _) in enumerate(self.params) if i not in layout], data):
                continue
            fits.append(layout)
            if len(fits) == 2:
                break
        if not fits:
            return None
        layout = fits[0]
        decoder = self._layouts.get(layout)
        if decoder is None:
            inputs = [{**p, "indexed": i in layout} for i, p in enumerate(self.abi["inputs"])]
            decoder = self._layouts[layout] = EventDecoder({**self.abi, "inputs": inputs})
        decoded = decoder.decode(log)
        if decoded is None:
            return None
        names = [self.params[i][0] for i in layout]
        ambiguous = len(fits) > 1
        message = (
            f"The event signature marks no argument indexed, but this log has {count} indexed "
            f"argument{'s' if count != 1 else ''}: decoded with {', '.join(names)} indexed"
            + (", the first layout that fits; another fits too, so the arguments may be misread. Mark the indexed "
               "arguments in the signature (or paste the contract's ABI) to be sure." if ambiguous else
               ", the only layout that fits.")
        )
        return decoded[0], decoded[1], {"inferred": True, "indexed": names, "ambiguous": ambiguous,
                                        "message": message}


def _fits_topic(type_str: str, topic: str) -> bool:
    """Whether a 32-byte topic can hold an indexed argument of this type."""
    if type_str in _DYNAMIC_INDEXED or type_str.endswith(("]", ")")):
        return True  # a hash: anything
    value = int(topic, 16)
    if type_str == "address":
        return value < 1 << 160
    if type_str == "bool":
        return value in (0, 1)
    if type_str.startswith("uint"):
        return value < 1 << int(type_str[4:] or 256)
    if type_str.startswith("int"):
        bits = int(type_str[3:] or 256)
        return value < 1 << (bits - 1) or value >= (1 << 256) - (1 << (bits - 1))
    if type_str.startswith("bytes"):
        size = int(type_str[5:])
        return size == 32 or value & ((1 << (8 * (32 - size))) - 1) == 0
    return True


def _fits_data(types: list[str], data: bytes) -> bool:
    """Whether `data` is exactly these types, ABI-encoded (strict: padding and length checked)."""
    if not types:
        return not data
    static = all(not (t in _DYNAMIC_INDEXED or t.endswith(("]", ")"))) for t in types)
    if static and len(data) != 32 * len(types):
        return False
    try:
        abi_decode(types, data, strict=True)
    except (DecodingError, ValueError, OverflowError):
        return False
    return True


@dataclass
class LogTrigger:
    version_id: int
    flow_id: int
    team_id: int
    flow_code: str
    chain_id: int
    addresses: frozenset[str]  # lower-case; empty = any contract
    topic0: str
    topic_filters: tuple[frozenset[str] | None, ...]
    arg_filters: tuple[ArgFilter, ...]
    condition: str | None
    confirmations: int
    expire_at: datetime | None
    decoder: EventDecoder

    def topics_match(self, topics: list[str]) -> bool:
        for slot, allowed in enumerate(self.topic_filters):
            if allowed is not None and (len(topics) <= slot + 1 or topics[slot + 1] not in allowed):
                return False
        return True

    def args_match(self, decoded: tuple[dict, list] | None) -> bool:
        """The argument filters, given this trigger's decoding of the log (None: not its shape)."""
        if decoded is None:
            return False
        args = decoded[0]
        return all(f.holds(args.get(f.arg)) for f in self.arg_filters)


@dataclass
class BlockTrigger:
    version_id: int
    flow_id: int
    team_id: int
    flow_code: str
    chain_id: int
    every: int
    confirmations: int


@dataclass
class StateTrigger:
    version_id: int
    flow_id: int
    team_id: int
    flow_code: str
    chain_id: int
    address: str
    call_data: str
    output_types: list[str]
    output_names: list[str]
    every: int
    condition: str
    confirmations: int

    def decode_result(self, raw_hex: str) -> tuple[Any, dict[str, Any]]:
        values = abi_decode(self.output_types, bytes.fromhex(raw_hex[2:]), strict=False)
        values = [to_json_value(t, v) for t, v in zip(self.output_types, values, strict=True)]
        result = values[0] if len(values) == 1 else values
        return result, {name: v for name, v in zip(self.output_names, values, strict=True)}


@dataclass
class Candidate:
    trigger: LogTrigger
    args: dict[str, Any]
    args_list: list[Any]
    decoding: dict[str, Any] | None = None  # how an inferred layout was found (EventDecoder._infer)


def _lower_hex(value: str) -> str:
    return value.lower()


def compile_trigger(spec: Mapping[str, Any], *, version_id: int, flow_id: int, team_id: int, flow_code: str,
                    decoders: dict[str, Any] | None = None
                    ) -> LogTrigger | TxTrigger | BlockTrigger | StateTrigger | None:
    """A DAG trigger spec -> a matcher, or None for triggers that do not ride a chain."""
    kind = spec.get("type")
    common = {
        "version_id": version_id,
        "flow_id": flow_id,
        "team_id": team_id,
        "flow_code": flow_code,
        "chain_id": int(spec.get("chain_id") or 0),
    }
    try:
        if kind == "chain.event":
            topic0 = spec["topic0"].lower()
            decoders = decoders if decoders is not None else {}
            decoder = decoders.get(topic0 + repr(spec["event_abi"]["inputs"]))
            if decoder is None:
                decoder = decoders[topic0 + repr(spec["event_abi"]["inputs"])] = EventDecoder(spec["event_abi"])
            params = {name: type_str for name, type_str, _ in decoder.params}
            filters = []
            for flt in spec.get("arg_filters") or []:
                type_str = flt.get("type") or params[flt["arg"]]
                if flt["op"] == "in":
                    value: Any = frozenset(_filter_value(type_str, v) for v in flt["value"])
                else:
                    value = _filter_value(type_str, flt["value"])
                if flt["op"] not in _OPS and flt["op"] != "in":
                    raise MatchError(f"unknown filter operator {flt['op']!r}")
                filters.append(ArgFilter(flt["arg"], flt["op"], value))
            topic_filters = tuple(
                None if slot is None else frozenset(map(_lower_hex, slot))
                for slot in (list(spec.get("topic_filters") or []) + [None, None, None])[:3]
            )
            expire_at = spec.get("expire_at")
            return LogTrigger(
                **common,
                addresses=frozenset(a.lower() for a in spec.get("addresses") or []),
                topic0=topic0,
                topic_filters=topic_filters,
                arg_filters=tuple(filters),
                condition=spec.get("condition") or None,
                confirmations=int(spec.get("confirmations") or 0),
                expire_at=datetime.fromisoformat(expire_at) if isinstance(expire_at, str) else expire_at,
                decoder=decoder,
            )
        if kind == "chain.transaction":
            return _compile_tx_trigger(spec, common, decoders if decoders is not None else {})
        if kind == "chain.block":
            return BlockTrigger(**common, every=max(int(spec.get("every") or 1), 1),
                                confirmations=int(spec.get("confirmations") or 0))
        if kind == "chain.state":
            function = spec["function_abi"]
            input_types = [canonical_type(p) for p in function["inputs"]]
            args = [_abi_arg(t, v) for t, v in zip(input_types, spec.get("args") or [], strict=True)]
            call_data = spec["selector"] + abi_encode(input_types, args).hex()
            return StateTrigger(
                **common,
                address=spec["address"].lower(),
                call_data=call_data if call_data.startswith("0x") else "0x" + call_data,
                output_types=[canonical_type(p) for p in function["outputs"]],
                output_names=[p.get("name") or str(i) for i, p in enumerate(function["outputs"])],
                every=max(int(spec.get("every") or 1), 1),
                condition=spec["condition"],
                confirmations=int(spec.get("confirmations") or 0),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise MatchError(f"bad {kind} trigger spec: {type(exc).__name__}: {exc}") from None
    return None


def _abi_arg(type_str: str, value: Any) -> Any:
    from flows.abi import coerce_value

    if _array_item_type(type_str):
        return [_abi_arg(_array_item_type(type_str), v) for v in value]
    return coerce_value(type_str, value)


class TriggerIndex:
    """The log triggers of one chain, indexed for lookup by (address, topic0)."""

    def __init__(self, triggers: Iterable[LogTrigger] = ()):
        self.by_address: dict[tuple[str, str], list[LogTrigger]] = {}
        self.any_address: dict[str, list[LogTrigger]] = {}
        self.triggers: list[LogTrigger] = []
        for trigger in triggers:
            self.add(trigger)

    def add(self, trigger: LogTrigger) -> None:
        self.triggers.append(trigger)
        if trigger.addresses:
            for address in trigger.addresses:
                self.by_address.setdefault((address, trigger.topic0), []).append(trigger)
        else:
            self.any_address.setdefault(trigger.topic0, []).append(trigger)

    def __len__(self) -> int:
        return len(self.triggers)

    def log_filter(self) -> tuple[list[str] | None, list[Any]]:
        """(addresses or None for any, topics) for eth_getLogs covering every trigger."""
        topics = sorted({t.topic0 for t in self.triggers})
        addresses = None if self.any_address else sorted({a for a, _ in self.by_address})
        return addresses, [topics]

    def candidates(self, log: Mapping[str, Any], now: datetime | None = None) -> list[Candidate]:
        """The triggers whose address, topics and argument filters the log satisfies
        (conditions are checked separately, with the run's context)."""
        topics = log["topics"]
        if not topics or log.get("removed"):
            return []
        topic0 = topics[0]
        pool = self.by_address.get((log["address"], topic0))
        wild = self.any_address.get(topic0)
        if pool is None and wild is None:
            return []
        found: list[Candidate] = []
        decoded_by: dict[int, tuple[dict, list] | None] = {}
        for group in (pool, wild):
            if not group:
                continue
            for trigger in group:
                if trigger.expire_at is not None and now is not None and now >= trigger.expire_at:
                    continue
                # Topic filters first: they reject most logs without decoding anything.
                if not trigger.topics_match(topics):
                    continue
                key = id(trigger.decoder)
                if key not in decoded_by:
                    decoded_by[key] = trigger.decoder.decode(log)
                decoded = decoded_by[key]
                if trigger.args_match(decoded):
                    assert decoded is not None
                    found.append(Candidate(trigger, decoded[0], decoded[1], decoded[2]))
        return found


def log_payload(candidate: Candidate, log: Mapping[str, Any], *, chain_id: int, timestamp: int | None) -> dict[str, Any]:
    """The run's `trigger` value for a log (what expressions see as trigger.*)."""
    payload = {
        "type": "chain.event",
        "event": candidate.trigger.decoder.name,
        "args": candidate.args,
        "args_list": candidate.args_list,
        "contract": checksum(log["address"]),
        "chain_id": chain_id,
        "tx_hash": log["tx_hash"],
        "block_number": log["block_number"],
        "block_hash": log["block_hash"],
        "log_index": log["log_index"],
        "timestamp": timestamp,
    }
    if candidate.decoding is not None:
        payload["decoding"] = candidate.decoding
    return payload


def condition_holds(condition: str | None, payload: Mapping[str, Any], *, flow_code: str, now: datetime,
                    extra: Mapping[str, Any] | None = None) -> bool:
    """Evaluate a trigger condition; raises flows.expressions.ExpressionError on a broken one."""
    if not condition:
        return True
    context = {"trigger": payload, "flow": {"code": flow_code}, "now": now, **(extra or {})}
    return bool(evaluate(condition, context))


@dataclass
class ChainTriggers:
    """Everything that fires on one chain's blocks."""

    chain_id: int
    logs: TriggerIndex = field(default_factory=TriggerIndex)
    blocks: list[BlockTrigger] = field(default_factory=list)
    states: list[StateTrigger] = field(default_factory=list)
    txs: TxIndex = field(default_factory=lambda: TxIndex())

    def confirmation_depths(self) -> set[int]:
        depths = {t.confirmations for t in self.logs.triggers}
        depths.update(t.confirmations for t in self.txs.triggers)
        depths.update(t.confirmations for t in self.blocks)
        depths.update(t.confirmations for t in self.states)
        return depths

    def max_confirmations(self) -> int:
        return max(self.confirmation_depths(), default=0)


def build_chain_triggers(rows: Iterable[Mapping[str, Any]]) -> tuple[dict[int, ChainTriggers], list[tuple[int, str]]]:
    """rows: {version_id, flow_id, team_id, flow_code, spec} -> (triggers by chain id, [(version_id, problem)])."""
    by_chain: dict[int, ChainTriggers] = {}
    problems: list[tuple[int, str]] = []
    decoders: dict[str, Any] = {}  # shared event and function decoders
    for row in rows:
        try:
            trigger = compile_trigger(
                row["spec"], version_id=row["version_id"], flow_id=row["flow_id"], team_id=row["team_id"],
                flow_code=row["flow_code"], decoders=decoders,
            )
        except MatchError as exc:
            problems.append((row["version_id"], str(exc)))
            continue
        if trigger is None:
            continue
        group = by_chain.setdefault(trigger.chain_id, ChainTriggers(trigger.chain_id))
        if isinstance(trigger, LogTrigger):
            group.logs.add(trigger)
        elif isinstance(trigger, TxTrigger):
            group.txs.add(trigger)
        elif isinstance(trigger, BlockTrigger):
            group.blocks.append(trigger)
        else:
            group.states.append(trigger)
    return by_chain, problems


# -- transactions ---------------------------------------------------------------------------


class FunctionDecoder:
    """Decodes one function ABI's call data into (args by name, args in order)."""

    def __init__(self, function_abi: Mapping[str, Any]):
        self.name = function_abi["name"]
        self.names = [p.get("name") or str(i) for i, p in enumerate(function_abi["inputs"])]
        self.types = [canonical_type(p) for p in function_abi["inputs"]]

    def decode(self, call_data: str) -> tuple[dict[str, Any], list[Any]] | None:
        """None when the call data does not decode as this function's arguments."""
        try:
            values = abi_decode(self.types, bytes.fromhex(call_data[10:]), strict=False) if self.types else ()
        except (DecodingError, ValueError, OverflowError):
            return None
        ordered = [to_json_value(t, v) for t, v in zip(self.types, values, strict=True)]
        return dict(zip(self.names, ordered, strict=True)), ordered


@dataclass
class TxTrigger:
    version_id: int
    flow_id: int
    team_id: int
    flow_code: str
    chain_id: int
    to: frozenset[str]  # lower-case; empty = any recipient
    senders: frozenset[str]  # lower-case; empty = any sender
    selector: str | None  # lower-case 0x + 8 hex; None = any call or transfer
    decoder: FunctionDecoder | None
    arg_filters: tuple[ArgFilter, ...]
    min_value: int | None
    max_value: int | None
    status: str  # success / failed / any
    condition: str | None
    confirmations: int
    expire_at: datetime | None

    def wants_status(self, succeeded: bool) -> bool:
        return self.status == "any" or (self.status == "success") == succeeded


@dataclass
class TxCandidate:
    trigger: TxTrigger
    args: dict[str, Any]
    args_list: list[Any]


def _compile_tx_trigger(spec: Mapping[str, Any], common: dict[str, Any], decoders: dict[str, Any]) -> TxTrigger:
    function = spec.get("function_abi")
    decoder = None
    if function:
        # One decoder per function ABI, shared by its triggers: a call is decoded once, not once per trigger.
        key = f"fn:{spec['selector']}{function['inputs']!r}"
        decoder = decoders.get(key)
        if decoder is None:
            decoder = decoders[key] = FunctionDecoder(function)
    types = dict(zip(decoder.names, decoder.types, strict=True)) if decoder else {}
    filters = []
    for flt in spec.get("arg_filters") or []:
        type_str = flt.get("type") or types[flt["arg"]]
        if flt["op"] == "in":
            value: Any = frozenset(_filter_value(type_str, v) for v in flt["value"])
        elif flt["op"] in _OPS:
            value = _filter_value(type_str, flt["value"])
        else:
            raise MatchError(f"unknown filter operator {flt['op']!r}")
        filters.append(ArgFilter(flt["arg"], flt["op"], value))
    status = spec.get("status") or "success"
    if status not in ("success", "failed", "any"):
        raise MatchError(f"unknown transaction status {status!r}")
    expire_at = spec.get("expire_at")
    return TxTrigger(
        **common,
        to=frozenset(a.lower() for a in spec.get("to") or []),
        senders=frozenset(a.lower() for a in spec.get("from") or []),
        selector=spec["selector"].lower() if spec.get("selector") else None,
        decoder=decoder,
        arg_filters=tuple(filters),
        min_value=int(spec["min_value"]) if spec.get("min_value") is not None else None,
        max_value=int(spec["max_value"]) if spec.get("max_value") is not None else None,
        status=status,
        condition=spec.get("condition") or None,
        confirmations=int(spec.get("confirmations") or 0),
        expire_at=datetime.fromisoformat(expire_at) if isinstance(expire_at, str) else expire_at,
    )


class TxIndex:
    """The transaction triggers of one chain, indexed by recipient, then sender, then selector.

    A trigger sits in one bucket only (its recipients if it has any, else its senders,
    else its selector), so a transaction is checked against the triggers of its own
    `to`, its own `from` and its own selector: the cost per transaction depends on the
    triggers that could match it, not on how many there are.
    """

    def __init__(self, triggers: Iterable[TxTrigger] = ()):
        self.by_to: dict[str, list[TxTrigger]] = {}
        self.by_from: dict[str, list[TxTrigger]] = {}
        self.by_selector: dict[str, list[TxTrigger]] = {}
        self.triggers: list[TxTrigger] = []
        for trigger in triggers:
            self.add(trigger)

    def add(self, trigger: TxTrigger) -> None:
        self.triggers.append(trigger)
        if trigger.to:
            for address in trigger.to:
                self.by_to.setdefault(address, []).append(trigger)
        elif trigger.senders:
            for address in trigger.senders:
                self.by_from.setdefault(address, []).append(trigger)
        else:
            assert trigger.selector is not None  # the node type refuses a trigger on every transaction
            self.by_selector.setdefault(trigger.selector, []).append(trigger)

    def __len__(self) -> int:
        return len(self.triggers)

    def candidates(self, tx: Mapping[str, Any], now: datetime | None = None) -> list[TxCandidate]:
        """The triggers whose addresses, function, arguments and value the transaction satisfies
        (status and condition need its receipt, and are checked by the caller).

        `tx` is a transaction as eth_getBlockByHash(..., true) gives it, with `to`,
        `from` and `input` lower-case and `value` an int (see executor.chain.tx_from_rpc)."""
        to, sender, data = tx["to"], tx["from"], tx["input"]
        selector = data[:10] if len(data) >= 10 else ""
        groups = (self.by_to.get(to) if to else None, self.by_from.get(sender),
                  self.by_selector.get(selector) if selector else None)
        if not any(groups):
            return []
        found: list[TxCandidate] = []
        decoded_by: dict[int, tuple[dict, list] | None] = {}
        for group in groups:
            for trigger in group or ():
                if trigger.expire_at is not None and now is not None and now >= trigger.expire_at:
                    continue
                if trigger.to and to not in trigger.to:
                    continue
                if trigger.senders and sender not in trigger.senders:
                    continue
                if trigger.min_value is not None and tx["value"] < trigger.min_value:
                    continue
                if trigger.max_value is not None and tx["value"] > trigger.max_value:
                    continue
                if trigger.selector is None:
                    found.append(TxCandidate(trigger, {}, []))
                    continue
                if selector != trigger.selector:
                    continue
                assert trigger.decoder is not None
                key = id(trigger.decoder)
                if key not in decoded_by:
                    decoded_by[key] = trigger.decoder.decode(data)
                decoded = decoded_by[key]
                if decoded is not None and all(f.holds(decoded[0].get(f.arg)) for f in trigger.arg_filters):
                    found.append(TxCandidate(trigger, decoded[0], decoded[1]))
        return found


# Call data kept in a run's trigger payload: enough to read any ordinary call, bounded for the run record.
TX_INPUT_KEPT = 4096


def tx_payload(candidate: TxCandidate, tx: Mapping[str, Any], receipt: Mapping[str, Any], *, chain_id: int,
               timestamp: int | None) -> dict[str, Any]:
    """The run's `trigger` value for a transaction (what expressions see as trigger.*)."""
    from decimal import Decimal

    trigger = candidate.trigger
    data = tx["input"]
    value = tx["value"]
    return {
        "type": "chain.transaction",
        "hash": tx["hash"],
        "tx_hash": tx["hash"],
        "from": checksum(tx["from"]),
        "to": checksum(tx["to"]) if tx["to"] else None,
        "contract_created": checksum(receipt["contract_address"]) if receipt.get("contract_address") else None,
        "value": value,
        "value_ether": format(Decimal(value).scaleb(-18).normalize(), "f") if value else "0",
        "function": trigger.decoder.name if trigger.decoder else "",
        "selector": data[:10] if len(data) >= 10 else "",
        "args": candidate.args,
        "args_list": candidate.args_list,
        "input": data[:TX_INPUT_KEPT],
        "input_size": max(len(data) - 2, 0) // 2,
        "status": "success" if receipt["succeeded"] else "failed",
        "revert_reason": receipt.get("revert_reason"),
        "gas_used": receipt["gas_used"],
        "effective_gas_price": receipt["effective_gas_price"],
        "nonce": tx["nonce"],
        "chain_id": chain_id,
        "block_number": tx["block_number"],
        "block_hash": tx["block_hash"],
        "tx_index": tx["tx_index"],
        "timestamp": timestamp,
    }
