"""Liveness and readiness probes: JSON, no login, cheap enough to poll."""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache

from kwala_site import counters


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any failure means "not ready", reported, not raised
        return {"ok": False, "error": exc.__class__.__name__}


def _check_redis() -> dict:
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        client.ping()
        return {"ok": True}
    except (redis.RedisError, OSError) as exc:
        return {"ok": False, "error": exc.__class__.__name__}


def _check_broker() -> dict:
    import dramatiq

    try:
        broker = dramatiq.get_broker()
        client = getattr(broker, "client", None)
        if client is not None:
            client.ping()
        return {"ok": True, "queues": sorted(broker.get_declared_queues())}
    except (redis.RedisError, OSError) as exc:
        return {"ok": False, "error": exc.__class__.__name__}


def _check_chains() -> dict:
    from executor.listener_health import chain_health

    # /readyz needs no login: say whether a chain has an error, not what it is.
    return chain_health(detail=False)


@never_cache
def readyz(request):
    started = time.monotonic()
    checks = {
        "database": _check_database(),
        "redis": _check_redis(),
        "broker": _check_broker(),
    }
    if checks["database"]["ok"]:
        checks["chains"] = _check_chains()
    ready = all(check["ok"] for check in checks.values())
    # What was refused, deferred or re-sent since the counters began (kwala_site.counters).
    body = {"status": "ready" if ready else "not ready", "checks": checks, "counters": counters.read()}
    body["took_ms"] = round((time.monotonic() - started) * 1000, 1)
    return JsonResponse(body, status=200 if ready else 503)
