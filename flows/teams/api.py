"""The team API (a django-ninja Router, added to the project's API in kwala_site.api): secrets,
signer keys, members, invitations, personal tokens and the audit log. The writes are the
`do_*` functions of flows.teams, as on the team pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse
from ninja import Field, Query, Router, Schema
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.responses import Status

from flows import audit
from flows.models import ApiToken, Membership, Secret, SignerKey
from flows.permissions import team_member_or_none
from flows.teams import (
    do_change_role,
    do_create_signer,
    do_create_token,
    do_delete_secret,
    do_delete_signer,
    do_invite,
    do_remove_member,
    do_revoke_token,
    do_set_secret,
)
from kwala_site.api_common import COMMON_ERRORS, Role, Text, forbidden, not_found, require_role

router = Router()


# -- secrets and signer keys ---------------------------------------------------------------------


class SecretOut(Schema):
    name: str
    created_at: datetime
    updated_at: datetime


class SecretIn(Schema):
    value: Text = Field(min_length=1, max_length=65536, description="Write-only: never returned")


class SignerOut(Schema):
    code: str
    name: str
    address: str
    created_at: datetime


class SignerIn(Schema):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    private_key: str | None = Field(None, max_length=100, description="Write-only; omit to generate a new key")


@router.get("/secrets", response={200: list[SecretOut], **COMMON_ERRORS}, tags=["secrets"])
def list_secrets(request):
    membership = require_role(request, Role.EDITOR)
    return list(Secret.objects.filter(team=membership.team).order_by("name"))


@router.put("/secrets/{name}", response={200: SecretOut, 201: SecretOut, **COMMON_ERRORS}, tags=["secrets"])
def put_secret(request, name: str, payload: SecretIn):
    """Create or replace a secret. The value is encrypted and never returned by any endpoint."""
    membership = require_role(request, Role.ADMIN)
    secret, created = do_set_secret(membership, name, payload.value)
    return Status(201 if created else 200, secret)


@router.delete("/secrets/{name}", response={204: None, **COMMON_ERRORS}, tags=["secrets"])
def delete_secret(request, name: str):
    membership = require_role(request, Role.ADMIN)
    secret = Secret.objects.filter(team=membership.team, name=name).first()
    if secret is None:
        raise not_found("secret")
    do_delete_secret(membership, secret)
    return Status(204, None)


@router.get("/signers", response={200: list[SignerOut], **COMMON_ERRORS}, tags=["secrets"])
def list_signers(request):
    membership = require_role(request, Role.EDITOR)
    return list(SignerKey.objects.filter(team=membership.team).order_by("name"))


@router.post("/signers", response={201: SignerOut, **COMMON_ERRORS}, tags=["secrets"])
def create_signer(request, payload: SignerIn):
    membership = require_role(request, Role.ADMIN)
    return Status(201, do_create_signer(membership, payload.name, payload.private_key))


@router.delete("/signers/{code}", response={204: None, **COMMON_ERRORS}, tags=["secrets"])
def delete_signer(request, code: str):
    membership = require_role(request, Role.ADMIN)
    signer = SignerKey.objects.filter(team=membership.team, code=code).first()
    if signer is None:
        raise not_found("signer")
    do_delete_signer(membership, signer)
    return Status(204, None)


# -- team members, invitations, tokens, audit ---------------------------------------------------


class MemberOut(Schema):
    username: str
    email: str
    role: str
    joined_at: datetime


class RoleIn(Schema):
    role: Literal["OWNER", "ADMIN", "EDITOR", "VIEWER"]


class InviteIn(Schema):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}$")
    role: Literal["OWNER", "ADMIN", "EDITOR", "VIEWER"] = "VIEWER"


class InviteOut(Schema):
    code: str
    email: str
    role: str
    expires_at: datetime


def _member_out(m: Membership) -> dict:
    return {"username": m.user.get_username(), "email": m.user.email, "role": m.role, "joined_at": m.created_at}


def _member(request, username: str) -> Membership:
    target = team_member_or_none(request.auth, username)
    if target is None:
        raise not_found("member")
    return target


@router.get("/members", response={200: list[MemberOut], **COMMON_ERRORS}, tags=["team"])
def list_members(request):
    members = Membership.objects.filter(team=request.auth.team).select_related("user").order_by("user__username")
    return [_member_out(m) for m in members]


@router.patch("/members/{username}", response={200: MemberOut, **COMMON_ERRORS}, tags=["team"])
def change_member_role(request, username: str, payload: RoleIn):
    membership = require_role(request, Role.ADMIN)
    return _member_out(do_change_role(membership, _member(request, username), payload.role))


@router.delete("/members/{username}", response={204: None, **COMMON_ERRORS}, tags=["team"])
def remove_member(request, username: str):
    target = _member(request, username)
    if target.pk != request.auth.pk:
        require_role(request, Role.ADMIN)
    do_remove_member(request.auth, target)
    return Status(204, None)


@router.post("/invitations", response={201: InviteOut, **COMMON_ERRORS}, tags=["team"])
def invite(request, payload: InviteIn):
    """Invite by email; the link is emailed, never returned."""
    membership = require_role(request, Role.ADMIN)
    invitation, token = do_invite(membership, payload.email, payload.role)
    link = request.build_absolute_uri(reverse("accept_invitation", args=[token]))
    send_mail(
        f"You are invited to {membership.team.name} on Kwala",
        f"{request.user.get_username()} invited you to {membership.team.name} on Kwala. Accept (once, within 7 days):\n{link}\n",
        settings.DEFAULT_FROM_EMAIL, [invitation.email],
    )
    return Status(201, invitation)


class TokenOut(Schema):
    prefix: str
    name: str
    team: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The token itself: shown this once, store it now")


class TokenIn(Schema):
    name: Text = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650, description="Empty: the token does not expire.")


def _token_out(t: ApiToken) -> dict:
    return {"prefix": t.prefix, "name": t.name, "team": t.team.code, "created_at": t.created_at,
            "last_used_at": t.last_used_at, "revoked_at": t.revoked_at, "expires_at": t.expires_at}


@router.get("/tokens", response={200: list[TokenOut], **COMMON_ERRORS}, tags=["tokens"])
def list_tokens(request):
    return [_token_out(t) for t in ApiToken.objects.filter(user=request.user).select_related("team")]


@router.post("/tokens", response={201: TokenCreatedOut, **COMMON_ERRORS}, tags=["tokens"])
def create_token(request, payload: TokenIn):
    """A new personal token; only from a logged-in browser session, never with a token (a leaked
    token must not be able to mint others that outlive its revocation)."""
    if getattr(request, "api_token", None) is not None:
        raise forbidden("An API token cannot create tokens: create them on your account page.")
    token, plaintext = do_create_token(request.auth, payload.name, expires_in_days=payload.expires_in_days)
    return Status(201, {**_token_out(token), "token": plaintext})


@router.delete("/tokens/{prefix}", response={204: None, **COMMON_ERRORS}, tags=["tokens"])
def revoke_token(request, prefix: str):
    token = ApiToken.objects.select_related("team").filter(user=request.user, prefix=prefix).first()
    if token is None:
        raise not_found("token")
    do_revoke_token(request.user, token)
    return Status(204, None)


class AuditOut(Schema):
    action: str
    actor: str
    target: str
    data: dict[str, Any]
    created_at: datetime


@router.get("/audit", response={200: list[AuditOut], **COMMON_ERRORS}, tags=["team"])
@paginate(LimitOffsetPagination)
def list_audit(request, action: str = Query("", max_length=40), actor: str = Query("", max_length=150),
               target: str = Query("", max_length=200)):
    membership = require_role(request, Role.ADMIN)
    return [
        {"action": e.action, "actor": e.actor_name, "target": e.target, "data": e.data, "created_at": e.created_at}
        for e in audit.events_for(membership.team, action=action, actor=actor, target=target)
    ]
