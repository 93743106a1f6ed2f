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
from django.utils import timezone

from executor import metrics
from executor.models import Notification, Run, StepRun
from executor.runs.store import (
    ClaimedStep,
    ClaimLost,
    RunLog,
    StepChanges,
    claim_step,
    execute_together,
    extend_lease,
    load_locked,
    load_steps,
)
from executor.steps import STEP_KINDS, Reschedule, StepContext, StepError, StepResult
from executor.steps.base import to_jsonable
from flows.models import Secret
from flows.nodes import NODE_TYPES
from kwala_site import counters
from kwala_site.logfilters import bound

logger = logging.getLogger(__name__)

S = StepRun.Status
ACTIVE = {S.PENDING, S.QUEUED, S.RUNNING}
MAX_BACKOFF_SECONDS = 3600
_SECRET_REF = re.compile(r"secrets\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['\"]([A-Za-z_]\w*)['\"]\s*\])")
# How long one worker thread goes on from step to step before leaving the rest to messages.
CHAIN_SECONDS = 20.0


def _committed_on_return() -> bool:
    """True when no outer transaction is open, so our own atomic block commits on exit."""
    return not transaction.get_connection().in_atomic_block


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
    node_type = NODE_TYPES.get(step["type"])
    return node_type is not None and node_type.inline and not step.get("side_effect")


def advance(run: Run) -> None:
    """Run or queue every PENDING step whose inputs allow it, skip the unreachable, finish the run when done.

    Call inside a transaction that holds the run row (select_for_update). Logic
    steps (runs_inline) run here and now; messages for the queued steps and the
    run's events go out when the transaction commits.
    """
    log, changes = RunLog(run), StepChanges()
    if run.status == Run.Status.RUNNING:
        for row in _advance(run, load_steps(run), log, changes):
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
            # A claim takes the run's lock first, so none is under way; one made before ours took it
            # has left the step RUNNING (not changed here). Lenient all the same.
            changes.change(row, strict=False, status=S.CANCELLED, finished_at=now)
    log.set_run(status=status, error=error, finished_at=now)
    log.add("run.status", {"status": status, "error": error})  # a failure's notification: see write()


def notify_run_failed(run: Run) -> None:
    """An in-app notification, and the configured failure webhook; once per run.

    Not for a dry run: a test run that fails is the editor's answer, shown where it was
    started, not an incident for the team's Alerts page.
    """
    if run.dry_run:
        return
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
    except Exception as exc:  # noqa: BLE001 (a hook after commit: raised, it would drop the hooks after it)
        logger.warning("could not post the failure of run %s: %s", run_code, exc)
        counters.incr("failure_webhook_failed")


def _step_event(log: RunLog, row: StepRun, **extra: Any) -> None:
    data = {"step": row.step_id, "status": row.status, "attempt": row.attempt, **extra}
    if row.port:
        data["port"] = row.port
    log.add("step.status", data)


# -- running one step -----------------------------------------------------------------


def lease_extra_seconds(step: dict) -> float:
    """What the step's node type adds to the base lease for its config (flows.nodes); kept on its row."""
    node_type = NODE_TYPES.get(step["type"])
    return node_type.lease_seconds_extra(step["config"]) if node_type is not None else 0


def _lease_seconds(step: dict) -> float:
    """The base lease, and what the step's node type adds for its config."""
    return settings.KWALA_STEP_LEASE_SECONDS + lease_extra_seconds(step)


def run_step(step_run_id: int) -> None:
    """Claim, execute and record one step; run or queue what follows. Safe to deliver twice.

    Called outside a transaction, the thread goes on with one of the steps this
    one made ready (see _continue_with), so a chain of steps needs no message per step.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    _continue_with(*_run_step_once(step_run_id, keep_one=_committed_on_return()), deadline)


_NOTHING = (None, None, None)


def _run_step_once(step_run_id: int, *, keep_one: bool,
                   held: tuple[Run, StepRun, dict[str, StepRun]] | None = None,
                   ) -> tuple[StepRun | None, Run | None, dict[str, StepRun] | None]:
    """One step: claim, run, record. Returns the step this thread claimed to run next (if any), its run and rows.

    `held` is (the run, the step row, the run's rows) for a step this thread already
    claimed in the transaction that made it ready; otherwise the step is claimed here.
    """
    if held is None:
        claimed = _claim(step_run_id)
        if claimed is None:
            return _NOTHING
        run, row, rows = claimed
        step = _dag_step(run, row.step_id)
    else:
        run, row, rows = held
        step = _dag_step(run, row.step_id)

    ctx = _context(run, row, step, rows)
    outcome = _execute(run, row, step, ctx)
    try:
        with transaction.atomic():
            run, rows = load_locked(run.pk)
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


def _claim(step_run_id: int) -> ClaimedStep | None:
    """Take a queued step for this thread, with its run and the run's steps (the finished ones are
    its context), and the lease its node type needs; None if it is not this thread's to run.

    The claim's statement gives the lease the extra its row keeps. A row that keeps less than
    its DAG step needs (written before the column existed, by an older process during a
    deploy, or reset by a retry) has its lease extended at once, in a second statement.
    """
    claimed = claim_step(step_run_id, settings.KWALA_STEP_LEASE_SECONDS)
    if claimed is None:
        return None
    extra = lease_extra_seconds(_dag_step(claimed.run, claimed.row.step_id))
    if extra > claimed.row.lease_extra_seconds and not extend_lease(claimed.row, settings.KWALA_STEP_LEASE_SECONDS,
                                                                    extra):
        return None  # taken over meanwhile
    return claimed


def _execute(run: Run, row: StepRun, step: dict, ctx: StepContext) -> StepResult | Reschedule | StepError:
    """Run the step's kind; every failure comes back as a StepError, with secrets redacted."""
    with bound(flow=run.flow.code, run=run.code), metrics.STEP_SECONDS.labels(type=step["type"]).time():
        return _execute_timed(run, row, step, ctx)


def _execute_timed(run: Run, row: StepRun, step: dict, ctx: StepContext) -> StepResult | Reschedule | StepError:
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


def _context(run: Run, row: StepRun, step: dict, rows: dict[str, StepRun]) -> StepContext:
    """The step's expression context, from `rows` (the run's steps, as read with the run)."""
    steps = {r.step_id: {"output": r.output, "status": r.status, "error": r.error}
             for r in rows.values() if r.status in (S.SUCCEEDED, S.FAILED)}
    names = set(_secret_names(step["type"], step["config"]))
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


def _secret_names(step_type: str, config: dict) -> set[str]:
    """The secrets a step's config refers to: only these are revealed for it."""
    # The templates themselves, not their JSON text, where quotes are escaped.
    names = {a or b for text in _strings(config) for a, b in _SECRET_REF.findall(text)}
    node_type = NODE_TYPES.get(step_type)
    if node_type is not None:
        names.update(str(config[f]) for f in node_type.secret_fields if config.get(f))
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
        transaction.on_commit(lambda: metrics.STEP_RETRIES.labels(type=step["type"]).inc())
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
