"""The run and step rows in PostgreSQL: every statement that reads or writes them.

The run code works on Run and StepRun instances in memory (executor.runs.engine)
and writes what changed here, in as few round trips as the guarantees allow:

- `claim` inserts runs exactly once (the unique (version, trigger_key)), and can
  insert the first one already started, with its step rows and first events, in
  the same statement (`Claimed` says what it wrote); `claim_each` does the same
  for claims made separately, each with its own start (a group commit of webhook
  claims, runs.batching);
- `load_run` / `load_locked` read a run with its flow and version, and its steps;
- `StepChanges` and `RunLog` gather changes made under the run's lock, and
  `write` sends them as one query.

Three workarounds of Django's internals live here and nowhere else, each for a
figure measured when it landed:

- `prepared_cursor` (a server-binding cursor, so psycopg prepares the statement):
  the pushed claim planned in ~0.6 ms and ran in ~0.25; claim to webhook went
  from ~2.0 to ~1.3 ms on the worker (commit 340e0ff).
- `read_together` reads a run and its steps in psycopg's pipeline mode, each
  query prepared, beside Django's cursors: one round trip, and PostgreSQL plans
  them once per connection (357 -> 79 us of PostgreSQL CPU for the pair).
- `execute_together(commit=True)` ends the last write of a start with `; COMMIT`,
  behind Django's back: one round trip fewer before a run's first side effect
  (commit a6d2878).
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.db import connection, transaction
from django.utils import timezone

from executor import metrics
from executor.live import broadcast_all, message
from executor.models import Run, RunEvent, StepRun
from executor.runs import queue
from flows.models import Flow, FlowVersion

S = StepRun.Status


# -- sending statements ----------------------------------------------------------------------


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

    The writes go this way, bound client-side and planned each time: prepared
    (one by one, or pipelined as read_together does) the run's events statement
    cost more, both here and in PostgreSQL (client CPU ~280 against ~420-500 us,
    PostgreSQL ~260-320 against ~350-440 us, 400 calls each way).
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


def read_together(queries: list[tuple[str, list]]) -> list[list[tuple]]:
    """Run the queries in one round trip, each prepared; return each one's rows, in order.

    psycopg's pipeline mode sends them all before reading any result, and each
    goes through a server-binding cursor (prepared_cursor), so PostgreSQL plans
    each text once per connection. For the reads of a run (with its flow and
    version) and its steps, whose planning costs more than running them: sent as
    one multi-statement query (which cannot be prepared) they cost 357 us of
    PostgreSQL CPU against 79 us pipelined, for the same client CPU (~240 us),
    and 630 against 290 us of wall time (500 calls each way).
    """
    cursors = [prepared_cursor(logged=False) for _ in queries]
    started = time.monotonic()
    with connection.wrap_database_errors, connection.connection.pipeline():
        for (sql, params), cursor in zip(queries, cursors, strict=True):
            cursor.execute(sql, params)
        found = []
        for cursor in cursors:
            with cursor:
                found.append(cursor.fetchall())
    if connection.queries_logged:
        # One entry for the round trip (Django's debug cursor cannot read a pipelined query's text).
        connection.queries_log.append({"sql": "; ".join(sql for sql, _ in queries),
                                       "time": f"{time.monotonic() - started:.3f}"})
    return found


def prepared_cursor(*, logged: bool = True):
    """A cursor on this thread's connection that binds parameters server-side, so its statements are prepared.

    For the hot statements whose planning costs more than running them (the
    pushed-claim statement plans in ~0.6 ms and runs in ~0.25). Give such a
    statement a fixed text (rows as one JSON parameter, see rows_json): psycopg prepares
    it at first use on each connection (prepare_threshold in DATABASES) and
    PostgreSQL keeps one generic plan for it (executor.apps.use_generic_plans).
    Django's own cursors bind client-side and never prepare. Errors come out as
    Django's, and the queries are logged as Django's are (unless not `logged`).
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = ServerBindingCursor(connection.connection)
    if logged and connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


# -- a run's event log ------------------------------------------------------------------------


def record_run_event(run: Run, kind: str, data: dict) -> RunEvent:
    """Append an event to the run's log and broadcast it once the transaction commits.

    Call inside a transaction (it opens one if there is none); never put secret
    values in `data`: the log is shown to every team member.
    """
    return record_run_events(run, [(kind, data)])[0]





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
        _broadcast_on_commit(run, [(seq, kind, data) for (_, seq), (kind, data) in zip(ids, events, strict=True)], now)
        if any(kind == "run.status" for kind, _ in events):
            team, started_at, flow_code = str(run.team_id), run.started_at, run.flow.code
            transaction.on_commit(lambda: metrics.observe_run_events(team, flow_code, events, started_at, now))

    return Statement(sql, params, done)


