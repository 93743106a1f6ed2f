"""Starting runs by hand and running them again: the functions views, the API and the CLI call."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import transaction
from django.utils import timezone

from executor.models import Chain, ReplayJob, Run, StepRun
from executor.replay import REPLAYABLE, ReplayError, check_replay, replay_blocks
from executor.runs import engine, queue, start
from executor.runs.store import record_run_event
from flows import audit
from flows.models import FlowVersion

S = StepRun.Status
logger = logging.getLogger(__name__)


class RunError(Exception):
    """The run cannot be started or changed as asked; the message says why."""


def _check_version(version: FlowVersion) -> None:
    if not version.dag or not isinstance(version.dag.get("steps"), list):
        raise RunError("This version has not been compiled; publish it or compile it first.")


def start_manual_run(version: FlowVersion, payload: Any, *, user, dry_run: bool = False) -> Run:
    """Create a run of `version` with `payload` as its trigger and queue it.

    A manual trigger hands the payload on as `trigger.payload`; any other trigger's
    run gets the payload as that trigger's own output (`trigger.block_number`, ...),
    as a sample of what the chain, a webhook or the schedule would hand it.
    A dry run executes the logic but records what side-effecting steps would
    send instead of sending it. The caller has checked that `user` may run the flow.
    A run that acts (not a dry run) goes into the team's audit log.
    """
    _check_version(version)
    flow = version.flow
    kind = (version.dag.get("trigger") or {}).get("type") or "manual"
    if kind == "manual" or not isinstance(payload, dict):
        trigger = {"type": "manual", "payload": payload, "by": getattr(user, "username", None)}
    else:
        trigger = {**payload, "type": kind}
    with transaction.atomic():
        run = Run.objects.create(
            team_id=flow.team_id,
            flow=flow,
            version=version,
            trigger_key=f"manual:{uuid.uuid4()}",
            trigger=trigger,
            dry_run=dry_run,
            created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        run.flow = flow
        record_run_event(run, "run.status", {"status": Run.Status.QUEUED, "dry_run": dry_run})
        if not dry_run:
            audit.record(flow.team, user, "run.started", str(run.code), flow=flow.code, version=version.number)
        start.dispatch_run(run)
    return run


def retry_run(run: Run, *, user=None) -> Run:
    """Run a FAILED run's failed and cancelled steps again; finished steps keep their results.

    Audited as done by `user` (None: by the system).
    """
    with transaction.atomic():
        run = Run.objects.select_for_update(of=("self",)).select_related("flow__team", "version").get(pk=run.pk)
        if run.status != Run.Status.FAILED:
            raise RunError("Only a failed run can be retried.")
        audit.record(run.flow.team, user, "run.retried", str(run.code), flow=run.flow.code)
        if not run.steps.exists():
            # It failed before it started (e.g. no DAG): start it over.
            run.status, run.error, run.finished_at = Run.Status.QUEUED, "", None
            run.save(update_fields=["status", "error", "finished_at"])
            record_run_event(run, "run.status", {"status": run.status, "retry": True})
            start.dispatch_run(run)
            return run
        again = run.steps.filter(status__in=[S.FAILED, S.CANCELLED]).exclude(handled=True)
        for row in again:
            record_run_event(run, "step.status", {"step": row.step_id, "status": S.PENDING, "attempt": 0})
        again.update(status=S.PENDING, attempt=0, error="", output=None, port="", state={}, logs=[],
                     started_at=None, finished_at=None, next_attempt_at=None, lease_expires_at=None)
        run.status, run.error, run.finished_at = Run.Status.RUNNING, "", None
        run.save(update_fields=["status", "error", "finished_at"])
        record_run_event(run, "run.status", {"status": run.status, "retry": True})
        engine.advance(run)
    return run


def _descendants(dag: dict, step_id: str) -> set[str]:
    successors = {s["id"]: [t for targets in s["successors"].values() for t in targets] for s in dag["steps"]}
    seen, todo = set(), [step_id]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(successors.get(current, []))
    return seen


def rerun_from(run: Run, step_id: str, *, user=None) -> Run:
    """A new run of the same version and trigger that reuses every result not downstream of `step_id`.

    Steps from `step_id` on run again (with their side effects, under new idempotency keys).
    """
    dag = run.version.dag or {}
    _check_version(run.version)
    if step_id not in {s["id"] for s in dag["steps"]}:
        raise RunError(f"This flow version has no step {step_id!r}.")
    again = _descendants(dag, step_id)
    old = {row.step_id: row for row in run.steps.all()}
    if step_id in old and old[step_id].status in (S.SKIPPED, S.PENDING):
        raise RunError(f"Step {step_id!r} did not run in this run (its branch was not taken): re-run from a step "
                       "that ran, such as the one that chose the branch.")
    for sid in {s["id"] for s in dag["steps"]} - again:
        if sid not in old or old[sid].status in (S.PENDING, S.QUEUED, S.RUNNING):
            raise RunError(f"Step {sid!r} has not finished in the original run, so its result cannot be reused.")
    now = timezone.now()
    with transaction.atomic():
        new = Run.objects.create(
            team_id=run.team_id, flow_id=run.flow_id, version_id=run.version_id,
            trigger_key=f"rerun:{uuid.uuid4()}", trigger=run.trigger, event_id=run.event_id, chain_id=run.chain_id,
            block_number=run.block_number, block_hash=run.block_hash, dry_run=run.dry_run,
            status=Run.Status.RUNNING, started_at=now, created_by=user if getattr(user, "is_authenticated", False) else None,
        )
        new.flow, new.version = run.flow, run.version
        rows = []
        for step in dag["steps"]:
            sid = step["id"]
            if sid in again:
                rows.append(StepRun(run=new, step_id=sid, lease_extra_seconds=engine.lease_extra_seconds(step)))
            else:
                prev = old[sid]
                status = prev.status if prev.status != S.CANCELLED else S.SKIPPED
                rows.append(StepRun(run=new, step_id=sid, status=status, output=prev.output, port=prev.port,
                                    handled=prev.handled, error=prev.error, input=prev.input, attempt=prev.attempt,
                                    logs=[f"reused from run {run.code}"], finished_at=now))
        StepRun.objects.bulk_create(rows)
        record_run_event(new, "run.status", {"status": new.status, "rerun_of": str(run.code), "from_step": step_id})
        audit.record(run.flow.team, user, "run.rerun", str(new.code), flow=run.flow.code, rerun_of=str(run.code),
                     from_step=step_id)
        new = Run.objects.select_for_update(of=("self",)).select_related("flow", "version").get(pk=new.pk)
        engine.advance(new)
    return new


def _replay_chain(version: FlowVersion) -> Chain:
    _check_version(version)
    chain_id = (version.dag.get("trigger") or {}).get("chain_id")
    chain = Chain.objects.filter(chain_id=chain_id, enabled=True).first() if chain_id else None
    if chain is None:
        if (version.dag.get("trigger") or {}).get("type") not in REPLAYABLE:
            raise ReplayError("Only flows triggered by a contract event or a transaction can be replayed over blocks.")
        raise ReplayError(f"Chain {chain_id} is not configured (or is disabled) on this server.")
    return chain


def request_replay(version: FlowVersion, from_block: int, to_block: int, *, dry_run: bool, user=None) -> ReplayJob:
    """Check what can be checked at once and queue the replay (or backtest) for a worker.

    Raises ReplayError for a request that cannot work (a bad range, a trigger that
    is not a contract event, a chain that is not configured); what reading the
    chain finds (a range beyond the head, an unreachable node) ends the job FAILED.
    """
    check_replay(version, _replay_chain(version), from_block, to_block)
    with transaction.atomic():
        job = ReplayJob.objects.create(team_id=version.flow.team_id, flow_id=version.flow_id, version=version,
                                       requested_by=user if getattr(user, "is_authenticated", False) else None,
                                       from_block=from_block, to_block=to_block, dry_run=dry_run)
        transaction.on_commit(lambda: queue.send_replay(job.pk))
    return job


def run_replay_job(job_id: int) -> None:
    """A worker's part: read the blocks, claim the runs, start a backtest's dry runs; record the outcome.

    Safe to deliver twice: the job is taken by a conditional update, and running
    it again (after a worker died in it) creates no second run: live runs are
    keyed like the listener's, a backtest's by the job's code.
    """
    now = timezone.now()
    if not ReplayJob.objects.filter(pk=job_id, status=ReplayJob.Status.QUEUED).update(
        status=ReplayJob.Status.RUNNING, started_at=now
    ):
        return  # taken by another delivery, or done
    job = ReplayJob.objects.select_related("version__flow").get(pk=job_id)
    try:
        chain = _replay_chain(job.version)
        # Reading the logs happens outside any transaction: a long range must not hold one open.
        result = replay_blocks(job.version, chain, job.from_block, job.to_block, job.dry_run,
                               key_prefix=f"replay:{job.code}:")
        with transaction.atomic():
            runs = list(Run.objects.filter(pk__in=result.run_ids).order_by("block_number", "pk"))
            if job.dry_run:
                for run in runs:
                    start.dispatch_run(run)
            ReplayJob.objects.filter(pk=job.pk).update(
                status=ReplayJob.Status.SUCCEEDED, logs_seen=result.logs_seen, matched=result.matched,
                run_codes=[str(run.code) for run in runs], finished_at=timezone.now())
    except ReplayError as exc:
        logger.info("replay job %s failed: %s", job.code, exc)
        ReplayJob.objects.filter(pk=job.pk).update(status=ReplayJob.Status.FAILED, error=str(exc)[:2000],
                                                   finished_at=timezone.now())
    except Exception:
        logger.exception("replay job %s crashed", job.code)
        ReplayJob.objects.filter(pk=job.pk).update(status=ReplayJob.Status.FAILED, finished_at=timezone.now(),
                                                   error="internal error while replaying (see the worker log)")
