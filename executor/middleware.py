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
reads, so the backend's catalog cache is warm too. The health check
(CONN_HEALTH_CHECKS) still runs on each message's first query, so a database
restarted while the worker idled is reconnected, not failed on.
"""

from __future__ import annotations

import logging

from django.db import close_old_connections, connection
from django_dramatiq.middleware import DbConnectionsMiddleware

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


class WarmDbConnections(DbConnectionsMiddleware):
    def after_worker_thread_boot(self, broker, thread) -> None:
        warm_connection()

    def _close_and_reopen(self, *args, **kwargs) -> None:
        close_old_connections()
        warm_connection()

    after_process_message = _close_and_reopen
    after_skip_message = _close_and_reopen