def _broadcast_on_commit(run: Run, logged: list[tuple[int, str, dict]], now: datetime) -> None:
    """Send the run's logged events ((seq, kind, data), stamped `now`) to its live views once committed."""
    at = now.isoformat()
    messages = [message(run.code, seq, kind, data, at) for seq, kind, data in logged]
    flow_code = run.flow.code
    transaction.on_commit(lambda: broadcast_all(messages, flow_code))


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


# -- rows in memory, written in one statement ------------------------------------------------


# The SQL below joins in only these fixed column names and placeholders; every value is a parameter.
# Run columns read with the run (the rest, if ever needed, load on access).
_RUN_COLUMNS = ("id", "code", "team_id", "flow_id", "version_id", "trigger_key", "trigger", "event_id",
                "chain_id", "block_number", "block_hash", "dry_run", "status", "error", "event_seq",
                "created_by_id", "created_at", "dispatched_at", "started_at", "finished_at")
_FLOW_COLUMNS = ("code", "name", "paused", "signing_secret")
_VERSION_COLUMNS = ("number", "status", "created_at")
_RUN_SELECT = (
    f"{', '.join('r.' + c for c in _RUN_COLUMNS)}, {', '.join('f.' + c for c in _FLOW_COLUMNS)}, "
    f"{', '.join('v.' + c for c in _VERSION_COLUMNS)}"
)
_RUN_WIDTH = len(_RUN_COLUMNS) + len(_FLOW_COLUMNS) + len(_VERSION_COLUMNS)  # columns of _RUN_SELECT
_RUN_FROM = "FROM executor_run r JOIN flows_flow f ON f.id = r.flow_id JOIN flows_flowversion v ON v.id = r.version_id"
_RUN_SQL = f"SELECT {_RUN_SELECT} {_RUN_FROM} WHERE r.id = %s"  # noqa: S608
_STEP_COLUMNS = tuple(f.attname for f in StepRun._meta.concrete_fields)
_STEP_JSON = frozenset({"input", "output", "logs", "state"})
# What a transition may change, written as a whole from the row in memory.
_STEP_MUTABLE = ("status", "attempt", "input", "output", "error", "logs", "port", "handled", "state",
                 "lease_expires_at", "next_attempt_at", "queued_at", "started_at", "finished_at")
_STEP_TYPES = {"status": "varchar", "attempt": "int", "input": "jsonb", "output": "jsonb", "error": "text",
               "logs": "jsonb", "port": "varchar", "handled": "boolean", "state": "jsonb",
               "lease_expires_at": "timestamptz", "next_attempt_at": "timestamptz", "queued_at": "timestamptz",
               "started_at": "timestamptz", "finished_at": "timestamptz", "lease_extra_seconds": "float8"}
