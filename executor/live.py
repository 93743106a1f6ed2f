"""Live run status: an append-only, sequence-numbered log in PostgreSQL, fanned
out to websocket groups through the channel layer after the write commits.

The log is the source of truth; the channel layer may drop messages under load,
so consumers replay from the log and use the seq to drop duplicates and to
notice gaps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import timezone

from executor.models import Run, RunEvent

logger = logging.getLogger(__name__)


def run_group(run_code) -> str:
    return f"run.{run_code}"


def flow_group(flow_code: str) -> str:
    return f"flow.{flow_code}"


def record_run_event(run: Run, kind: str, data: dict) -> RunEvent:
    """Append an event to the run's log and broadcast it once the transaction commits.

    Call inside a transaction (it opens one if there is none); never put secret
    values in `data`: the log is shown to every team member.
    """
    return record_run_events(run, [(kind, data)])[0]


# Run columns a RunLog may set along with its events (see RunLog.set_run).
_RUN_FIELDS = ("status", "error", "started_at", "finished_at")


def rows_json(rows: list[dict]) -> str:
    """Rows for jsonb_to_recordset (or jsonb_array_elements): one JSON text, timestamps in ISO 8601."""
    return json.dumps(rows, default=_iso_datetime, separators=(",", ":"))


def from_jsonb(value):
    """A jsonb column's value: Django's psycopg connections load jsonb as text."""
    return json.loads(value) if isinstance(value, str) else value


def _iso_datetime(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass
class Statement:
    """One SQL statement to send along with others (see execute_together), and what to do with its rows."""

    sql: str
    params: list
    done: Callable[[list[tuple] | None], None]
    returns_rows: bool = True


def execute_together(statements: list[Statement], *, commit: bool = False) -> None:
    """Send the statements as one query (one round trip), in order; hand each its own result rows.

    Call inside a transaction. They succeed or fail together: an error in any
    fails the query, and the caller's transaction with it.

    With `commit`, the same query ends with COMMIT, which saves the commit's own
    round trip. Only for the last statements of the outermost atomic block, and
    only when no `done` can raise: it runs after the commit. Django's commit at
    the block's end then finds no transaction open and sends nothing, and runs
    the on_commit callbacks as usual.
    """
    if not statements:
        return
    sql = "; ".join(s.sql for s in statements)
    if commit:
        if not connection.in_atomic_block or len(connection.atomic_blocks) != 1:
            raise RuntimeError("execute_together(commit=True) must end the outermost atomic block")
        sql += "; COMMIT"
    with connection.cursor() as cursor:
        cursor.execute(sql, [p for s in statements for p in s.params])
        for index, statement in enumerate(statements):
            if index:
                cursor.nextset()
            statement.done(cursor.fetchall() if statement.returns_rows else None)


def prepared_cursor():
    """A cursor on this thread's connection that binds parameters server-side, so its statements are prepared.

    For the hot statements whose planning costs more than running them (the
    pushed-claim statement plans in ~0.6 ms and runs in ~0.25). Give such a
    statement a fixed text (rows as one JSON parameter, see rows_json): psycopg prepares
    it at first use on each connection (prepare_threshold in DATABASES) and
    PostgreSQL keeps one generic plan for it (executor.apps.use_generic_plans).
    Django's own cursors bind client-side and never prepare. Errors come out as
    Django's, and the queries are logged as Django's are.
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = ServerBindingCursor(connection.connection)
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)


def record_run_events(run: Run, events: list[tuple[str, dict]], fields: dict | None = None) -> list[RunEvent]:
    """Append several events to the run's log in one statement, in order; broadcast them after commit.

    The seq bump and the inserts are one statement (an UPDATE ... RETURNING feeding
    an INSERT ... SELECT), so the run row's lock orders concurrent writers and seqs
    never collide or leave gaps, at one round trip whatever the number of events.
    `fields` (status, error, started_at, finished_at) are set on the run row by the
    same UPDATE.
    """
    recorded: list[RunEvent] = []
    statement = run_events_statement(run, events, fields or {}, recorded)
    if statement is not None:
        # One statement needs no savepoint of its own: it either happens or the caller's transaction fails.
        with transaction.atomic(savepoint=False):
            execute_together([statement])
    return recorded


