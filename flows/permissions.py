"""Who may see and do what. Every view starts with one of these helpers.

Objects are always looked up through the user's memberships, so an outsider
guessing a code gets a 404, never a 403 that confirms the object exists.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import Http404, HttpRequest

from flows.models import Flow, Membership

Role = Membership.Role
# Each role can do everything the roles after it can.
ROLE_RANK = {Role.VIEWER: 0, Role.EDITOR: 1, Role.ADMIN: 2, Role.OWNER: 3}

SESSION_TEAM_KEY = "team"


def has_role(membership: Membership, role: str) -> bool:
    return ROLE_RANK[Role(membership.role)] >= ROLE_RANK[Role(role)]


def current_membership(request: HttpRequest) -> Membership | None:
    """The membership of the team the user is working in (chosen in the session)."""
    user = request.user
    if not user.is_authenticated:
        return None
    memberships = Membership.objects.filter(user=user).select_related("team").order_by("created_at")
    chosen = request.session.get(SESSION_TEAM_KEY)
    if chosen:
        membership = memberships.filter(team__code=chosen).first()
        if membership is not None:
            return membership
    return memberships.first()


def membership_in_team(user, team_code: str) -> Membership | None:
    """The user's membership of the team with this code, or None."""
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team__code=team_code).select_related("team").first()


def require_membership(request: HttpRequest, role: str = Role.VIEWER) -> Membership:
    membership = current_membership(request)
    if membership is None or not has_role(membership, role):
        raise Http404("No team")
    return membership


def membership_for(user: AbstractBaseUser | AnonymousUser, team_id: int) -> Membership | None:
    if not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, team_id=team_id).first()


def get_flow_for_user(user, code: str, role: str = Role.VIEWER) -> tuple[Flow, Membership]:
    """The flow with this code in one of the user's teams, or 404."""
    flow = flow_for_user_or_none(user, code)
    if flow is None:
        raise Http404("No such flow")
    membership = membership_for(user, flow.team_id)
    if membership is None or not has_role(membership, role):
        raise Http404("No such flow")
    return flow, membership


def flow_for_user_or_none(user, code: str) -> Flow | None:
    if not user.is_authenticated:
        return None
    return Flow.objects.filter(code=code, team__memberships__user=user).select_related("team").first()


def team_flow_or_none(membership: Membership, code: str) -> Flow | None:
    """The flow with this code in the membership's team (the API acts in one team: its token's or
    the session's), whatever other teams the user is in."""
    return Flow.objects.filter(team=membership.team, code=code).first()


def team_member_or_none(membership: Membership, username: str) -> Membership | None:
    """The membership of `username` in the same team as `membership`."""
    return Membership.objects.select_related("user", "team").filter(
        team=membership.team, user__username=username
    ).first()


def safe_next(request: HttpRequest, candidate: str | None, default: str = "/") -> str:
    """`candidate` if it is a path on this site, else `default`: never an open redirect."""
    from django.utils.http import url_has_allowed_host_and_scheme

    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return default
