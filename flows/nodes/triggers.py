"""Trigger node types: what starts a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows import abi as abi_lib
from flows.nodes.base import (
    FieldSpec,
    Problems,
    TriggerType,
    ValidationContext,
    parse_datetime,
)

FILTER_OPS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")
_ORDERED_OPS = ("gt", "gte", "lt", "lte")

CHAIN = FieldSpec("chain", "Chain", "chain", required=True)
CONFIRMATIONS = FieldSpec(
    "confirmations", "Confirmations", "int", default=0, min=0, max=1000,
    help="Blocks to wait after the one that holds the event before the run starts.",
)
EVERY_BLOCKS = FieldSpec("every", "Every N blocks", "int", default=1, min=1, max=100_000)


def _abi_shape(params: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        (p.get("name") or str(i)): {"type": abi_lib.canonical_type(p), "description": ""}
        for i, p in enumerate(params)
    }


def _check_abi_value(param: dict[str, Any], value: Any) -> str | None:
    type_str = abi_lib.canonical_type(param)
    try:
        if type_str.startswith(("uint", "int", "bytes")) or type_str in ("address", "bool"):
            abi_lib.coerce_value(type_str, value)
        elif type_str == "string" and not isinstance(value, str):
            return "must be text"
    except abi_lib.AbiError as exc:
        return str(exc)
    return None


def _filter_problems(filters: list[dict[str, Any]], inputs: Mapping[str, dict[str, Any]], owner: str) -> Problems:
    """Problems of argument filters against the named parameters of an event or a function (`owner`)."""
    problems: Problems = []
    for index, flt in enumerate(filters):
        path = f"filters.{index}"
        param = inputs.get(flt["arg"])
        if param is None:
            names = ", ".join(inputs) or "none are named"
            problems.append((f"{path}.arg", f"The {owner} has no argument '{flt['arg']}' ({names})"))
            continue
        type_str = abi_lib.canonical_type(param)
        if flt["op"] == "in" and (not isinstance(flt["value"], list) or not flt["value"]):
            problems.append((f"{path}.value", "'in' needs a non-empty list of values"))
            continue
        if flt["op"] in _ORDERED_OPS and not type_str.startswith(("uint", "int")):
            problems.append((f"{path}.op", f"'{flt['op']}' only works on numbers, not {type_str}"))
            continue
        for value in flt["value"] if flt["op"] == "in" else [flt["value"]]:
            message = _check_abi_value(param, value)
            if message:
                problems.append((f"{path}.value", f"Filter on '{flt['arg']}': {message}"))
    return problems


class ChainEvent(TriggerType):
    key = "chain.event"
    label = "Contract event"
    description = "Runs when a contract emits an event, optionally filtered by its arguments."
    fields = (
        CHAIN,
        FieldSpec(
            "addresses", "Contract addresses", "addresses", default=[],
            help="Leave empty to match the event from any contract.",
        ),
        FieldSpec(
            "event", "Event", "abi_event", required=True,
            help="A Solidity signature, e.g. Transfer(address indexed from, address indexed to, "
            "uint256 value), or a pasted ABI and the event name.",
        ),
        FieldSpec(
            "filters", "Argument filters", "list", default=[],
            item_fields=(
                FieldSpec("arg", "Argument", "text", required=True),
                FieldSpec("op", "Operator", "choice", default="eq", choices=FILTER_OPS),
                FieldSpec("value", "Value", "json", required=True),
            ),
        ),
        FieldSpec("condition", "Condition", "expression", help="Only run when this is true."),
        CONFIRMATIONS,
        FieldSpec("expire_at", "Stop listening at", "datetime"),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        event = abi_lib.resolve_event(config["event"])
        if event.get("anonymous"):
            # Anonymous events have no topic0, so the listener has nothing to index them by.
            return [("event", f"{event['name']} is anonymous; Kwala can only match events by topic")]
        inputs = {p["name"]: p for p in event["inputs"] if p["name"]}
        problems = _filter_problems(config["filters"], inputs, "event")
        bad = {path.split(".")[1] for path, _ in problems}
        for index, flt in enumerate(config["filters"]):
            param = inputs.get(flt["arg"])
            if str(index) in bad or not param or not param.get("indexed") or flt["op"] not in ("eq", "in"):
                continue
            try:
                abi_lib.encode_topic(param, flt["value"][0] if flt["op"] == "in" else flt["value"])
            except abi_lib.AbiError as exc:
                problems.append((f"filters.{index}.arg", str(exc)))
        return problems

    def notes(self, config: Mapping[str, Any]) -> Problems:
        try:
            event = abi_lib.resolve_event(config.get("event"))
        except abi_lib.AbiError:
            return []
        if event["inputs"] and not any(p.get("indexed") for p in event["inputs"]):
            return [("event", "No argument is marked indexed. If the contract indexes some, Kwala infers which from "
                              "each log's topics, and a run says when more than one layout fits; mark them "
                              "(e.g. uint256 indexed proposalId) or paste the ABI to be exact.")]
        return []

    def normalize(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize(config)
        if out.get("addresses"):
            out["addresses"] = sorted(out["addresses"], key=str.lower)
        return out

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        event = abi_lib.resolve_event(config["event"])
        params = {p["name"]: p for p in event["inputs"] if p["name"]}
        indexed = [p for p in event["inputs"] if p.get("indexed")]
        topic_filters: list[list[str] | None] = [None, None, None]
        arg_filters = []
        for flt in config["filters"]:
            param = params[flt["arg"]]
            type_str = abi_lib.canonical_type(param)
            values = flt["value"] if flt["op"] == "in" else [flt["value"]]
            if param.get("indexed") and flt["op"] in ("eq", "in") and indexed.index(param) < 3:
                topics = sorted({abi_lib.encode_topic(param, v) for v in values})
                slot = indexed.index(param)
                # Two filters on one indexed arg must both hold: intersect.
                current = topic_filters[slot]
                topic_filters[slot] = topics if current is None else sorted(set(current) & set(topics))
                continue
            arg_filters.append(_arg_filter(flt, type_str))
        return {
            "type": self.key,
            "node_id": node_id,
            "chain_id": config["chain"],
            "addresses": list(config["addresses"] or []),
            "topic0": abi_lib.event_topic0(event),
            "topic_filters": topic_filters,
            "arg_filters": arg_filters,
            "condition": config["condition"],
            "confirmations": config["confirmations"],
            "expire_at": config["expire_at"],
            "event_abi": event,
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        shape: dict[str, dict[str, Any]] = {
            "args": {"type": "object", "description": "Decoded event arguments by name", "fields": {}},
            "args_list": {"type": "list", "description": "Decoded event arguments in order"},
            "event": {"type": "string", "description": "Event name"},
            "contract": {"type": "address", "description": "Contract that emitted the event"},
            "chain_id": {"type": "int", "description": "Chain id"},
            "tx_hash": {"type": "bytes32", "description": "Transaction hash"},
            "block_number": {"type": "int", "description": "Block number"},
            "block_hash": {"type": "bytes32", "description": "Block hash"},
            "log_index": {"type": "int", "description": "Position of the log in the block"},
        }
        try:
            event = abi_lib.resolve_event(config.get("event"))
        except abi_lib.AbiError:
            return shape
        shape["args"]["fields"] = _abi_shape(event["inputs"])
        return shape


def _arg_filter(flt: Mapping[str, Any], type_str: str) -> dict[str, Any]:
    """A filter on a decoded argument, as the matcher (executor.matching.ArgFilter) reads it."""
    values = [_normalize_filter_value(type_str, v) for v in (flt["value"] if flt["op"] == "in" else [flt["value"]])]
    return {"arg": flt["arg"], "type": type_str, "op": flt["op"], "value": values if flt["op"] == "in" else values[0]}


def _normalize_filter_value(type_str: str, value: Any) -> Any:
    coerced = abi_lib.coerce_value(type_str, value) if type_str != "string" else value
    if isinstance(coerced, bytes):
        return "0x" + coerced.hex()
    if isinstance(coerced, int) and not isinstance(coerced, bool) and coerced.bit_length() > 53:
        # Big ints travel as decimal strings so JSON consumers in other languages stay exact.
        return str(coerced)
    return coerced


class ChainBlock(TriggerType):
    key = "chain.block"
    label = "New block"
    description = "Runs every N blocks on a chain."
    fields = (CHAIN, EVERY_BLOCKS, CONFIRMATIONS)

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "type": self.key,
            "node_id": node_id,
            "chain_id": config["chain"],
            "every": config["every"],
            "confirmations": config["confirmations"],
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "chain_id": {"type": "int", "description": "Chain id"},
            "block_number": {"type": "int", "description": "Block number"},
            "block_hash": {"type": "bytes32", "description": "Block hash"},
            "timestamp": {"type": "int", "description": "Block timestamp (unix seconds)"},
        }


class ChainState(TriggerType):
    key = "chain.state"
    label = "Contract state"
    description = (
        "Reads a view function every N blocks and runs when the condition on the result "
        "turns from false to true."
    )
    fields = (
        CHAIN,
        FieldSpec("address", "Contract address", "address", required=True),
        FieldSpec("function", "Function", "abi_function", required=True),
        FieldSpec("args", "Arguments", "json", default=[], help="Fixed argument values, in order."),
        EVERY_BLOCKS,
        FieldSpec(
            "condition", "Condition", "expression", required=True,
            help="Uses `result`, e.g. result < 10**18. Fires when it turns true.",
        ),
        CONFIRMATIONS,
    )

    def local_names(self, field_path: str) -> frozenset[str]:
        return frozenset({"result"}) if field_path == "condition" else frozenset()

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        function = abi_lib.resolve_function(config["function"])
        args = config["args"]
        if not isinstance(args, list):
            return [("args", "Arguments must be a list")]
        if len(args) != len(function["inputs"]):
            return [("args", f"{function['name']} takes {len(function['inputs'])} arguments, got {len(args)}")]
        if not function["outputs"]:
            return [("function", f"{function['name']} returns nothing to check")]
        problems: Problems = []
        for index, (param, value) in enumerate(zip(function["inputs"], args, strict=True)):
            message = _check_abi_value(param, value)
            if message:
                problems.append((f"args.{index}", f"Argument {index + 1}: {message}"))
        return problems

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        function = abi_lib.resolve_function(config["function"])
        return {
            "type": self.key,
            "node_id": node_id,
            "chain_id": config["chain"],
            "address": config["address"],
            "function_abi": function,
            "selector": abi_lib.function_selector(function),
            "args": config["args"],
            "every": config["every"],
            "condition": config["condition"],
            "confirmations": config["confirmations"],
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        shape: dict[str, dict[str, Any]] = {
            "result": {"type": "any", "description": "Return value (a list when it returns several)"},
            "block_number": {"type": "int", "description": "Block the state was read at"},
            "chain_id": {"type": "int", "description": "Chain id"},
        }
        try:
            function = abi_lib.resolve_function(config.get("function"))
        except abi_lib.AbiError:
            return shape
        shape["outputs"] = {"type": "object", "description": "Return values by name", "fields": _abi_shape(function["outputs"])}
        return shape


class Schedule(TriggerType):
    key = "schedule"
    label = "Schedule"
    description = "Runs on a cron schedule, at a fixed interval, or once at a given time."
    fields = (
        FieldSpec("cron", "Cron expression", "cron", help="e.g. 0 9 * * 1-5 for 9:00 on weekdays"),
        FieldSpec("timezone", "Time zone", "timezone", default="UTC"),
        FieldSpec("interval", "Every", "duration", min=10, help="Seconds, or 30s, 5m, 1h ..."),
        FieldSpec("start_at", "Start at", "datetime"),
        FieldSpec("expire_at", "Stop at", "datetime"),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        if config["cron"] and config["interval"]:
            return [("interval", "Choose a cron expression or an interval, not both")]
        if not config["cron"] and not config["interval"] and not config["start_at"]:
            return [("cron", "Set a cron expression, an interval, or a start time for a single run")]
        if (
            config["start_at"]
            and config["expire_at"]
            and parse_datetime(config["expire_at"]) <= parse_datetime(config["start_at"])
        ):
            return [("expire_at", "Stop time must be after the start time")]
        return []

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "type": self.key,
            "node_id": node_id,
            "cron": config["cron"],
            "timezone": config["timezone"],
            "interval_seconds": config["interval"],
            "start_at": config["start_at"],
            "expire_at": config["expire_at"],
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "scheduled_at": {"type": "datetime", "description": "When the run was due"},
            "previous_at": {"type": "datetime",
                            "description": "When the previous run was due (or the schedule began)"},
            "fired_at": {"type": "datetime", "description": "When it actually started"},
        }


class Webhook(TriggerType):
    key = "webhook"
    label = "Webhook"
    description = "Runs when an HTTP request arrives at the flow's webhook URL."
    fields = (
        FieldSpec(
            "verification", "Signature check", "choice", default="none",
            choices=("none", "standard-webhooks", "hmac-sha256"),
        ),
        FieldSpec("secret", "Signing secret", "secret_ref"),
        FieldSpec("signature_header", "Signature header", "text", default="X-Signature-256",
                  help="Only for hmac-sha256: the header holding the hex digest."),
        FieldSpec("timestamp_header", "Timestamp header", "text", default="",
                  help="Only for hmac-sha256, optional: a header with the Unix time the sender signed; "
                       "the digest is then of <timestamp>.<body>, and requests over 5 minutes old are refused."),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        if config["verification"] != "none" and not config["secret"]:
            return [("secret", "Choose the secret that signs the requests")]
        return []

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "type": self.key,
            "node_id": node_id,
            "verification": config["verification"],
            "secret": config["secret"],
            "signature_header": config["signature_header"] if config["verification"] == "hmac-sha256" else None,
            "timestamp_header": config.get("timestamp_header") or None
            if config["verification"] == "hmac-sha256" else None,
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "body": {"type": "any", "description": "Parsed JSON body (or text)"},
            "headers": {"type": "object", "description": "Request headers, lower-case names"},
            "query": {"type": "object", "description": "Query string parameters"},
            "method": {"type": "string", "description": "HTTP method"},
        }


class Manual(TriggerType):
    key = "manual"
    label = "Manual"
    description = "Runs when someone presses Run, with an optional sample payload."
    fields = (FieldSpec("sample_payload", "Sample payload", "json", default={}),)

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": self.key, "node_id": node_id, "sample_payload": config["sample_payload"]}

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"payload": {"type": "any", "description": "The payload given when the run started"}}


TX_STATUSES = ("success", "failed", "any")
_WEI_UNITS = {"wei": 0, "kwei": 3, "mwei": 6, "gwei": 9, "szabo": 12, "finney": 15, "ether": 18, "eth": 18}


def parse_wei(value: Any) -> int:
    """An amount of native currency in wei: ``1000``, ``"10 ether"``, ``"1.5 gwei"``, ``"0.01 eth"``.

    Exact (decimal arithmetic, no floats); raises ValueError for anything else,
    including fractions of a wei.
    """
    from decimal import Decimal, InvalidOperation

    if isinstance(value, bool):
        raise ValueError("not an amount")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("an amount cannot be negative")
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not an amount")
    parts = value.strip().lower().replace("_", "").split()
    unit = parts[1] if len(parts) == 2 else "wei" if len(parts) == 1 else None
    if unit not in _WEI_UNITS:
        raise ValueError(f"{value!r}: write wei, or a number and a unit ({', '.join(_WEI_UNITS)})")
    try:
        amount = Decimal(parts[0]).scaleb(_WEI_UNITS[unit])
    except InvalidOperation:
        raise ValueError(f"{parts[0]!r} is not a number") from None
    if amount < 0:
        raise ValueError("an amount cannot be negative")
    if amount != amount.to_integral_value():
        raise ValueError(f"{value!r} is not a whole number of wei")
    return int(amount)


class ChainTransaction(TriggerType):
    key = "chain.transaction"
    label = "Transaction"
    description = (
        "Runs on each transaction to or from watched addresses: native transfers and function "
        "calls, succeeded or reverted. Needs no event, so it sees plain ETH transfers."
    )
    fields = (
        CHAIN,
        FieldSpec("to", "To", "addresses", default=[],
                  help="Transactions sent to any of these addresses (a contract or a wallet)."),
        FieldSpec("from", "From", "addresses", default=[],
                  help="Transactions sent by any of these. With both set, a transaction must match both."),
        FieldSpec("function", "Function", "abi_function",
                  help="Only calls of this function (matched by its selector), e.g. transferOwnership(address "
                       "newOwner), or a pasted ABI and the function name. Empty: any call or transfer."),
        FieldSpec(
            "filters", "Argument filters", "list", default=[],
            item_fields=(
                FieldSpec("arg", "Argument", "text", required=True),
                FieldSpec("op", "Operator", "choice", default="eq", choices=FILTER_OPS),
                FieldSpec("value", "Value", "json", required=True),
            ),
        ),
        FieldSpec("min_value", "Value at least", "text", default="",
                  help="Native currency sent, in wei or with a unit: 10 ether, 1.5 gwei."),
        FieldSpec("max_value", "Value at most", "text", default=""),
        FieldSpec("status", "Status", "choice", default="success", choices=TX_STATUSES,
                  help="failed: reverted transactions (the run gets the revert reason when the node gives one)."),
        FieldSpec("condition", "Condition", "expression", help="Only run when this is true."),
        CONFIRMATIONS,
        FieldSpec("expire_at", "Stop listening at", "datetime"),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        problems: Problems = []
        if not config["to"] and not config["from"] and not config["function"]:
            problems.append(("to", "Watch an address (to or from) or a function: every transaction of a chain is "
                                   "too many to start a run for"))
        for name in ("min_value", "max_value"):
            if config[name]:
                try:
                    parse_wei(config[name])
                except ValueError as exc:
                    problems.append((name, str(exc)))
        if not problems and config["min_value"] and config["max_value"] and (
            parse_wei(config["min_value"]) > parse_wei(config["max_value"])
        ):
            problems.append(("max_value", "The most must not be below the least"))
        if config["filters"] and not config["function"]:
            problems.append(("filters", "Argument filters need a function to decode the arguments with"))
            return problems
        if not config["function"]:
            return problems
        function = abi_lib.resolve_function(config["function"])
        inputs = {p["name"]: p for p in function["inputs"] if p["name"]}
        problems += _filter_problems(config["filters"], inputs, "function")
        return problems

    def normalize(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize(config)
        for name in ("to", "from"):
            if out.get(name):
                out[name] = sorted(out[name], key=str.lower)
        return out

    def trigger_spec(self, node_id: str, config: Mapping[str, Any]) -> dict[str, Any]:
        function = abi_lib.resolve_function(config["function"]) if config["function"] else None
        params = {p["name"]: p for p in function["inputs"] if p["name"]} if function else {}
        arg_filters = [_arg_filter(flt, abi_lib.canonical_type(params[flt["arg"]])) for flt in config["filters"]]
        return {
            "type": self.key,
            "node_id": node_id,
            "chain_id": config["chain"],
            "to": list(config["to"] or []),
            "from": list(config["from"] or []),
            "function_abi": function,
            "selector": abi_lib.function_selector(function) if function else None,
            "arg_filters": arg_filters,
            # Decimal strings: a wei amount is often above 2**53.
            "min_value": str(parse_wei(config["min_value"])) if config["min_value"] else None,
            "max_value": str(parse_wei(config["max_value"])) if config["max_value"] else None,
            "status": config["status"],
            "condition": config["condition"],
            "confirmations": config["confirmations"],
            "expire_at": config["expire_at"],
        }

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        shape: dict[str, dict[str, Any]] = {
            "hash": {"type": "bytes32", "description": "Transaction hash"},
            "tx_hash": {"type": "bytes32", "description": "Transaction hash (as chain events name it)"},
            "from": {"type": "address", "description": "Sender"},
            "to": {"type": "address", "description": "Recipient (null for a contract creation)"},
            "value": {"type": "int", "description": "Native currency sent, in wei"},
            "value_ether": {"type": "string", "description": "The value in ether, as exact decimal text"},
            "function": {"type": "string", "description": "Called function's name (empty for a plain transfer)"},
            "selector": {"type": "string", "description": "First 4 bytes of the input (empty for a plain transfer)"},
            "args": {"type": "object", "description": "Decoded function arguments by name", "fields": {}},
            "args_list": {"type": "list", "description": "Decoded function arguments in order"},
            "input": {"type": "string", "description": "Call data (hex), cut at 4 KiB"},
            "status": {"type": "string", "description": "success or failed"},
            "revert_reason": {"type": "string", "description": "Why it reverted, when the node tells"},
            "gas_used": {"type": "int", "description": "Gas used"},
            "effective_gas_price": {"type": "int", "description": "Price paid per gas, in wei"},
            "nonce": {"type": "int", "description": "Sender's nonce"},
            "chain_id": {"type": "int", "description": "Chain id"},
            "block_number": {"type": "int", "description": "Block number"},
            "block_hash": {"type": "bytes32", "description": "Block hash"},
            "tx_index": {"type": "int", "description": "Position of the transaction in the block"},
            "timestamp": {"type": "int", "description": "Block timestamp (unix seconds)"},
        }
        try:
            function = abi_lib.resolve_function(config.get("function")) if config.get("function") else None
        except abi_lib.AbiError:
            function = None
        if function:
            shape["args"]["fields"] = _abi_shape(function["inputs"])
        return shape
