"""What the benches that run the whole product share: its data under var/bench, a clean
slate, its processes as children, and a percentile. Not a benchmark itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = ROOT / "var" / "bench"


def product_env(log_level: str = "WARNING") -> Path:
    """Point this process (and the children it starts) at the bench's own embedded servers."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["KWALA_VAR_DIR"] = str(VAR_DIR)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kwala_site.settings")
    os.environ.setdefault("LOG_LEVEL", log_level)
    os.environ.setdefault("DEBUG", "0")  # as in production: no query log kept in memory
    sys.path.insert(0, str(ROOT))
    return VAR_DIR


def clean_slate() -> None:
    """Migrate, forget earlier runs, cursors and live flows, and sync the chains from KWALA_CHAINS."""
    from django.core.management import call_command
    from django.db import connection

    from flows.models import FlowVersion

    call_command("migrate", verbosity=0)
    from executor.metrics import clear_samples

    clear_samples()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE executor_runevent, executor_steprun, executor_run, executor_event, "
                       "executor_chaincursor, executor_rpcendpoint CASCADE")
    FlowVersion.objects.filter(status=FlowVersion.Status.PUBLISHED).update(status=FlowVersion.Status.ARCHIVED)
    with open(os.devnull, "w") as quiet:
        call_command("sync_chains", verbosity=0, stdout=quiet)
    # Chains an earlier bench configured (another KWALA_CHAINS) lost their endpoints with the
    # truncate above: a listener would fail on them.
    from django.conf import settings

    from executor.models import Chain

    Chain.objects.exclude(chain_id__in=[c["chain_id"] for c in settings.KWALA_CHAINS]).update(enabled=False)


def spawn(children: list[subprocess.Popen], name: str, command: list[str]) -> subprocess.Popen:
    """Start a product process (manage.py ...) with its output in var/bench/logs/NAME.log."""
    logs = VAR_DIR / "logs"
    logs.mkdir(exist_ok=True)
    child = subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=(logs / f"{name}.log").open("w"),
                             stderr=subprocess.STDOUT)
    children.append(child)
    return child


def spawn_workers_and_listener(children: list[subprocess.Popen]) -> None:
    """The Dramatiq workers (as `manage.py dev` sizes them) and `manage.py listen_chains`."""
    from kwala_site.dev.management.commands.dev import WORKER_PROCESSES, WORKER_THREADS

    spawn(children, "worker", [sys.executable, "manage.py", "rundramatiq", "--processes", str(WORKER_PROCESSES),
                               "--threads", str(WORKER_THREADS)])
    spawn(children, "listener", [sys.executable, "manage.py", "listen_chains"])


def stop(children: list[subprocess.Popen]) -> None:
    """Stop the product's processes, then the bench's embedded PostgreSQL and Redis: a bench
    leaves no server running."""
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
    from django.db import connections

    from kwala_site.dev import embedded

    connections.close_all()
    embedded.stop_postgres(VAR_DIR / "pg")
    embedded.stop_redis(VAR_DIR / "redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 60) -> None:
    """Until something listens on the loopback port (a product process started by spawn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} (see var/bench/logs)")


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else 0.0


def cpu_snapshot(roots: dict[str, int | list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each part: PostgreSQL, Redis and the named process trees (a part
    may be several trees)."""
    import psutil

    totals: dict[str, float] = {}
    seen: set[int] = set()

    def add(name: str, proc) -> None:
        if proc.pid in seen:
            return
        seen.add(proc.pid)
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return
        # With the times of its children that have exited: PostgreSQL's backends end with their
        # connections, and their CPU is then only in the postmaster's children_* times.
        used = times.user + times.system + times.children_user + times.children_system
        totals[name] = totals.get(name, 0.0) + used

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        name = proc.info["name"] or ""
        if name.startswith("postgres") or "postgres:" in cmdline:
            add("postgresql", proc)
        elif "redis-server" in name or "redis-server" in cmdline:
            add("redis", proc)
    for name, pids in roots.items():
        for pid in pids if isinstance(pids, list) else [pids]:
            try:
                root = psutil.Process(pid)
                # This process holds the sink; its other children are the parts named above.
                for proc in [root] if pid == os.getpid() else [root, *root.children(recursive=True)]:
                    add(name, proc)
            except psutil.Error:
                continue
    return totals


# EventZoo's event the latency benches emit, one per transaction (`emitBig(id, value)`).
BIG = "Big(uint256 indexed id, uint256 value)"


def big_then_stop(zoo_address: str) -> dict:
    """The flow the latency benches time: EventZoo's Big on the local chain, then a stop step."""
    return {
        "nodes": [
            {"id": "t", "type": "chain.event", "name": "Big", "position": {"x": 0, "y": 0},
             "config": {"chain": 31337, "addresses": [zoo_address], "event": BIG}},
            {"id": "s", "type": "stop", "name": "Stop", "position": {"x": 250, "y": 0}, "config": {}},
        ],
        "edges": [{"source": "t", "source_port": "out", "target": "s"}],
    }


# The run of a transaction's `emitBig(i, 1)` log, looked up by its `id` argument.
_RUN_OF_EVENT = ("SELECT started_at IS NOT NULL FROM executor_run "
                 "WHERE version_id = %s AND (trigger->'args'->>'id')::numeric = %s")


def event_to_run(conn, w3, zoo, sender: str, version_id: int, i: int) -> tuple[float, float]:
    """Send one transaction emitting EventZoo's Big(i, 1) and poll PostgreSQL (`conn`, autocommit)
    until its run row exists and then has started: (ms to the row, ms to the start)."""
    tx = zoo.functions.emitBig(i, 1).build_transaction({"from": sender, "gas": 100_000})
    sent = time.perf_counter()
    w3.eth.send_transaction(tx)  # automine: the block exists when this returns
    row_at = None
    while True:
        row = conn.execute(_RUN_OF_EVENT, [version_id, i]).fetchone()
        now = time.perf_counter()
        if row is not None and row_at is None:
            row_at = now
        if row is not None and row[0]:
            return (row_at - sent) * 1000, (now - sent) * 1000
        if now - sent > 10:
            raise SystemExit(f"no started run for event {i} after 10 s")
        time.sleep(0.0005)
