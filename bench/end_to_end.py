"""End to end on anvil: ERC-20 Transfer -> condition -> http.request to a local sink.

Measures event-to-webhook latency (p50/p99, 0 confirmations) through Kwala (real
Dramatiq worker, PostgreSQL, Redis) and through a minimal hand-written web3.py
script that polls the same logs and POSTs the same payload; then the saturated
throughput in runs per second with the default worker settings.

The listener is not on this branch yet: the benchmark's own loop turns each log
into a Run (as the listener will: one row + start_run on commit). The integrator
switches this to executor.listener. Latency clock: from the transaction's send
(anvil mines at once) to the request arriving at the sink, for both paths.

    python bench/end_to_end.py [--events 50] [--runs 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
os.environ.setdefault("KWALA_VAR_DIR", str(ROOT / "var" / "bench"))

import django

django.setup()

import httpx
from django.core.management import call_command
from django.db import transaction
from web3 import Web3

from executor import runner
from executor.models import Chain, RpcEndpoint, Run
from flows.actions import new_signing_secret
from flows.graph import compile_graph
from flows.models import Flow, FlowVersion, Team
from tests.executor.conftest import DEV_KEYS, Anvil
from tests.sinks import HttpSink

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def make_flow(token: str, sink_url: str) -> FlowVersion:
    team, _ = Team.objects.get_or_create(name="Bench")
    graph = {
        "nodes": [
            {"id": "t", "type": "chain.event", "name": "Transfer", "position": {"x": 0, "y": 0},
             "config": {"chain": 31337, "addresses": [token], "event": TRANSFER}},
            {"id": "big", "type": "condition", "name": "big", "position": {"x": 0, "y": 0},
             "config": {"expression": "trigger.args.value > 0"}},
            {"id": "hook", "type": "http.request", "name": "hook", "position": {"x": 0, "y": 0},
             "config": {"url": f"{sink_url}/kwala", "body": {"tx": "{{ trigger.tx_hash }}",
                                                            "value": "{{ trigger.args.value }}"}}},
        ],
        "edges": [{"source": "t", "source_port": "out", "target": "big"},
                  {"source": "big", "source_port": "true", "target": "hook"}],
    }
    dag = compile_graph(graph, chains={31337: "anvil-a"}, secret_names=None)
    flow = Flow.objects.create(team=team, name="bench", signing_secret=new_signing_secret())
    return FlowVersion.objects.create(flow=flow, number=1, graph=graph, dag=dag, status=FlowVersion.Status.PUBLISHED)


def run_from_log(version: FlowVersion, log, chain: Chain) -> Run:
    trigger = {"tx_hash": "0x" + log["transactionHash"].hex(), "block_number": log["blockNumber"],
               "args": {"from": "0x" + log["topics"][1].hex()[-40:], "to": "0x" + log["topics"][2].hex()[-40:],
                        "value": int.from_bytes(log["data"], "big")}}
    with transaction.atomic():
        run = Run.objects.create(team_id=version.flow.team_id, flow=version.flow, version=version, chain=chain,
                                 trigger_key=f"log:{chain.chain_id}:{log['blockHash'].hex()}:{log['logIndex']}",
                                 trigger=trigger, block_number=log["blockNumber"])
        runner.dispatch_run(run)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    anvil = Anvil(31337)
    sink = HttpSink()
    chain, _ = Chain.objects.get_or_create(chain_id=31337, defaults={"slug": "anvil-a", "name": "Anvil A"})
    RpcEndpoint.objects.filter(chain=chain).delete()
    RpcEndpoint.objects.create(chain=chain, url=anvil.url)
    token = anvil.contract("KwalaToken", anvil.deploy("KwalaToken", DEV_KEYS[0], "Kwala", "KWL"))
    owner = anvil.w3.eth.account.from_key(DEV_KEYS[0])
    version = make_flow(token.address, sink.url)
    env = dict(os.environ)
    worker = subprocess.Popen([sys.executable, "manage.py", "rundramatiq"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w3 = anvil.w3
    nonce = [w3.eth.get_transaction_count(owner.address)]

    def mint() -> float:
        tx = token.functions.mint(owner.address, 5).build_transaction(
            {"from": owner.address, "nonce": nonce[0], "gas": 100_000, "maxFeePerGas": 10**10,
             "maxPriorityFeePerGas": 10**9})
        nonce[0] += 1
        raw = owner.sign_transaction(tx).raw_transaction
        started = time.time()
        w3.eth.send_raw_transaction(raw)
        return started

    try:
        time.sleep(6)  # worker start-up
        topic = Web3.keccak(text="Transfer(address,address,uint256)")

        def measure(path: str, handle) -> list[float]:
            latencies = []
            for _ in range(args.events):
                before = len(sink.to(path))
                head = w3.eth.block_number
                started = mint()
                seen = False
                while not seen:
                    if w3.eth.block_number <= head:
                        time.sleep(0.002)
                        continue
                    for log in w3.eth.get_logs({"fromBlock": head + 1, "address": token.address, "topics": [topic]}):
                        handle(log)
                        seen = True
                    if not seen:
                        time.sleep(0.002)
                arrived = sink.wait_for(path, before + 1, timeout=30)[-1].at
                latencies.append((arrived - started) * 1000)
            return latencies

        client = httpx.Client()

        def script_handle(log):
            client.post(f"{sink.url}/script", json={"tx": "0x" + log["transactionHash"].hex(),
                                                     "value": int.from_bytes(log["data"], "big")})

        script = measure("/script", script_handle)
        kwala = measure("/kwala", lambda log: run_from_log(version, log, chain))

        # Throughput: many runs queued at once, timed until the last finishes.
        logs = w3.eth.get_logs({"fromBlock": 0, "address": token.address, "topics": [topic]})
        template = logs[-1]
        first_pk = Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        started = time.time()
        for index in range(args.runs):
            log = dict(template)
            log["logIndex"] = 100_000 + index + int(started)  # distinct trigger keys
            run_from_log(version, log, chain)
        created = time.time()
        while Run.objects.filter(pk__gt=first_pk, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).exists():
            time.sleep(0.2)
        finished = time.time()
        failed = Run.objects.filter(pk__gt=first_pk).exclude(status=Run.Status.SUCCEEDED).count()
    finally:
        worker.terminate()
        worker.wait(30)
        anvil.stop()
        sink.close()

    result = {
        "kwala_p50_ms": round(statistics.median(kwala), 1), "kwala_p99_ms": round(percentile(kwala, 99), 1),
        "script_p50_ms": round(statistics.median(script), 1), "script_p99_ms": round(percentile(script, 99), 1),
        "p50_ratio": round(statistics.median(kwala) / statistics.median(script), 2),
        "runs": args.runs, "runs_per_second": round(args.runs / (finished - started), 1),
        "enqueue_seconds": round(created - started, 2), "failed_runs": failed,
    }
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
