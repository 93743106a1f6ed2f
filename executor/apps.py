import sys
import weakref

from django.apps import AppConfig
from django.db.backends.signals import connection_created


def use_generic_plans(sender, connection, **kwargs) -> None:
    """Prepared statements get one generic plan per connection, not a fresh plan per run.

    Only the executor's hot statements are prepared (executor.runs.store.prepared_cursor); Django's
    own cursors never are, so nothing else changes. A SET rather than a startup
    option, which connection poolers such as PgBouncer refuse.
    """
    if connection.vendor != "postgresql" or connection.connection in _generic_plans:
        return
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
    _generic_plans.add(connection.connection)


# The connections already SET. A pooled connection is handed out again and again, and
# connection_created is sent each time: the SET was a round trip per webhook
# (6% of the web process's CPU samples in bench/webhook_load.py). The setting is the
# session's, and a pool returns a connection as it left it (rolled back, not reset).
_generic_plans: weakref.WeakSet = weakref.WeakSet()


class ExecutorConfig(AppConfig):
    name = "executor"
    verbose_name = "Executor"

    def ready(self) -> None:
        connection_created.connect(use_generic_plans, dispatch_uid="executor.use_generic_plans")
        restore_recursion_limit()
        # The actors connect themselves to executor.runs.queue, so every process can send.
        from executor import tasks  # noqa: F401


# py_ecc (imported by web3 and eth-account) raises the interpreter's recursion limit to
# 100,000 when it is imported. Past a few thousand C-level frames (json's decoder, repr,
# compile) the thread's stack overflows first, so a deeply nested request body or
# expression killed the process with a segmentation fault instead of a RecursionError.
# Kwala never calls the parts of py_ecc that recurse deeply (BLS pairings).
SAFE_RECURSION_LIMIT = 4000


def restore_recursion_limit() -> None:
    import web3  # noqa: F401 (so that py_ecc has run its import-time change before we undo it)

    if sys.getrecursionlimit() > SAFE_RECURSION_LIMIT:
        sys.setrecursionlimit(SAFE_RECURSION_LIMIT)
