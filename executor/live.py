"""Live run status: each run's events, once committed to its log in PostgreSQL
(executor.runs.store.record_run_events), are fanned out to websocket groups
through the channel layer.

The log is the source of truth; the channel layer may drop messages under load,
so consumers replay from the log and use the seq to drop duplicates and to
notice gaps.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading

from channels.layers import get_channel_layer
from django.db import transaction

from executor.models import RunEvent

logger = logging.getLogger(__name__)


def run_group(run_code) -> str:
    return f"run.{run_code}"


def flow_group(flow_code: str) -> str:
    return f"flow.{flow_code}"


def team_group(team_id: int) -> str:
    """A team's runs list: only run.status events go here (a run started, finished, was retried)."""
    return f"team.{team_id}"


@functools.lru_cache(maxsize=4096)
def _team_of_flow(flow_code: str) -> int | None:
    # A flow never changes team, so the answer is cached for the process's life.
    from flows.models import Flow

    return Flow.objects.filter(code=flow_code).values_list("team_id", flat=True).first()


def broadcast_all(messages: list[dict], flow_code: str) -> None:
    """Hand the messages to this process's broadcast loop and return at once.

    One long-lived event loop per process keeps the channel layer's Redis
    connections open (async_to_sync would build a loop, and connect again, per
    call). Delivery is best effort by design: the log already holds the events.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    team_id = None
    if any(m["kind"] == "run.status" for m in messages):
        try:
            team_id = _team_of_flow(flow_code)
        except Exception:
            # The runs list then learns of the run at its next change or reconnect.
            logger.warning("no team for flow %s: its runs list is not told", flow_code, exc_info=True)
    _outbox().put((layer, messages, flow_code, team_id))


# Group sends in flight at once: each holds one of the channel layer's Redis connections.
SEND_CONCURRENCY = 8
# How long the loop gathers events before it sends them. A run's start and its end, a few
# milliseconds apart, go out as one message per group, and a busy worker wakes the loop once
# per window instead of once per transaction. (Looking up first which groups somebody is in,
# through channels_redis' private group key, bought nothing measurable in bench/end_to_end.py:
# worker CPU 8.0-8.4 ms per run without it against 8.2-9.5 with it; it was dropped.)
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
            for layer, messages, flow_code, team_id in items:
                groups.setdefault((layer, run_group(messages[0]["run"])), []).extend(messages)
                groups.setdefault((layer, flow_group(flow_code)), []).extend(messages)
                if team_id is not None:
                    statuses = [m for m in messages if m["kind"] == "run.status"]
                    groups.setdefault((layer, team_group(team_id)), []).extend(statuses)
            await asyncio.gather(*(send(layer, group, events) for (layer, group), events in groups.items()))
            with self.lock:
                if self.items:
                    self.wake.set()  # more came while these were sent: go round again
                else:
                    self.idle = True


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
    return message(run_code, event.seq, event.kind, event.data, event.created_at.isoformat())


def message(run_code, seq: int, kind: str, data: dict, at: str) -> dict:
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
