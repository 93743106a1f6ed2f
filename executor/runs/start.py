"""Every run starts here.

Producers make claims: the block loop and the logs a node pushes
(executor.listener), inbound webhooks, the scheduler, replay and backtest, and
manual and test runs (runs.manual, for the views, the API and the admin). This
module owns them. A claim inserts the run exactly once (store.claim: the unique
(version, trigger_key)); the start then moves it to RUNNING, creates its step
rows, runs its ready logic and queues the rest. The start is always worked out
the same way, in memory (`_begin`), and written in one of two places:

- in the claim's own statement, when the claimer knows the run's version (a
  pushed log's worker, an inbound webhook): the run goes in already started,
  one round trip, committed before anything else happens (`start_claimed`,
  `start_pushed_runs`);
- by `start_run`, a worker's answer to the run's start_run message, under the
  run row's lock: for claims made in bulk (the block loop, the scheduler,
  replay), for a claim whose start could not be worked out beforehand, and
  again on every redelivery (a RUNNING run is only re-advanced).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from executor import metrics
from executor.models import Run, StepRun
from executor.quotas import run_start_wait
from executor.runs import queue
from executor.runs.batching import GroupCommit
from executor.runs.engine import (
    CHAIN_SECONDS,
    _advance,
    _committed_on_return,
    _continue_with,
    _finish_run,
    _hand_out,
    lease_extra_seconds,
    write,
)
from executor.runs.store import (
    Claimed,
    PushedEvents,
    RunClaim,
    RunLog,
    RunStart,
    StepChanges,
    claim,
    claim_each,
    inserted,
    instance,
    known_version,
    load_run,
    load_steps,
    record_run_event,
)
from flows.models import Flow, FlowVersion
from kwala_site.logfilters import bound

logger = logging.getLogger(__name__)

# Runs its trigger fired (not manual, test or replay runs).
_FIRED_BY_TRIGGER = ("log:", "block:", "schedule:", "webhook:")
# What each entry of a pushed payload's "events" holds, in order (listener.PushedClaims).
PUSHED_EVENT_FIELDS = ("block_number", "block_hash", "log_index", "tx_hash", "address", "topics", "data")


def dispatch_run(run: Run) -> None:
    """Send start_run for a QUEUED run once the current transaction commits."""
    Run.objects.filter(pk=run.pk).update(dispatched_at=timezone.now())
    run_id = run.pk
    transaction.on_commit(lambda: queue.send_run(run_id))


def claim_runs(claims: list[RunClaim], *, send: bool = True) -> list[int]:
    """Insert the runs that do not exist yet, in one statement; return the new ids.

    For claims made in bulk (the block loop, the scheduler, replay): each new
    run's start_run message is sent after commit; dry runs and `send=False` are
    not sent. Safe to call any number of times with the same claims.
    """
    with transaction.atomic():
        claimed = claim(claims)
        if send:
            for run_id in claimed.queued:
                transaction.on_commit(lambda run_id=run_id: queue.send_run(run_id))
    return claimed.run_ids


def start_claimed(run_claim: RunClaim) -> tuple[Run | None, bool]:
    """Claim one run and start it in the same statement; its side-effecting steps go to the workers.

    For a caller that answers somebody (an inbound webhook): the run is stored,
    claimed and started before this returns, and the thread does not go on to run
    its steps. Returns (the run, True) for a new run; (None, False) when the claim
    existed already. Called outside a transaction, the statement commits on its
    own, and carries the claims other threads of this process make meanwhile
    (runs.batching); inside one, it is the caller's alone.
    """
    begun, wait = _begin_claim(run_claim, keep_one=False, now=timezone.now())
    mine = begun.start if begun is not None else None
    if connection.in_atomic_block:
        (claimed,) = claim_each([(run_claim, mine)])
    else:
        claimed = _claims.submit((run_claim, mine))
    if claimed is None:
        return None, False
    if begun is not None and claimed.started:
        begun.run.pk, begun.run._state.adding = claimed.run_id, False
        begun.landed(begun.run, claimed.steps, claimed.log)
        return begun.run, True
    run = load_run(claimed.run_id, lock=False)
    if wait:
        _defer(run, wait)
    else:
        _start_locked(run.pk, keep_one=False, counted=begun is not None)
    return run, True


# Claims that meet at the door share a statement (runs.batching). In process, claim_each with
# starts costs ~415 us of client and ~630 us of PostgreSQL CPU a run alone, ~245 and ~425 two
# at a time, ~160 and ~325 four at a time. Under bench/webhook_load.py the door's claims went
# ~1.8 to a statement at 32 clients; at 256, the web's CPU a run fell ~7 % and PostgreSQL's ~8 %
# (against the sink's, which this cannot change: the VM's speed drifts more than that).
_claims = GroupCommit(claim_each, limit=64, observe=metrics.CLAIMS_PER_STATEMENT.observe)


def start_pushed_runs(payload: dict[str, Any], *, on_passed: Callable[[dict[str, Any]], Any]) -> Claimed:
    """Store the logs a node pushed, claim their runs and start the first, in one statement.

    `payload` is what the listener matched (listener.PushedClaims). The first
    claim's run is started in memory before anything is written (its version and
    flow are known to this process, the trigger is in the payload), and goes in
    already started, with its step rows and events, in the claim's own statement:
    outside a transaction that is one round trip, committed, before the side
    effect, which is what makes a pushed event's webhook go out within a few
    milliseconds. If that run existed already, or its version or flow changed
    meanwhile, the first new run is started under its lock instead. The other new
    runs (a burst) get start_run messages. Runs already claimed (the block loop
    or another listener was first) are left alone: whoever claimed them sent
    their start_run.

    `on_passed(payload)` is called when some of the logs are for blocks the block
    loop had already passed (their events were not written here).
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    keep_one = _committed_on_return()
    now = timezone.now()
    claims = [_pushed_claim(payload["chain"], c) for c in payload["claims"]]
    events = [dict(zip(PUSHED_EVENT_FIELDS, event, strict=True)) for event in payload["events"]]
    begun, wait = _begin_claim(claims[0], keep_one, now) if claims else (None, 0)
    claimed = claim(claims, start=begun.start if begun is not None else None,
                    pushed=PushedEvents(payload["chain"], events))
    if claimed.cursor_block is not None and any(
        e["block_number"] <= claimed.cursor_block for e in events
    ):
        on_passed(payload)
    if not claimed.run_ids:
        return claimed
    run = claimed.first
    for run_id in claimed.queued:
        if run_id != run.pk:
            transaction.on_commit(lambda run_id=run_id: queue.send_run(run_id))
    # The first claim's start was counted against the run quotas (and deferred if over them).
    counted = run.version_id == claims[0].version_id and run.trigger_key == claims[0].trigger_key
    if begun is not None and claimed.started(begun.start):
        kept, rows = begun.landed(run, claimed.steps, claimed.log)
    elif wait and counted:
        _defer(run, wait)
        return claimed
    else:
        kept, run, rows = _start_locked(run.pk, keep_one, counted=counted and begun is not None)
    _continue_with(kept, run, rows, deadline)
    return claimed


