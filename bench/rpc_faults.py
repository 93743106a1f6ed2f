"""Events through every RPC fault class at once: how many are delivered, missed, duplicated, and how late.

The product as it runs: anvil with 1-second blocks, `manage.py listen_chains` and
`manage.py rundramatiq` as child processes, embedded PostgreSQL and Redis under
var/bench, a flow *chain.event -> http.request* to a local HTTP sink. The chain's
only endpoints are tests.rpcproxy.RpcProxy (HTTP and websocket) in front of
anvil, injecting together: 429s and 503s with Retry-After, slow answers, headers
not yet served for the newest block, stale heads, eth_getLogs range refusals,
reordered batches, a logs index lagging 2 blocks behind (receipts too), websocket
drops every 10 s, duplicated, dropped and reordered newHeads.

    python bench/rpc_faults.py [--events 1000] [--per-tx 5] [--http-only] [--fault CLASS]

Prints the figures; the last line is one JSON object with emitted, delivered,
missed, duplicates, the delay from the transaction being sent to the webhook
(p50/p99), what the chain's health said meanwhile, and the faults injected.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time

from harness import BIG, clean_slate, percentile, product_env, spawn_workers_and_listener, stop

# Each fault class as tests.rpcproxy.Faults settings, with the shares it has when it runs alone
# (high enough that a 200-event run meets it dozens of times); all together, the shares are a
# fifth of these. "timeout" holds answers past the client's 10 s timeout, so it runs alone only.
FAULT_CLASSES = {
    "lagging-logs": {"lag_logs": 2, "lag_receipts": True},
    "rate-limit": {"rate_limit": 0.15},
    "unavailable": {"unavailable": 0.1},
    "slow": {"slow": 0.15, "slow_seconds": 0.3},
    "timeout": {"slow": 0.05, "slow_seconds": 11},
    "null-headers": {"null_headers": 0.25},
    "stale-head": {"stale_head": 0.25},
    "range-refused": {"max_range": 5},
    "reordered-batches": {"reorder_batches": True},
    "socket-drops": {"ws_drop_after": 10.0},
    "heads-duplicated": {"ws_duplicate_heads": 0.5},
    "heads-missing": {"ws_drop_heads": 0.5},
    "heads-reordered": {"ws_reorder_heads": True},
}
SHARES = {"rate_limit", "unavailable", "slow", "null_headers", "stale_head", "ws_duplicate_heads", "ws_drop_heads"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--per-tx", type=int, default=5, help="events per transaction (EventZoo.emitBatch)")
    parser.add_argument("--tx-interval", type=float, default=0.5, help="seconds between transactions")
    parser.add_argument("--http-only", action="store_true", help="no websocket endpoint")
    parser.add_argument("--fault", choices=["all", *FAULT_CLASSES], default="all",
                        help="one fault class alone, or all together (the default; timeouts only alone)")
    args = parser.parse_args()

    var_dir = product_env()

    from kwala_site.dev.devchain import AnvilProcess
    from tests.rpcproxy import Faults, RpcProxy

    anvil = AnvilProcess(chain_id=31337, block_time=1, log_path=var_dir / "anvil.log")
    anvil.start()
    children: list[subprocess.Popen] = []
    try:
        anvil.wait_ready(timeout=20)
        together = {k: v / 5 if k in SHARES else v
                    for name, fault in FAULT_CLASSES.items() if name != "timeout" for k, v in fault.items()}
        faults = Faults(**(together if args.fault == "all" else FAULT_CLASSES[args.fault]))
        with RpcProxy(anvil.http_url, faults, seed=7, ws_upstream=anvil.ws_url) as proxy:
            chain = {"slug": "bench", "name": "Bench (anvil behind a fault proxy)", "chain_id": 31337,
                     "confirmations": 0, "rpc_urls": [f"{proxy.url}/bench-key"]}
            if not args.http_only:
                chain["ws_urls"] = [proxy.ws_url]
            os.environ["KWALA_CHAINS"] = json.dumps([chain])
            result = measure(args, anvil, proxy, children, var_dir)
    finally:
        stop(children)
        anvil.stop()
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(result))


def measure(args, anvil, proxy, children, var_dir) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from web3 import Web3

    from executor.listener_health import chain_health
    from executor.models import ChainCursor
    from flows import actions
    from flows.models import Team
    from kwala_site.dev.devchain import DEV_ACCOUNTS, deploy, load_artifact
    from tests.sinks import HttpSink

    clean_slate()

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    zoo = w3.eth.contract(address=deploy(w3, "EventZoo"), abi=load_artifact("EventZoo")["abi"])
    sink = HttpSink()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="Bench")
    graph = {
        "nodes": [
            {"id": "t", "type": "chain.event", "name": "Big", "position": {"x": 0, "y": 0},
             "config": {"chain": 31337, "addresses": [zoo.address], "event": BIG, "confirmations": 0}},
            {"id": "hook", "type": "http.request", "name": "hook", "position": {"x": 250, "y": 0},
             "config": {"method": "POST", "url": f"{sink.url}/hook",
                        "body": {"tx": "{{ trigger.tx_hash }}", "log_index": "{{ trigger.log_index }}"}}},
        ],
        "edges": [{"source": "t", "source_port": "out", "target": "hook"}],
    }
    flow = actions.do_create_flow(team, user, "rpc faults bench", graph=graph)
    actions.do_publish_version(flow, user)
    connection.close()

    spawn_workers_and_listener(children)
    deadline = time.monotonic() + 60
    while not ChainCursor.objects.filter(block_number__isnull=False).exists():
        if time.monotonic() > deadline:
            raise SystemExit("the listener did not start (see var/bench/logs/listener.log)")
        time.sleep(0.2)

    # What the chain's health (the same function /readyz calls) said, sampled every second.
    health: list[dict] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(1.0):
            health.append(chain_health(detail=False)["chains"].get("bench", {}))
        connection.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    sender = DEV_ACCOUNTS[0].address
    sent: list[tuple[str, float]] = []
    for _ in range(args.events // args.per_tx):
        tx = zoo.functions.emitBatch(args.per_tx).build_transaction({"from": sender, "gas": 1_000_000})
        sent.append(("0x" + w3.eth.send_transaction(tx).hex().removeprefix("0x"), time.time()))
        time.sleep(args.tx_interval)

    expected: dict[tuple[str, int], float] = {}
    for tx_hash, at in sent:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        for log in receipt["logs"]:
            expected[(tx_hash, log["logIndex"])] = at
    emitted = len(expected)
    try:
        sink.wait_for("/hook", emitted, timeout=120)
    except TimeoutError:
        pass
    time.sleep(5)  # anything that would arrive twice, or late, has time to
    sampling.set()
    sampler.join(5)

    delivered: dict[tuple[str, int], float] = {}
    duplicates = 0
    for request in sink.to("/hook"):
        body = request.json()
        key = (body["tx"], int(body["log_index"]))
        if key in delivered:
            duplicates += 1
        else:
            delivered[key] = request.at
    delays = [(delivered[k] - at) * 1000 for k, at in expected.items() if k in delivered]
    sink.close()
    cursor = ChainCursor.objects.get(chain__slug="bench")
    injected: dict[str, int] = {}
    for method, fault in proxy.journal:
        name = fault if method in ("http", "ws", "batch") else f"{method}: {fault}"
        injected[name] = injected.get(name, 0) + 1
    return {
        "emitted": emitted,
        "delivered": len([k for k in expected if k in delivered]),
        "missed": len([k for k in expected if k not in delivered]),
        "duplicates": duplicates,
        "unexpected": len([k for k in delivered if k not in expected]),
        "delay_p50_ms": round(statistics.median(delays), 1) if delays else None,
        "delay_p99_ms": round(percentile(delays, 99), 1) if delays else None,
        "websocket": not args.http_only,
        "fault": args.fault,
        "health_samples": len(health),
        "health_not_ok_samples": sum(1 for h in health if not h.get("ok", True)),
        "health_held_samples": sum(1 for h in health if h.get("held_block") is not None),
        "rpc_inconsistencies_counted": cursor.inconsistencies,
        "faults_injected": injected,
        "rpc_requests": proxy.requests,
    }


if __name__ == "__main__":
    main()