# What a new row also carries: set once, never changed.
_STEP_NEW = (*_STEP_MUTABLE, "lease_extra_seconds")
_STEP_TIMES = frozenset(c for c in _STEP_COLUMNS if _STEP_TYPES.get(c) == "timestamptz")
_STEP_SELECT = f"SELECT {', '.join(_STEP_COLUMNS)} FROM executor_steprun WHERE run_id = %s"  # noqa: S608
# Take a step for a worker: QUEUED and due, or RUNNING with its lease run out (its worker
# died), of a RUNNING run, with a lease of the base (a parameter) and the row's own extra.
# The row count decides. The run row is locked first, as every other writer of a run's steps
# locks it (a claim that took the step row first and then waited for the run's lock, held by a
# transaction cancelling that step as its run ended, was a deadlock). The same statement
# appends the "step.status" event to the run's log (its seq bump, under that lock, orders it
# among the run's other writers, as in run_events_statement) and reads what the step runs
# with: its run (with flow and version), the event's seq, and the run's steps as one JSON
# array, the claimed one as it now is and the others as they were when the statement began
# (_step_rows).
_CLAIM_STEP = (
    "WITH locked AS MATERIALIZED (SELECT id FROM executor_run"  # noqa: S608
    "   WHERE id = (SELECT run_id FROM executor_steprun WHERE id = %(step)s) AND status = 'RUNNING' FOR UPDATE), "
    "claimed AS (UPDATE executor_steprun AS s"
    "   SET status = 'RUNNING', attempt = s.attempt + 1, started_at = %(now)s,"
    "       lease_expires_at = %(now)s + make_interval(secs => %(lease)s + s.lease_extra_seconds),"
    "       next_attempt_at = NULL"
    "  FROM locked AS r"
    " WHERE s.id = %(step)s AND r.id = s.run_id"
    "   AND ((s.status = 'QUEUED' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= %(now)s))"
    "        OR (s.status = 'RUNNING' AND s.lease_expires_at < %(now)s))"
    "  RETURNING s.*), "
    "bumped AS (UPDATE executor_run SET event_seq = event_seq + 1 WHERE id = (SELECT run_id FROM claimed) "
    "  RETURNING id, event_seq), "
    "logged AS (INSERT INTO executor_runevent (run_id, seq, kind, data, created_at) "
    "  SELECT b.id, b.event_seq, 'step.status', "
    "         jsonb_build_object('step', c.step_id, 'status', c.status, 'attempt', c.attempt), %(now)s "
    "  FROM claimed c, bumped b RETURNING seq) "
    f"SELECT {_RUN_SELECT}, (SELECT seq FROM logged), "
    f"(SELECT jsonb_agg(jsonb_build_array({', '.join('x.' + c for c in _STEP_COLUMNS)})) FROM ("
    "   SELECT * FROM claimed UNION ALL"
    "   SELECT * FROM executor_steprun o WHERE o.run_id = c.run_id AND o.id <> c.id) AS x) "
    "FROM claimed c JOIN executor_run r ON r.id = c.run_id JOIN flows_flow f ON f.id = r.flow_id "
    "JOIN flows_flowversion v ON v.id = r.version_id"
)
# Rows go in as one JSON document (rows_json), unpacked by jsonb_to_recordset: the text
# of each statement is the same whatever the number of rows, so psycopg converts it once per
# process, and the one parameter is encoded by json in C, not element by element as arrays are.
_STEP_RECORD = ", ".join(f"{c} {_STEP_TYPES[c]}" for c in _STEP_MUTABLE)
_STEP_NEW_RECORD = ", ".join(f"{c} {_STEP_TYPES[c]}" for c in _STEP_NEW)
# The ids come again as an array: the planner takes a JSON document for 100 rows, and joined
# by id alone it hashed them against a scan of the whole step table until that table held
# ~15,000 rows (a bench's worth; a step's result cost ~1 ms more of PostgreSQL by then).
_STEP_UPDATE = (
    "UPDATE executor_steprun AS s SET " + ", ".join(f"{c} = v.{c}" for c in _STEP_MUTABLE)  # noqa: S608
    + " FROM jsonb_to_recordset(%s::jsonb)"
    f" AS v(id bigint, expected_status varchar, expected_attempt int, {_STEP_RECORD})"
    " WHERE s.id = ANY(%s::bigint[]) AND s.id = v.id AND s.status = v.expected_status"
    " AND s.attempt = v.expected_attempt RETURNING s.id"
)
_STEP_INSERT = (
    "INSERT INTO executor_steprun (run_id, step_id, " + ", ".join(_STEP_NEW) + ") "  # noqa: S608
    f"SELECT run_id, step_id, {', '.join(_STEP_NEW)} "
    f"FROM jsonb_to_recordset(%s::jsonb) AS r(run_id bigint, step_id varchar, {_STEP_NEW_RECORD}) RETURNING id, step_id"
)


class _Known(NamedTuple):
    """What a run's start needs of its version and flow (see _versions)."""

    created_at: Any
    number: int
    dag: dict | None
    flow_code: str
    flow_name: str


# _Known by version id. A version's compiled DAG never changes once it is set; created_at tells a
# reused id apart. The flow's name can change: a start worked out from this is checked against
# the row when it is written (see start_pushed_runs).
_versions: dict[int, _Known] = {}
_VERSION_SQL = (
    "SELECT v.created_at, v.number, v.dag, f.code, f.name FROM flows_flowversion v "
    "JOIN flows_flow f ON f.id = v.flow_id WHERE v.id = %s"
)