def _pushed_claim(chain: int, c: dict[str, Any]) -> RunClaim:
    return RunClaim(version_id=c["version_id"], flow_id=c["flow_id"], team_id=c["team_id"],
                    trigger_key=c["trigger_key"], trigger=c["trigger"], chain_id=chain,
                    block_number=c["block_number"], block_hash=c["block_hash"])


def start_run(run_id: int) -> None:
    """Move a QUEUED run to RUNNING, create its step rows, run its ready logic and queue the rest.

    Safe to call twice: a run that is already RUNNING is only re-advanced. The
    run row is locked, and the step rows are written once, as the logic left
    them, with the commit. Called outside a transaction, the thread then goes on
    with one of the steps it made ready (see engine._continue_with) instead of
    waiting for that step's message.
    """
    deadline = time.monotonic() + CHAIN_SECONDS
    _continue_with(*_start_locked(run_id, _committed_on_return()), deadline)


def _start_locked(run_id: int, keep_one: bool, *, counted: bool = False,
                  ) -> tuple[StepRun | None, Run | None, dict | None]:
    """start_run's transaction. `counted`: the start was already counted against the run quotas."""
    with transaction.atomic():
        run = load_run(run_id, lock=True)
        if run is None:
            logger.warning("start_run: run %s does not exist", run_id)
            return None, None, None
        with bound(flow=run.flow.code, run=run.code):
            return _start_loaded(run, keep_one, counted)


def _start_loaded(run: Run, keep_one: bool, counted: bool) -> tuple[StepRun | None, Run | None, dict | None]:
    """_start_locked for the run it loaded and locked (inside its transaction)."""
    rows = None
    log, changes, ready = RunLog(run), StepChanges(), []
    if run.status == Run.Status.RUNNING:
        rows = load_steps(run)
        ready = _advance(run, rows, log, changes)
    elif run.status == Run.Status.QUEUED:
        ended = _ends_unstarted(run)
        wait = 0 if ended is not None or counted else run_start_wait(run.team_id, run.flow_id, run.flow.code)
        if ended is not None:
            _finish_run(run, *ended, log, changes, {})
        elif wait:
            _defer(run, wait)
            return None, run, None
        else:
            rows, ready = _begin(run, log, changes)
    kept = _hand_out(ready, keep_one, run, log, changes)
    # With keep_one the caller's block is the outermost, and this write is its last statement.
    write(changes, log, commit=keep_one)
    return kept, run, rows


