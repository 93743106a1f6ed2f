"""End to end on anvil: ERC-20 Transfer -> condition -> http.request to a local sink.

Everything is the real product path, each part in its own process as in
production: anvil (kwala_site.dev.devchain), `manage.py listen_chains` (websocket
newHeads, the default poll), `manage.py rundramatiq` with the worker settings
`manage.py dev` uses, embedded PostgreSQL and Redis under var/bench (never the
dev data), and a real HTTP sink (tests.sinks.HttpSink) in this process.

Measured:

* latency, tx sent -> webhook received, at 0 confirmations, one event at a time
  (anvil mines each transaction at once), for Kwala and for a minimal
  hand-written web3.py script (a child process too: a subscription to the
  token's Transfer logs, POST of the same payload with one keep-alive httpx
  client), and their p50 ratio;
* saturated throughput: `--runs` token mints put into as few blocks as the gas
  limit allows, from the first block mined to the last webhook received
  (runs_per_second), and while the pipeline is full, from the 10th to the 90th
  percentile webhook (runs_per_second_steady).

    python bench/end_to_end.py [--events 50] [--runs 2000]

The machine is shared: run it a few times and read the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness import clean_slate, cpu_snapshot, stop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# -- the hand-written script (run as a child process) -----------------------------------------


def script_main(ws_url: str, token: str, sink_url: str) -> None:
    """What a developer would write by hand: subscribe to the token's Transfer logs, POST each one.

    The fastest thing a script can do: the node pushes each log as its block is
    mined, with no request back and no bookkeeping (and so no reorg handling, no
    restart safety, no retries: what Kwala adds).
    """
    import asyncio

    import httpx
    from web3 import AsyncWeb3, Web3, WebSocketProvider

    topic = "0x" + Web3.keccak(text="Transfer(address,address,uint256)").hex().removeprefix("0x")

    async def run() -> None:
        async with httpx.AsyncClient() as client, AsyncWeb3(WebSocketProvider(ws_url)) as w3:
            await w3.eth.subscribe("logs", {"address": token, "topics": [topic]})
            print("ready", flush=True)
            async for message in w3.socket.process_subscriptions():
                log = message["result"]
                await client.post(f"{sink_url}/script", json={
                    "tx": "0x" + log["transactionHash"].hex().removeprefix("0x"),
                    "value": str(int.from_bytes(log["data"], "big")),
                })

    asyncio.run(run())


def steady_rate(arrivals: list[float]) -> float:
    """Runs per second while the pipeline is full: between the 10th and the 90th percentile arrival.

    The figure from the first block to the last webhook also holds the start (the
    listener reading the blocks, the first batches reaching the workers) and the
    drain (the last runs finishing one by one).
    """
    arrivals = sorted(arrivals)
    low, high = len(arrivals) // 10, len(arrivals) * 9 // 10
    if high - low < 2:
        return 0.0
    return round((high - low) / (arrivals[high] - arrivals[low]), 1)


def latency_breakdown(Run, sent_at: dict[str, tuple[float, float]]) -> dict:
    """Median milliseconds of each leg of Kwala's latency, from the run's own timestamps.

    claim: tx sent -> run row inserted by the listener; start: -> run started by a
    worker; hook: -> the http step claimed; deliver: -> the sink has the request.
    """
    legs: dict[str, list[float]] = {"claim": [], "start": [], "hook": [], "deliver": []}
    for run in Run.objects.filter(trigger__tx_hash__in=list(sent_at)).prefetch_related("steps"):
        sent, arrived = sent_at[run.trigger["tx_hash"]]
        hook = next(s for s in run.steps.all() if s.step_id == "hook")
        marks = [sent, run.created_at.timestamp(), run.started_at.timestamp(), hook.started_at.timestamp(), arrived]
        for name, a, b in zip(legs, marks, marks[1:], strict=False):
            legs[name].append((b - a) * 1000)
    figures = {}
    for name, values in legs.items():
        if values:
            figures[f"leg_{name}_p50_ms"] = round(statistics.median(values), 1)
            figures[f"leg_{name}_p99_ms"] = round(percentile(values, 99), 1)
    return figures


# -- Kwala ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50, help="events sent one at a time for latency")
    parser.add_argument("--runs", type=int, default=2000, help="events sent at once for throughput")
    parser.add_argument("--script-child", nargs=3, metavar=("WS_URL", "TOKEN", "SINK_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.script_child:
        script_main(*args.script_child)
        return

    port = free_port()
    var_dir = ROOT / "var" / "bench"
    os.environ["KWALA_VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
    os.environ["KWALA_CHAINS"] = json.dumps([{
        "slug": "bench", "name": "Bench (anvil)", "chain_id": 31337, "confirmations": 0,
        "rpc_urls": [f"http://127.0.0.1:{port}"], "ws_urls": [f"ws://127.0.0.1:{port}"],
    }])
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DEBUG", "0")  # as in production: no query log kept in memory

    from kwala_site.dev.devchain import DEV_ACCOUNTS, AnvilProcess, deploy, deploy_demo_contracts, load_artifact

    anvil = AnvilProcess(chain_id=31337, port=port, log_path=var_dir / "anvil.log")
    var_dir.mkdir(parents=True, exist_ok=True)
    anvil.start()
    children: list[subprocess.Popen] = []
    try:
        anvil.wait_ready(timeout=20)
        result = measure(args, anvil, children, var_dir, deploy, deploy_demo_contracts, load_artifact, DEV_ACCOUNTS)
    finally:
        stop(children)
        anvil.stop()

    for key, value in result.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(result))


def measure(args, anvil, children, var_dir, deploy, deploy_demo_contracts, load_artifact, accounts) -> dict:
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.db import connection
    from web3 import Web3

    from executor.models import Chain, Run
    from flows import actions
    from flows.models import Team
    from kwala_site.dev.management.commands.dev import WORKER_PROCESSES, WORKER_THREADS
    from tests.sinks import HttpSink

    # A clean slate on every run: old runs, cursors of earlier anvils, flows of earlier runs.
    clean_slate()
    Chain.objects.get(chain_id=31337)  # sync_chains made it

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    demo = deploy_demo_contracts(w3)
    token_abi = load_artifact("KwalaToken")["abi"]
    kwala_token = w3.eth.contract(address=demo["KwalaToken"], abi=token_abi)
    script_token = w3.eth.contract(address=deploy(w3, "KwalaToken", "Script", "SCR"), abi=token_abi)
    owner = w3.eth.account.from_key(accounts[0].private_key)
    nonce = w3.eth.get_transaction_count(owner.address)

    def signed_mint(token, value: int) -> bytes:
        nonlocal nonce
        tx = token.functions.mint(owner.address, value).build_transaction({
            "from": owner.address, "nonce": nonce, "gas": 100_000, "maxFeePerGas": 10**10,
            "maxPriorityFeePerGas": 10**9, "chainId": 31337})
        nonce += 1
        return owner.sign_transaction(tx).raw_transaction

    sink = HttpSink()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="Bench")
    graph = {
        "nodes": [
            {"id": "t", "type": "chain.event", "name": "Transfer", "position": {"x": 0, "y": 0},
             "config": {"chain": 31337, "addresses": [kwala_token.address], "event": TRANSFER, "confirmations": 0}},
            {"id": "big", "type": "condition", "name": "big", "position": {"x": 0, "y": 0},
             "config": {"expression": "trigger.args.value > 0"}},
            {"id": "hook", "type": "http.request", "name": "hook", "position": {"x": 0, "y": 0},
             "config": {"method": "POST", "url": f"{sink.url}/kwala",
                        "body": {"tx": "{{ trigger.tx_hash }}", "value": "{{ trigger.args.value }}"}}},
        ],
        "edges": [{"source": "t", "source_port": "out", "target": "big"},
                  {"source": "big", "source_port": "true", "target": "hook"}],
    }
    flow = actions.do_create_flow(team, user, "bench", graph=graph)
    actions.do_publish_version(flow, user)
    connection.close()

    env = dict(os.environ)
    logs = var_dir / "logs"
    logs.mkdir(exist_ok=True)

    def spawn(name: str, command: list[str]) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        children.append(child)
        return child

    python = sys.executable
    spawn("worker", [python, "manage.py", "rundramatiq", "--processes", str(WORKER_PROCESSES),
                     "--threads", str(WORKER_THREADS)])
    spawn("listener", [python, "manage.py", "listen_chains"])
    script = subprocess.Popen([python, __file__, "--script-child", anvil.ws_url, script_token.address, sink.url],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=(logs / "script.log").open("w"),
                              text=True)
    children.append(script)
    if script.stdout.readline().strip() != "ready":
        raise SystemExit("the hand-written script did not start (see var/bench/logs/script.log)")

    # Warm up both paths (worker imports, connection pools, the listener's first block).
    sent_at: dict[str, tuple[float, float]] = {}  # Kwala's tx hash -> (sent, webhook arrived)

    def one(token, path: str, timeout: float = 60) -> float:
        before = len(sink.to(path))
        raw = signed_mint(token, 5)
        started = time.time()
        tx_hash = w3.eth.send_raw_transaction(raw)
        arrived = sink.wait_for(path, before + 1, timeout=timeout)[before].at
        sent_at["0x" + tx_hash.hex().removeprefix("0x")] = (started, arrived)
        return (arrived - started) * 1000

    one(kwala_token, "/kwala", timeout=120)
    one(script_token, "/script")
    sent_at.clear()

    script_ms, kwala_ms = [], []
    for _ in range(args.events):
        script_ms.append(one(script_token, "/script"))
        time.sleep(0.05)
        kwala_ms.append(one(kwala_token, "/kwala"))
        time.sleep(0.05)

    breakdown = latency_breakdown(Run, sent_at)
    connection.close()

    # Throughput: every mint pending, then mined in as few blocks as fit; time to the last webhook.
    w3.provider.make_request("evm_setAutomine", [False])
    roots = {"workers": children[0].pid, "listener": children[1].pid, "anvil": anvil.process.pid,
             "bench+sink": os.getpid()}
    raws = [signed_mint(kwala_token, 7) for _ in range(args.runs)]
    for raw in raws:
        w3.eth.send_raw_transaction(raw)
    before = len(sink.to("/kwala"))
    cpu_before = cpu_snapshot(roots)
    started = time.time()
    blocks = 0
    while w3.eth.get_transaction_count(owner.address, "latest") < nonce:
        w3.provider.make_request("evm_mine", [])
        blocks += 1
    mined = time.time()
    w3.provider.make_request("evm_setAutomine", [True])
    arrivals = sink.wait_for("/kwala", before + args.runs, timeout=max(120, args.runs / 5))
    finished = arrivals[-1].at
    cpu_after = cpu_snapshot(roots)
    cpu_ms_per_run = {f"cpu_ms_per_run_{name}": round((cpu_after[name] - cpu_before.get(name, 0)) * 1000 / args.runs, 2)
                      for name in sorted(cpu_after)}
    connection.close()
    # The run is recorded SUCCEEDED just after its webhook answers.
    deadline = time.monotonic() + 30
    while Run.objects.exclude(status__in=Run.FINISHED).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    claimed = Run.objects.count()
    failed = Run.objects.exclude(status=Run.Status.SUCCEEDED).count()
    duplicates = len(arrivals) - len({r.json()["tx"] for r in arrivals})
    sink.close()

    return {
        "kwala_p50_ms": round(statistics.median(kwala_ms), 1),
        "kwala_p99_ms": round(percentile(kwala_ms, 99), 1),
        "script_p50_ms": round(statistics.median(script_ms), 1),
        "script_p99_ms": round(percentile(script_ms, 99), 1),
        "p50_ratio": round(statistics.median(kwala_ms) / statistics.median(script_ms), 2),
        "events": args.events,
        "runs": args.runs,
        "blocks": blocks,
        "mine_seconds": round(mined - started, 2),
        "runs_per_second": round(args.runs / (finished - started), 1),
        "runs_per_second_steady": steady_rate([r.at for r in arrivals]),
        "runs_claimed": claimed,
        "runs_not_succeeded": failed,
        "duplicate_webhooks": duplicates,
        **breakdown,
        **cpu_ms_per_run,
        "worker_processes": WORKER_PROCESSES,
        "worker_threads": WORKER_THREADS,
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    main()
