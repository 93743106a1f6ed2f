"""Running a flow's DAG, exactly once per step result.

Plain synchronous code; executor.tasks holds the thin Dramatiq actors that call
it. The queue delivers at least once, so every transition here is a conditional
UPDATE on the StepRun row that checks the row count:

    PENDING --(all needed inputs resolved)--> QUEUED --(claim with a lease)--> RUNNING
    RUNNING --> SUCCEEDED | FAILED | QUEUED (retry / reschedule)      PENDING --> SKIPPED

A step's result is written only by the holder of its current claim (same
attempt, still RUNNING), and successors are decided under a lock on the run row,
so two branches finishing together cannot both miss (or both start) a join.
Messages are sent only after the transaction commits; if one is lost (a killed
worker, a flushed Redis) the sweeper finds the row and sends it again.

Logic steps (condition, switch, transform, join, stop) have no side effects, so
they run inside advance(), in the transaction that made them ready, with no
message of their own; a worker thread that queued side-effecting steps goes on
with one of them itself and sends the others. See docs/dag.md, "Execution".
"""

from __future__ import annotations

import functools
import logging
import random
import re
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from executor.live import RunLog, Statement, execute_together, from_jsonb, prepared_cursor, record_run_event, rows_json
from executor.models import Notification, Run, StepRun
from executor.steps import STEP_KINDS, Reschedule, StepContext, StepError, StepResult
from executor.steps.base import to_jsonable
from flows.models import Flow, FlowVersion, Secret

logger = logging.getLogger(__name__)

S = StepRun.Status
ACTIVE = {S.PENDING, S.QUEUED, S.RUNNING}
MAX_BACKOFF_SECONDS = 3600
_SECRET_REF = re.compile(r"secrets\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([A-Za-z_]\w*)['\"]\s*\])")
_SECRET_FIELDS = ("webhook_secret", "bot_token_secret")
# Logic without side effects: run by the worker that made it ready, in the same transaction.
INLINE_KINDS = frozenset({"condition", "switch", "transform", "join", "stop"})
# How long one worker thread goes on from step to step before leaving the rest to messages.
CHAIN_SECONDS = 20.0


def _send_step(step_run_id: int, delay_seconds: float = 0) -> None:
    from executor import tasks

    tasks.enqueue_step(step_run_id, delay_ms=int(delay_seconds * 1000))


def _send_run(run_id: int) -> None:
    from executor import tasks

    tasks.enqueue_run(run_id)


def dispatch_run(run: Run) -> None:
    """Send start_run for a QUEUED run once the current transaction commits."""
    Run.objects.filter(pk=run.pk).update(dispatched_at=timezone.now())
    run_id = run.pk
    transaction.on_commit(lambda: _send_run(run_id))


def _committed_on_return() -> bool:
    """True when no outer transaction is open, so our own atomic block commits on exit."""
    return not transaction.get_connection().in_atomic_block


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
_RUN_SQL = (
    f"SELECT {_RUN_SELECT} "  # noqa: S608
    "FROM executor_run r JOIN flows_flow f ON f.id = r.flow_id JOIN flows_flowversion v ON v.id = r.version_id "
    "WHERE r.id = %s"
)
_STEP_COLUMNS = tuple(f.attname for f in StepRun._meta.concrete_fields)
_STEP_JSON = frozenset({"input", "output", "logs", "state"})
# What a transition may change, written as a whole from the row in memory.
_STEP_MUTABLE = ("status", "attempt", "input", "output", "error", "logs", "port", "handled", "state",
                 "lease_expires_at", "next_attempt_at", "queued_at", "started_at", "finished_at")
_STEP_TYPES = {"status": "varchar", "attempt": "int", "input": "jsonb", "output": "jsonb", "error": "text",
               "logs": "jsonb", "port": "varchar", "handled": "boolean", "state": "jsonb",
               "lease_expires_at": "timestamptz", "next_attempt_at": "timestamptz", "queued_at": "timestamptz",
               "started_at": "timestamptz", "finished_at": "timestamptz"}
