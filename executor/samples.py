"""Sample trigger payloads for test runs: recent real events of the trigger's contract.

Read straight from the chain's RPC endpoint with web3 (a bounded eth_getLogs
over the last blocks), decoded into the same shape the trigger's output_shape
describes, so a test run sees what a live run would see.
"""

from __future__ import annotations

import logging
from typing import Any

from hexbytes import HexBytes
from web3 import Web3
from web3._utils.events import get_event_data

from executor.models import Chain, RpcEndpoint
from flows import abi as abi_lib
from flows.nodes import NODE_TYPES, TriggerType

logger = logging.getLogger(__name__)

LOOKBACK_BLOCKS = 5_000
MAX_SAMPLES = 5
RPC_TIMEOUT_S = 5


class SampleError(Exception):
    """Why no samples could be fetched, in words for the person testing."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, HexBytes)):
        return "0x" + bytes(value).hex()
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 53:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def recent_trigger_samples(graph: dict) -> list[dict[str, Any]]:
    """Up to MAX_SAMPLES trigger payloads, newest first, for a chain.event trigger.

    Raises SampleError when the trigger is not a contract event, is incomplete,
    or the chain cannot be reached."""
    trigger = next(
        (n for n in graph.get("nodes", []) if isinstance(NODE_TYPES.get(n.get("type")), TriggerType)), None
    )
    if trigger is None or trigger.get("type") != "chain.event":
        raise SampleError("Samples come from contract events; this flow's trigger is not one. Edit the JSON.")
    config = NODE_TYPES["chain.event"].normalize(trigger.get("config") or {})
    try:
        event = abi_lib.resolve_event(config["event"])
    except abi_lib.AbiError as exc:
        raise SampleError(f"Choose the trigger's event first ({exc}).") from None
    chain = Chain.objects.filter(chain_id=config.get("chain") or -1, enabled=True).first()
    if chain is None:
        raise SampleError("Choose the trigger's chain first.")
    endpoint = (
        RpcEndpoint.objects.filter(chain=chain, kind=RpcEndpoint.Kind.HTTP, enabled=True).order_by("priority").first()
    )
    if endpoint is None:
        raise SampleError(f"{chain.name} has no HTTP RPC endpoint configured.")
    w3 = Web3(Web3.HTTPProvider(endpoint.url, request_kwargs={"timeout": RPC_TIMEOUT_S}))
    topic0 = abi_lib.event_topic0(event)
    try:
        head = w3.eth.block_number
        params: dict[str, Any] = {"fromBlock": max(head - LOOKBACK_BLOCKS, 0), "toBlock": head, "topics": [topic0]}
        if config.get("addresses"):
            params["address"] = config["addresses"]
        logs = w3.eth.get_logs(params)
    except Exception as exc:  # web3 raises many types; the person needs one sentence
        logger.warning("sample fetch failed on %s", chain.slug, exc_info=True)
        raise SampleError(f"Could not read recent events from {chain.name}: {exc.__class__.__name__}") from None
    samples = []
    for log in reversed(logs):
        try:
            decoded = get_event_data(w3.codec, event, log)
        except Exception:
            # Same topic0 but indexed differently: another contract's event of the same name.
            logger.debug("log %s does not decode as %s", log.get("logIndex"), event["name"])
            continue
        args = {k: _jsonable(v) for k, v in decoded["args"].items()}
        samples.append(
            {
                "args": args,
                "args_list": [args.get(p["name"]) for p in event["inputs"]],
                "event": event["name"],
                "contract": log["address"],
                "chain_id": chain.chain_id,
                "tx_hash": _jsonable(log["transactionHash"]),
                "block_number": log["blockNumber"],
                "block_hash": _jsonable(log["blockHash"]),
                "log_index": log["logIndex"],
            }
        )
        if len(samples) >= MAX_SAMPLES:
            break
    return samples