def instance(model, values: dict):
    """A model instance as loaded from the database; fields not in `values` load on access."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db("default", fields, [values[name] for name in fields])


def load_run(run_id: int, *, lock: bool) -> Run | None:
    """The run with its flow and version (DAG included) in one query; `lock` takes the run row FOR UPDATE."""
    with connection.cursor() as cursor:
        cursor.execute(_RUN_SQL + (" FOR UPDATE OF r" if lock else ""), [run_id])
        found = cursor.fetchone()
    return None if found is None else run_from_row(found)


def run_from_row(found: tuple) -> Run:
    """A Run (with .flow and .version, DAG included) from a row of _RUN_SELECT."""
    values = dict(zip(_RUN_COLUMNS, found, strict=False))
    values["trigger"] = from_jsonb(values["trigger"])
    run = instance(Run, values)
    flow = dict(zip(_FLOW_COLUMNS, found[len(_RUN_COLUMNS):], strict=False))
    run.flow = instance(Flow, {"id": run.flow_id, "team_id": run.team_id, **flow})
    number, status, created_at = found[len(_RUN_COLUMNS) + len(_FLOW_COLUMNS):]
    known = _versions.get(run.version_id)
    if known is not None and known.created_at == created_at:
        dag = known.dag
    else:
        dag = FlowVersion.objects.filter(pk=run.version_id).values_list("dag", flat=True).first()
    _remember(run.version_id, _Known(created_at, number, dag, run.flow.code, run.flow.name))
    run.version = instance(FlowVersion, {"id": run.version_id, "flow_id": run.flow_id, "number": number,
                                          "status": status, "created_at": created_at, "dag": dag})
    return run


def _remember(version_id: int, known: _Known) -> None:
    if known.dag is None:
        return  # not compiled (yet)
    if len(_versions) > 10_000:
        _versions.clear()
    _versions[version_id] = known


def known_version(version_id: int) -> _Known | None:
    """_versions' entry for the version, read if this process has none."""
    known = _versions.get(version_id)
    if known is None:
        with connection.cursor() as cursor:
            cursor.execute(_VERSION_SQL, [version_id])
            found = cursor.fetchone()
        if found is not None:
            known = _Known(found[0], found[1], from_jsonb(found[2]), found[3], found[4])
            _remember(version_id, known)
    return known


def load_steps(run: Run) -> dict[str, StepRun]:
    """The run's step rows as they are now, by step id."""
    with connection.cursor() as cursor:
        cursor.execute(_STEP_SELECT, [run.pk])
        return _step_rows(run, cursor.fetchall())


def load_locked(run_id: int) -> tuple[Run | None, dict[str, StepRun]]:
    """load_run(lock=True) and then load_steps, in one round trip."""
    found_run, found_steps = read_together([(f"{_RUN_SQL} FOR UPDATE OF r", [run_id]), (_STEP_SELECT, [run_id])])
    if not found_run:
        return None, {}
    run = run_from_row(found_run[0])
    return run, _step_rows(run, found_steps)


class ClaimedStep(NamedTuple):
    run: Run  # with .flow and .version (DAG included)
    row: StepRun  # RUNNING, with this worker's lease
    rows: dict[str, StepRun]  # the run's steps by step id, `row` among them


def claim_step(step_run_id: int, base_lease_seconds: float) -> ClaimedStep | None:
    """Take a step for this worker, with a lease of `base_lease_seconds` and the row's own extra,
    log its RUNNING event, and read its run and the run's steps; None if it is not due, taken, or
    finished (see _CLAIM_STEP).

    One statement: outside a transaction it commits on its own, in one round trip
    (no BEGIN or COMMIT of its own, which cost two more before every step). The
    event is broadcast once it is committed. The other steps are read without a
    lock: the finished ones are the step's context; its result is decided on rows
    read again under the run's lock.
    """
    now = timezone.now()
    # Prepared: PostgreSQL CPU ~55 us for the claim alone against ~280-400 us planned each time (500 calls each way).
    with prepared_cursor() as cursor:
        cursor.execute(_CLAIM_STEP, {"lease": float(base_lease_seconds), "now": now, "step": step_run_id})
        found = cursor.fetchone()
    if found is None:
        return None
    run = run_from_row(found[:_RUN_WIDTH])
    seq, steps = found[_RUN_WIDTH:]
    rows = _step_rows(run, from_jsonb(steps), as_json=True)
    row = next(r for r in rows.values() if r.pk == step_run_id)
    _broadcast_on_commit(run, [(seq, "step.status", {"step": row.step_id, "status": row.status,
                                                    "attempt": row.attempt})], now)
    return ClaimedStep(run, row, rows)


def extend_lease(row: StepRun, base_lease_seconds: float, extra_seconds: float) -> bool:
    """Give a step this worker holds (RUNNING, its attempt) a lease of the base and `extra_seconds`
    from when it was claimed, and keep the extra on its row; False if the claim is no longer
    this worker's. Commits on its own outside a transaction."""
    lease = row.started_at + timedelta(seconds=base_lease_seconds + extra_seconds)
    updated = StepRun.objects.filter(pk=row.pk, status=S.RUNNING, attempt=row.attempt).update(
        lease_expires_at=lease, lease_extra_seconds=extra_seconds)
    if updated:
        row.lease_expires_at, row.lease_extra_seconds = lease, extra_seconds
    return bool(updated)