_STEP_SELECT = f"SELECT {', '.join(_STEP_COLUMNS)} FROM executor_steprun WHERE run_id = %s"  # noqa: S608
# Rows go in as one JSON document (live.rows_json), unpacked by jsonb_to_recordset: the text
# of each statement is the same whatever the number of rows, so psycopg converts it once per
# process, and the one parameter is encoded by json in C, not element by element as arrays are.
_STEP_RECORD = ", ".join(f"{c} {_STEP_TYPES[c]}" for c in _STEP_MUTABLE)
_STEP_UPDATE = (
    "UPDATE executor_steprun AS s SET " + ", ".join(f"{c} = v.{c}" for c in _STEP_MUTABLE)  # noqa: S608
    + " FROM jsonb_to_recordset(%s::jsonb)"
    f" AS v(id bigint, expected_status varchar, expected_attempt int, {_STEP_RECORD})"
    " WHERE s.id = v.id AND s.status = v.expected_status AND s.attempt = v.expected_attempt RETURNING s.id"
)
_STEP_INSERT = (
    "INSERT INTO executor_steprun (run_id, step_id, " + ", ".join(_STEP_MUTABLE) + ") "  # noqa: S608
    f"SELECT run_id, step_id, {', '.join(_STEP_MUTABLE)} "
    f"FROM jsonb_to_recordset(%s::jsonb) AS r(run_id bigint, step_id varchar, {_STEP_RECORD}) RETURNING id, step_id"
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


def _instance(model, values: dict):
    """A model instance as loaded from the database; fields not in `values` load on access."""
    fields = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db("default", fields, [values[name] for name in fields])


def _load_run(run_id: int, *, lock: bool) -> Run | None:
    """The run with its flow and version (DAG included) in one query; `lock` takes the run row FOR UPDATE."""
    with connection.cursor() as cursor:
        cursor.execute(_RUN_SQL + (" FOR UPDATE OF r" if lock else ""), [run_id])
        found = cursor.fetchone()
    return None if found is None else _run_from_row(found)


def _run_from_row(found: tuple) -> Run:
    """A Run (with .flow and .version, DAG included) from a row of _RUN_SELECT."""
    values = dict(zip(_RUN_COLUMNS, found, strict=False))
    values["trigger"] = from_jsonb(values["trigger"])
    run = _instance(Run, values)
    flow = dict(zip(_FLOW_COLUMNS, found[len(_RUN_COLUMNS):], strict=False))
    run.flow = _instance(Flow, {"id": run.flow_id, "team_id": run.team_id, **flow})
    number, status, created_at = found[len(_RUN_COLUMNS) + len(_FLOW_COLUMNS):]
    known = _versions.get(run.version_id)
    if known is not None and known.created_at == created_at:
        dag = known.dag
    else:
        dag = FlowVersion.objects.filter(pk=run.version_id).values_list("dag", flat=True).first()
    _remember(run.version_id, _Known(created_at, number, dag, run.flow.code, run.flow.name))
    run.version = _instance(FlowVersion, {"id": run.version_id, "flow_id": run.flow_id, "number": number,
                                          "status": status, "created_at": created_at, "dag": dag})
    return run


def _remember(version_id: int, known: _Known) -> None:
    if known.dag is None:
        return  # not compiled (yet)
    if len(_versions) > 10_000:
        _versions.clear()
    _versions[version_id] = known


def _known_version(version_id: int) -> _Known | None:
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


def _load_steps(run: Run) -> dict[str, StepRun]:
    """The run's step rows as they are now, by step id."""
    with connection.cursor() as cursor:
        cursor.execute(_STEP_SELECT, [run.pk])
        return _step_rows(run, cursor.fetchall())


def _load_locked(run_id: int) -> tuple[Run | None, dict[str, StepRun]]:
    """_load_run(lock=True) and then _load_steps, in one round trip."""
    with connection.cursor() as cursor:
        cursor.execute(f"{_RUN_SQL} FOR UPDATE OF r; {_STEP_SELECT}", [run_id, run_id])
        found = cursor.fetchone()
        cursor.nextset()
        steps = cursor.fetchall()
    if found is None:
        return None, {}
    run = _run_from_row(found)
    return run, _step_rows(run, steps)


def _step_rows(run: Run, found_rows: list[tuple]) -> dict[str, StepRun]:
    rows = {}
    for found in found_rows:
        values = [from_jsonb(v) if c in _STEP_JSON else v for c, v in zip(_STEP_COLUMNS, found, strict=True)]
        row = StepRun.from_db("default", _STEP_COLUMNS, values)
        row.run = run
        rows[row.step_id] = row
    return rows


class ClaimLost(Exception):
    """A step row this worker held changed under it (its lease ran out and another worker took it)."""


class StepChanges:
    """Step rows changed in memory under the run's lock, written together by flush().

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
            statements.append(Statement(_STEP_INSERT, [rows_json(records)], functools.partial(_inserted, new)))
        if changed:

            def updated(result, changed=changed) -> None:
                written = {pk for (pk,) in result}
                if any(strict and row.pk not in written for row, _, _, strict in changed):
                    raise ClaimLost("a step row changed while its run was locked")

            records = [{"id": row.pk, "expected_status": status, "expected_attempt": attempt, **self._values(row)}
                       for row, status, attempt, _ in changed]
            statements.append(Statement(_STEP_UPDATE, [rows_json(records)], updated))
        return statements

    def after_write(self) -> None:
        """Send the queued rows' messages once the transaction commits (their ids are known now)."""
        sends, self._sends = self._sends, []
        for row, delay in sends:
            transaction.on_commit(lambda pk=row.pk, delay=delay: _send_step(pk, delay))

    def flush(self) -> None:
        write(self)

    @classmethod
    def records(cls, rows: list[StepRun]) -> list[dict]:
        """New rows as _STEP_INSERT takes them (but for run_id)."""
        return [{"step_id": row.step_id, **cls._values(row)} for row in rows]

    @staticmethod
    def _values(row: StepRun) -> dict:
        return {c: getattr(row, c) for c in _STEP_MUTABLE}


def _inserted(new: list[StepRun], result: list) -> None:
    """Give the new rows the ids the insert returned ([id, step_id] rows)."""
    ids = {step_id: pk for pk, step_id in result}
    for row in new:
        row.pk = ids[row.step_id]
        row._state.adding = False


def write(changes: StepChanges, log: RunLog | None = None, *, commit: bool = False) -> None:
    """Write the step rows and then the run's log (and run row) in one round trip.

    `commit` (from the end of the outermost atomic block) commits in the same
    round trip when nothing written could still be refused afterwards: a guarded
    step update (ClaimLost) is checked from its result, so with one the commit
    stays Django's. The log's own check (the run row exists) cannot fail for a
    caller that holds the run row, as every caller of write does.
    """
    # A failed run's notification is written in the same transaction, after the run.
    failed = log is not None and log.fields.get("status") == Run.Status.FAILED
    commit = commit and not changes.changed and not failed
    execute_together(changes.take_statements() + (log.take_statements() if log is not None else []), commit=commit)
    changes.after_write()
    if failed:
        notify_run_failed(log.run)


def _hand_out(ready: list[StepRun], keep_one: bool, run: Run, log: RunLog, changes: StepChanges) -> StepRun | None:
    """Send the ready steps after commit; with `keep_one`, claim the first for this thread to run next.

    The kept step is claimed (RUNNING, with a lease) in this transaction: if this
    thread dies before it finishes, the lease runs out and the sweeper sends it.
    """
    kept = ready[0] if keep_one and ready else None
    for row in ready:
        if row is not kept:
            changes.send(row)
    if kept is not None:
        now = timezone.now()
        step = _dag_step(run, kept.step_id)
        changes.change(kept, status=S.RUNNING, attempt=kept.attempt + 1, started_at=now, next_attempt_at=None,
                       lease_expires_at=now + timedelta(seconds=_lease_seconds(step)))
        _step_event(log, kept)
    return kept


def _continue_with(kept: StepRun | None, run: Run | None, rows: dict[str, StepRun] | None, deadline: float) -> None:
    """Run the kept step, and the one each of those keeps, until none is left or the budget is spent."""
    while kept is not None and run is not None:
        kept, run, rows = _run_step_once(kept.pk, keep_one=time.monotonic() < deadline, held=(run, kept, rows))


# -- starting ------------------------------------------------------------------------


# Runs its trigger fired (not manual, test or replay runs).
_FIRED_BY_TRIGGER = ("log:", "block:", "schedule:", "webhook:")


def start_run(run_id: int) -> None:
    """Move a QUEUED run to RUNNING, create its step rows, run its ready logic and queue the rest.

    Safe to call twice: a run that is already RUNNING is only re-advanced.
    Called outside a transaction, the thread then goes on with one of the steps it
    made ready (see _continue_with) instead of waiting for that step's message.

    Outside a transaction, the start is worked out from the run as read (no lock)
    and written by one statement that holds only if the run is still QUEUED, with
    no event recorded since: two round trips, the second committing. Otherwise
    (or if that statement finds the run changed) the run row is locked, and the
    step rows written once, as the logic left them, with the commit.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    keep_one = _committed_on_return()
    if keep_one:
        begun = _begin_unlocked(run_id)
        if begun is not None and _start_written(begun):
            _continue_with(begun.kept, begun.run, begun.rows, deadline)
            return
    _continue_with(*_start_locked(run_id, keep_one), deadline)


def _start_locked(run_id: int, keep_one: bool) -> tuple[StepRun | None, Run | None, dict | None]:
    with transaction.atomic():
        return _start(_load_run(run_id, lock=True), run_id, keep_one)


def start_pushed_runs(payload: dict) -> None:
    """Claim the runs of logs a node pushed and start the first, in one statement.

    `payload` is what the listener matched (listener.PushedClaims). The first
    claim's run is started in memory before anything is written (its version and
    flow are known to this process, the trigger is in the payload), and goes in
    already started, with its step rows and events, in the claim's own statement:
    outside a transaction that is one round trip, committed, before the side
    effect, which is what makes a pushed event's webhook go out within a few
    milliseconds. If that run existed already, or its version or flow changed
    meanwhile, the first new run is started the usual way instead. The other new
    runs (a burst) get start_run messages. Runs already claimed (the block loop
    or another listener was first) are left alone: whoever claimed them sent
    their start_run.
    """
    from executor.listener import claim_pushed, reconcile_late_push

    deadline = time.monotonic() + CHAIN_SECONDS
    keep_one = _committed_on_return()
    begun = _begin_pushed(payload, keep_one)
    claimed = claim_pushed(payload, begun.start if begun is not None else None)
    if claimed.passed(payload):
        # Blocks the loop had passed: what it never got is stored and claimed now, loudly.
        reconcile_late_push(payload)
    if not claimed.run_ids:
        return
    run = _run_from_row(claimed.first)
    for run_id in claimed.run_ids:
        if run_id != run.pk:
            transaction.on_commit(lambda run_id=run_id: _send_run(run_id))
    if begun is not None and run.code == begun.run.code and run.status != Run.Status.QUEUED:
        kept, rows = begun.landed(run, claimed.steps, claimed.log)
    else:
        kept, run, rows = _start_locked(run.pk, keep_one)
    _continue_with(kept, run, rows, deadline)


@dataclass
class RunStart:
    """A run's start worked out in memory, as its one statement writes it (listener.claim_pushed, _START_SQL).

    `run` holds the run row's values as its start leaves them (code, status,
    error, event_seq, started_at, finished_at) and what they were worked out
    from (flow_name, version_created); `steps` the new step rows and `log` the
    run's first events ({kind, data}), both as JSON text (live.rows_json).
    """

    run: dict[str, Any]
    steps: str
    log: str
    now: datetime  # the events' created_at (and a pushed run's)


@dataclass
class _Begun:
    """A run started in memory (see start_pushed_runs and start_run), and what to write for it."""

    run: Run
    rows: dict[str, StepRun]  # all new
    log: RunLog
    changes: StepChanges
    kept: StepRun | None
    start: RunStart

    def landed(self, run: Run, steps: list, log: list) -> tuple[StepRun | None, dict[str, StepRun]]:
        """The start was written (committed) for `run`: give the rows their ids, send what waits on commit."""
        for row in self.rows.values():
            row.run = run
        _inserted(list(self.rows.values()), steps)
        self.log.run = run
        (statement,) = self.log.take_statements(now=self.start.now)
        statement.done(log)
        self.changes.after_write()
        return self.kept, self.rows


def _begin_pushed(payload: dict, keep_one: bool) -> _Begun | None:
    """The first claim's run, started in memory; None when it cannot be worked out before it is written."""
    if not payload["claims"]:
        return None
    claim = payload["claims"][0]
    known = _known_version(claim["version_id"])
    if known is None:
        return None
    now = timezone.now()
    run = Run(code=uuid.uuid4(), team_id=claim["team_id"], flow_id=claim["flow_id"], version_id=claim["version_id"],
              trigger_key=claim["trigger_key"], trigger=claim["trigger"], chain_id=payload["chain"],
              block_number=claim["block_number"], block_hash=claim["block_hash"], created_at=now)
    # Not paused: the claim's statement inserts no run for a paused flow.
    run.flow = _instance(Flow, {"id": run.flow_id, "team_id": run.team_id, "code": known.flow_code,
                                "name": known.flow_name, "paused": False})
    run.version = _instance(FlowVersion, {"id": run.version_id, "flow_id": run.flow_id, "number": known.number,
                                          "status": FlowVersion.Status.PUBLISHED, "created_at": known.created_at,
                                          "dag": known.dag})
    return _begin_in_memory(run, keep_one, now)


