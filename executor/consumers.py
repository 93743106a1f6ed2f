"""Websocket consumers that stream a run's (or a flow's runs') live status."""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from executor.live import event_as_message, flow_group, run_group, team_group
from executor.models import RunEvent
from executor.permissions import run_for_user_or_none
from flows.models import Membership
from flows.permissions import flow_for_user_or_none
from kwala_site.overload import unavailable

logger = logging.getLogger(__name__)

REPLAY_LIMIT = 1000


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


class TeamScopedConsumer(AsyncJsonWebsocketConsumer):
    """Joins the watched object's group and the user's own group, so that losing
    access to the team (removed, left) closes the socket at once, not at reconnect."""

    team_id: int | None = None
    groups_joined: tuple[str, ...] = ()

    async def join(self, group: str, team_id: int) -> None:
        self.team_id = team_id
        self.groups_joined = (group, user_group(self.scope["user"].pk))
        for name in self.groups_joined:
            await self.channel_layer.group_add(name, self.channel_name)

    async def disconnect(self, code):
        for name in self.groups_joined:
            await self.channel_layer.group_discard(name, self.channel_name)

    async def dispatch(self, message):
        """A handler that PostgreSQL or Redis failed ends the socket (kwala_site.overload.SocketGuard
        answers it, 503 or 1013); it leaves its groups first, or every broadcast to them would go on
        queueing messages for a channel nobody reads until the group expires (a day)."""
        try:
            await super().dispatch(message)
        except Exception as exc:
            if unavailable(exc) is not None:
                await self._leave_quietly()
            raise

    async def _leave_quietly(self) -> None:
        for name in self.groups_joined:
            try:
                await self.channel_layer.group_discard(name, self.channel_name)
            except Exception as exc:  # Redis is what failed: its groups expire on their own
                logger.info("websocket %s could not leave %s: %s", self.channel_name, name, exc)
        self.groups_joined = ()

    async def membership_revoked(self, message: dict):
        if message.get("team") == self.team_id:
            await self.close(code=4403)


class RunConsumer(TeamScopedConsumer):
    """ws/runs/<code>/?after=<seq>: the run's log after `seq`, then live events.

    Joins the group before reading the log, so an event committed in between is
    seen either in the replay or live; the seq drops the copy seen twice.
    """

    async def connect(self):
        user = self.scope["user"]
        code = self.scope["url_route"]["kwargs"]["code"]
        self.run = await database_sync_to_async(run_for_user_or_none)(user, code)
        if self.run is None:
            await self.close(code=4403)
            return
        self.last_seq = _after(self.scope)
        await self.join(run_group(self.run.code), self.run.team_id)
        await self.accept()
        await self.replay()

    async def replay(self):
        while True:
            events = await database_sync_to_async(_events_after)(self.run.pk, self.last_seq)
            for event in events:
                await self.send_event(event_as_message(event, self.run.code))
            if len(events) < REPLAY_LIMIT:
                return

    async def send_event(self, message: dict):
        if message["seq"] <= self.last_seq:
            return
        self.last_seq = message["seq"]
        await self.send_json(message)

    async def run_event(self, message: dict):
        if message["seq"] > self.last_seq + 1:
            await self.replay()  # a broadcast was lost: fill the gap from the log
        await self.send_event(message)

    async def run_events(self, message: dict):
        """Several events of one transaction, in seq order."""
        for event in message["events"]:
            await self.run_event(event)


class FlowRunsConsumer(TeamScopedConsumer):
    """ws/flows/<code>/runs/: live events of every run of a flow (lists, canvas)."""

    async def connect(self):
        user = self.scope["user"]
        code = self.scope["url_route"]["kwargs"]["code"]
        flow = await database_sync_to_async(flow_for_user_or_none)(user, code)
        if flow is None:
            await self.close(code=4403)
            return
        await self.join(flow_group(flow.code), flow.team_id)
        await self.accept()

    async def run_event(self, message: dict):
        await self.send_json(message)

    async def run_events(self, message: dict):
        for event in message["events"]:
            await self.send_json(event)


class TeamRunsConsumer(TeamScopedConsumer):
    """ws/teams/<code>/runs/: the status changes of the team's runs, for the runs list.

    Says {"type": "live"} once joined, so a list that reconnects reads itself again
    (what changed while it was away is not replayed).
    """

    async def connect(self):
        user = self.scope["user"]
        code = self.scope["url_route"]["kwargs"]["code"]
        team_id = await database_sync_to_async(_team_of_member)(user, code)
        if team_id is None:
            await self.close(code=4403)
            return
        await self.join(team_group(team_id), team_id)
        await self.accept()
        await self.send_json({"type": "live"})

    async def run_event(self, message: dict):
        await self.send_json(message)

    async def run_events(self, message: dict):
        for event in message["events"]:
            await self.send_json(event)


def _team_of_member(user, team_code: str) -> int | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team__code=team_code).values_list("team_id", flat=True).first()


def _after(scope) -> int:
    from urllib.parse import parse_qs

    query = parse_qs(scope.get("query_string", b"").decode())
    try:
        return max(int(query.get("after", ["0"])[0]), 0)
    except ValueError:
        return 0


def _events_after(run_pk: int, seq: int) -> list[RunEvent]:
    return list(RunEvent.objects.filter(run_id=run_pk, seq__gt=seq).order_by("seq")[:REPLAY_LIMIT])

