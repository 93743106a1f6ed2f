"""Compile and validate a generated 1,000-node graph many times.

Run from the repo root: ``python bench/compile.py [--nodes 1000] [--runs 50]``.
The last printed line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.graph import compile_graph

TOKEN = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


def generate_graph(size: int, seed: int = 7) -> dict:
    """A valid graph: an event trigger, then a tree of mixed nodes whose
    expressions read their parent's output, with a join every so often."""
    rng = random.Random(seed)
    nodes = [
        {
            "id": "t",
            "type": "chain.event",
            "name": "Transfer",
            "position": {"x": 0, "y": 0},
            "config": {
                "chain": 1,
                "addresses": [TOKEN],
                "event": "Transfer(address indexed from, address indexed to, uint256 value)",
                "filters": [{"arg": "value", "op": "gte", "value": "1000000"}],
                "condition": "trigger.args.value > 10**6",
            },
        }
    ]
    edges = []
    # (id, port) pairs that can feed a new node
    outlets = [("t", "out")]
    for i in range(1, size):
        nid = f"n{i}"
        parent, port = rng.choice(outlets[-50:])
        ref = "trigger.args.value" if parent == "t" else f"steps.{parent}.status"
        kind = i % 6
        if kind == 0:
            node = {"type": "condition", "config": {"expression": f"{ref} != 'x' and trigger.args.value > {i}"}}
            new_outlets = [(nid, "true"), (nid, "false")]
        elif kind == 1:
            node = {"type": "transform", "config": {"fields": [{"name": "v", "expression": f"trigger.args.value * {i}"}, {"name": "s", "expression": ref}]}}
            new_outlets = [(nid, "out")]
        elif kind == 2:
            node = {"type": "http.request", "config": {"url": "https://example.com/hook/" + str(i), "headers": {"X-Run": "{{ flow.name }}"}, "body": {"value": "{{ trigger.args.value }}", "parent": "{{ " + ref + " }}"}}}
            new_outlets = [(nid, "out"), (nid, "error")]
        elif kind == 3:
            node = {"type": "notify.slack", "config": {"webhook_secret": "SLACK_URL", "text": "Moved {{ trigger.args.value|format_units(6) }} USDC after {{ " + ref + " }}"}}
            new_outlets = [(nid, "out")]
        elif kind == 4:
            node = {"type": "delay", "config": {"duration": "5m"}}
            new_outlets = [(nid, "out")]
        else:
            node = {"type": "contract.read", "config": {"chain": 1, "address": TOKEN, "function": "balanceOf(address owner) view returns (uint256)", "args": ["{{ trigger.args.to }}"]}}
            new_outlets = [(nid, "out")]
        node.update({"id": nid, "name": f"Step {i}", "position": {"x": (i % 10) * 200, "y": i * 10}})
        nodes.append(node)
        edges.append({"source": parent, "source_port": port, "target": nid})
        outlets.extend(new_outlets)
    return {"nodes": nodes, "edges": edges}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    graph = generate_graph(args.nodes)
    chains = {1: "ethereum"}
    secrets = {"SLACK_URL"}

    start = time.perf_counter()
    dag = compile_graph(graph, chains=chains, secret_names=secrets)
    cold_ms = (time.perf_counter() - start) * 1000
    assert len(dag["steps"]) == args.nodes - 1

    timings = []
    for _ in range(args.runs):
        start = time.perf_counter()
        compile_graph(graph, chains=chains, secret_names=secrets)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    p95 = timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]
    print(f"first compile (cold expression caches): {cold_ms:.1f} ms")
    print(f"{args.runs} runs: median {statistics.median(timings):.1f} ms, p95 {p95:.1f} ms")
    print(
        json.dumps(
            {
                "bench": "compile",
                "nodes": args.nodes,
                "runs": args.runs,
                "cold_ms": round(cold_ms, 2),
                "median_ms": round(statistics.median(timings), 2),
                "p95_ms": round(p95, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