def _begin_unlocked(run_id: int) -> _Begun | None:
    """start_run's start worked out from the run as read; None when the usual (locked) start must decide."""
    run = _load_run(run_id, lock=False)
    if run is None or run.status != Run.Status.QUEUED:
        return None
    return _begin_in_memory(run, True, timezone.now())


def _begin_in_memory(run: Run, keep_one: bool, now: datetime) -> _Begun | None:
    """A QUEUED run's start, worked out without writing; None if it ends the run instead (the usual start does that)."""
    if _ends_unstarted(run) is not None:
        return None  # cancelled or failed: the locked start writes that (a failure with its notification)
    log, changes = RunLog(run), StepChanges()
    rows, ready = _begin(run, log, changes)
    if run.status == Run.Status.FAILED:
        return None  # its logic failed it: the locked start writes that, with its notification
    kept = _hand_out(ready, keep_one, run, log, changes)
    new, changed = changes.take()
    assert not changed  # every row is new
    start = RunStart(
        run={"code": str(run.code), "status": run.status, "error": run.error, "event_seq": len(log.events),
             "started_at": run.started_at, "finished_at": run.finished_at,
             "flow_name": run.flow.name, "version_created": run.version.created_at},
        steps=rows_json(StepChanges.records(new)),
        log=rows_json([{"kind": kind, "data": data} for kind, data in log.events]),
        now=now,
    )
    return _Begun(run, rows, log, changes, kept, start)


