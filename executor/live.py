"""Live run status: an append-only, sequence-numbered log in PostgreSQL, fanned
out to websocket groups through the channel layer after the write commits.

The log is the source of truth; the channel layer may drop messages under load,
so consumers replay from the log and use the seq to drop duplicates and to
notice gaps.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import F

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
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(event_seq=F("event_seq") + 1)
        seq = Run.objects.values_list("event_seq", flat=True).get(pk=run.pk)
        event = RunEvent.objects.create(run=run, seq=seq, kind=kind, data=data)
        message = {
            "type": "run.event",
            "run": str(run.code),
            "seq": seq,
            "kind": kind,
            "data": data,
            "at": event.created_at.isoformat(),
        }
        flow_code = run.flow.code
        transaction.on_commit(lambda: broadcast(message, flow_code))
    return event


def broadcast(message: dict, flow_code: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(run_group(message["run"]), message)
        async_to_sync(layer.group_send)(flow_group(flow_code), message)
    except Exception:
        # The log already holds the event; browsers catch up on reconnect.
        logger.warning("could not broadcast run event %s/%s", message["run"], message["seq"], exc_info=True)


def event_as_message(event: RunEvent, run_code) -> dict:
    return {
        "type": "run.event",
        "run": str(run_code),
        "seq": event.seq,
        "kind": event.kind,
        "data": event.data,
        "at": event.created_at.isoformat(),
    }


def revoke_sockets(user_id: int, team_id: int) -> None:
    """Close the user's open sockets on the team's runs and flows, after the commit."""

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            async_to_sync(layer.group_send)(f"user.{user_id}", {"type": "membership.revoked", "team": team_id})
        except Exception:
            logger.warning("could not close the sockets of user %s", user_id, exc_info=True)

    transaction.on_commit(send)
