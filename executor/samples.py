"""Sample trigger outputs for test runs: what each trigger type would hand a run now.

Read from the real world where there is one: a contract event's recent matching logs, a
transaction trigger's recent matching transactions (with their receipts), the latest
blocks, a state trigger's function read at the latest block, the flow's last webhook
requests, the schedule's current window. Each sample is the trigger's own output (what
expressions see as `trigger.*`), built by the same functions the listener, the webhook
door and the scheduler use, so a test run sees what a live run would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from django.utils import timezone
from eth_abi import encode as abi_encode
from web3 import Web3

from executor.chain import ChainClient, ChainError, client_for_chain
from executor.chaintx import BlockTransactions
from executor.matching import (
    MatchError,
    TriggerIndex,
    TxCandidate,
    TxIndex,
    _tuple_member_types,
    compile_trigger,
    condition_holds,
    log_payload,
    tx_payload,
)
from executor.models import Chain, Run
from flows import abi as abi_lib
from flows.expressions import ExpressionError
from flows.nodes import NODE_TYPES, TriggerType

logger = logging.getLogger(__name__)

MAX_SAMPLES = 5
# eth_getLogs spans tried in turn: a provider that refuses a range gets a smaller one.
EVENT_LOOKBACK_SPANS = (5_000, 500, 50)
# Transactions are read block by block (each block whole), so the look-back is short.
TX_LOOKBACK_BLOCKS = 128
TX_BLOCKS_PER_BATCH = 16
WEBHOOK_RUNS_SHOWN = MAX_SAMPLES
SCHEDULE_WINDOWS = 3
ZERO_ADDRESS = "0x" + "0" * 40
SOME_SENDER = "0x" + "11" * 20


class SampleError(Exception):
    """Why no sample could be made, in words for the person testing."""


@dataclass
class Sample:
    label: str  # how the picker names it
    payload: dict[str, Any]  # the trigger's output

    @property
    def text(self) -> str:
        """The payload as JSON text: exact ints of any size (a browser's JSON.parse would round them)."""
        return json.dumps(self.payload, indent=2, ensure_ascii=False)


@dataclass
class Samples:
    title: str  # what the samples are: "Recent events", "Latest blocks", ...
    items: list[Sample] = field(default_factory=list)
    note: str = ""  # e.g. why a sample is made up
    empty: str = "Nothing found to test with."

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "note": self.note, "empty": self.empty,
                "samples": [{"label": s.label, "json": s.text} for s in self.items]}


@dataclass
class _Trigger:
    node_id: str
    type: str
    config: dict[str, Any]  # normalized
    spec: dict[str, Any]  # as the compiler writes it into the DAG
    flow: Any
    now: datetime


def trigger_samples(flow, graph: Mapping[str, Any], *, now: datetime | None = None) -> Samples:
    """Samples for the graph's trigger, newest first.

    Raises SampleError when the graph has no trigger, its settings are not complete
    enough to say what it would fire on, or the chain cannot be read.
    """
    node = next((n for n in graph.get("nodes", []) if isinstance(NODE_TYPES.get(n.get("type")), TriggerType)), None)
    if node is None:
        raise SampleError("Add a trigger first: the sample is what it hands the run.")
    node_type = NODE_TYPES[node["type"]]
    try:
        config = node_type.normalize(node.get("config") or {})
        spec = node_type.trigger_spec(node.get("id") or "trigger", config)
    except abi_lib.AbiError as exc:
        raise SampleError(f"Finish the trigger's settings first ({exc}).") from None
    except (KeyError, TypeError, ValueError) as exc:
        logger.info("flow %s: no sample for an incomplete %s trigger: %r", flow.code, node["type"], exc)
        raise SampleError("Finish the trigger's settings first (see the Problems tab).") from None
    trigger = _Trigger(node.get("id") or "trigger", node["type"], config, spec, flow, now or timezone.now())
    return SAMPLERS[node["type"]](trigger)


# -- chains ---------------------------------------------------------------------------