def started_rows_sql(source: str) -> str:
    """The CTEs (new_steps, new_log) that insert a started run's step rows and first events.

    `source` names a CTE with the run's (id, base): its events get seqs base + 1 ....
    The rows come as %(steps)s and %(log)s (RunStart.steps and .log), the events'
    time as %(now)s. STARTED_ROWS reads back what they inserted.
    """
    # Only fixed names and placeholders are joined in; every value is a parameter.
    return (
        f"new_steps AS (INSERT INTO executor_steprun (run_id, step_id, {', '.join(_STEP_MUTABLE)}) "  # noqa: S608
        f"SELECT {source}.id, s.step_id, {', '.join('s.' + c for c in _STEP_MUTABLE)} FROM {source}, "
        f"jsonb_to_recordset(%(steps)s::jsonb) AS s(step_id varchar, {_STEP_RECORD}) RETURNING id, step_id), "
        "new_log AS (INSERT INTO executor_runevent (run_id, seq, kind, data, created_at) "
        f"SELECT {source}.id, {source}.base + e.ord, e.e->>'kind', e.e->'data', %(now)s FROM {source}, "
        "jsonb_array_elements(%(log)s::jsonb) WITH ORDINALITY AS e(e, ord) RETURNING id, seq)"
    )


# [id, step_id] of each new step row and [id, seq] of each event, for _Begun.landed.
STARTED_ROWS = ("(SELECT coalesce(jsonb_agg(jsonb_build_array(id, step_id)), '[]') FROM new_steps), "
                "(SELECT coalesce(jsonb_agg(jsonb_build_array(id, seq)), '[]') FROM new_log)")