def run_events_statement(run: Run, events: list[tuple[str, dict]], fields: dict,
                         recorded: list[RunEvent] | None, now: datetime | None = None) -> Statement | None:
    """record_run_events as a Statement; the RunEvents go into `recorded` (if given) once it has run.

    `now` is the events' time (by default, now).
    """
    if not events and not fields:
        return None
    unknown = set(fields) - set(_RUN_FIELDS)
    if unknown:
        raise ValueError(f"record_run_events cannot set {sorted(unknown)}")
    now = now or timezone.now()
    # Only column names from _RUN_FIELDS and placeholders are joined in; every value is a parameter.
    sets = "".join(f", {name} = %s" for name in fields)
    if not events:
        return Statement(f"UPDATE executor_run SET {sets.removeprefix(', ')} WHERE id = %s",  # noqa: S608
                         [*fields.values(), run.pk], lambda rows: None, returns_rows=False)
    # The events go in as one JSON list (rows_json), so the text depends only on which run fields are set.
    params: list = [len(events), *fields.values(), run.pk, run.pk, len(events), now,
                    rows_json([{"kind": kind, "data": data} for kind, data in events])]
    sql = (
        f"WITH bumped AS (UPDATE executor_run SET event_seq = event_seq + %s{sets} WHERE id = %s "  # noqa: S608
        "RETURNING event_seq) "
        "INSERT INTO executor_runevent (run_id, seq, kind, data, created_at) "
        "SELECT %s, bumped.event_seq - %s + v.ord, v.e->>'kind', v.e->'data', %s "
        "FROM bumped, jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS v(e, ord) RETURNING id, seq"
    )

    def done(result: list[tuple] | None) -> None:
        ids = sorted(result or [], key=lambda row: row[1])
        if len(ids) != len(events):
            raise Run.DoesNotExist(f"run {run.pk} does not exist")
        if recorded is not None:
            recorded.extend(
                RunEvent(pk=pk, run=run, seq=seq, kind=kind, data=data, created_at=now)
                for (pk, seq), (kind, data) in zip(ids, events, strict=True)
            )
        at = now.isoformat()
        messages = [_message(run.code, seq, kind, data, at) for (_, seq), (kind, data) in zip(ids, events, strict=True)]
        flow_code = run.flow.code
        transaction.on_commit(lambda: broadcast_all(messages, flow_code))

    return Statement(sql, params, done)


class RunLog:
    """Events of one run gathered during a transaction, written by flush() with one statement.

    The events keep the order they were added in; set_run() adds changes to the
    run row itself, written by the same statement. Flush before the transaction
    ends; what is added after the last flush is not written.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.events: list[tuple[str, dict]] = []
        self.fields: dict = {}

    def add(self, kind: str, data: dict) -> None:
        self.events.append((kind, data))

    def set_run(self, **fields) -> None:
        """Set columns of the run row (and the in-memory run) at the next flush."""
        for name, value in fields.items():
            setattr(self.run, name, value)
        self.fields.update(fields)

    def take_statements(self, recorded: list[RunEvent] | None = None, *, now: datetime | None = None) -> list[Statement]:
        """What flush() would write, for execute_together (the RunEvents go into `recorded`).

        The log is empty afterwards. `now` is the events' time (by default, now).
        """
        events, self.events = self.events, []
        fields, self.fields = self.fields, {}
        statement = run_events_statement(self.run, events, fields, recorded, now)
        return [statement] if statement is not None else []

    def flush(self) -> list[RunEvent]:
        recorded: list[RunEvent] = []
        with transaction.atomic(savepoint=False):
            execute_together(self.take_statements(recorded))
        return recorded


def broadcast_all(messages: list[dict], flow_code: str) -> None:
    """Hand the messages to this process's broadcast loop and return at once.

    One long-lived event loop per process keeps the channel layer's Redis
    connections open (async_to_sync would build a loop, and connect again, per
    call). Delivery is best effort by design: the log already holds the events.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    _outbox().put((layer, messages, flow_code))


# Group sends in flight at once: each holds one of the channel layer's Redis connections.
SEND_CONCURRENCY = 8
# How long the loop gathers events before it sends them. A run's start and its end, a few
# milliseconds apart, go out as one message per group, and a busy worker wakes the loop once
# per window instead of once per transaction. Only groups somebody is in are sent to (_watched).
GATHER_SECONDS = 0.02