def _defer(run: Run, wait: int) -> None:
    """Leave a QUEUED run over its runs-per-minute quota for `wait` seconds: its start_run is sent
    delayed, the sweeper leaves it alone meanwhile, and its log says why it waits."""
    until = timezone.now() + timedelta(seconds=wait)
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(dispatched_at=until)
        record_run_event(run, "run.deferred", {"reason": "runs per minute", "until": until.isoformat()})
        transaction.on_commit(lambda: queue.send_run(run.pk, delay_seconds=wait))


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
    rows = {step["id"]: StepRun(run=run, step_id=step["id"], logs=[], state={},
                                lease_extra_seconds=lease_extra_seconds(step)) for step in run.version.dag["steps"]}
    changes.new = list(rows.values())
    log.set_run(status=Run.Status.RUNNING, started_at=timezone.now())
    log.add("run.status", {"status": run.status})
    return rows, _advance(run, rows, log, changes)


# -- a start worked out before its claim is written ----------------------------------------------


@dataclass
class Begun:
    """A run started in memory, and what to write for it (see start_claimed and start_pushed_runs)."""

    run: Run
    rows: dict[str, StepRun]  # all new
    log: RunLog
    changes: StepChanges
    kept: StepRun | None
    start: RunStart

    def landed(self, run: Run, steps: list[list], log: list[list]) -> tuple[StepRun | None, dict[str, StepRun]]:
        """The start was written (committed) for `run`, with these [id, step_id] step rows and [id, seq]
        events: give the rows their ids, send what waits on commit."""
        for row in self.rows.values():
            row.run = run
        inserted(list(self.rows.values()), steps)
        self.log.run = run
        (statement,) = self.log.take_statements(now=self.start.now)
        statement.done(log)
        self.changes.after_write()
        return self.kept, self.rows


def _begin_claim(run_claim: RunClaim, keep_one: bool, now: datetime) -> tuple[Begun | None, int]:
    """The claim's run, started in memory, and 0; or None and the seconds its start must wait
    (over its runs per minute), or None and 0 when the start cannot be worked out before the claim
    is written (the locked start decides)."""
    known = known_version(run_claim.version_id)
    if known is None:
        return None, 0
    run = Run(code=uuid.uuid4(), team_id=run_claim.team_id, flow_id=run_claim.flow_id,
              version_id=run_claim.version_id, trigger_key=run_claim.trigger_key, trigger=run_claim.trigger,
              chain_id=run_claim.chain_id, block_number=run_claim.block_number, block_hash=run_claim.block_hash,
              created_at=now)
    # Not paused, still published: the claim's statement starts no run unless that still holds.
    run.flow = instance(Flow, {"id": run.flow_id, "team_id": run.team_id, "code": known.flow_code,
                               "name": known.flow_name, "paused": False})
    run.version = instance(FlowVersion, {"id": run.version_id, "flow_id": run.flow_id, "number": known.number,
                                         "status": FlowVersion.Status.PUBLISHED, "created_at": known.created_at,
                                         "dag": known.dag})
    if _ends_unstarted(run) is not None:
        return None, 0  # cancelled or failed: the locked start writes that (a failure with its notification)
    wait = run_start_wait(run_claim.team_id, run_claim.flow_id, known.flow_code)
    if wait:
        return None, wait
    log, changes = RunLog(run), StepChanges()
    rows, ready = _begin(run, log, changes)
    if run.status == Run.Status.FAILED:
        return None, 0  # its logic failed it: the locked start writes that, with its notification
    kept = _hand_out(ready, keep_one, run, log, changes)
    new, changed = changes.take()
    assert not changed  # every row is new
    start = RunStart(
        run={"code": str(run.code), "status": run.status, "error": run.error, "event_seq": len(log.events),
             "started_at": run.started_at, "finished_at": run.finished_at,
             "flow_name": run.flow.name, "version_created": run.version.created_at},
        steps=StepChanges.records(new),
        log=[{"kind": kind, "data": data} for kind, data in log.events],
        now=now,
    )
    return Begun(run, rows, log, changes, kept, start), 0