# start_run's write of a start worked out unlocked (_begin_unlocked): the run row only if it is
# still QUEUED with the event_seq it was read with, and the step rows and events only with it.
_START_SQL = (
    "WITH run AS (UPDATE executor_run SET status = %(status)s, error = %(error)s, started_at = %(started_at)s, "  # noqa: S608
    "finished_at = %(finished_at)s, event_seq = event_seq + %(events)s "
    "WHERE id = %(id)s AND status = 'QUEUED' AND event_seq = %(seq)s RETURNING id, event_seq - %(events)s AS base), "
    f"{started_rows_sql('run')} SELECT (SELECT count(*) FROM run), {STARTED_ROWS}"
)


def _start_written(begun: _Begun) -> bool:
    """Write an unlocked start in one statement (committed on its own); False if the run changed since it was read."""
    run, start = begun.run, begun.start
    params = {**start.run, "id": run.pk, "seq": run.event_seq, "events": start.run["event_seq"],
              "steps": start.steps, "log": start.log, "now": start.now}
    with prepared_cursor() as cursor:
        cursor.execute(_START_SQL, params)
        written, steps, log = cursor.fetchone()
    if not written:
        return False
    begun.landed(run, from_jsonb(steps), from_jsonb(log))
    return True


def _start(run: Run | None, run_id: int, keep_one: bool) -> tuple[StepRun | None, Run | None, dict | None]:
    """start_run's transaction, for a run loaded (and locked) in it; returns what _continue_with takes."""
    if run is None:
        logger.warning("start_run: run %s does not exist", run_id)
        return None, None, None
    rows = None
    log, changes, ready = RunLog(run), StepChanges(), []
    if run.status == Run.Status.RUNNING:
        rows = _load_steps(run)
        ready = _advance(run, rows, log, changes)
    elif run.status == Run.Status.QUEUED:
        ended = _ends_unstarted(run)
        if ended is not None:
            _finish_run(run, *ended, log, changes, {})
        else:
            rows, ready = _begin(run, log, changes)
    kept = _hand_out(ready, keep_one, run, log, changes)
    # With keep_one the caller's block is the outermost, and this write is its last statement.
    write(changes, log, commit=keep_one)
    return kept, run, rows


def _ends_unstarted(run: Run) -> tuple[str, str] | None:
    """The status and error a QUEUED run ends with instead of starting, or None if it can start."""
    if run.trigger_key.startswith(_FIRED_BY_TRIGGER) and (
        run.flow.paused or run.version.status != FlowVersion.Status.PUBLISHED
    ):
        # Claimed just before the flow was paused or unpublished: the trigger is off now.
        return Run.Status.CANCELLED, "the flow was paused or unpublished before the run started"
    dag = run.version.dag
    if not dag or not isinstance(dag.get("steps"), list):
        return Run.Status.FAILED, "the flow version has no compiled DAG"
    return None


def _begin(run: Run, log: RunLog, changes: StepChanges) -> tuple[dict[str, StepRun], list[StepRun]]:
    """A QUEUED run's start in memory: its step rows, RUNNING, its ready logic run; returns (rows, ready steps)."""
    rows = {step["id"]: StepRun(run=run, step_id=step["id"], logs=[], state={}) for step in run.version.dag["steps"]}
    changes.new = list(rows.values())
    log.set_run(status=Run.Status.RUNNING, started_at=timezone.now())
    log.add("run.status", {"status": run.status})
    return rows, _advance(run, rows, log, changes)


# -- deciding what runs next ------------------------------------------------------------


def _edge_state(inp: dict, rows: dict[str, StepRun]) -> str:
    """'taken', 'dead' or 'waiting' for one inbound edge."""
    source = rows.get(inp["step"])
    if source is None:
        return "taken"  # fed by the trigger
    if source.status in (S.SUCCEEDED, S.FAILED):
        return "taken" if source.port == inp["port"] else "dead"
    if source.status in (S.SKIPPED, S.CANCELLED):
        return "dead"
    return "waiting"


