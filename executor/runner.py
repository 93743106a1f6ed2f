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

import logging
import random
import re
import time
import traceback
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from executor.live import RunLog, record_run_event
from executor.models import Notification, Run, StepRun
from executor.steps import STEP_KINDS, Reschedule, StepContext, StepError, StepResult
from executor.steps.base import redact_value, to_jsonable
from flows.expressions import redact
from flows.models import FlowVersion, Secret

logger = logging.getLogger(__name__)

S = StepRun.Status
ACTIVE = {S.PENDING, S.QUEUED, S.RUNNING}
MAX_BACKOFF_SECONDS = 3600
_SECRET_REF = re.compile(r"secrets\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([A-Za-z_]\w*)['\"]\s*\])")
_SECRET_FIELDS = ("webhook_secret", "bot_token_secret")
# Logic without side effects: run by the worker that made it ready, in the same transaction.
INLINE_KINDS = frozenset({"condition", "switch", "transform", "join", "stop"})
# The editor's graph and the flow's description: large, and never needed to run a step.
_UNUSED_VERSION_FIELDS = ("run__version__graph", "run__flow__description")
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


def _hand_out(ready: list[StepRun], keep_one: bool) -> StepRun | None:
    """Send the ready steps after commit; with `keep_one`, keep the first for this thread to run next.

    The kept step is QUEUED like the others: if this thread dies before claiming
    it, the sweeper sends it after its grace period.
    """
    kept = ready[0] if keep_one and ready else None
    for row in ready:
        if row is not kept:
            transaction.on_commit(lambda row_id=row.pk: _send_step(row_id))
    return kept


def _continue_with(kept: StepRun | None, run: Run | None, deadline: float) -> None:
    """Run the kept step, and the one each of those keeps, until none is left or the budget is spent."""
    while kept is not None and run is not None:
        kept, run = _run_step_once(kept.pk, keep_one=time.monotonic() < deadline, known=(run, kept.step_id))


# -- starting ------------------------------------------------------------------------


# Runs its trigger fired (not manual, test or replay runs).
_FIRED_BY_TRIGGER = ("log:", "block:", "schedule:", "webhook:")


