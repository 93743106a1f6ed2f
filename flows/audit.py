"""The audit log: who did what and when, per team.

Only ``record`` writes it, and only ever inserts; the model refuses updates and
deletes. Callers record inside the transaction of the change they describe, so
a rolled-back change leaves no entry behind.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from flows.models import AuditEvent, Team

# Every action the log knows, with the words the audit page shows.
ACTIONS = {
    "flow.created": "created a flow",
    "flow.rolled_back": "rolled a flow's draft back to a version",
    "flow.published": "published a flow",
    "flow.unpublished": "unpublished a flow",
    "flow.paused": "paused a flow",
    "flow.resumed": "resumed a flow",
    "flow.shared": "shared a flow with a team",
    "flow.unshared": "stopped sharing a flow",
    "flow.duplicated": "duplicated a flow",
    "flow.deleted": "deleted a flow",
    "flow.replayed": "replayed a flow over past blocks",
    "flow.webhook_token_rotated": "made a new webhook URL",
    "run.started": "ran a flow by hand",
    "run.retried": "retried a failed run",
    "run.rerun": "re-ran a run from a step",
    "link.created": "created a public link",
    "link.revoked": "revoked a public link",
    "member.invited": "invited someone",
    "member.joined": "joined the team",
    "member.role_changed": "changed a role",
    "member.removed": "removed a member",
    "member.left": "left the team",
    "secret.created": "created a secret",
    "secret.rotated": "changed a secret's value",
    "secret.deleted": "deleted a secret",
    "signer.created": "created a signer key",
    "signer.imported": "imported a signer key",
    "signer.deleted": "deleted a signer key",
    "signer.limits_changed": "changed a signer key's spending limits",
    "token.created": "created an API token",
    "token.revoked": "revoked an API token",
    "team.created": "created the team",
}


def record(team: Team, actor, action: str, target: str = "", **data: Any) -> AuditEvent:
    """Append one entry. `data` must never hold a secret value or a key."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    return AuditEvent.objects.create(
        team=team,
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_name=actor.get_username() if actor is not None and actor.is_authenticated else "",
        action=action,
        target=target[:200],
        data=data,
    )


def events_for(team: Team, *, action: str = "", actor: str = "", target: str = "") -> QuerySet[AuditEvent]:
    """The team's log, newest first, filtered by action (or its prefix: "member."), actor name and target."""
    events = AuditEvent.objects.filter(team=team)
    if action:
        events = events.filter(action__startswith=action) if action.endswith(".") else events.filter(action=action)
    if actor:
        events = events.filter(actor_name__iexact=actor)
    if target:
        events = events.filter(target__icontains=target)
    return events.order_by("-created_at", "-id")