def _step_rows(run: Run, found_rows: Sequence[Sequence], *, as_json: bool = False) -> dict[str, StepRun]:
    """StepRuns of `run` by step id, from rows of _STEP_COLUMNS: as psycopg reads them (the jsonb
    columns as text), or `as_json`, read as JSON arrays (jsonb_build_array: the jsonb columns
    come parsed, the timestamps as ISO 8601 text)."""
    rows = {}
    for found in found_rows:
        if as_json:
            values = [datetime.fromisoformat(v) if c in _STEP_TIMES and v is not None else v
                      for c, v in zip(_STEP_COLUMNS, found, strict=True)]
        else:
            values = [from_jsonb(v) if c in _STEP_JSON else v for c, v in zip(_STEP_COLUMNS, found, strict=True)]
        row = StepRun.from_db("default", _STEP_COLUMNS, values)
        row.run = run
        rows[row.step_id] = row
    return rows


class ClaimLost(Exception):
    """A step row this worker held changed under it (its lease ran out and another worker took it)."""


class StepChanges:
    """Step rows changed in memory under the run's lock, written together by engine.write().

    New rows are inserted as they end up (a run's first steps go in already run
    or queued); existing rows are updated in one statement guarded by the status
    and attempt they had when first changed. A `strict` change that no longer
    matches raises ClaimLost, rolling the transaction back; a lenient one (a
    cancellation racing a claim) is dropped. Messages for queued rows go out
    after commit, once their ids are known.
    """

    def __init__(self) -> None:
        self.new: list[StepRun] = []
        self.changed: dict[int, tuple[StepRun, str, int, bool]] = {}
        self.sends: list[tuple[StepRun, float]] = []
        self._sends: list[tuple[StepRun, float]] = []

    def change(self, row: StepRun, *, strict: bool = True, **fields) -> None:
        if row.pk is not None and id(row) not in self.changed:
            self.changed[id(row)] = (row, row.status, row.attempt, strict)
        for name, value in fields.items():
            setattr(row, name, value)

    def send(self, row: StepRun, delay_seconds: float = 0) -> None:
        self.sends.append((row, delay_seconds))

    def take(self) -> tuple[list[StepRun], list[tuple[StepRun, str, int, bool]]]:
        """The new rows and the changed ones (with what they were); the messages wait for after_write()."""
        new, self.new = self.new, []
        changed, self.changed = list(self.changed.values()), {}
        self._sends, self.sends = self.sends, []
        return new, changed

    def take_statements(self) -> list[Statement]:
        """The insert and the guarded update, for execute_together; the messages wait for after_write()."""
        new, changed = self.take()
        statements = []
        if new:
            records = [{"run_id": row.run_id, **record} for row, record in zip(new, self.records(new), strict=True)]
            statements.append(Statement(_STEP_INSERT, [rows_json(records)], functools.partial(inserted, new)))
        if changed:

            def updated(result, changed=changed) -> None:
                written = {pk for (pk,) in result}
                if any(strict and row.pk not in written for row, _, _, strict in changed):
                    raise ClaimLost("a step row changed while its run was locked")

            records = [{"id": row.pk, "expected_status": status, "expected_attempt": attempt, **self._values(row)}
                       for row, status, attempt, _ in changed]
            statements.append(Statement(_STEP_UPDATE, [rows_json(records), [r["id"] for r in records]], updated))
        return statements

    def after_write(self) -> None:
        """Send the queued rows' messages once the transaction commits (their ids are known now)."""
        sends, self._sends = self._sends, []
        for row, delay in sends:
            transaction.on_commit(lambda pk=row.pk, delay=delay: queue.send_step(pk, delay))

    @classmethod
    def records(cls, rows: list[StepRun]) -> list[dict]:
        """New rows as _STEP_INSERT takes them (but for run_id)."""
        return [{"step_id": row.step_id, "lease_extra_seconds": row.lease_extra_seconds, **cls._values(row)}
                for row in rows]

    @staticmethod
    def _values(row: StepRun) -> dict:
        return {c: getattr(row, c) for c in _STEP_MUTABLE}


def inserted(new: list[StepRun], result: list) -> None:
    """Give the new rows the ids the insert returned ([id, step_id] rows)."""
    ids = {step_id: pk for pk, step_id in result}
    for row in new:
        row.pk = ids[row.step_id]
        row._state.adding = False