def readiness(step: dict, rows: dict[str, StepRun]) -> str:
    """'ready', 'skip' or 'wait' for a PENDING step.

    A join ("all") waits until every inbound branch has finished or been skipped,
    then runs if at least one reached it. Any other step runs as soon as one
    inbound edge is taken. Either is skipped when every inbound edge is dead.
    """
    states = [_edge_state(inp, rows) for inp in step["inputs"]] or ["taken"]
    if step.get("join") == "all":
        if "waiting" in states:
            return "wait"
        return "ready" if "taken" in states else "skip"
    if "taken" in states:
        return "ready"
    return "wait" if "waiting" in states else "skip"


def runs_inline(step: dict) -> bool:
    """Side-effect-free logic runs in the worker that made it ready, inside the same transaction."""
    return step["type"] in INLINE_KINDS and not step.get("side_effect")


def advance(run: Run) -> None:
    """Run or queue every PENDING step whose inputs allow it, skip the unreachable, finish the run when done.

    Call inside a transaction that holds the run row (select_for_update). Logic
    steps (runs_inline) run here and now; messages for the queued steps and the
    run's events go out when the transaction commits.
    """
    log, changes = RunLog(run), StepChanges()
    if run.status == Run.Status.RUNNING:
        for row in _advance(run, _load_steps(run), log, changes):
            changes.send(row)
    write(changes, log)


def _advance(run: Run, rows: dict[str, StepRun], log: RunLog, changes: StepChanges) -> list[StepRun]:
    """advance() on rows in memory: changes go to `changes`; returns the steps it set QUEUED."""
    ready: list[StepRun] = []
    now = timezone.now()
    for step in run.version.dag["steps"]:  # topological order: a skip or an inline result cascades in one pass
        row = rows.get(step["id"])
        if row is None or row.status != S.PENDING:
            continue
        verdict = readiness(step, rows)
        if verdict == "ready" and runs_inline(step):
            _run_inline(run, row, step, rows, log, changes)
            if run.status != Run.Status.RUNNING:
                return []  # a stop step or an unhandled failure ended the run; the rest is cancelled
        elif verdict == "ready":
            changes.change(row, status=S.QUEUED, queued_at=now)
            _step_event(log, row)
            ready.append(row)
        elif verdict == "skip":
            changes.change(row, status=S.SKIPPED, finished_at=now)
            _step_event(log, row)
    if not any(row.status in ACTIVE for row in rows.values()):
        _finish_run(run, Run.Status.SUCCEEDED, "", log, changes, rows)
    return ready


def _run_inline(run: Run, row: StepRun, step: dict, rows: dict[str, StepRun], log: RunLog,
                changes: StepChanges) -> None:
    """Claim, run and record a logic step without a message; the caller holds the run row."""
    now = timezone.now()
    changes.change(row, status=S.RUNNING, attempt=row.attempt + 1, queued_at=now, started_at=now,
                   lease_expires_at=now + timedelta(seconds=_lease_seconds(step)))
    ctx = _context(run, row, step, rows)
    _settle(run, row, step, ctx, _execute(run, row, step, ctx), log, changes, rows, inline=True)


def _finish_run(run: Run, status: str, error: str, log: RunLog, changes: StepChanges,
                rows: dict[str, StepRun]) -> None:
    """End the run: cancel what has not started, record it (write() tells the team about a failure, once).

    Call with the run row held; `rows` are its step rows in memory.
    """
    if run.status not in (Run.Status.QUEUED, Run.Status.RUNNING):
        return
    now = timezone.now()
    for row in rows.values():
        if row.status in (S.PENDING, S.QUEUED):
            # A queued step may be claimed meanwhile (it does not take the run's lock): then it stays.
            changes.change(row, strict=False, status=S.CANCELLED, finished_at=now)
    log.set_run(status=status, error=error, finished_at=now)
    log.add("run.status", {"status": status, "error": error})  # a failure's notification: see write()


def notify_run_failed(run: Run) -> None:
    """An in-app notification, and the configured failure webhook; once per run."""
    message = f"Run of “{run.flow.name}” failed: {run.error}"[:2000]
    _, created = Notification.objects.get_or_create(
        run=run, kind=Notification.Kind.RUN_FAILED, defaults={"team_id": run.team_id, "message": message}
    )
    if created and settings.KWALA_FAILURE_WEBHOOK_URL:
        url = settings.KWALA_FAILURE_WEBHOOK_URL
        transaction.on_commit(lambda: _post_failure(url, message, str(run.code)))


