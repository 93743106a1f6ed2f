"""Webhook door under load: webhook -> condition -> http.request, durable, against a floor.

Starts everything it needs: the embedded PostgreSQL and Redis (under var/bench),
the web server (uvicorn, one process per core, as `make run`), the Dramatiq
workers and the sweeper, a loopback HTTP sink, and the floor: a minimal
hand-written non-durable forwarder (aiohttp) that parses the JSON, checks the
same condition and POSTs to the sink over a keep-alive client.

With --durable-floor, a second floor too: the same forwarder in two processes, storing
each request in PostgreSQL (one committed INSERT) before its 202 and recording its
delivery (one committed UPDATE) after the POST; no queue, no retries, no recovery:
what durability alone costs on this machine, beside what Kwala's path costs.

Each load is sent to the floor(s) and then to Kwala: 1 client (latency), 32 and
256 concurrent clients (saturation), each client on its own keep-alive
connection. Printed per load and target: accepted/s, delivered/s, p50/p99 from
the request being sent to the sink receiving the POST, 5xx answers, requests
accepted but never delivered, duplicate deliveries. Last line: one JSON object.

    python bench/webhook_load.py [--requests 3000] [--latency-requests 200] [--durable-floor]
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

DELIVERY_TIMEOUT = 180




# -- the sink and the floor (child processes) ------------------------------------------


def sink_main(port: int) -> None:
    """Record when each POSTed id arrives, by path; GET /stats?path=P returns [[id, time], ...]."""
    from aiohttp import web

    seen: dict[str, list] = {}

    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        seen.setdefault(request.path, []).append([str(body.get("id")), time.time()])
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(seen.get(request.query["path"], []))

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{name}", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("ready", flush=True),
                access_log=None)


def floor_main(port: int, sink_url: str) -> None:
    """The floor: parse, check the condition, answer 202, POST to the sink (kept-alive). Nothing durable."""
    import aiohttp
    from aiohttp import web

    state: dict = {}
    pending: set = set()

    async def forward(body: dict) -> None:
        async with state["client"].post(f"{sink_url}/floor", json={"id": body["id"]}) as answer:
            await answer.read()

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("amount", 0) > 0:
            task = asyncio.create_task(forward(body))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return web.json_response({"ok": True}, status=202)

    async def start(app) -> None:
        state["client"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, print=lambda *_: print("ready", flush=True),
                access_log=None)


DURABLE_TABLE = "bench_durable_floor"


def durable_floor_main(port: int, sink_url: str, params: str) -> None:
    """The durable floor (one of two processes on the port): the floor, with a committed INSERT
    before the 202 and a committed UPDATE once the sink has the POST."""
    import aiohttp
    from aiohttp import web
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool

    state: dict = {}
    pending: set = set()

    async def forward(run_id: int, body: dict) -> None:
        async with state["client"].post(f"{sink_url}/durable_floor", json={"id": body["id"]}) as answer:
            await answer.read()
        async with state["pool"].connection() as conn:
            await conn.execute(f"UPDATE {DURABLE_TABLE} SET status = 'SUCCEEDED', finished_at = now() "  # noqa: S608
                               "WHERE id = %s", [run_id])

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        async with state["pool"].connection() as conn:
            found = await conn.execute(f"INSERT INTO {DURABLE_TABLE} (body, status) VALUES (%s, 'QUEUED') "  # noqa: S608
                                       "RETURNING id", [Jsonb(body)])
            (run_id,) = await found.fetchone()
        if body.get("amount", 0) > 0:
            task = asyncio.create_task(forward(run_id, body))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return web.json_response({"run": run_id}, status=202)

    async def start(app) -> None:
        state["client"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        state["pool"] = AsyncConnectionPool(kwargs={**json.loads(params), "autocommit": True}, min_size=4,
                                            max_size=16, open=False)
        await state["pool"].open(wait=True)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, print=lambda *_: print("ready", flush=True),
                access_log=None)


def durable_floor_table() -> str:
    """Create (empty) the durable floor's table; return the connection parameters for its processes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {DURABLE_TABLE} (id bigserial PRIMARY KEY, body jsonb NOT NULL, "
                       "status text NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)")
        cursor.execute(f"TRUNCATE {DURABLE_TABLE}")
    params = {k: v for k, v in connection.get_connection_params().items()
              if k in ("host", "port", "dbname", "user", "password")}
    return json.dumps(params)