def _chain(trigger: _Trigger) -> tuple[Chain, ChainClient]:
    chain = Chain.objects.filter(chain_id=trigger.config.get("chain") or -1, enabled=True).first()
    if chain is None:
        raise SampleError("Choose the trigger's chain first.")
    try:
        return chain, client_for_chain(chain)
    except ChainError:
        raise SampleError(f"{chain.name} has no HTTP RPC endpoint configured.") from None


def _matcher(trigger: _Trigger):
    try:
        return compile_trigger(trigger.spec, version_id=0, flow_id=trigger.flow.pk, team_id=trigger.flow.team_id,
                               flow_code=trigger.flow.code)
    except MatchError as exc:
        raise SampleError(f"Finish the trigger's settings first ({exc}).") from None


def _holds(trigger: _Trigger, payload: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> bool | None:
    """Whether the trigger's condition holds for the payload; None when it cannot be evaluated."""
    try:
        return condition_holds(trigger.config.get("condition"), payload, flow_code=trigger.flow.code,
                               now=trigger.now, extra=extra)
    except ExpressionError as exc:
        logger.info("flow %s: trigger condition fails on a sample: %s", trigger.flow.code, exc)
        return None


def _unreadable(chain: Chain, what: str, exc: ChainError) -> SampleError:
    logger.warning("flow samples: could not read %s from %s: %s", what, chain.slug, exc)
    return SampleError(f"Could not read {what} from {chain.name}: {exc}")


def _event_samples(trigger: _Trigger) -> Samples:
    chain, client = _chain(trigger)
    matcher = _matcher(trigger)
    index = TriggerIndex([matcher])
    topics: list[Any] = [trigger.spec["topic0"], *trigger.spec["topic_filters"]]
    while topics and topics[-1] is None:
        topics.pop()
    samples = Samples("Recent events", empty="No matching event in the last blocks.")
    try:
        head = client.block_number()
        for span in EVENT_LOOKBACK_SPANS:
            try:
                logs = client.get_logs_range(max(head - span, 0), head, trigger.spec["addresses"] or None, topics)
                break
            except ChainError as exc:
                if not exc.range_too_large or span == EVENT_LOOKBACK_SPANS[-1]:
                    raise
        chosen = []
        for log in reversed(logs):
            for candidate in index.candidates(log, trigger.now):
                chosen.append((candidate, log))
            if len(chosen) >= MAX_SAMPLES * 4:  # enough to find MAX_SAMPLES the condition lets through
                break
        hashes = sorted({log["block_hash"] for _, log in chosen})
        blocks = client.request_batch([("eth_getBlockByHash", [h, False]) for h in hashes]) if hashes else []
    except ChainError as exc:
        raise _unreadable(chain, "recent events", exc) from None
    stamps = {raw["hash"].lower(): int(raw["timestamp"], 16) for raw in blocks if raw}
    for candidate, log in chosen:
        payload = log_payload(candidate, log, chain_id=chain.chain_id, timestamp=stamps.get(log["block_hash"]))
        if _holds(trigger, payload) is False:
            continue
        samples.items.append(Sample(f"block {log['block_number']} · log {log['log_index']} · "
                                    f"{log['tx_hash'][:10]}…", payload))
        if len(samples.items) >= MAX_SAMPLES:
            break
    return samples


def _transaction_samples(trigger: _Trigger) -> Samples:
    """The newest matching transactions of the last TX_LOOKBACK_BLOCKS blocks, read whole, matched
    and given their receipts (and revert reasons) as the listener does; a made-up one if none."""
    chain, client = _chain(trigger)
    matcher = _matcher(trigger)
    index = TxIndex([matcher])
    reader = BlockTransactions(client, keep=TX_BLOCKS_PER_BATCH)
    samples = Samples("Recent transactions")
    try:
        head = client.get_block("latest")
        if head is None:
            raise ChainError("the node has no latest block", retryable=True)
        number = head.number
        while number >= 0 and head.number - number < TX_LOOKBACK_BLOCKS and len(samples.items) < MAX_SAMPLES:
            numbers = list(range(number, max(number - TX_BLOCKS_PER_BATCH, -1), -1))
            number -= TX_BLOCKS_PER_BATCH
            for block in client.get_blocks(numbers, full=True):
                if block is None or len(samples.items) >= MAX_SAMPLES:
                    continue
                reader.prime(block.full)
                for match in reversed(reader.matches(block.hash, index, trigger.now)):
                    for candidate in match.found:
                        payload = tx_payload(candidate, match.tx, match.receipt, chain_id=chain.chain_id,
                                             timestamp=block.timestamp)
                        if _holds(trigger, payload) is not False and len(samples.items) < MAX_SAMPLES:
                            samples.items.append(Sample(_tx_label(payload), payload))
    except ChainError as exc:
        raise _unreadable(chain, "recent transactions", exc) from None
    if not samples.items:
        payload = _made_up_transaction(trigger, matcher, chain, head)
        samples.items.append(Sample(f"made up · {_tx_label(payload)}", payload))
        samples.note = (f"No matching transaction in the last {TX_LOOKBACK_BLOCKS} blocks: this one is made up "
                        f"from the trigger's settings, on the latest block.")
    return samples


def _tx_label(payload: Mapping[str, Any]) -> str:
    what = payload["function"] or ("call" if payload["selector"] else "transfer")
    return f"block {payload['block_number']} · {what} · {payload['value_ether']} ETH · {payload['status']}"


def _made_up_transaction(trigger: _Trigger, matcher, chain: Chain, head) -> dict[str, Any]:
    """A transaction the trigger would fire on: its addresses, a value in its range, its function
    called with arguments its filters accept, in the latest block."""
    spec = trigger.spec
    value = int(spec["min_value"] or 0)
    if not value and not spec["function_abi"]:
        value = 10**18
    if spec["max_value"] is not None and value > int(spec["max_value"]):
        value = int(spec["max_value"])
    data = "0x"
    if spec["function_abi"]:
        function = spec["function_abi"]
        types = [abi_lib.canonical_type(p) for p in function["inputs"]]
        filters = {f["arg"]: f for f in spec["arg_filters"]}
        values = [_value_for(t, filters.get(p.get("name") or "")) for t, p in zip(types, function["inputs"],
                                                                                  strict=True)]
        try:
            data = spec["selector"] + abi_encode(types, values).hex()
        except Exception:  # eth_abi raises several types; the call data is only an illustration
            logger.info("flow %s: no made-up arguments for %s", trigger.flow.code, function["name"])
            data = spec["selector"]
    tx = {
        "hash": Web3.keccak(text=f"kwala sample {head.hash} {trigger.flow.code}").to_0x_hex(),
        "from": (spec["from"] or [SOME_SENDER])[0].lower(),
        "to": (spec["to"][0] if spec["to"] else ZERO_ADDRESS).lower(),
        "value": value, "input": data.lower(), "nonce": 0, "gas": 100_000,
        "block_number": head.number, "block_hash": head.hash, "tx_index": 0,
    }
    decoded = matcher.decoder.decode(tx["input"]) if matcher.decoder else None
    candidate = TxCandidate(matcher, *(decoded or ({}, [])))
    failed = spec["status"] == "failed"
    receipt = {"succeeded": not failed, "gas_used": 21_000 if data == "0x" else 48_000,
               "effective_gas_price": 1_000_000_000, "contract_address": None,
               "revert_reason": "execution reverted (made-up sample)" if failed else None}
    return tx_payload(candidate, tx, receipt, chain_id=chain.chain_id, timestamp=head.timestamp)


def _value_for(type_str: str, flt: Mapping[str, Any] | None) -> Any:
    """An ABI value of `type_str` that the argument filter accepts (a zero value without one)."""
    if flt is not None and flt["op"] in ("eq", "in", "gte", "lte", "gt", "lt"):
        wanted = flt["value"][0] if flt["op"] == "in" else flt["value"]
        if type_str.startswith(("uint", "int")) and not type_str.endswith("]"):
            wanted = int(wanted)
            return wanted + 1 if flt["op"] == "gt" else wanted - 1 if flt["op"] == "lt" else wanted
        try:
            return abi_lib.coerce_value(type_str, wanted)
        except abi_lib.AbiError:
            pass
    if type_str.endswith("]"):
        return []
    if type_str.startswith("("):
        return tuple(_value_for(t, None) for t in _tuple_member_types(type_str))
    if type_str.startswith(("uint", "int")):
        return 1 if flt is not None and flt["op"] == "ne" and int(flt["value"]) == 0 else 0
    if type_str == "address":
        return ZERO_ADDRESS
    if type_str == "bool":
        return False
    if type_str == "string":
        return ""
    if type_str == "bytes":
        return b""
    if type_str.startswith("bytes"):
        return b"\0" * int(type_str[5:])
    return 0


def _block_samples(trigger: _Trigger) -> Samples:
    chain, client = _chain(trigger)
    every = max(int(trigger.config.get("every") or 1), 1)
    samples = Samples("Latest blocks", empty="The chain has no block yet.")
    try:
        target = client.block_number() - int(trigger.config.get("confirmations") or 0)
        first = target - target % every
        numbers = [n for n in range(first, first - every * MAX_SAMPLES, -every) if n >= 0]
        blocks = client.get_blocks(numbers) if numbers else []
    except ChainError as exc:
        raise _unreadable(chain, "the latest blocks", exc) from None
    for block in blocks:
        if block is None:
            continue
        payload = {"type": "chain.block", "chain_id": chain.chain_id, "block_number": block.number,
                   "block_hash": block.hash, "timestamp": block.timestamp}
        samples.items.append(Sample(f"block {block.number} · {_utc(block.timestamp)}", payload))
    return samples


def _state_samples(trigger: _Trigger) -> Samples:
    chain, client = _chain(trigger)
    matcher = _matcher(trigger)
    function = trigger.spec["function_abi"]["name"]
    samples = Samples("Current state")
    try:
        block = client.get_block(client.block_number() - int(trigger.config.get("confirmations") or 0))
        if block is None:
            raise ChainError("the node has no such block", retryable=True)
        raw = client.call(matcher.address, matcher.call_data, block.hash)
    except ChainError as exc:
        raise _unreadable(chain, f"{function}()", exc) from None
    try:
        result, outputs = matcher.decode_result(raw or "0x")
    except Exception:  # eth_abi's decoding errors: the contract answered something else
        raise SampleError(f"{function}() at block {block.number} answered {str(raw)[:66]}, which does not decode "
                          f"as its outputs: is the address a contract with this function?") from None
    payload = {"type": "chain.state", "chain_id": chain.chain_id, "block_number": block.number,
               "block_hash": block.hash, "timestamp": block.timestamp, "result": result, "outputs": outputs}
    holds = _holds(trigger, payload, {"result": result})
    verdict = {True: "the condition holds now", False: "the condition does not hold now",
               None: "the condition fails on it"}[holds]
    samples.items.append(Sample(f"block {block.number} · {function}() = {_short(result)} · {verdict}", payload))
    samples.note = f"Read at block {block.number}; {verdict}."
    return samples


# -- webhooks, schedules, manual -----------------------------------------------------------


def _webhook_samples(trigger: _Trigger) -> Samples:
    """The flow's last webhook requests, as their runs got them; an example request if none came yet."""
    samples = Samples("Recent requests")
    runs = (Run.objects.filter(flow=trigger.flow, trigger_key__startswith="webhook:", trigger__type="webhook")
            .order_by("-created_at").only("code", "created_at", "trigger")[:WEBHOOK_RUNS_SHOWN])
    for run in runs:
        label = f"{timezone.localtime(run.created_at):%Y-%m-%d %H:%M:%S} · {run.trigger.get('method', 'POST')}"
        samples.items.append(Sample(f"{label} · run {str(run.code)[:8]}", run.trigger))
    if samples.items:
        return samples
    headers = {"content-type": "application/json", "user-agent": "curl/8.5.0", "accept": "*/*"}
    if trigger.config.get("verification") == "standard-webhooks":
        headers.update({"webhook-id": "msg_2mZ1Xb8Qz4v1", "webhook-timestamp": str(int(trigger.now.timestamp())),
                        "webhook-signature": "v1,<signature>"})
    elif trigger.config.get("verification") == "hmac-sha256":
        headers[(trigger.config.get("signature_header") or "X-Signature-256").lower()] = "<hex digest>"
    body = {"event": "payment.succeeded", "id": "evt_1Q2w3E4r", "amount": 4200, "currency": "usd",
            "customer": {"id": "cus_9Z8y7X", "email": "ada@example.com"}, "created_at": trigger.now.isoformat()}
    samples.title = "Example request"
    samples.note = "No request has come to this flow's webhook yet: this one is an example."
    samples.items.append(Sample("example · POST · JSON body",
                                {"type": "webhook", "method": "POST", "body": body, "headers": headers,
                                 "query": {}}))
    return samples


def _schedule_samples(trigger: _Trigger) -> Samples:
    """The schedule's latest windows (previous_at..scheduled_at), as the scheduler would hand them over."""
    samples = Samples("Schedule windows", empty="This schedule has no tick.")
    for previous, scheduled in _windows(trigger.spec, trigger.now):
        fired = max(scheduled, trigger.now)
        payload = {"type": "schedule", "scheduled_at": _iso(scheduled), "previous_at": _iso(previous),
                   "fired_at": _iso(fired)}
        samples.items.append(Sample(f"due {scheduled.astimezone(ZoneInfo('UTC')):%Y-%m-%d %H:%M} UTC", payload))
    return samples


def _windows(spec: Mapping[str, Any], now: datetime) -> list[tuple[datetime, datetime]]:
    start_at = _when(spec.get("start_at"))
    if spec.get("cron"):
        zone = ZoneInfo(spec.get("timezone") or "UTC")
        # get_prev is strictly before its start: one second on includes a tick at `now`.
        ticks = croniter(spec["cron"], (now + timedelta(seconds=1)).astimezone(zone))
        times = [ticks.get_prev(datetime) for _ in range(SCHEDULE_WINDOWS + 1)]
        return [(times[i + 1], times[i]) for i in range(SCHEDULE_WINDOWS)]
    if spec.get("interval_seconds"):
        interval = timedelta(seconds=int(spec["interval_seconds"]))
        floor = start_at if start_at is not None and start_at <= now else None
        latest = floor + ((now - floor) // interval) * interval if floor else now.replace(microsecond=0)
        windows = []
        for i in range(SCHEDULE_WINDOWS):
            scheduled = latest - i * interval
            if floor is not None and scheduled < floor:
                break
            previous = max(scheduled - interval, floor) if floor is not None else scheduled - interval
            windows.append((previous, scheduled))
        return windows
    if start_at is not None:
        return [(start_at, start_at)]  # a single run: the window begins where the schedule does
    return []


def _manual_samples(trigger: _Trigger) -> Samples:
    payload = trigger.config.get("sample_payload")
    samples = Samples("Sample payload")
    samples.note = "A manual run hands its payload to the flow as trigger.payload."
    samples.items.append(Sample("the trigger's sample payload", payload if isinstance(payload, dict) else {}))
    return samples


# -- helpers -------------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=ZoneInfo("UTC"))


def _iso(value: datetime) -> str:
    return value.astimezone(ZoneInfo("UTC")).isoformat()


def _utc(timestamp: int) -> str:
    return f"{datetime.fromtimestamp(timestamp, ZoneInfo('UTC')):%Y-%m-%d %H:%M:%S} UTC"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


SAMPLERS: dict[str, Callable[[_Trigger], Samples]] = {
    "chain.event": _event_samples,
    "chain.transaction": _transaction_samples,
    "chain.block": _block_samples,
    "chain.state": _state_samples,
    "webhook": _webhook_samples,
    "schedule": _schedule_samples,
    "manual": _manual_samples,
}
