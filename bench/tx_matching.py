"""Match blocks of transactions against 10,000 active transaction triggers on one core.

Run from the repo root: ``python bench/tx_matching.py [--triggers 10000] [--txs 300] [--blocks 50]``.
Triggers (executor.matching.TxIndex), on 3,000 watched addresses: native deposits with a
minimum value, admin calls by function (transferOwnership, with a decoded argument filter
on a share of them), anything sent by a watched wallet, failed calls, and 100 any-address
triggers on a function selector (ERC-20 transfer to a watched recipient). Transactions: a
mainnet-like block (300 transactions: ERC-20 transfers, swaps, plain transfers), a fifth of
them touching a watched address. Figures cover the per-transaction work after the block is
read: lookup, decoding, argument filters, value bounds, status, condition and the run
payload for every match (receipts are synthetic: reading them is network time, measured by
bench/rpc_faults.py-style runs, not here). The last line is one JSON object.
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

from executor.matching import build_chain_triggers, condition_holds, tx_payload  # noqa: E402
from flows.graph import compile_graph  # noqa: E402

TRANSFER = "0x" + keccak(text="transfer(address,uint256)").hex()[:8]
OWNERSHIP = "0x" + keccak(text="transferOwnership(address)").hex()[:8]
SWAP = "0x" + keccak(text="swapExactTokensForTokens(uint256,uint256,address[],address,uint256)").hex()[:8]


def address(i: int) -> str:
    return "0x" + keccak(text=f"account-{i}").hex()[-40:]


def compiled(config: dict) -> dict:
    graph = {"nodes": [{"id": "t", "type": "chain.transaction", "name": "T", "position": {"x": 0, "y": 0},
                        "config": {"chain": 1, **config}},
                       {"id": "s", "type": "stop", "name": "S", "position": {"x": 1, "y": 0}, "config": {}}],
             "edges": [{"source": "t", "source_port": "out", "target": "s"}]}
    return compile_graph(graph, chains={1: "eth"})["trigger"]


def make_triggers(count: int, watched: int, rng: random.Random) -> list[dict]:
    placeholder = to_checksum_address(address(0))
    kinds = [
        compiled({"to": [placeholder], "min_value": "10 ether"}),
        compiled({"to": [placeholder], "function": "transferOwnership(address newOwner)"}),
        compiled({"to": [placeholder], "function": "transferOwnership(address newOwner)",
                  "filters": [{"arg": "newOwner", "op": "ne", "value": placeholder}]}),
        compiled({"from": [placeholder], "status": "any"}),
        compiled({"to": [placeholder], "status": "failed"}),
        compiled({"to": [placeholder], "condition": "trigger.value > 10**17 and trigger.gas_used > 30000"}),
    ]
    rows = []
    for i in range(count):
        if i < 100:
            spec = compiled({"function": "transfer(address to, uint256 amount)",
                             "filters": [{"arg": "to", "op": "eq", "value": to_checksum_address(address(i))}]})
        else:
            spec = dict(kinds[i % len(kinds)])
            where = [to_checksum_address(address(rng.randrange(watched)))]
            spec["from" if spec["from"] else "to"] = where
        rows.append({"version_id": i, "flow_id": i, "team_id": 1, "flow_code": f"f{i}", "spec": spec})
    return rows


def make_tx(rng: random.Random, watched: int, index: int) -> tuple[dict, dict]:
    touches = rng.random() < 0.2
    party = address(rng.randrange(watched)) if touches else address(10_000 + rng.randrange(10**6))
    roll = rng.random()
    if roll < 0.45:  # ERC-20 transfer, to a token contract
        data = TRANSFER + encode(["address", "uint256"], [address(rng.randrange(200)), rng.randrange(10**24)]).hex()
        value = 0
    elif roll < 0.75:  # a router swap
        data = SWAP + encode(["uint256", "uint256", "address[]", "address", "uint256"],
                             [10**18, 1, [address(1), address(2)], address(3), 2**40]).hex()
        value = 0
    elif roll < 0.95:  # a plain transfer
        data, value = "0x", rng.randrange(10**20)
    else:  # an admin call
        data, value = OWNERSHIP + encode(["address"], [address(rng.randrange(10**6))]).hex(), 0
    sender, to = (party, address(10**7 + index)) if rng.random() < 0.3 else (address(2 * 10**7 + index), party)
    tx = {"hash": "0x" + keccak(text=f"tx-{index}-{rng.random()}").hex(), "from": sender, "to": to, "value": value,
          "input": data, "nonce": index, "gas": 200_000, "block_number": 1, "block_hash": "0x" + "ab" * 32,
          "tx_index": index}
    receipt = {"hash": tx["hash"], "block_hash": tx["block_hash"], "succeeded": rng.random() > 0.05,
               "gas_used": rng.randrange(21_000, 200_000), "effective_gas_price": 10**10, "contract_address": None,
               "revert_reason": None}
    return tx, receipt


def main() -> None:
    import django

    django.setup()
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--txs", type=int, default=300, help="transactions per block")
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--watched", type=int, default=3_000)
    args = parser.parse_args()
    rng = random.Random(7)
    rows = make_triggers(args.triggers, args.watched, rng)
    started = time.perf_counter()
    index = build_chain_triggers(rows)[0][1].txs
    build_s = time.perf_counter() - started
    blocks = [[make_tx(rng, args.watched, b * args.txs + i) for i in range(args.txs)] for b in range(args.blocks)]
    matches = fired = 0
    started = time.perf_counter()
    for txs in blocks:
        for tx, receipt in txs:
            for candidate in index.candidates(tx):
                if not candidate.trigger.wants_status(receipt["succeeded"]):
                    continue
                matches += 1
                payload = tx_payload(candidate, tx, receipt, chain_id=1, timestamp=0)
                if condition_holds(candidate.trigger.condition, payload, flow_code="f", now=None):
                    fired += 1
    elapsed = time.perf_counter() - started
    total = args.txs * args.blocks
    result = {
        "triggers": len(index), "transactions": total, "candidate_matches": matches, "fired": fired,
        "transactions_per_second": round(total / elapsed), "us_per_transaction": round(elapsed / total * 1e6, 2),
        "index_build_ms": round(build_s * 1000, 1),
    }
    print(f"{len(index)} triggers, {total} transactions in blocks of {args.txs}: {matches} matches, {fired} fired")
    print(f"{result['transactions_per_second']:,} transactions/s, {result['us_per_transaction']} µs per "
          f"transaction; index built in {result['index_build_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
