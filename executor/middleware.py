"""Dramatiq middleware: database connections that are ready before a message arrives.

django_dramatiq's DbConnectionsMiddleware closes a worker thread's connection
when it is too old (CONN_MAX_AGE) or broken, before and after every message,
and the next message opens a new one. Opening one costs a PostgreSQL backend
fork, authentication and a cold catalog cache: several milliseconds, paid
inside the first transaction of whatever run happens to come next. With
several threads per worker process each taking messages in turn, that is a
good share of a quiet system's runs.

This subclass keeps the same closing rules and moves the opening off the
message path: each worker thread connects when it boots, and again right
after a message whose connection was closed, and touches the tables every run
reads, so the backend's catalog cache is warm too.

Django's health check (CONN_HEALTH_CHECKS) makes each message's first query a
`SELECT 1` round trip first, so that a database restarted while the worker
idled is reconnected, not failed on. Here that check runs only when the
connection's socket has something to read while no query is in flight: a
server that ends a connection (restart, shutdown, pg_terminate_backend, idle
timeout) sends its FATAL error and closes the socket, which makes it readable.
A quiet socket is taken as healthy without the round trip, which on an idle
machine costs as much as the claim statement itself.
"""

from __future__ import annotations

import logging
import select

import psycopg
from django.db import close_old_connections, connection
from django_dramatiq.middleware import DbConnectionsMiddleware
from psycopg.pq import TransactionStatus

logger = logging.getLogger(__name__)

# One cheap statement that makes the backend load what every run's first query needs.
_WARM_SQL = (
    "SELECT 1 FROM executor_run r JOIN flows_flow f ON f.id = r.flow_id "
    "JOIN flows_flowversion v ON v.id = r.version_id JOIN executor_steprun s ON s.run_id = r.id "
    "JOIN executor_runevent e ON e.run_id = r.id WHERE r.id = 0"
)


def warm_connection() -> None:
    """Open this thread's connection (if closed) and warm its backend; never raises."""
    try:
        if connection.connection is None:
            connection.ensure_connection()
            with connection.cursor() as cursor:
                cursor.execute(_WARM_SQL)
    except Exception as exc:
        # The message that comes next will connect (or fail and retry) as it always did.
        logger.warning("could not open a database connection ahead of work: %s", exc)
        connection.close()


def skip_health_check_if_quiet() -> None:
    """Mark this thread's connection checked when its socket is quiet (see the module docstring).

    Anything to read (an error, end of file) or any doubt leaves the check to
    Django, which then runs it before the first query.
    """
    raw = connection.connection
    if raw is None or connection.health_check_done or not connection.health_check_enabled:
        return
    try:
        if raw.closed or raw.pgconn.transaction_status != TransactionStatus.IDLE:
            return
        poller = select.poll()
        poller.register(raw.fileno(), select.POLLIN | select.POLLPRI)
        if poller.poll(0):
            return
    except (OSError, ValueError, psycopg.Error):
        return
    connection.health_check_done = True


class WarmDbConnections(DbConnectionsMiddleware):
    def after_worker_thread_boot(self, broker, thread) -> None:
        warm_connection()

    def before_process_message(self, broker, message) -> None:
        close_old_connections()
        skip_health_check_if_quiet()

    def _close_and_reopen(self, *args, **kwargs) -> None:
        close_old_connections()
        warm_connection()

    after_process_message = _close_and_reopen
    after_skip_message = _close_and_reopen