def started_rows_sql(source: str) -> str:
    """The CTEs (new_steps, new_log) that insert started runs' step rows and first events.

    `source` names a CTE with each started run's (id, base, steps, log, now): its
    step rows and events come as JSON (RunStart.steps and .log), its events get
    seqs base + 1 ... and time `now`. STARTED_ROWS reads back what they inserted.
    """
    # Only fixed names and placeholders are joined in; every value is a parameter.
    return (
        f"new_steps AS (INSERT INTO executor_steprun (run_id, step_id, {', '.join(_STEP_NEW)}) "  # noqa: S608
        f"SELECT {source}.id, s.step_id, {', '.join('s.' + c for c in _STEP_NEW)} FROM {source}, "
        f"jsonb_to_recordset({source}.steps) AS s(step_id varchar, {_STEP_NEW_RECORD}) RETURNING run_id, id, step_id), "
        "new_log AS (INSERT INTO executor_runevent (run_id, seq, kind, data, created_at) "
        f"SELECT {source}.id, {source}.base + e.ord, e.e->>'kind', e.e->'data', {source}.now FROM {source}, "
        f"jsonb_array_elements({source}.log) WITH ORDINALITY AS e(e, ord) RETURNING run_id, id, seq)"
    )


# [run id, id, step_id] of each new step row and [run id, id, seq] of each event, for Begun.landed.
STARTED_ROWS = ("(SELECT coalesce(jsonb_agg(jsonb_build_array(run_id, id, step_id)), '[]') FROM new_steps), "
                "(SELECT coalesce(jsonb_agg(jsonb_build_array(run_id, id, seq)), '[]') FROM new_log)")


# -- claiming runs -------------------------------------------------------------------------------


@dataclass
class RunClaim:
    """A run to create unless its (version, trigger_key) already exists."""

    version_id: int
    flow_id: int
    team_id: int
    trigger_key: str
    trigger: dict[str, Any]
    chain_id: int | None = None  # Chain row id
    event_id: int | None = None
    block_number: int | None = None
    block_hash: str = ""
    dry_run: bool = False


@dataclass
class RunStart:
    """A run's start worked out in memory (runs.start), as the claim statement writes it.

    `run` holds the run row's values as its start leaves them (code, status,
    error, event_seq, started_at, finished_at) and what they were worked out
    from (flow_name, version_created); `steps` the new step rows
    (StepChanges.records) and `log` the run's first events ({kind, data}).
    """

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    log: list[dict[str, Any]]
    now: datetime  # the events' created_at (and the run's)


@dataclass
class PushedEvents:
    """Logs a node pushed, to be stored with the runs they fire, above the block loop's cursor."""

    chain: int  # the Chain row's id
    events: list[dict[str, Any]]  # block_number, block_hash, log_index, tx_hash, address, topics, data


@dataclass
class Claimed:
    """What claim() wrote."""

    run_ids: list[int]  # the new runs, in id order
    queued: list[int]  # those that wait for a start_run message (not started, not dry runs)
    first: Run | None  # the run inserted started, else the first new one (with flow and version)
    steps: list[list]  # [id, step_id] of the started run's step rows
    log: list[list]  # [id, seq] of its events
    cursor_block: int | None  # with pushed events: the block loop's cursor (events at or below it were not written)

    def started(self, start: RunStart | None) -> bool:
        """Whether `start`'s run went in started (else it is new and QUEUED, or it existed already)."""
        return (start is not None and self.first is not None and str(self.first.code) == start.run["code"]
                and self.first.status != Run.Status.QUEUED)


@dataclass
class ClaimedRun:
    """What claim_each() wrote for one claim that inserted its run."""

    run_id: int
    started: bool  # it went in started, as its RunStart had it (else QUEUED)
    steps: list[list]  # [id, step_id] of its step rows, when started
    log: list[list]  # [id, seq] of its events, when started


# What each claimed run carries (a RunClaim, and for a run started in memory its RunStart).
_CLAIM_RECORD = (
    "code uuid, team_id bigint, flow_id bigint, version_id bigint, trigger_key varchar, trigger jsonb, "
    "event_id bigint, chain_id bigint, block_number bigint, block_hash varchar, log_index int, dry_run boolean, "
    "status varchar, error text, event_seq int, started_at timestamptz, finished_at timestamptz, "
    "flow_name varchar, version_created timestamptz, steps jsonb, log jsonb, now timestamptz"
)
# Pushed logs: share-lock the cursor, store the events above it, and find the ids of those stored before.
_PUSHED_EVENTS = (
    "cur AS (SELECT block_number FROM executor_chaincursor "
    "WHERE chain_id = %(chain)s AND NOT halted AND block_number IS NOT NULL FOR SHARE), "
    "ev AS (SELECT * FROM jsonb_to_recordset(%(events)s::jsonb) AS ev(block_number bigint, block_hash varchar, "
    "log_index int, tx_hash varchar, address varchar, topics jsonb, data text)), "
    "new_ev AS (INSERT INTO executor_event (chain_id, block_number, block_hash, log_index, tx_hash, address, "
    "topics, data, created_at) SELECT %(chain)s, ev.*, %(now)s FROM ev, cur WHERE ev.block_number > cur.block_number "
    "ON CONFLICT (chain_id, block_hash, log_index) DO NOTHING RETURNING id, block_hash, log_index), "
    # The events stored before: looked up one by one (LIMIT keeps the lookup from being
    # flattened into a join that the planner, expecting 100 rows from ev, would hash).
    "ids AS (SELECT id, block_hash, log_index FROM new_ev UNION ALL "
    "SELECT e.id, ev.block_hash, ev.log_index FROM ev CROSS JOIN LATERAL (SELECT id FROM executor_event "
    "WHERE chain_id = %(chain)s AND block_hash = ev.block_hash AND log_index = ev.log_index LIMIT 1) AS e), "
)


