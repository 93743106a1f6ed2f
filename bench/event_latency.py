"""From anvil mining a block with a matching log to the run row committed, at 0 confirmations.

Run from the repo root: ``python bench/event_latency.py [--events 200]``. It starts
what it needs: embedded PostgreSQL and Redis under var/bench (through settings),
an anvil chain (executor.devchain) and the listener in this process (threads, with
its newHeads websocket). Each sample sends one transaction (anvil mines it at
once) and polls PostgreSQL every 0.5 ms for the run. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
os.environ.setdefault("KWALA_VAR_DIR", str(ROOT / "var" / "bench"))


def main() -> None:
    import django

    django.setup()
    import logging

    import psycopg
    from django.core.management import call_command
    from django.db import connection
    from web3 import Web3

    from executor.devchain import DEV_ACCOUNTS, AnvilProcess, deploy, load_artifact
    from executor.listener import listen
    from executor.models import Chain, ChainCursor, Event, RpcEndpoint, Run
    from flows import actions
    from flows.models import Flow, Membership, Team

    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    call_command("migrate", verbosity=0)

    anvil = AnvilProcess(chain_id=31337).start()
    anvil.wait_ready()
    stop = threading.Event()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.http_url))
        zoo = w3.eth.contract(address=deploy(w3, "EventZoo"), abi=load_artifact("EventZoo")["abi"])
        # A clean slate in the bench database.
        Run.objects.all().delete()
        Event.objects.all().delete()
        Flow.objects.filter(name="latency bench").delete()
        Chain.objects.filter(chain_id=31337).delete()
        chain = Chain.objects.create(slug="bench", name="bench", chain_id=31337)
        RpcEndpoint.objects.create(chain=chain, url=anvil.http_url, kind=RpcEndpoint.Kind.HTTP)
        RpcEndpoint.objects.create(chain=chain, url=anvil.ws_url, kind=RpcEndpoint.Kind.WS)
        team, _ = Team.objects.get_or_create(name="bench")
        from django.contrib.auth import get_user_model

        user, _ = get_user_model().objects.get_or_create(username="bench")
        Membership.objects.get_or_create(team=team, user=user, defaults={"role": Membership.Role.OWNER})
        graph = {
            "nodes": [
                {"id": "t", "type": "chain.event", "name": "Big", "position": {"x": 0, "y": 0},
                 "config": {"chain": 31337, "addresses": [zoo.address], "event": "Big(uint256 indexed id, uint256 value)"}},
                {"id": "s", "type": "stop", "name": "Stop", "position": {"x": 1, "y": 0}, "config": {}},
            ],
            "edges": [{"source": "t", "source_port": "out", "target": "s"}],
        }
        flow = actions.create_flow(team, user, "latency bench", graph=graph)
        version = actions.publish_version(flow, user)

        listen([chain], stop, poll_seconds=1.0)
        deadline = time.monotonic() + 20
        while not ChainCursor.objects.filter(chain=chain, block_number__isnull=False).exists():
            if time.monotonic() > deadline:
                raise SystemExit("the listener did not start")
            time.sleep(0.05)
        time.sleep(1)  # let the websocket subscribe
        conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
        sender = DEV_ACCOUNTS[0].address
        samples = []
        for i in range(args.events):
            tx = zoo.functions.emitBig(i, 1).build_transaction({"from": sender, "gas": 100_000})
            started = time.perf_counter()
            w3.eth.send_transaction(tx)  # automine: the block exists when this returns
            while conn.execute(
                "SELECT 1 FROM executor_run WHERE version_id = %s AND (trigger->'args'->>'id')::numeric = %s",
                [version.pk, i],
            ).fetchone() is None:
                if time.perf_counter() - started > 10:
                    raise SystemExit(f"no run for event {i} after 10 s")
                time.sleep(0.0005)
            samples.append((time.perf_counter() - started) * 1000)
        conn.close()
    finally:
        stop.set()
        anvil.stop()
    samples.sort()
    result = {
        "events": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
        "max_ms": round(samples[-1], 2),
        "confirmations": 0,
    }
    print(f"{len(samples)} events: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms")
    print(json.dumps(result))
    os._exit(0)  # the listener threads are daemons blocked in I/O


if __name__ == "__main__":
    main()