# -- the load ------------------------------------------------------------------------------


async def send_load(url: str, clients: int, requests: int, prefix: str) -> dict:
    """`requests` POSTs spread over `clients` concurrent keep-alive connections."""
    import aiohttp

    sent: dict[str, float] = {}
    statuses: dict[int, int] = {}
    accepted: list[str] = []
    retry_after_missing = 0
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)

    async def client(session) -> None:
        nonlocal retry_after_missing
        for n in counter:
            request_id = f"{prefix}-{n}"
            sent[request_id] = time.time()
            try:
                async with session.post(url, json={"id": request_id, "amount": 5}) as answer:
                    await answer.read()
                    status = answer.status
                    if status == 503 and not answer.headers.get("Retry-After"):
                        retry_after_missing += 1
            except (TimeoutError, aiohttp.ClientError):
                status = 0  # no answer at all
            statuses[status] = statuses.get(status, 0) + 1
            if status in (200, 202):
                accepted.append(request_id)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.time()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        finished = time.time()
    return {"sent": sent, "statuses": statuses, "accepted": accepted, "started": started, "finished": finished,
            "retry_after_missing": retry_after_missing}


def fetch_arrivals(sink_url: str, path: str) -> list:
    import httpx

    return httpx.get(f"{sink_url}/stats", params={"path": path}, timeout=30).json()