class _Outbox:
    """What the worker threads hand over, for this process's broadcast loop; wakes the loop only when it is idle."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.wake = asyncio.Event()
        self.lock = threading.Lock()
        self.items: list[tuple] = []
        self.idle = True
        threading.Thread(target=self.loop.run_forever, name="run-event-broadcast", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._sender(), self.loop)

    def put(self, item: tuple) -> None:
        with self.lock:
            self.items.append(item)
            wake, self.idle = self.idle, False
        if wake:
            self.loop.call_soon_threadsafe(self.wake.set)

    async def _sender(self) -> None:
        """Send what was handed over, one channel-layer message per group for all that is waiting.

        Each group's "run.events" batch is in commit order, and one batch is sent
        before the next is gathered, so a run's events stay in seq order (see
        executor.consumers). Never more than SEND_CONCURRENCY connections.
        """
        limit = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(layer, group: str, events: list[dict]) -> None:
            batch = events[0] if len(events) == 1 else {"type": "run.events", "events": events}
            async with limit:
                try:
                    await layer.group_send(group, batch)
                except Exception:
                    # The log already holds the events; browsers catch up from it.
                    logger.warning("could not broadcast %s run events to %s", len(events), group, exc_info=True)

        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(GATHER_SECONDS)
            with self.lock:
                items, self.items = self.items, []
            groups: dict[tuple, list[dict]] = {}
            for layer, messages, flow_code in items:
                groups.setdefault((layer, run_group(messages[0]["run"])), []).extend(messages)
                groups.setdefault((layer, flow_group(flow_code)), []).extend(messages)
            watched = await _watched(groups)
            await asyncio.gather(*(send(layer, group, events) for (layer, group), events in groups.items()
                                   if (layer, group) in watched))
            with self.lock:
                if self.items:
                    self.wake.set()  # more came while these were sent: go round again
                else:
                    self.idle = True


async def _watched(groups) -> set[tuple]:
    """The (layer, group) pairs somebody is in, with one Redis round trip per host.

    channels_redis' group_send costs two round trips per group even when the group
    is empty, as most are: nobody watches most runs. It keeps a group as a sorted set,
    which Redis deletes with its last member, so a group whose key does not exist has
    nobody to send to. A consumer that joins after this check has not missed anything
    it needs: these events were committed before the check, and RunConsumer reads the
    log after it joins. A layer that is not channels_redis' gets every group.
    """
    watched = set()
    by_host: dict[tuple, list[tuple]] = {}
    for layer, group in groups:
        if hasattr(layer, "_group_key") and hasattr(layer, "consistent_hash"):
            by_host.setdefault((layer, layer.consistent_hash(group)), []).append((layer, group))
        else:
            watched.add((layer, group))
    for (layer, index), pairs in by_host.items():
        try:
            async with layer.connection(index).pipeline(transaction=False) as pipe:
                for _, group in pairs:
                    pipe.exists(layer._group_key(group))
                found = await pipe.execute()
        except Exception:
            logger.warning("could not look up who watches %s groups", len(pairs), exc_info=True)
            continue  # best effort, as the sends are
        watched.update(pair for pair, exists in zip(pairs, found, strict=True) if exists)
    return watched


_outbox_lock = threading.Lock()
_outbox_state: dict = {}


def _outbox() -> _Outbox:
    with _outbox_lock:
        # A forked child must not use its parent's loop (its thread did not survive the fork).
        if _outbox_state.get("pid") != os.getpid():
            _outbox_state.update(pid=os.getpid(), outbox=_Outbox())
        return _outbox_state["outbox"]


def event_as_message(event: RunEvent, run_code) -> dict:
    """The channel-layer message for one event (also what replay sends)."""
    return _message(run_code, event.seq, event.kind, event.data, event.created_at.isoformat())


def _message(run_code, seq: int, kind: str, data: dict, at: str) -> dict:
    return {"type": "run.event", "run": str(run_code), "seq": seq, "kind": kind, "data": data, "at": at}


def revoke_sockets(user_id: int, team_id: int) -> None:
    """Close the user's open sockets on the team's runs and flows, after the commit."""

    async def send(layer) -> None:
        try:
            await layer.group_send(f"user.{user_id}", {"type": "membership.revoked", "team": team_id})
        except Exception:
            logger.warning("could not close the sockets of user %s", user_id, exc_info=True)

    def schedule() -> None:
        layer = get_channel_layer()
        if layer is not None:
            asyncio.run_coroutine_threadsafe(send(layer), _outbox().loop)

    transaction.on_commit(schedule)