_BY_CODE = "(SELECT coalesce(jsonb_object_agg(code, jsonb_build_array(id, status <> 'QUEUED')), '{}') FROM new_runs)"


@functools.cache
def _claim_sql(pushed: bool, by_code: bool) -> str:
    """claim()'s statement: one fixed text whatever the number of rows, so it is prepared once.

    With `pushed`, the runs' events are stored first (_PUSHED_EVENTS), each run
    takes its event's id, and runs of paused flows are left out. With `by_code`, it
    returns each new run's [id, started] by its code (_BY_CODE, for claim_each); the
    bulk claims (hundreds of runs) do not build that map for nothing.
    """
    # Only fixed names and placeholders are joined in; every value is a parameter.
    return (
        f"WITH {_PUSHED_EVENTS if pushed else ''}"  # noqa: S608
        f"claims AS MATERIALIZED (SELECT * FROM jsonb_to_recordset(%(runs)s::jsonb) AS r({_CLAIM_RECORD})), "
        "new_runs AS (INSERT INTO executor_run (code, team_id, flow_id, version_id, trigger_key, trigger, event_id, "
        "chain_id, block_number, block_hash, dry_run, status, error, event_seq, created_at, started_at, finished_at) "
        f"SELECT r.code, r.team_id, r.flow_id, r.version_id, r.trigger_key, r.trigger, "
        f"{'ids.id' if pushed else 'r.event_id'}, r.chain_id, r.block_number, r.block_hash, r.dry_run, "
        # A run with a start (status and the rest set) goes in started only if what its start was
        # worked out from still holds: the flow not paused, the version published, the same flow name.
        "CASE WHEN s.ok THEN r.status ELSE 'QUEUED' END, CASE WHEN s.ok THEN r.error ELSE '' END, "
        "CASE WHEN s.ok THEN r.event_seq ELSE 0 END, r.now, "
        "CASE WHEN s.ok THEN r.started_at END, CASE WHEN s.ok THEN r.finished_at END "
        "FROM claims r "
        f"{'JOIN ids ON ids.block_hash = r.block_hash AND ids.log_index = r.log_index ' if pushed else ''}"
        # The id lists again as arrays (in `first` too): the planner takes the JSON for 100 rows,
        # and joined by id alone it hashed them against scans of the whole flow and version tables.
        f"JOIN flows_flow f ON f.id = r.flow_id AND f.id = ANY(%(flows)s::bigint[]) {'AND NOT f.paused ' if pushed else ''}"
        "JOIN flows_flowversion v ON v.id = r.version_id AND v.id = ANY(%(versions)s::bigint[]) "
        "CROSS JOIN LATERAL (SELECT r.status IS NOT NULL AND NOT f.paused AND v.status = %(published)s "
        "AND v.created_at = r.version_created AND f.name = r.flow_name AS ok) AS s "
        "ON CONFLICT (version_id, trigger_key) DO NOTHING RETURNING *), "
        "started AS (SELECT n.id, 0 AS base, c.steps, c.log, c.now FROM new_runs n JOIN claims c ON c.code = n.code "
        "WHERE n.status <> 'QUEUED'), "
        f"{started_rows_sql('started')}, "
        f"first AS (SELECT {_RUN_SELECT} FROM new_runs r JOIN flows_flow f ON f.id = r.flow_id "
        "AND f.id = ANY(%(flows)s::bigint[]) "
        "JOIN flows_flowversion v ON v.id = r.version_id AND v.id = ANY(%(versions)s::bigint[]) ORDER BY r.status <> 'QUEUED' DESC, r.id LIMIT 1) "
        "SELECT ARRAY(SELECT id FROM new_runs ORDER BY id), "
        "ARRAY(SELECT id FROM new_runs WHERE status = 'QUEUED' AND NOT dry_run ORDER BY id), "
        f"{_BY_CODE if by_code else 'NULL::jsonb'}, "
        f"{STARTED_ROWS}, {'(SELECT block_number FROM cur)' if pushed else 'NULL::bigint'}, first.* "
        "FROM (SELECT 1) AS one LEFT JOIN first ON true"
    )


