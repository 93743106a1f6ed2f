"""What one webhook run costs PostgreSQL and the Python that drives it, statement by statement.

Runs bench/webhook_load.py's flow (webhook -> condition -> http.request to a
loopback sink) in this process, without the web server or the queue in between:
the door's accept() for --runs requests, then the worker's run_step() for each
step they queued. Two passes over fresh runs:

* totals: PostgreSQL CPU (the backend's /proc/<pid>/schedstat, nanoseconds) and
  this thread's CPU per run, for the web's part and the worker's;
* by statement: the backend's CPU around each statement (psycopg's
  Cursor.execute wrapped, with a 0.5 ms pause after each so the backend has
  finished), per run, grouped by the statement's first words. The wrapper's own
  cost makes this pass's client figures meaningless; read them from the first.

This is how the planning cost of the worker's reads (a three-table join planned
on every call) was found. The machine is shared: run it a few times.

    python bench/pg_cost.py [--runs 300]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import clean_slate, product_env, spawn, stop  # noqa: E402


def backend_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0])


def run_flow(code: str, token: str, runs: int, prefix: str, on_phase) -> None:
    """accept() `runs` requests, then run the steps they queued; on_phase("web"/"worker"/"end") between."""
    from executor.runs import engine, queue
    from executor.webhooks import accept

    sent: list[int] = []
    queue.connect(run=lambda run_id, delay: None, step=lambda step_id, delay: sent.append(step_id),
                  pushed=lambda payload: None, replay=lambda job: None)
    on_phase("web")
    for n in range(runs):
        answer = accept(code, token, method="POST", headers={"content-type": "application/json"}, query={},
                        body=json.dumps({"id": f"{prefix}-{n}", "amount": 5}).encode())
        if answer.status != 202:
            raise SystemExit(f"the webhook answered {answer.status}: {answer.body}")
    on_phase("worker")
    for step_id in sent:
        engine.run_step(step_id)
    on_phase("end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    product_env()
    import django

    django.setup()
    import psycopg
    from django.db import connection

    from bench.webhook_load import free_port, make_flow, wait_port

    clean_slate()
    children = []
    try:
        sink_port = free_port()
        spawn(children, "sink", [sys.executable, "bench/webhook_load.py", "--sink-child", str(sink_port)])
        wait_port(sink_port)
        _, _, code, token, _ = make_flow(f"http://127.0.0.1:{sink_port}").split("/")
        connection.ensure_connection()
        pid = connection.connection.info.backend_pid
        run_flow(code, token, 20, "warm", lambda phase: None)  # prepared statements, caches

        marks: dict[str, tuple[float, int]] = {}

        def mark(phase: str) -> None:
            time.sleep(0.05)  # the backend ends its last statement's work
            marks[phase] = (time.thread_time(), backend_ns(pid))

        run_flow(code, token, args.runs, "totals", mark)
        totals = {}
        for part, (start, end) in {"web": ("web", "worker"), "worker": ("worker", "end")}.items():
            totals[f"{part}_client_us"] = round((marks[end][0] - marks[start][0]) / args.runs * 1e6)
            totals[f"{part}_postgresql_us"] = round((marks[end][1] - marks[start][1]) / args.runs / 1000)

        by_statement: dict[str, dict[str, list[int]]] = {"web": collections.defaultdict(lambda: [0, 0]),
                                                         "worker": collections.defaultdict(lambda: [0, 0])}
        phase = ["web"]
        execute = psycopg.Cursor.execute

        def measured(cursor, query, params=None, **kwargs):
            text = query if isinstance(query, str) else query.as_string(cursor)
            before = backend_ns(cursor.connection.info.backend_pid)
            try:
                return execute(cursor, query, params, **kwargs)
            finally:
                time.sleep(0.0005)
                entry = by_statement[phase[0]][" ".join(text.split())[:80]]
                entry[0] += backend_ns(cursor.connection.info.backend_pid) - before
                entry[1] += 1

        psycopg.Cursor.execute = measured
        try:
            run_flow(code, token, args.runs, "statements", lambda name: phase.__setitem__(0, name))
        finally:
            psycopg.Cursor.execute = execute
    finally:
        stop(children)

    for part in ("web", "worker"):
        print(f"{part}: client CPU {totals[f'{part}_client_us']} us a run, "
              f"PostgreSQL CPU {totals[f'{part}_postgresql_us']} us a run; by statement (PostgreSQL us, a run):")
        for text, (ns, count) in sorted(by_statement[part].items(), key=lambda item: -item[1][0]):
            if count:
                print(f"  {ns / args.runs / 1000:7.0f}  x{count / args.runs:4.2f}  {text}")
    print(json.dumps({"runs": args.runs, **totals,
                      "statements": {part: {text: round(ns / args.runs / 1000) for text, (ns, _) in table.items()}
                                     for part, table in by_statement.items()}}))


if __name__ == "__main__":
    main()
