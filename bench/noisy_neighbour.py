"""One team's maximal-cost trigger condition against another team's throughput on the same chain.

Run from the repo root: ``python bench/noisy_neighbour.py [--logs 200] [--blocks 5] [--budget-ms 500]``.
In process, the listener's matching and condition path (executor.listener._log_claims) over
blocks of ERC-20 Transfer logs that 50 triggers of a quiet team watch, three ways:

* alone: only the quiet team;
* noisy, budgeted: plus one trigger of another team whose condition costs as much as the
  sandbox allows on every log, with the per-team budget per block (executor.quotas);
* noisy, unbudgeted: the same without the budget (what a listener did before).

Prints each way's seconds per block and the quiet team's runs claimed per second; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"
# As much as one evaluation may do: a large join, still inside the sandbox's size and time limits.
MAXIMAL = "(range(10000)|map('string')|join|length) > 0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=int, default=200, help="Transfer logs per block")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--budget-ms", type=int, default=500)
    parser.add_argument("--quiet", type=int, default=50, help="the quiet team's triggers (half with a condition)")
    args = parser.parse_args()

    import django

    django.setup()
    from eth_abi import encode
    from eth_utils import keccak, to_checksum_address

    from executor.listener import _log_claims
    from executor.matching import build_chain_triggers
    from executor.quotas import ConditionBudget
    from flows.graph import compile_graph

    token = "0x" + keccak(text="token").hex()[-40:]
    topic0 = "0x" + keccak(text="Transfer(address,address,uint256)").hex()

    def spec(condition: str | None) -> dict:
        config = {"chain": 1, "addresses": [to_checksum_address(token)], "event": TRANSFER, "filters": []}
        if condition:
            config["condition"] = condition
        graph = {"nodes": [{"id": "t", "type": "chain.event", "name": "T", "position": {"x": 0, "y": 0},
                            "config": config},
                           {"id": "s", "type": "stop", "name": "S", "position": {"x": 1, "y": 0}, "config": {}}],
                 "edges": [{"source": "t", "source_port": "out", "target": "s"}]}
        return compile_graph(graph, chains={1: "eth"})["trigger"]

    quiet = [{"version_id": i, "flow_id": i, "team_id": 2, "flow_code": f"q{i}",
              "spec": spec("trigger.args.value > 10" if i % 2 else None)} for i in range(1, args.quiet + 1)]
    noisy = [{"version_id": 1000, "flow_id": 1000, "team_id": 1, "flow_code": "noisy", "spec": spec(MAXIMAL)}]
    chain = SimpleNamespace(chain_id=1, pk=1, slug="bench")

    def logs(block: int) -> list[dict]:
        return [{"address": token, "topics": [topic0, "0x" + "00" * 12 + "11" * 20, "0x" + "00" * 12 + "22" * 20],
                 "data": "0x" + encode(["uint256"], [10**18 + i]).hex(), "block_number": block,
                 "block_hash": "0x" + f"{block:064x}", "log_index": i, "tx_hash": "0x" + f"{i:064x}",
                 "removed": False} for i in range(args.logs)]

    def run(rows: list[dict], budgeted: bool) -> dict:
        triggers = build_chain_triggers(rows)[0][1].logs
        quiet_runs, started = 0, time.perf_counter()
        for block in range(args.blocks):
            budget = None
            if budgeted:
                budget = ConditionBudget(f"block {block}")
                budget._limits = {1: args.budget_ms / 1000, 2: args.budget_ms / 1000}
            for log in logs(block):
                claims: list = []
                _log_claims(chain, log, triggers.candidates(log), {}, 0, None, claims, budget)
                quiet_runs += sum(1 for c in claims if c.team_id == 2)
        elapsed = time.perf_counter() - started
        return {"seconds_per_block": round(elapsed / args.blocks, 3),
                "quiet_runs_per_second": round(quiet_runs / elapsed, 1), "quiet_runs": quiet_runs,
                "quiet_runs_lost": args.quiet * args.logs * args.blocks - quiet_runs}

    alone = run(quiet, budgeted=True)
    budgeted = run(quiet + noisy, budgeted=True)
    unbudgeted = run(quiet + noisy, budgeted=False)
    for name, figures in (("alone", alone), ("noisy, budgeted", budgeted), ("noisy, unbudgeted", unbudgeted)):
        print(f"{name:>18}: {figures['seconds_per_block']:.3f} s a block, "
              f"{figures['quiet_runs_per_second']:,.0f} quiet-team runs/s ({figures['quiet_runs']} runs, "
              f"{figures['quiet_runs_lost']} lost)")
    print(json.dumps({"logs_per_block": args.logs, "budget_ms": args.budget_ms, "alone": alone,
                      "noisy_budgeted": budgeted, "noisy_unbudgeted": unbudgeted}))


if __name__ == "__main__":
    main()
