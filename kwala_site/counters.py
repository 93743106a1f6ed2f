"""Site-wide counters of what the product refused, deferred or gave up on, shared by every process.

Kept in one Redis hash, so the web server, workers and listeners add to the same
numbers, and /readyz shows them. Counting never fails a request: when Redis cannot
be reached the count is lost with a log line (the event itself is logged by its caller).
"""

from __future__ import annotations

import logging

import redis

from kwala_site import ratelimit

logger = logging.getLogger("kwala.counters")

KEY = "kwala:counters"

# The names in use, with what each counts (shown as they are in /readyz).
NAMES = {
    "webhook_rate_limited": "inbound webhook requests answered 429 (the flow's requests per minute)",
    "overloaded": "requests answered 503: no database connection to be had",
    "sockets_refused": "websockets answered 503 or closed 1013 (Try Again Later): PostgreSQL or Redis could not serve them",
    "run_starts_deferred": "run starts put off because the flow or team was over its runs per minute",
    "queue_send_failed": "messages the broker did not take (the sweeper sent them again)",
    "nul_bytes_refused": "requests answered 400: a NUL byte in the URL (kwala_site.nulbytes)",
    "failure_webhook_failed": "failed runs the operators' failure webhook (KWALA_FAILURE_WEBHOOK_URL) was not told of",
}


def incr(name: str, amount: int = 1) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown counter {name!r}")
    try:
        ratelimit.client().hincrby(KEY, name, amount)
    except (redis.RedisError, OSError):
        logger.warning("counters: Redis unavailable, %s not counted", name)


def read() -> dict[str, int]:
    """Every counter, 0 for those never counted; {} when Redis cannot be reached."""
    try:
        found = ratelimit.client().hgetall(KEY)
    except (redis.RedisError, OSError):
        return {}
    values = {key.decode(): int(value) for key, value in found.items()}
    return {name: values.get(name, 0) for name in NAMES}
