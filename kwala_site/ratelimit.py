"""Fixed-window counters in Redis, shared by every process: the API's per-token limit and
the account doors' (login, signup, password reset) per-name and per-address limits.

Fails open: when Redis cannot be reached the request goes through, with a log line,
so that an unreachable Redis does not lock everyone out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis
from django.conf import settings

logger = logging.getLogger("kwala.ratelimit")

_client: redis.Redis | None = None


def client() -> redis.Redis:
    """This process's Redis client for limits and counters (short timeouts: they fail open)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    return _client


@dataclass
class Window:
    count: int  # hits in the current window, this one included (0 when Redis was unreachable)
    retry_after: int  # seconds until the window ends

    def over(self, limit: int) -> bool:
        return self.count > limit


def _key(name: str, window: int) -> tuple[str, int]:
    now = int(time.time())
    bucket = now // window
    return f"kwala:ratelimit:{name}:{bucket}", (bucket + 1) * window - now


def hit(name: str, window: int) -> Window:
    """Count one hit against `name` in the current window of `window` seconds."""
    return hit_each([name], window)[0]


def peek(name: str, window: int) -> Window:
    """The hits against `name` in the current window, without counting one."""
    key, retry_after = _key(name, window)
    try:
        count = int(client().get(key) or 0)
    except (redis.RedisError, OSError):
        logger.warning("rate limiter: Redis unavailable, %s let through", name.split(":")[0])
        return Window(0, 0)
    return Window(count, max(retry_after, 1))


def hit_each(names: list[str], window: int) -> list[Window]:
    """hit() for several names at once, in one Redis call."""
    keys = [_key(name, window) for name in names]
    try:
        counts = _count(keys=[key for key, _ in keys], args=[window + 1])
    except (redis.RedisError, OSError):
        logger.warning("rate limiter: Redis unavailable, %s let through", names[0].split(":")[0])
        return [Window(0, 0) for _ in names]
    return [Window(int(count), max(retry_after, 1)) for count, (_, retry_after) in zip(counts, keys, strict=True)]


# INCR each key, giving a new one its expiry: one command and one reply, where a MULTI/EXEC
# pipeline of INCR and EXPIRE is six (~110 -> ~80 us of client CPU a call for two keys, with
# hiredis; the webhook door makes two such calls a request).
_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('EXPIRE', key, ARGV[1]) end
end
return counts
"""
_script = None


def _count(keys: list[str], args: list) -> list[int]:
    # The Script runs by its digest, and loads itself when Redis does not know it (after a restart).
    global _script
    if _script is None:
        _script = client().register_script(_COUNT_SCRIPT)
    return _script(keys=keys, args=args)