def claim(claims: Sequence[RunClaim], *, start: RunStart | None = None,
          pushed: PushedEvents | None = None) -> Claimed:
    """Insert the runs that do not exist yet, in one statement; say what was written.

    The unique (version, trigger_key) makes this exactly once: a claim made
    again, by this caller or any other, inserts nothing. With `start` (the first
    claim's run, started in memory), that run goes in started, with its step
    rows and events, in the same statement, unless it existed already or what
    its start was worked out from changed meanwhile (then it goes in QUEUED).

    With `pushed`, the statement share-locks the chain's cursor and writes only
    for blocks above it on a started, unhalted chain: the loop has decided
    everything at or below the cursor, and a loop processing a block or
    rewinding waits for this transaction and then sees its rows. Runs of paused
    flows are left out; each run takes the id of its event, new or stored before.

    Outside a transaction the statement commits on its own: one round trip.
    """
    if not claims and pushed is None:
        return Claimed([], [], None, [], [], None)  # (pushed events are stored even when no run is claimed)
    starts = [start, *[None] * (len(claims) - 1)] if claims else []
    with prepared_cursor() as cursor:
        cursor.execute(*claim_statement(claims, starts=starts, pushed=pushed))
        run_ids, queued, _, steps, log, cursor_block, *first = cursor.fetchone()
    run = run_from_row(tuple(first)) if run_ids else None
    return Claimed(list(run_ids), list(queued), run, _rows_of(run.pk, from_jsonb(steps)) if run else [],
                   _rows_of(run.pk, from_jsonb(log)) if run else [], cursor_block)


def claim_each(claims: Sequence[tuple[RunClaim, RunStart | None]]) -> list[ClaimedRun | None]:
    """claim() for claims that came separately, each with its own start, in one statement.

    For each claim, in order: what was written for its run, or None when the run
    existed already (two claims of the same run here insert it once: the first).
    Every start is checked against the rows, as claim() checks its one.
    """
    codes = [start.run["code"] if start is not None else str(uuid.uuid4()) for _, start in claims]
    with prepared_cursor() as cursor:
        cursor.execute(*claim_statement([c for c, _ in claims], starts=[s for _, s in claims], pushed=None,
                                        codes=codes))
        _, _, ids, steps, log, *_ = cursor.fetchone()
    ids, steps, log = from_jsonb(ids), from_jsonb(steps), from_jsonb(log)
    found: list[ClaimedRun | None] = []
    for code in codes:
        run_id, started = ids.pop(code, (None, False))
        if run_id is None:
            found.append(None)
            continue
        found.append(ClaimedRun(run_id, started, _rows_of(run_id, steps), _rows_of(run_id, log)))
    return found


def _rows_of(run_id: int, rows: list[list]) -> list[list]:
    """The [id, x] pairs of one run among STARTED_ROWS' [run id, id, x] rows."""
    return [[pk, value] for owner, pk, value in rows if owner == run_id]


def claim_statement(claims: Sequence[RunClaim], *, starts: Sequence[RunStart | None],
                    pushed: PushedEvents | None, codes: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """claim()'s statement and its parameters; `starts` go with the claims, in order (None: no start).

    Each new run's code is its start's, else the one `codes` gives it, else a new one. With
    `codes`, the statement also returns each new run's [id, started] by code (claim_each).
    """
    now = timezone.now()
    by_code = codes is not None
    codes = codes if by_code else [str(uuid.uuid4()) for _ in claims]
    runs = [{"code": code, "team_id": c.team_id, "flow_id": c.flow_id, "version_id": c.version_id,
             "trigger_key": c.trigger_key, "trigger": c.trigger, "event_id": c.event_id, "chain_id": c.chain_id,
             "block_number": c.block_number, "block_hash": c.block_hash, "dry_run": c.dry_run,
             "log_index": c.trigger.get("log_index") if pushed is not None else None, "now": now}
            for c, code in zip(claims, codes, strict=True)]
    for run, start in zip(runs, starts, strict=True):
        if start is not None:
            run.update(start.run, steps=start.steps, log=start.log, now=start.now)
    params = {"now": now, "runs": rows_json(runs), "published": FlowVersion.Status.PUBLISHED,
              "flows": sorted({c.flow_id for c in claims}), "versions": sorted({c.version_id for c in claims})}
    if pushed is not None:
        params.update(chain=pushed.chain, events=rows_json(pushed.events))
    return _claim_sql(pushed is not None, by_code=by_code), params