def start_run(run_id: int) -> None:
    """Move a QUEUED run to RUNNING, create its step rows, run its ready logic and queue the rest.

    Safe to call twice: a run that is already RUNNING is only re-advanced.
    Called outside a transaction, the thread then goes on with one of the steps it
    queued (see _continue_with) instead of waiting for that step's message.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    keep_one = _committed_on_return()
    kept = run = None
    with transaction.atomic():
        run = Run.objects.select_for_update(of=("self",)).select_related("flow", "version").defer(
            *(f.removeprefix("run__") for f in _UNUSED_VERSION_FIELDS)).filter(pk=run_id).first()
        if run is None:
            logger.warning("start_run: run %s does not exist", run_id)
            return
        log = RunLog(run)
        if run.status == Run.Status.RUNNING:
            kept = _hand_out(advance(run, log), keep_one)
        elif run.status == Run.Status.QUEUED:
            dag = run.version.dag
            if run.trigger_key.startswith(_FIRED_BY_TRIGGER) and (
                run.flow.paused or run.version.status != FlowVersion.Status.PUBLISHED
            ):
                # Claimed just before the flow was paused or unpublished: the trigger is off now.
                _finish_run(run, Run.Status.CANCELLED, "the flow was paused or unpublished before the run started", log)
            elif not dag or not isinstance(dag.get("steps"), list):
                _finish_run(run, Run.Status.FAILED, "the flow version has no compiled DAG", log)
            else:
                StepRun.objects.bulk_create(
                    [StepRun(run=run, step_id=step["id"]) for step in dag["steps"]], ignore_conflicts=True
                )
                run.status = Run.Status.RUNNING
                run.started_at = timezone.now()
                Run.objects.filter(pk=run.pk).update(status=run.status, started_at=run.started_at)
                log.add("run.status", {"status": run.status})
                kept = _hand_out(advance(run, log), keep_one)
        log.flush()
    _continue_with(kept, run, deadline)


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


def advance(run: Run, log: RunLog | None = None) -> list[StepRun]:
    """Run or queue every PENDING step whose inputs allow it, skip the unreachable, finish the run when done.

    Call inside a transaction that holds the run row (select_for_update). Logic
    steps (runs_inline) run here and now; every other ready step is set QUEUED.
    With a `log` the caller owns, the QUEUED steps are returned for the caller
    to hand out after commit; without one, the events are written and the
    messages sent on commit here, and [] is returned.
    """
    own_log = log is None
    log = log if log is not None else RunLog(run)
    ready: list[StepRun] = []
    if run.status == Run.Status.RUNNING:
        rows = {row.step_id: row for row in StepRun.objects.filter(run=run)}
        ready = _advance(run, rows, log)
    if own_log:
        log.flush()
        _hand_out(ready, keep_one=False)
        return []
    return ready


def _advance(run: Run, rows: dict[str, StepRun], log: RunLog) -> list[StepRun]:
    ready: list[StepRun] = []
    for step in run.version.dag["steps"]:  # topological order: a skip or an inline result cascades in one pass
        row = rows.get(step["id"])
        if row is None or row.status != S.PENDING:
            continue
        verdict = readiness(step, rows)
        if verdict == "ready" and runs_inline(step):
            _run_inline(run, row, step, rows, log)
            if run.status != Run.Status.RUNNING:
                return []  # a stop step or an unhandled failure ended the run; the rest is cancelled
        elif verdict == "ready":
            if StepRun.objects.filter(pk=row.pk, status=S.PENDING).update(status=S.QUEUED, queued_at=timezone.now()):
                row.status = S.QUEUED
                _step_event(log, row)
                ready.append(row)
        elif verdict == "skip" and StepRun.objects.filter(pk=row.pk, status=S.PENDING).update(
            status=S.SKIPPED, finished_at=timezone.now()
        ):
            row.status = S.SKIPPED
            _step_event(log, row)
    if not any(row.status in ACTIVE for row in rows.values()):
        _finish_run(run, Run.Status.SUCCEEDED, "", log, steps_left=False)
    return ready


def _run_inline(run: Run, row: StepRun, step: dict, rows: dict[str, StepRun], log: RunLog) -> None:
    """Claim, run and record a logic step without a message; the caller holds the run row."""
    now = timezone.now()
    if not StepRun.objects.filter(pk=row.pk, status=S.PENDING).update(
        status=S.RUNNING, attempt=F("attempt") + 1, queued_at=now, started_at=now,
        lease_expires_at=now + timedelta(seconds=settings.KWALA_STEP_LEASE_SECONDS),
    ):
        return
    row.status, row.attempt, row.started_at = S.RUNNING, row.attempt + 1, now
    ctx = _context(run, row, step, rows)
    _settle(run, row, step, ctx, _execute(run, row, step, ctx), log, inline=True)


def _finish_run(run: Run, status: str, error: str, log: RunLog, *, steps_left: bool = True) -> None:
    """End the run: cancel what has not started, record it, tell the team about a failure (once).

    `steps_left=False` says the caller has just seen every step finished (nothing to cancel).
    """
    now = timezone.now()
    if steps_left:
        StepRun.objects.filter(run=run, status__in=[S.PENDING, S.QUEUED]).update(status=S.CANCELLED, finished_at=now)
    updated = Run.objects.filter(pk=run.pk, status__in=[Run.Status.QUEUED, Run.Status.RUNNING]).update(
        status=status, error=error, finished_at=now
    )
    if not updated:
        return
    run.status, run.error, run.finished_at = status, error, now
    log.add("run.status", {"status": status, "error": error})
    if status == Run.Status.FAILED:
        notify_run_failed(run)


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
    row.run = run if run is not None else (
        Run.objects.select_related("flow", "version", "team").get(pk=row.run_id)
    )
    return row


def run_step(step_run_id: int) -> None:
    """Claim, execute and record one step; run or queue what follows. Safe to deliver twice.

    Called outside a transaction, the thread goes on with one of the steps this
    one made ready (see _continue_with), so a chain of steps needs no message per step.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    _continue_with(*_run_step_once(step_run_id, keep_one=_committed_on_return()), deadline)


