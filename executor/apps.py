from django.apps import AppConfig
from django.db.backends.signals import connection_created


def use_generic_plans(sender, connection, **kwargs) -> None:
    """Prepared statements get one generic plan per connection, not a fresh plan per run.

    Only the executor's hot statements are prepared (live.prepared_cursor); Django's
    own cursors never are, so nothing else changes. A SET rather than a startup
    option, which connection poolers such as PgBouncer refuse.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_generic_plan")


class ExecutorConfig(AppConfig):
    name = "executor"
    verbose_name = "Executor"

    def ready(self) -> None:
        connection_created.connect(use_generic_plans, dispatch_uid="executor.use_generic_plans")
