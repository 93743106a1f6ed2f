"""How runs and steps reach the workers: the one seam between the run code and the queue.

The run code calls `send_run`, `send_step` and `send_pushed`; it never imports
the queue. executor.tasks, the only module that imports Dramatiq's actors,
connects them here when it is imported, which ExecutorConfig.ready does in every
process. Messages carry ids only (a pushed batch carries its logs): the state is
in PostgreSQL, and the sweeper re-sends what a lost message leaves behind.

A message the broker cannot take (Redis down) is logged, not raised: the run or
step it was for is committed and stays QUEUED, and the sweeper sends it again
once the broker is back (and counts it). So a caller that was told its run was
accepted is never told otherwise because a doorbell did not ring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kwala_site import counters

logger = logging.getLogger(__name__)


@dataclass
class _Senders:
    run: Callable[[int, int], None]
    step: Callable[[int, int], None]
    pushed: Callable[[dict[str, Any]], None]
    replay: Callable[[int], None]


_senders: list[_Senders] = []


def connect(*, run: Callable[[int, int], None], step: Callable[[int, int], None],
            pushed: Callable[[dict[str, Any]], None], replay: Callable[[int], None]) -> None:
    """Plug the queue in (executor.tasks does, on import)."""
    _senders[:] = [_Senders(run, step, pushed, replay)]


def _connected() -> _Senders:
    if not _senders:
        raise RuntimeError("no queue is connected: executor.tasks is imported by ExecutorConfig.ready")
    return _senders[0]


def _send_or_leave_to_the_sweeper(what: str, send: Callable[[], None]) -> None:
    try:
        send()
    except Exception:
        logger.warning("could not send %s to the workers; the sweeper will", what, exc_info=True)
        counters.incr("queue_send_failed")


def send_run(run_id: int, delay_seconds: float = 0) -> None:
    """Ask a worker to start a QUEUED run (or re-advance a RUNNING one), after `delay_seconds`."""
    run = _connected().run
    _send_or_leave_to_the_sweeper(f"run {run_id}", lambda: run(run_id, int(delay_seconds * 1000)))


def send_step(step_run_id: int, delay_seconds: float = 0) -> None:
    """Ask a worker to run a QUEUED step, after `delay_seconds`."""
    step = _connected().step
    _send_or_leave_to_the_sweeper(f"step {step_run_id}", lambda: step(step_run_id, int(delay_seconds * 1000)))


def send_pushed(payload: dict[str, Any]) -> None:
    """Ask a worker to claim and start the runs of logs a node pushed (listener.PushedClaims).

    Raises when the broker cannot take it: nothing is stored yet, and the
    listener's block loop stores and claims the same logs from the block.
    """
    _connected().pushed(payload)


def send_replay(job_id: int) -> None:
    """Ask a worker to run a replay or backtest job (runs.manual.run_replay_job)."""
    replay = _connected().replay
    _send_or_leave_to_the_sweeper(f"replay job {job_id}", lambda: replay(job_id))
