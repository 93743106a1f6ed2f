"""Who may see which run: runs are looked up through the user's memberships (see
flows.permissions), so an outsider guessing a code gets a 404."""

from __future__ import annotations

import uuid

from django.http import Http404

from executor.models import Run
from flows.models import Membership


def run_for_user_or_none(user, code) -> Run | None:
    if not user.is_authenticated:
        return None
    return (
        Run.objects.filter(code=code, team__memberships__user=user)
        .select_related("flow", "version", "team")
        .first()
    )


def get_run_for_user(user, code) -> Run:
    run = run_for_user_or_none(user, code)
    if run is None:
        raise Http404("No such run")
    return run


def team_run_or_none(membership: Membership, code: uuid.UUID) -> Run | None:
    """The run with this code in the membership's team (the API acts in one team)."""
    return Run.objects.filter(team=membership.team, code=code).select_related("flow", "version", "chain").first()