def group_commits() -> dict[str, float]:
    """The group commit's histogram (runs.batching) so far, summed over the product's processes."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return {sample.name: sample.value for family in registry.collect() for sample in family.samples
            if sample.name.startswith(GROUP_COMMITS) and sample.name.endswith(("_sum", "_count"))}


GROUP_COMMITS = ("kwala_webhook_claims_per_statement",)


def measure_load(url: str, sink_url: str, path: str, clients: int, requests: int, prefix: str,
                 roots: dict[str, int]) -> dict:
    before = len(fetch_arrivals(sink_url, path))
    cpu_before = cpu_snapshot(roots)
    batches_before = group_commits()
    load = asyncio.run(send_load(url, clients, requests, prefix))
    accepted = set(load["accepted"])
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        arrivals = [a for a in fetch_arrivals(sink_url, path)[before:] if a[0].startswith(prefix + "-")]
        if len({a[0] for a in arrivals} & accepted) >= len(accepted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    cpu_after = cpu_snapshot(roots)
    batches_after = group_commits()
    time.sleep(0.5)  # a duplicate would come right behind
    arrivals = [a for a in fetch_arrivals(sink_url, path)[before:] if a[0].startswith(prefix + "-")]
    first: dict[str, float] = {}
    for request_id, at in arrivals:
        first.setdefault(request_id, at)
    latencies = [(first[i] - load["sent"][i]) * 1000 for i in first if i in load["sent"]]
    delivered = len(set(first) & accepted)
    last = max(first.values()) if first else load["finished"]
    send_seconds = max(load["finished"] - load["started"], 1e-9)
    return {
        "clients": clients,
        "requests": requests,
        "accepted_per_s": round(len(accepted) / send_seconds, 1),
        "delivered_per_s": round(delivered / max(last - load["started"], 1e-9), 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "server_errors": sum(n for status, n in load["statuses"].items() if status >= 500 and status != 503)
        + load["statuses"].get(0, 0),
        "overloaded_503": load["statuses"].get(503, 0),
        "retry_after_missing": load["retry_after_missing"],
        "accepted": len(accepted),
        "lost": len(accepted - set(first)),
        "duplicates": len(arrivals) - len(first),
        # CPU per delivered request, by part (the load generator is "bench").
        "cpu_ms": {name: round((cpu_after[name] - cpu_before.get(name, 0)) * 1000 / max(delivered, 1), 2)
                   for name in sorted(cpu_after)},
        # How many claims went into a statement, on average.
        "together": {name.removeprefix("kwala_"): _mean(batches_before, batches_after, name)
                     for name in GROUP_COMMITS},
    }


def _mean(before: dict[str, float], after: dict[str, float], name: str) -> float | None:
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    return round((after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / count, 2) if count else None


# -- the product ---------------------------------------------------------------------------


def make_flow(sink_url: str) -> str:
    """A live webhook flow; returns its webhook path."""
    from django.contrib.auth import get_user_model

    from flows import actions
    from flows.models import Team

    user, _ = get_user_model().objects.get_or_create(username="bench")
    team, _ = Team.objects.get_or_create(name="Bench")
    team.webhook_rate_per_minute = 100_000_000  # the bench measures the door, not its limit
    team.save(update_fields=["webhook_rate_per_minute"])
    graph = {
        "nodes": [
            {"id": "hook", "type": "webhook", "name": "hook", "position": {"x": 0, "y": 0},
             "config": {"verification": "none"}},
            {"id": "big", "type": "condition", "name": "big", "position": {"x": 0, "y": 120},
             "config": {"expression": "trigger.body.amount > 0"}},
            {"id": "post", "type": "http.request", "name": "post", "position": {"x": 0, "y": 240},
             "config": {"method": "POST", "url": f"{sink_url}/product", "body": {"id": "{{ trigger.body.id }}"}}},
        ],
        "edges": [{"source": "hook", "source_port": "out", "target": "big"},
                  {"source": "big", "source_port": "true", "target": "post"}],
    }
    flow = actions.do_create_flow(team, user, "webhook bench", graph=graph)
    actions.do_publish_version(flow, user)
    return actions.webhook_path(flow, user)




def durable_counts(path: str) -> dict:
    """Runs and steps the product stored for the bench flow, and how they ended."""
    from django.db import connection

    from executor.models import Run, StepRun

    connection.close()
    runs = Run.objects.filter(flow__name="webhook bench")
    return {"runs": runs.count(), "runs_not_succeeded": runs.exclude(status=Run.Status.SUCCEEDED).count(),
            "steps": StepRun.objects.filter(run__flow__name="webhook bench").count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per saturation load")
    parser.add_argument("--latency-requests", type=int, default=200, help="requests sent one at a time")
    parser.add_argument("--loads", default="1,32,256", help="client counts, comma-separated")
    parser.add_argument("--sink-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--durable-floor", action="store_true",
                        help="also measure the durable floor (a committed INSERT per request, an UPDATE per delivery)")
    parser.add_argument("--floor-child", nargs=2, metavar=("PORT", "SINK_URL"), help=argparse.SUPPRESS)
    parser.add_argument("--durable-floor-child", nargs=3, metavar=("PORT", "SINK_URL", "PARAMS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink_child:
        sink_main(args.sink_child)
        return
    if args.floor_child:
        floor_main(int(args.floor_child[0]), args.floor_child[1])
        return
    if args.durable_floor_child:
        durable_floor_main(int(args.durable_floor_child[0]), *args.durable_floor_child[1:])
        return

    product_env()
    import django

    django.setup()
    children: list[subprocess.Popen] = []
    try:
        result = run(args, children)
    finally:
        stop(children)
    for key, value in result.items():
        print(f"{key:>28}: {value}")
    print(json.dumps(result))


def run(args, children: list[subprocess.Popen]) -> dict:
    from kwala_site.dev.management.commands.dev import WEB_PROCESSES, WORKER_PROCESSES, WORKER_THREADS

    clean_slate()
    python = sys.executable
    sink_port, floor_port, web_port = free_port(), free_port(), free_port()
    sink_url = f"http://127.0.0.1:{sink_port}"
    sink = spawn(children, "sink", [python, __file__, "--sink-child", str(sink_port)])
    floor = spawn(children, "floor", [python, __file__, "--floor-child", str(floor_port), sink_url])
    path = make_flow(sink_url)
    from django.db import connection

    connection.close()
    web = spawn(children, "web", [python, "-m", "uvicorn", "kwala_site.asgi:application", "--host", "127.0.0.1",
                            "--port", str(web_port), "--workers", str(WEB_PROCESSES), "--no-access-log",
                            "--lifespan", "off"])
    worker = spawn(children, "worker", [python, "manage.py", "rundramatiq", "--processes", str(WORKER_PROCESSES),
                               "--threads", str(WORKER_THREADS)])
    spawn(children, "sweeper", [python, "manage.py", "sweep"])
    targets = {"floor": (f"http://127.0.0.1:{floor_port}/hook", "/floor")}
    roots = {"web": web.pid, "worker": worker.pid, "sink": sink.pid, "floor": floor.pid, "bench": os.getpid()}
    if args.durable_floor:
        durable_port, params = free_port(), durable_floor_table()
        command = [python, __file__, "--durable-floor-child", str(durable_port), sink_url, params]
        roots["durable_floor"] = [spawn(children, f"durable_floor_{n}", command).pid for n in (1, 2)]
        targets["durable_floor"] = (f"http://127.0.0.1:{durable_port}/hook", "/durable_floor")
        wait_port(durable_port)
        connection.close()
    for port in (sink_port, floor_port, web_port):
        wait_port(port)

    targets["kwala"] = (f"http://127.0.0.1:{web_port}{path}", "/product")
    # Warm up both (imports, pools, prepared statements), then forget it.
    warm = {name: measure_load(url, sink_url, sink_path, 8, 200, f"warm-{name}", roots)
            for name, (url, sink_path) in targets.items()}

    figures: dict[str, dict] = {}
    for clients in [int(c) for c in args.loads.split(",")]:
        requests = args.latency_requests if clients == 1 else args.requests
        for name, (url, sink_path) in targets.items():
            figures[f"{name}_{clients}"] = measure_load(url, sink_url, sink_path, clients, requests,
                                                        f"{name}-{clients}", roots)
            print(f"{name:>6} {clients:>4} clients: {figures[f'{name}_{clients}']}", flush=True)

    kwala = [f for k, f in figures.items() if k.startswith("kwala_")]
    floor = [f for k, f in figures.items() if k.startswith("floor_")]
    durable_floor = [f for k, f in figures.items() if k.startswith("durable_floor_")]
    busiest = max(int(c) for c in args.loads.split(","))
    durable = durable_counts(path)
    return {
        "web_processes": WEB_PROCESSES,
        "worker_processes": WORKER_PROCESSES,
        "delivered_per_s": max(f["delivered_per_s"] for f in kwala),
        "floor_delivered_per_s": max(f["delivered_per_s"] for f in floor),
        "accepted_per_s": max(f["accepted_per_s"] for f in kwala),
        "p50_ms": figures["kwala_1"]["p50_ms"] if "kwala_1" in figures else None,
        "floor_p50_ms": figures["floor_1"]["p50_ms"] if "floor_1" in figures else None,
        "p99_ms_busiest": figures[f"kwala_{busiest}"]["p99_ms"],
        "server_errors": sum(f["server_errors"] for f in kwala),
        "overloaded_503": sum(f["overloaded_503"] for f in kwala),
        "lost": sum(f["lost"] for f in kwala),
        "duplicates": sum(f["duplicates"] for f in kwala),
        "floor_server_errors": sum(f["server_errors"] for f in floor),
        **({"durable_floor_delivered_per_s": max(f["delivered_per_s"] for f in durable_floor),
            "durable_floor_p50_ms": figures["durable_floor_1"]["p50_ms"] if "durable_floor_1" in figures else None,
            "durable_floor_server_errors": sum(f["server_errors"] for f in durable_floor),
            "durable_floor_lost": sum(f["lost"] for f in durable_floor)} if durable_floor else {}),
        # Every accepted request is a run in PostgreSQL, with its steps, and it succeeded.
        "accepted_without_run": warm["kwala"]["accepted"] + sum(f["accepted"] for f in kwala) - durable["runs"],
        **{f"durable_{k}": v for k, v in durable.items()},
        "loads": {k: {m: f[m] for m in ("accepted_per_s", "delivered_per_s", "p50_ms", "p99_ms", "server_errors",
                                        "overloaded_503", "lost", "duplicates", "cpu_ms", "together")}
                  for k, f in figures.items()},
    }


if __name__ == "__main__":
    main()
