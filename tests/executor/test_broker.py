"""The broker's doorbell (executor.broker), against the real embedded Redis."""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
import pytest
from dramatiq import Message

from executor.broker import MAX_TOKENS, WakingRedisBroker


@pytest.fixture
def queue():
    """A queue of its own, which no running worker consumes."""
    broker = dramatiq.get_broker()
    name = f"doorbell-{uuid.uuid4().hex[:8]}"
    broker.declare_queue(name)
    yield broker, name
    broker.flush(name)
    broker.client.delete(broker.wake_key(name))


def message(name: str, n: int) -> Message:
    return Message(queue_name=name, actor_name="answer_probe", args=(n,), kwargs={}, options={})


def test_the_configured_broker_is_the_waking_one():
    assert isinstance(dramatiq.get_broker(), WakingRedisBroker)


def test_each_message_rings_the_doorbell_and_unused_tokens_stay_few(queue):
    broker, name = queue
    for n in range(MAX_TOKENS + 10):
        broker.enqueue(message(name, n))
    assert broker.client.llen(broker.wake_key(name)) == MAX_TOKENS

    consumer = broker.consume(name, prefetch=100, timeout=100)
    received = [next(consumer) for _ in range(MAX_TOKENS + 10)]
    assert [m.args[0] for m in received] == list(range(MAX_TOKENS + 10))
    for m in received:
        consumer.ack(m)


def test_a_message_still_goes_in_after_redis_forgot_the_script(queue):
    broker, name = queue
    broker.enqueue(message(name, 1))
    broker.client.script_flush()  # what a Redis restart does
    broker.enqueue(message(name, 2))
    assert broker.client.llen(broker.wake_key(name)) == 2
    consumer = broker.consume(name, prefetch=10, timeout=100)
    received = [next(consumer) for _ in range(2)]
    assert [m.args[0] for m in received] == [1, 2]
    for m in received:
        consumer.ack(m)


def test_a_delayed_message_rings_its_delay_queue(queue):
    broker, name = queue
    broker.enqueue(message(name, 1), delay=60_000)
    assert broker.client.llen(broker.wake_key(f"{name}.DQ")) == 1
    assert broker.client.llen(broker.wake_key(name)) == 0


def test_an_idle_consumer_waits_for_the_doorbell_not_its_timeout(queue):
    broker, name = queue
    consumer = broker.consume(name, prefetch=1, timeout=30_000)
    threading.Timer(0.3, lambda: broker.enqueue(message(name, 7))).start()

    started = time.monotonic()
    first = next(consumer)  # woken by the token: no message yet, the next call fetches it
    second = first or next(consumer)
    woke_after = time.monotonic() - started

    assert second is not None and second.args == (7,)
    assert woke_after < 15, "the consumer slept through its timeout instead of waking on the doorbell"
    consumer.ack(second)


def test_a_message_without_a_token_is_still_fetched_after_the_idle_timeout(queue):
    broker, name = queue
    broker.enqueue(message(name, 3))
    broker.client.delete(broker.wake_key(name))  # as for work re-queued from a dead worker
    consumer = broker.consume(name, prefetch=1, timeout=200)
    received = next(consumer) or next(consumer)
    assert received is not None and received.args == (3,)
    consumer.ack(received)


def test_worker_threads_hold_a_connection_before_their_first_message(transactional_db):
    from django.db import connection

    from executor.middleware import WarmDbConnections

    broker = dramatiq.get_broker()
    assert any(isinstance(m, WarmDbConnections) for m in broker.middleware)
    middleware = WarmDbConnections()
    connection.close()
    middleware.after_worker_thread_boot(broker, threading.current_thread())
    assert connection.connection is not None
    # A connection past CONN_MAX_AGE is closed after its message, as before, and its
    # replacement is opened right away rather than inside the next message's transaction.
    old = connection.connection
    connection.close_at = time.monotonic() - 1
    middleware.after_process_message(broker, None)
    assert connection.connection is not None and connection.connection is not old
    assert old.closed


def _terminate(backend_pid: int) -> None:
    """End a backend from another connection, as a database restart or an operator would, and wait until it is gone."""
    from django.db import connection

    other = connection.get_new_connection(connection.get_connection_params())
    try:
        other.autocommit = True
        other.execute("SELECT pg_terminate_backend(%s)", [backend_pid])
        deadline = time.monotonic() + 10
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend_pid]).fetchone():
            assert time.monotonic() < deadline, "the backend did not exit"
            time.sleep(0.01)
    finally:
        other.close()


def test_a_message_on_a_quiet_connection_skips_the_health_check_round_trip(transactional_db):
    from django.db import connection

    from executor.middleware import WarmDbConnections

    middleware = WarmDbConnections()
    connection.ensure_connection()
    middleware.before_process_message(dramatiq.get_broker(), None)
    assert connection.health_check_enabled
    assert connection.health_check_done  # Django will not send SELECT 1 before the first query
    with connection.cursor() as cursor:
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)


def test_a_connection_the_server_ended_while_idle_is_replaced_before_the_message_runs(transactional_db):
    from django.db import connection

    from executor.middleware import WarmDbConnections

    middleware = WarmDbConnections()
    connection.ensure_connection()
    old = connection.connection
    _terminate(old.info.backend_pid)
    middleware.before_process_message(dramatiq.get_broker(), None)
    assert not connection.health_check_done  # the socket had the server's goodbye on it: Django checks
    with connection.cursor() as cursor:  # reconnects instead of failing
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != old.info.backend_pid
    assert connection.connection is not old