def _post_failure(url: str, message: str, run_code: str) -> None:
    import httpx

    try:
        httpx.post(url, json={"text": message, "run": run_code}, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        logger.warning("could not post the failure of run %s: %s", run_code, exc)


def _step_event(log: RunLog, row: StepRun, **extra: Any) -> None:
    data = {"step": row.step_id, "status": row.status, "attempt": row.attempt, **extra}
    if row.port:
        data["port"] = row.port
    log.add("step.status", data)


# -- running one step -----------------------------------------------------------------


# How long a step kind may legitimately take on top of the base lease: a step
# still working when its lease runs out would be taken over and run twice.
# SMTP allows 20 s per operation; contract steps make several 15 s RPC calls.
LEASE_EXTRA_SECONDS = {
    "notify.slack": 30, "notify.discord": 30, "notify.telegram": 30, "notify.email": 120,
    "contract.read": 60, "contract.write": 120,
}


def _lease_seconds(step: dict) -> float:
    if step["type"] == "http.request":
        extra = float(step["config"].get("timeout") or 0)
    else:
        extra = LEASE_EXTRA_SECONDS.get(step["type"], 0)
    return settings.KWALA_STEP_LEASE_SECONDS + extra


_CLAIM_SQL = """
UPDATE executor_steprun AS s
   SET status = 'RUNNING', attempt = s.attempt + 1, lease_expires_at = %(lease)s, started_at = %(now)s,
       next_attempt_at = NULL
  FROM executor_run AS r
 WHERE s.id = %(id)s AND r.id = s.run_id AND r.status = 'RUNNING'
   AND ((s.status = 'QUEUED' AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= %(now)s))
        OR (s.status = 'RUNNING' AND s.lease_expires_at < %(now)s))
RETURNING s.*
"""


def claim_step(step_run_id: int, lease_seconds: float, run: Run | None = None) -> StepRun | None:
    """Take the step for this worker, or None if it is not due, taken, or finished.

    A RUNNING step whose lease expired (its worker died) can be taken over. One
    conditional UPDATE ... RETURNING: the row count decides, and the row comes back
    as it now is. `run`, if given, is the step's run already loaded (with flow and
    version) and is attached to the row instead of being read again.
    """
    now = timezone.now()
    params = {"id": step_run_id, "now": now, "lease": now + timedelta(seconds=lease_seconds)}
    claimed = list(StepRun.objects.raw(_CLAIM_SQL, params))
    if not claimed:
        return None
    row = claimed[0]
    row.run = run if run is not None else _load_run(row.run_id, lock=False)
    return row


def run_step(step_run_id: int) -> None:
    """Claim, execute and record one step; run or queue what follows. Safe to deliver twice.

    Called outside a transaction, the thread goes on with one of the steps this
    one made ready (see _continue_with), so a chain of steps needs no message per step.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    _continue_with(*_run_step_once(step_run_id, keep_one=_committed_on_return()), deadline)


_NOTHING = (None, None, None)


def _run_step_once(step_run_id: int, *, keep_one: bool,
                   held: tuple[Run, StepRun, dict[str, StepRun] | None] | None = None,
                   ) -> tuple[StepRun | None, Run | None, dict[str, StepRun] | None]:
    """One step: claim, run, record. Returns the step this thread claimed to run next (if any), its run and rows.

    `held` is (the run, the step row, the run's rows) for a step this thread already
    claimed in the transaction that made it ready; otherwise the step is claimed here.
    """
    if held is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id, step_id, status FROM executor_steprun WHERE id = %s", [step_run_id])
            found = cursor.fetchone()
        if found is None or found[2] not in (S.QUEUED, S.RUNNING):
            return _NOTHING
        run = _load_run(found[0], lock=False)
        step = _dag_step(run, found[1])
        with transaction.atomic():
            row = claim_step(step_run_id, _lease_seconds(step), run=run)
            if row is None:
                return _NOTHING
            record_run_event(run, "step.status", {"step": row.step_id, "status": S.RUNNING, "attempt": row.attempt})
        rows = None
    else:
        run, row, rows = held
        step = _dag_step(run, row.step_id)

    ctx = _context(run, row, step, rows)
    outcome = _execute(run, row, step, ctx)
    try:
        with transaction.atomic():
            run, rows = _load_locked(run.pk)
            current = rows.get(row.step_id)
            if current is None or current.status != S.RUNNING or current.attempt != row.attempt:
                return _NOTHING  # our claim was taken over; the new holder records the result
            log, changes = RunLog(run), StepChanges()
            ready = _settle(run, current, step, ctx, outcome, log, changes, rows)
            kept = _hand_out(ready, keep_one, run, log, changes)
            write(changes, log)
            return kept, run, rows
    except ClaimLost:
        logger.info("step %s of run %s: claim lost while recording its result", row.step_id, run.code)
        return _NOTHING


def _execute(run: Run, row: StepRun, step: dict, ctx: StepContext) -> StepResult | Reschedule | StepError:
    """Run the step's kind; every failure comes back as a StepError, with secrets redacted."""
    try:
        kind = STEP_KINDS.get(step["type"])
        if kind is None:
            raise StepError(f"unknown step type {step['type']!r}", permanent=True)
        return kind(ctx)
    except StepError as exc:
        return StepError(ctx.redact(exc.message), permanent=exc.permanent)
    except Exception:
        # A bug or an unexpected library error: log it (redacted) and retry like a transient failure.
        logger.error("step %s of run %s crashed:\n%s", row.step_id, run.code, ctx.redact(traceback.format_exc()))
        return StepError("internal error while running the step (see the worker log)")


def _dag_step(run: Run, step_id: str) -> dict:
    for step in run.version.dag["steps"]:
        if step["id"] == step_id:
            return step
    raise LookupError(f"step {step_id} is not in the DAG of run {run.code}")


def _context(run: Run, row: StepRun, step: dict, rows: dict[str, StepRun] | None = None) -> StepContext:
    """The step's expression context; `rows` (the run's steps, current) saves reading them again."""
    if rows is None:
        finished = StepRun.objects.filter(run=run, status__in=[S.SUCCEEDED, S.FAILED]).values_list(
            "step_id", "status", "output", "error"
        )
    else:
        finished = [(r.step_id, r.status, r.output, r.error) for r in rows.values() if r.status in (S.SUCCEEDED, S.FAILED)]
    steps = {sid: {"output": output, "status": status, "error": error} for sid, status, output, error in finished}
    names = set(_secret_names(step["config"]))
    secrets = {}
    if names:
        for secret in Secret.objects.filter(team_id=run.team_id, name__in=names):
            secrets[secret.name] = secret.reveal()
    values = {
        "trigger": run.trigger,
        "steps": steps,
        "secrets": secrets,
        "flow": {"code": run.flow.code, "name": run.flow.name, "version": run.version.number},
        "run": {"code": str(run.code), "dry_run": run.dry_run},
        "now": timezone.now(),
    }
    return StepContext(run=run, step_run=row, step=step, values=values, secret_values=list(secrets.values()))


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def _secret_names(config: dict) -> set[str]:
    """The secrets a step's config refers to: only these are revealed for it."""
    # The templates themselves, not their JSON text, where quotes are escaped.
    names = {a or b for text in _strings(config) for a, b in _SECRET_REF.findall(text)}
    names.update(str(config[f]) for f in _SECRET_FIELDS if config.get(f))
    return names


def backoff_seconds(retry: dict, attempt: int) -> float:
    """Exponential backoff with full jitter: a random wait in [base * 2^(n-1) / 2, base * 2^(n-1)]."""
    base = float(retry.get("backoff_seconds", 10))
    ceiling = min(base * 2 ** max(attempt - 1, 0), MAX_BACKOFF_SECONDS)
    return ceiling / 2 + random.random() * ceiling / 2


def _settle(run: Run, row: StepRun, step: dict, ctx: StepContext, outcome, log: RunLog, changes: StepChanges,
            rows: dict[str, StepRun], *, inline: bool = False) -> list[StepRun]:
    """Record a step's outcome on its row (RUNNING, held by this worker), then advance or end the run.

    Call inside a transaction that holds the run row, with `rows` its step rows.
    Returns the steps it set QUEUED, for the caller to hand out. An `inline` step
    is settled inside _advance()'s pass, which goes on from the updated `row`
    itself, so it is not advanced again here.
    """
    now = timezone.now()
    sent = ctx.redact_value(ctx.sent) if ctx.sent is not None else None
    logs = (row.logs or []) + [ctx.redact(line) for line in ctx.logs]
    if isinstance(outcome, Reschedule):
        when = now + timedelta(seconds=outcome.delay_seconds)
        changes.change(row, status=S.QUEUED, next_attempt_at=when, queued_at=now, lease_expires_at=None,
                       state=outcome.state, logs=logs, input=sent, attempt=row.attempt - 1)
        _step_event(log, row, waiting_until=when.isoformat())
        changes.send(row, outcome.delay_seconds)
        return []

    if isinstance(outcome, StepResult):
        output = ctx.redact_value(to_jsonable(outcome.output))
        changes.change(row, status=S.SUCCEEDED, output=output, port=outcome.port, error="", finished_at=now,
                       lease_expires_at=None, logs=logs, input=sent)
        _step_event(log, row)
        if outcome.stop:
            status = Run.Status.FAILED if outcome.stop == "failed" else Run.Status.SUCCEEDED
            _finish_run(run, status, outcome.stop_message if status == Run.Status.FAILED else "", log, changes, rows)
            return []
        return [] if inline else _advance(run, rows, log, changes)

    error = outcome.message
    retry = step["config"].get("retry") or {"max_attempts": 1, "backoff_seconds": 10}
    if not outcome.permanent and row.attempt < int(retry.get("max_attempts", 1)):
        wait = backoff_seconds(retry, row.attempt)
        when = now + timedelta(seconds=wait)
        changes.change(row, status=S.QUEUED, next_attempt_at=when, queued_at=now, lease_expires_at=None,
                       error=error, logs=logs + [f"attempt {row.attempt} failed: {error}"], input=sent)
        _step_event(log, row, error=error, retry_at=when.isoformat())
        changes.send(row, wait)
        return []

    handled = bool(step["successors"].get("error"))
    changes.change(row, status=S.FAILED, error=error, port="error" if handled else "", handled=handled,
                   output={"error": error}, finished_at=now, lease_expires_at=None, logs=logs, input=sent)
    _step_event(log, row, error=error)
    if handled:
        return [] if inline else _advance(run, rows, log, changes)
    _finish_run(run, Run.Status.FAILED, f"step “{step['name']}” failed: {error}", log, changes, rows)
    return []