def _run_step_once(step_run_id: int, *, keep_one: bool,
                   known: tuple[Run, str] | None = None) -> tuple[StepRun | None, Run | None]:
    """One step: claim, run, record. Returns the step this thread should run next, if it kept one, and its run.

    `known` is (the run, the step id) when the caller has them, which saves reading the row first.
    """
    if known is None:
        row = (StepRun.objects.select_related("run__flow", "run__version").defer(*_UNUSED_VERSION_FIELDS)
               .filter(pk=step_run_id).first())
        if row is None or row.status not in (S.QUEUED, S.RUNNING):
            return None, None
        known = (row.run, row.step_id)
    run, step_id = known
    step = _dag_step(run, step_id)
    with transaction.atomic():
        row = claim_step(step_run_id, _lease_seconds(step), run=run)
        if row is None:
            return None, None
        record_run_event(run, "step.status", {"step": row.step_id, "status": S.RUNNING, "attempt": row.attempt})

    ctx = _context(run, row, step)
    outcome = _execute(run, row, step, ctx)
    with transaction.atomic():
        run = Run.objects.select_for_update(of=("self",)).select_related("flow", "version").defer(
            *(f.removeprefix("run__") for f in _UNUSED_VERSION_FIELDS)).get(pk=run.pk)
        log = RunLog(run)
        ready = _settle(run, row, step, ctx, outcome, log)
        log.flush()
        return _hand_out(ready, keep_one), run


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


def _settle(run: Run, row: StepRun, step: dict, ctx: StepContext, outcome, log: RunLog, *,
            inline: bool = False) -> list[StepRun]:
    """Record a step's outcome if this worker still holds its claim, then advance or end the run.

    Call inside a transaction that holds the run row (select_for_update).
    Returns the steps it set QUEUED, for the caller to hand out after
    commit. An `inline` step is settled inside advance()'s pass, which goes on
    from the updated `row` itself, so it is not advanced again here.
    """
    now = timezone.now()
    secrets = ctx.secret_values
    sent = redact_value(ctx.sent, secrets) if ctx.sent is not None else None
    logs = (row.logs or []) + [redact(line, secrets) for line in ctx.logs]
    mine = StepRun.objects.filter(pk=row.pk, status=S.RUNNING, attempt=row.attempt)
    if isinstance(outcome, Reschedule):
        when = now + timedelta(seconds=outcome.delay_seconds)
        if mine.update(status=S.QUEUED, next_attempt_at=when, queued_at=now, lease_expires_at=None,
                       state=outcome.state, logs=logs, input=sent, attempt=F("attempt") - 1):
            row.status, row.attempt = S.QUEUED, row.attempt - 1
            _step_event(log, row, waiting_until=when.isoformat())
            row_id, delay = row.pk, outcome.delay_seconds
            transaction.on_commit(lambda: _send_step(row_id, delay))
        return []

    if isinstance(outcome, StepResult):
        output = redact_value(to_jsonable(outcome.output), secrets)
        if not mine.update(status=S.SUCCEEDED, output=output, port=outcome.port, error="", finished_at=now,
                           lease_expires_at=None, logs=logs, input=sent):
            return []  # our claim was taken over; the new holder records the result
        row.status, row.port, row.output, row.error = S.SUCCEEDED, outcome.port, output, ""
        _step_event(log, row)
        if outcome.stop:
            status = Run.Status.FAILED if outcome.stop == "failed" else Run.Status.SUCCEEDED
            _finish_run(run, status, outcome.stop_message if status == Run.Status.FAILED else "", log)
            return []
        return [] if inline else advance(run, log)

    error = outcome.message
    retry = step["config"].get("retry") or {"max_attempts": 1, "backoff_seconds": 10}
    if not outcome.permanent and row.attempt < int(retry.get("max_attempts", 1)):
        wait = backoff_seconds(retry, row.attempt)
        when = now + timedelta(seconds=wait)
        if mine.update(status=S.QUEUED, next_attempt_at=when, queued_at=now, lease_expires_at=None,
                       error=error, logs=logs + [f"attempt {row.attempt} failed: {error}"], input=sent):
            row.status, row.error = S.QUEUED, error
            _step_event(log, row, error=error, retry_at=when.isoformat())
            row_id = row.pk
            transaction.on_commit(lambda: _send_step(row_id, wait))
        return []

    handled = bool(step["successors"].get("error"))
    if not mine.update(status=S.FAILED, error=error, port="error" if handled else "", handled=handled,
                       output={"error": error}, finished_at=now, lease_expires_at=None, logs=logs,
                       input=sent):
        return []
    row.status, row.port, row.output, row.error = S.FAILED, "error" if handled else "", {"error": error}, error
    _step_event(log, row, error=error)
    if handled:
        return [] if inline else advance(run, log)
    _finish_run(run, Run.Status.FAILED, f"step “{step['name']}” failed: {error}", log)
    return []
