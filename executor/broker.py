"""Dramatiq's Redis broker with a doorbell, so an idle worker wakes when work arrives.

Dramatiq's Redis consumer has no blocking fetch: when its queue is empty it
sleeps and asks again, with a backoff up to the worker timeout. A short
timeout makes idle workers hammer Redis; a long one adds up to that much to
the first step of every quiet run.

Here every enqueue also pushes a token onto a per-queue list, and an idle
consumer that has room for more messages waits on that list with BLPOP
instead of sleeping. The token is only a hint: the messages themselves go
through Dramatiq's own scripts and acks, a lost token costs at most one idle
timeout, and a spare token one empty fetch. The list is trimmed so tokens
never pile up.
"""

from __future__ import annotations

import time
from uuid import uuid4

import redis
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis, dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

# More tokens than consumers that could use them are spare fetches; keep a few.
MAX_TOKENS = 32
# How often a consumer whose prefetched messages are all in hand looks whether one was acked.
BUSY_POLL_SECONDS = 0.005


class WakingRedisBroker(RedisBroker):
    def wake_key(self, queue_name: str) -> str:
        return f"{self.namespace}:{queue_name}.wake"

    @property
    def consumer_class(self):
        return _WakingConsumer

    def enqueue(self, message, *, delay=None):
        """RedisBroker.enqueue, with the doorbell in the message's own round trip.

        A doorbell sent after the message's reply reaches the consumer a round trip
        later, and on a quiet machine each round trip wakes two idle processes.
        """
        queue_name = message.queue_name
        # As RedisBroker.enqueue: each enqueue gets its own id in Redis (a retried message is enqueued again).
        message = message.copy(options={"redis_message_id": str(uuid4())})
        if delay is not None:
            queue_name = dq_name(queue_name)
            message = message.copy(queue_name=queue_name, options={"eta": current_millis() + delay})
        self.emit_before("enqueue", message, delay)
        # The arguments RedisBroker._dispatch gives Dramatiq's dispatch script.
        args = ["enqueue", current_millis(), queue_name, self.broker_id, self.heartbeat_timeout,
                self.dead_message_ttl, self._should_do_maintenance("enqueue"), self._max_unpack_size(),
                message.options["redis_message_id"], message.encode()]
        script = self.scripts["dispatch"]
        key = self.wake_key(queue_name)
        pipe = self.client.pipeline(transaction=False)
        # EVALSHA itself, not the Script: a pipeline holding a Script asks Redis whether it is loaded first.
        pipe.evalsha(script.sha, 1, self.namespace, *args)
        pipe.lpush(key, 1)
        pipe.ltrim(key, 0, MAX_TOKENS - 1)
        try:
            pipe.execute()
        except redis.exceptions.NoScriptError:
            script(keys=[self.namespace], args=args)  # Redis restarted: the Script loads itself and runs
        self.emit_after("enqueue", message, delay)
        return message


class _WakingConsumer(_RedisConsumer):
    def __next__(self):
        message = self._cached()
        if message is not None:
            return message
        try:
            if self.outstanding_message_count < self.prefetch:
                self.message_cache = self.broker.do_fetch(self.queue_name, self.prefetch - self.outstanding_message_count)
                if self.message_cache:
                    return self._cached()
                # Nothing queued: wait for the doorbell (or the idle timeout), then fetch again.
                self.broker.client.blpop([self.broker.wake_key(self.queue_name)], timeout=self.timeout / 1000)
                return None
            # Every prefetched message is still being worked on: no Redis call until one is acked.
            time.sleep(BUSY_POLL_SECONDS)
            return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _cached(self):
        while self.message_cache:
            data = self.message_cache.pop(0)
            if data is None:  # see dramatiq #266; the stock consumer skips these too
                continue
            message = Message.decode(data)
            self.queued_message_ids.add(message.message_id)
            return MessageProxy(message)
        return None
