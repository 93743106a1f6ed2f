"""Match blocks of logs against 10,000 active triggers on one core.

Run from the repo root: ``python bench/matching.py [--triggers 10000] [--logs 1000] [--blocks 20]``.
Triggers: Transfer/Approval/Swap-like events on 3,000 contracts, some with an
indexed filter, a big-int argument filter or a condition, plus 100 any-address
triggers. Logs: a realistic mix where about a third come from watched contracts.
Figures cover the whole per-log work: lookup, decoding, filters, conditions and
building the run payload for every match. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")

from eth_abi import encode  # noqa: E402
from eth_utils import keccak, to_checksum_address  # noqa: E402

from executor.matching import build_chain_triggers, condition_holds, log_payload  # noqa: E402
from flows.graph import compile_graph  # noqa: E402

EVENTS = [
    "Transfer(address indexed from, address indexed to, uint256 value)",
    "Approval(address indexed owner, address indexed spender, uint256 value)",
    "Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out, uint256 amount1Out, address indexed to)",
]


def address(i: int) -> str:
    return "0x" + keccak(text=f"contract-{i}").hex()[-40:]


def spec_template(event: str, rng: random.Random) -> dict:
    config = {"chain": 1, "addresses": [to_checksum_address(address(0))], "event": event, "filters": []}
    roll = rng.random()
    first_arg = event.split("(")[1].split(" ")[0]
    if roll < 0.2:
        config["filters"] = [{"arg": "from" if first_arg == "address" and "from" in event else
                              ("owner" if "owner" in event else "sender"), "op": "eq",
                              "value": to_checksum_address(address(rng.randrange(50)))}]
    elif roll < 0.5:
        arg = "value" if "value" in event else "amount0In"
        config["filters"] = [{"arg": arg, "op": "gte", "value": str(10**18 * rng.randrange(1, 1000))}]
    elif roll < 0.6:
        arg = "value" if "value" in event else "amount1Out"
        config["condition"] = f"trigger.args.{arg} > 10**20"
    graph = {"nodes": [{"id": "t", "type": "chain.event", "name": "T", "position": {"x": 0, "y": 0},
                        "config": config},
                       {"id": "s", "type": "stop", "name": "S", "position": {"x": 1, "y": 0}, "config": {}}],
             "edges": [{"source": "t", "source_port": "out", "target": "s"}]}
    return compile_graph(graph, chains={1: "eth"})["trigger"]


def any_address_template(event: str, i: int) -> dict:
    arg = "from" if "from" in event else ("owner" if "owner" in event else "sender")
    config = {"chain": 1, "addresses": [], "event": event,
              "filters": [{"arg": arg, "op": "eq", "value": to_checksum_address(address(i % 60))}]}
    graph = {"nodes": [{"id": "t", "type": "chain.event", "name": "T", "position": {"x": 0, "y": 0},
                        "config": config},
                       {"id": "s", "type": "stop", "name": "S", "position": {"x": 1, "y": 0}, "config": {}}],
             "edges": [{"source": "t", "source_port": "out", "target": "s"}]}
    return compile_graph(graph, chains={1: "eth"})["trigger"]


def make_triggers(count: int, contracts: int, rng: random.Random) -> list[dict]:
    templates = [spec_template(EVENTS[i % 3], rng) for i in range(60)]
    any_templates = [any_address_template(EVENTS[i % 3], i) for i in range(100)]
    rows = []
    for i in range(count):
        spec = dict(templates[i % len(templates)])
        if i < 100:
            # Any-address triggers watch one party, like "any token sent to my treasury".
            spec = dict(any_templates[i % len(any_templates)])
        else:
            spec["addresses"] = [to_checksum_address(address(rng.randrange(contracts)))]
        rows.append({"version_id": i, "flow_id": i, "team_id": 1, "flow_code": f"f{i}", "spec": spec})
    return rows


def make_log(rng: random.Random, contracts: int, index: int) -> dict:
    event = rng.randrange(3)
    # A third of the logs come from watched contracts, the rest from anywhere.
    contract = address(rng.randrange(contracts)) if rng.random() < 0.33 else address(10_000 + rng.randrange(10**6))
    who = [encode(["address"], [address(rng.randrange(60))]).hex(), encode(["address"], [address(rng.randrange(10**6))]).hex()]
    value = rng.randrange(10**24)
    if event == 0:
        topics = ["0x" + keccak(text="Transfer(address,address,uint256)").hex(), "0x" + who[0], "0x" + who[1]]
        data = encode(["uint256"], [value])
    elif event == 1:
        topics = ["0x" + keccak(text="Approval(address,address,uint256)").hex(), "0x" + who[0], "0x" + who[1]]
        data = encode(["uint256"], [value])
    else:
        topics = ["0x" + keccak(text="Swap(address,uint256,uint256,uint256,uint256,address)").hex(), "0x" + who[0], "0x" + who[1]]
        data = encode(["uint256"] * 4, [value, 0, 0, value // 3])
    return {"address": contract, "topics": topics, "data": "0x" + data.hex(), "block_number": 1,
            "block_hash": "0x" + "ab" * 32, "log_index": index, "tx_hash": "0x" + "cd" * 32}


def main() -> None:
    import django

    django.setup()
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--logs", type=int, default=1_000)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--contracts", type=int, default=3_000)
    args = parser.parse_args()
    rng = random.Random(11)
    rows = make_triggers(args.triggers, args.contracts, rng)
    started = time.perf_counter()
    index = build_chain_triggers(rows)[0][1].logs
    build_s = time.perf_counter() - started
    blocks = [[make_log(rng, args.contracts, i) for i in range(args.logs)] for _ in range(args.blocks)]
    matches = fired = 0
    started = time.perf_counter()
    for logs in blocks:
        for log in logs:
            for candidate in index.candidates(log):
                matches += 1
                payload = log_payload(candidate, log, chain_id=1, timestamp=0)
                if condition_holds(candidate.trigger.condition, payload, flow_code="f", now=None):
                    fired += 1
    elapsed = time.perf_counter() - started
    total = args.logs * args.blocks
    result = {
        "triggers": len(index), "logs": total, "candidate_matches": matches, "fired": fired,
        "logs_per_second": round(total / elapsed), "us_per_log": round(elapsed / total * 1e6, 2),
        "index_build_ms": round(build_s * 1000, 1),
    }
    print(f"{len(index)} triggers, {total} logs in blocks of {args.logs}: {matches} candidate matches, {fired} fired")
    print(f"{result['logs_per_second']:,} logs/s, {result['us_per_log']} µs per log; index built in {result['index_build_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
