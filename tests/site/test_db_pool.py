"""The web server's pooled connections: set up once, not on every request that borrows one."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_pooled_connection_is_set_to_generic_plans_once_however_often_it_is_borrowed():
    # The pool hands out the same connection again, and Django sends connection_created each
    # time; the SET (executor.apps.use_generic_plans) was a round trip per webhook request.
    pooled = DatabaseWrapper({**connection.settings_dict, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False,
                              "OPTIONS": {**connection.settings_dict["OPTIONS"],
                                          "pool": {"min_size": 1, "max_size": 1}}}, alias="pooled")
    sent = []

    def record(execute, sql, params, many, context):
        sent.append(sql)
        return execute(sql, params, many, context)

    try:
        with pooled.execute_wrapper(record):
            raw = []
            for _ in range(3):
                pooled.ensure_connection()
                raw.append(pooled.connection)
                with pooled.cursor() as cursor:
                    cursor.execute("SHOW plan_cache_mode")
                    assert cursor.fetchone() == ("force_generic_plan",)
                pooled.close()  # back to the pool
        assert raw[0] is raw[1] is raw[2]
        assert sent.count("SET plan_cache_mode = force_generic_plan") == 1
    finally:
        pooled.close_pool()
