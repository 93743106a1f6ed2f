"""From a transaction with a matching log to its run, at 0 confirmations, as the product runs.

Run from the repo root: ``python bench/event_latency.py [--events 200]``. It starts
what production runs, each part in its own process: anvil (kwala_site.dev.devchain),
``manage.py listen_chains`` (the block loop and the node's websocket: newHeads
and the logs subscription) and ``manage.py rundramatiq`` (the workers that claim
pushed logs' runs and start them), on embedded PostgreSQL and Redis under
var/bench. The flow is *chain.event -> stop*, so the figures are the trigger path
alone. Each sample sends one transaction (anvil mines it at once) and polls
PostgreSQL every 0.5 ms from this process for the run row, then for its start.

Also counted: how often the listener's websocket dropped during the run (from the
listener's log), since a dropped socket moves runs from the pushed path to the
block loop. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from harness import big_then_stop, clean_slate, event_to_run, percentile, product_env, spawn_workers_and_listener, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()

    var_dir = product_env(log_level="INFO")  # the listener's log is read for websocket drops

    from kwala_site.dev.devchain import AnvilProcess

    anvil = AnvilProcess(chain_id=31337, log_path=var_dir / "anvil.log")
    anvil.start()
    children: list[subprocess.Popen] = []
    try:
        anvil.wait_ready(timeout=20)
        os.environ["KWALA_CHAINS"] = json.dumps([{
            "slug": "bench", "name": "Bench (anvil)", "chain_id": 31337, "confirmations": 0,
            "rpc_urls": [anvil.http_url], "ws_urls": [anvil.ws_url],
        }])
        result = measure(args, anvil, children, var_dir)
    finally:
        stop(children)
        anvil.stop()
    print(f"{result['events']} events: run row p50 {result['run_p50_ms']} ms, p99 {result['run_p99_ms']} ms; "
          f"run started p50 {result['started_p50_ms']} ms; websocket drops {result['ws_drops']}")
    print(json.dumps(result))


def measure(args, anvil, children, var_dir) -> dict:
    import django

    django.setup()
    import psycopg
    from django.contrib.auth import get_user_model
    from django.db import connection
    from web3 import Web3

    from executor.models import ChainCursor
    from flows import actions
    from flows.models import Team
    from kwala_site.dev.devchain import DEV_ACCOUNTS, deploy, load_artifact

    clean_slate()

    w3 = Web3(Web3.HTTPProvider(anvil.http_url))
    zoo = w3.eth.contract(address=deploy(w3, "EventZoo"), abi=load_artifact("EventZoo")["abi"])
    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="Bench")
    graph = big_then_stop(zoo.address)
    version = actions.do_publish_version(actions.do_create_flow(team, user, "latency bench", graph=graph), user)

    listener_log = var_dir / "logs" / "listener.log"
    spawn_workers_and_listener(children)
    deadline = time.monotonic() + 60
    while not (ChainCursor.objects.filter(ws_state="connected").exists()):
        if time.monotonic() > deadline:
            raise SystemExit("the listener did not subscribe (see var/bench/logs/listener.log)")
        time.sleep(0.05)
    connection.close()

    conn = psycopg.connect(**connection.get_connection_params(), autocommit=True)
    sender = DEV_ACCOUNTS[0].address
    run_ms: list[float] = []
    started_ms: list[float] = []
    for i in range(args.events + 5):
        row_ms, start_ms = event_to_run(conn, w3, zoo, sender, version.pk, i)
        if i >= 5:  # the first few warm the workers up
            run_ms.append(row_ms)
            started_ms.append(start_ms)
        time.sleep(0.02)
    conn.close()
    drops = sum(1 for line in listener_log.read_text().splitlines() if "websocket" in line and "failed" in line)
    return {
        "events": len(run_ms),
        "run_p50_ms": round(statistics.median(run_ms), 2),
        "run_p99_ms": round(percentile(run_ms, 99), 2),
        "started_p50_ms": round(statistics.median(started_ms), 2),
        "started_p99_ms": round(percentile(started_ms, 99), 2),
        "ws_drops": drops,
        "confirmations": 0,
    }


if __name__ == "__main__":
    main()
