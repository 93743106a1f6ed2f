"""Websockets under a reconnect storm: many browsers open a run's live view at once.

Starts the embedded PostgreSQL and Redis (under var/bench) and the web server
(uvicorn, one process per core, as `make run`). A finished run with --events
events is watched by --sockets browsers (one logged-in session, each socket its
own connection) that all connect at once, as after a web server restart: each
is timed from its connect to the last event of its replay. Then one event is
recorded and timed to every socket (the live fan-out). Printed: handshake and
replay p50/p99/max, the fan-out's p50/p99, sockets refused (503) and failed.
Last line: one JSON object.

    python bench/socket_load.py [--sockets 300] [--events 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import clean_slate, cpu_snapshot, free_port, percentile, product_env, spawn, stop, wait_port  # noqa: E402


def watched_run(events: int):
    """A finished run with `events` events, and a session cookie of a member of its team."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.utils import timezone

    from executor.models import Run
    from executor.runs.store import record_run_event
    from flows import actions
    from flows.models import Membership, Team

    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="Bench")
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Membership.Role.VIEWER})
    flow = actions.do_create_flow(team, user, "socket bench")
    run = Run.objects.create(team=team, flow=flow, version=flow.versions.get(), trigger_key="manual:socket-bench",
                             status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    for n in range(events):
        record_run_event(run, "step.update", {"n": n})
    client = Client()
    client.force_login(user)
    return run, f"sessionid={client.cookies['sessionid'].value}"


async def storm(url: str, cookie: str, sockets: int, events: int, record_live) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    replayed: list[float] = []
    live: list[float] = []
    outcomes: dict[str, int] = {}
    settled = {"count": 0}
    all_settled = asyncio.Event()  # every socket has its replay, or has failed
    live_at: dict[str, float] = {}

    def settle() -> None:
        settled["count"] += 1
        if settled["count"] == sockets:
            all_settled.set()

    def count(outcome: str) -> None:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    async def browser() -> None:
        started = time.monotonic()
        replaying = True
        try:
            async with connect(url, additional_headers={"Origin": "http://127.0.0.1", "Cookie": cookie},
                               open_timeout=120, max_queue=None) as ws:
                while json.loads(await asyncio.wait_for(ws.recv(), 120))["seq"] < events:
                    pass
                replayed.append(time.monotonic() - started)
                replaying = False
                settle()
                await all_settled.wait()
                await asyncio.wait_for(ws.recv(), 120)
                live.append(time.monotonic() - live_at["sent"])
                count("open")
        except InvalidStatus as refused:
            count(str(refused.response.status_code))
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            count(type(exc).__name__)
        finally:
            if replaying:
                settle()

    async def sender() -> None:
        await all_settled.wait()
        live_at["sent"] = time.monotonic()
        await asyncio.to_thread(record_live)

    started = time.monotonic()
    await asyncio.gather(sender(), *(browser() for _ in range(sockets)))
    return {"replayed": replayed, "live": live, "outcomes": outcomes, "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=300)
    parser.add_argument("--events", type=int, default=20, help="events each socket replays")
    args = parser.parse_args()

    product_env()
    import django

    django.setup()
    from django.db import connection

    from executor.runs.store import record_run_event
    from kwala_site.dev.management.commands.dev import WEB_PROCESSES

    children: list[subprocess.Popen] = []
    try:
        clean_slate()
        run, cookie = watched_run(args.events)
        connection.close()
        port = free_port()
        web = spawn(children, "web", [sys.executable, "-m", "uvicorn", "kwala_site.asgi:application", "--host",
                                      "127.0.0.1", "--port", str(port), "--workers", str(WEB_PROCESSES),
                                      "--no-access-log", "--lifespan", "off"])
        wait_port(port)
        url = f"ws://127.0.0.1:{port}/ws/runs/{run.code}/"
        roots = {"web": web.pid, "bench": os.getpid()}
        asyncio.run(storm(url, cookie, 8, args.events, lambda: record_run_event(run, "step.update", {"warm": 1})))
        before = cpu_snapshot(roots)
        figures = asyncio.run(storm(url, cookie, args.sockets, args.events + 1,
                                    lambda: record_run_event(run, "step.update", {"live": 1})))
        after = cpu_snapshot(roots)
    finally:
        stop(children)

    replayed, live = [s * 1000 for s in figures["replayed"]], [s * 1000 for s in figures["live"]]
    result = {
        "web_processes": WEB_PROCESSES,
        "sockets": args.sockets,
        "events": args.events,
        "open": figures["outcomes"].get("open", 0),
        "refused_503": figures["outcomes"].get("503", 0),
        "failed": sum(n for k, n in figures["outcomes"].items() if k not in ("open", "503")),
        "outcomes": figures["outcomes"],
        "replayed_p50_ms": round(percentile(replayed, 50), 1) if replayed else None,
        "replayed_p99_ms": round(percentile(replayed, 99), 1) if replayed else None,
        "replayed_max_ms": round(max(replayed), 1) if replayed else None,
        "live_p50_ms": round(percentile(live, 50), 1) if live else None,
        "live_p99_ms": round(percentile(live, 99), 1) if live else None,
        "web_cpu_ms_per_socket": round((after["web"] - before["web"]) * 1000 / max(len(replayed), 1), 2),
    }
    for key, value in result.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
