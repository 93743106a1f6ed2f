"""Team writes: members, invitations, secrets, signer keys, tokens and sharing.

Every ``do_*`` function states its preconditions. The caller (a view, the API)
has already found the acting membership with flows.permissions; the functions
enforce the rules that depend on the team's state (only owners touch owners,
the last owner cannot go) and raise TeamError with a machine-readable code and a
message a person can act on. Each change is recorded in the audit log in the
same transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from executor.interface import revoke_sockets
from flows import audit
from flows.models import (
    ApiToken,
    Flow,
    FlowShare,
    Invitation,
    Membership,
    PublicLink,
    Secret,
    SignerKey,
    Team,
)
from flows.permissions import ROLE_RANK, has_role

Role = Membership.Role
INVITATION_TTL = timedelta(days=7)
INVITATION_SALT = "kwala.invitation"
TOKEN_PREFIX = "kwl_"  # noqa: S105 - a marker, not a credential
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_SECRET_BYTES = 64 * 1024


class TeamError(Exception):
    """A team change that is not allowed; `code` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str, status: int = 409):
        self.code = code
        self.message = message
        self.status = status
        super().__init__(message)


def _forbid(message: str) -> TeamError:
    return TeamError("forbidden", message, status=403)


# -- teams and members ----------------------------------------------------------------


def do_create_team(user, name: str) -> Team:
    """A new team with `user` as its owner."""
    name = name.strip()
    if not name:
        raise TeamError("invalid", "A team needs a name.", status=400)
    with transaction.atomic():
        team = Team.objects.create(name=name[:100])
        Membership.objects.create(team=team, user=user, role=Role.OWNER)
        audit.record(team, user, "team.created", team.name)
    return team


def do_sign_up(username: str, email: str, password: str):
    """Create an account and its personal team (the user owns it). Inputs are already validated."""
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=username, email=email, password=password)
        do_create_team(user, f"{username}'s team")
    return user


def _locked_owners(team: Team) -> list[Membership]:
    # Locking the owners' rows serializes concurrent demotions and removals, so
    # two owners cannot each remove the other and leave the team ownerless.
    return list(Membership.objects.select_for_update().filter(team=team, role=Role.OWNER).order_by("pk"))


def _check_manages(actor: Membership, target_role: str) -> None:
    if not has_role(actor, Role.ADMIN):
        raise _forbid("Only team admins and owners can manage members.")
    if target_role == Role.OWNER and actor.role != Role.OWNER:
        raise _forbid("Only an owner can add, change or remove owners.")


def do_change_role(actor: Membership, target: Membership, role: str) -> Membership:
    """Give `target` a new role in `actor`'s team.

    Admins manage editors and viewers (and may make admins); owners manage
    everyone. The last owner cannot be demoted.
    """
    if role not in Role.values:
        raise TeamError("invalid", f"Unknown role {role!r}.", status=400)
    if target.team_id != actor.team_id:
        raise TeamError("member_not_found", "No such member.", status=404)
    with transaction.atomic():
        owners = _locked_owners(actor.team)
        target.refresh_from_db(fields=["role"])
        _check_manages(actor, target.role)
        _check_manages(actor, role)
        if target.role == role:
            return target
        if target.role == Role.OWNER and len(owners) == 1:
            raise TeamError("last_owner", "A team must keep at least one owner: make someone else owner first.")
        old = target.role
        target.role = role
        target.save(update_fields=["role"])
        audit.record(actor.team, actor.user, "member.role_changed", target.user.get_username(), old=old, new=role)
    return target


def do_remove_member(actor: Membership, target: Membership) -> None:
    """Remove `target` from the team (not the last owner; only owners remove owners)."""
    if target.team_id != actor.team_id:
        raise TeamError("member_not_found", "No such member.", status=404)
    if target.pk == actor.pk:
        do_leave_team(actor)
        return
    with transaction.atomic():
        owners = _locked_owners(actor.team)
        _check_manages(actor, target.role)
        if target.role == Role.OWNER and len(owners) == 1:
            raise TeamError("last_owner", "A team must keep at least one owner.")
        _end_membership(target)
        audit.record(actor.team, actor.user, "member.removed", target.user.get_username(), role=target.role)


def _end_membership(membership: Membership) -> None:
    """Delete the membership and everything that acted on it: the user's tokens for the
    team stop working and their open sockets on its runs close. Call inside a transaction."""
    membership.delete()
    ApiToken.objects.filter(user_id=membership.user_id, team_id=membership.team_id, revoked_at=None).update(
        revoked_at=timezone.now()
    )
    revoke_sockets(membership.user_id, membership.team_id)


def do_leave_team(membership: Membership) -> None:
    """The member leaves; the last owner must hand the team over first."""
    with transaction.atomic():
        owners = _locked_owners(membership.team)
        if membership.role == Role.OWNER and len(owners) == 1:
            raise TeamError("last_owner", "You are the team's last owner: make someone else owner before leaving.")
        _end_membership(membership)
        audit.record(membership.team, membership.user, "member.left", membership.user.get_username())


# -- invitations ---------------------------------------------------------------------


def invitation_token(invitation: Invitation) -> str:
    return signing.dumps(invitation.code, salt=INVITATION_SALT)


def do_invite(actor: Membership, email: str, role: str) -> tuple[Invitation, str]:
    """Invite `email` to `actor`'s team; returns the invitation and its link token (to email, not to store)."""
    if role not in Role.values:
        raise TeamError("invalid", f"Unknown role {role!r}.", status=400)
    _check_manages(actor, role)
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise TeamError("invalid", "That is not a valid email address.", 400) from None
    if Membership.objects.filter(team=actor.team, user__email__iexact=email).exists():
        raise TeamError("already_member", f"{email} is already in the team.")
    with transaction.atomic():
        invitation = Invitation.objects.create(
            team=actor.team, email=email, role=role, invited_by=actor.user,
            expires_at=timezone.now() + INVITATION_TTL,
        )
        audit.record(actor.team, actor.user, "member.invited", email, role=role)
    return invitation, invitation_token(invitation)


def invitation_from_token(token: str) -> Invitation:
    """The invitation a link names, or TeamError (bad signature, unknown, used, revoked or expired)."""
    try:
        code = signing.loads(token, salt=INVITATION_SALT, max_age=INVITATION_TTL)
    except signing.SignatureExpired:
        raise TeamError("invitation_expired", "This invitation has expired: ask for a new one.", 410) from None
    except signing.BadSignature:
        raise TeamError("invitation_not_found", "This invitation link is not valid.", 404) from None
    invitation = Invitation.objects.select_related("team").filter(code=code).first()
    if invitation is None:
        raise TeamError("invitation_not_found", "This invitation link is not valid.", 404)
    if invitation.accepted_at is not None:
        raise TeamError("invitation_used", "This invitation has already been used.", 410)
    if invitation.revoked_at is not None:
        raise TeamError("invitation_revoked", "This invitation was withdrawn.", 410)
    if invitation.expires_at <= timezone.now():
        raise TeamError("invitation_expired", "This invitation has expired: ask for a new one.", 410)
    return invitation


def do_accept_invitation(token: str, user) -> Membership:
    """Join the team of the invitation `token` names; each invitation works once, and only
    for the account of the address it was sent to (a forwarded or leaked link opens nothing)."""
    invitation = invitation_from_token(token)
    with transaction.atomic():
        existing = Membership.objects.filter(team=invitation.team, user=user).first()
        if existing is not None:
            raise TeamError("already_member", f"You are already in {invitation.team.name}.")
        if (user.email or "").strip().lower() != invitation.email.strip().lower():
            raise TeamError("wrong_account", "This invitation was sent to another email address: log in with "
                                             "the account that uses it.", 403)
        now = timezone.now()
        # The conditional update is what makes the link single-use, also when
        # two people click it at the same moment.
        claimed = Invitation.objects.filter(
            pk=invitation.pk, accepted_at=None, revoked_at=None, expires_at__gt=now
        ).update(accepted_at=now, accepted_by=user)
        if claimed != 1:
            raise TeamError("invitation_used", "This invitation has already been used.", 410)
        membership = Membership.objects.create(team=invitation.team, user=user, role=invitation.role)
        audit.record(invitation.team, user, "member.joined", user.get_username(), role=invitation.role)
    return membership


def do_revoke_invitation(actor: Membership, invitation: Invitation) -> None:
    _check_manages(actor, invitation.role)
    Invitation.objects.filter(pk=invitation.pk, team=actor.team, accepted_at=None).update(revoked_at=timezone.now())


# -- secrets and signer keys -------------------------------------------------------------


def _check_admin(actor: Membership, what: str) -> None:
    if not has_role(actor, Role.ADMIN):
        raise _forbid(f"Only team admins and owners can manage {what}.")


def check_secret_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise TeamError("invalid", "A secret name is letters, digits and _, starting with a letter or _.", 400)
    return name


def do_set_secret(actor: Membership, name: str, value: str) -> tuple[Secret, bool]:
    """Create the secret `name`, or replace its value; returns (secret, created). Never logs the value."""
    _check_admin(actor, "secrets")
    check_secret_name(name)
    if not isinstance(value, str) or not value:
        raise TeamError("invalid", "A secret needs a value.", 400)
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise TeamError("invalid", "A secret value can be at most 64 KiB.", 400)
    with transaction.atomic():
        secret = Secret.objects.select_for_update().filter(team=actor.team, name=name).first()
        created = secret is None
        if created:
            secret = Secret(team=actor.team, name=name, created_by=actor.user)
        secret.set_value(value)
        secret.save()
        audit.record(actor.team, actor.user, "secret.created" if created else "secret.rotated", name)
    return secret, created


def do_delete_secret(actor: Membership, secret: Secret) -> None:
    _check_admin(actor, "secrets")
    if secret.team_id != actor.team_id:
        raise TeamError("secret_not_found", "No such secret.", 404)
    with transaction.atomic():
        secret.delete()
        audit.record(actor.team, actor.user, "secret.deleted", secret.name)


def do_create_signer(actor: Membership, name: str, private_key: str | None = None) -> SignerKey:
    """A new signer key: generated here, or imported when `private_key` is given. Never logs the key."""
    from eth_account import Account

    _check_admin(actor, "signer keys")
    check_secret_name(name)
    if private_key is None:
        private_key = Account.create().key.hex()
        action = "signer.created"
    else:
        action = "signer.imported"
    signer = SignerKey(team=actor.team, name=name, created_by=actor.user)
    try:
        signer.set_private_key(private_key.strip())
    except (ValueError, TypeError):
        raise TeamError("invalid", "That is not a valid private key (64 hex digits, optionally 0x-prefixed).", 400) from None
    try:
        with transaction.atomic():
            signer.save()
            audit.record(actor.team, actor.user, action, name, address=signer.address)
    except IntegrityError:
        raise TeamError("conflict", f"A signer key named {name} already exists.") from None
    return signer


SIGNER_LIMITS = ("max_value_wei", "max_fee_per_gas_wei", "max_priority_fee_per_gas_wei", "daily_budget_wei",
                 "max_replacements")


def do_set_signer_limits(actor: Membership, signer: SignerKey, **limits: int | None) -> SignerKey:
    """Set a signer key's spending limits (executor.steps.spending); team admins only, audited.

    `limits` names any of SIGNER_LIMITS; an amount of None is no limit.
    """
    _check_admin(actor, "signer keys")
    if signer.team_id != actor.team_id:
        raise TeamError("signer_not_found", "No such signer key.", 404)
    unknown = set(limits) - set(SIGNER_LIMITS)
    if unknown:
        raise TeamError("invalid", f"Unknown limit {sorted(unknown)[0]}.", 400)
    for name, value in limits.items():
        if value is not None and (not isinstance(value, int) or value < 0 or value >= 2**256):
            raise TeamError("invalid", f"{name} must be a whole number from 0 to 2**256 - 1.", 400)
        if name == "max_replacements" and (value is None or value > 100):
            raise TeamError("invalid", "max_replacements must be a whole number from 0 to 100.", 400)
    before = {name: _plain(getattr(signer, name)) for name in limits}
    for name, value in limits.items():
        setattr(signer, name, value)
    with transaction.atomic():
        signer.save(update_fields=list(limits))
        audit.record(actor.team, actor.user, "signer.limits_changed", signer.name, before=before,
                     after={name: _plain(value) for name, value in limits.items()})
    return signer


def _plain(value) -> str | int | None:
    """A limit as the audit log keeps it (wei amounts as text: JSON numbers lose digits)."""
    return None if value is None else int(value) if isinstance(value, int) and value < 2**53 else str(int(value))


def do_delete_signer(actor: Membership, signer: SignerKey) -> None:
    _check_admin(actor, "signer keys")
    if signer.team_id != actor.team_id:
        raise TeamError("signer_not_found", "No such signer key.", 404)
    with transaction.atomic():
        signer.delete()
        audit.record(actor.team, actor.user, "signer.deleted", signer.name, address=signer.address)


# -- API tokens ----------------------------------------------------------------------------


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def do_create_token(membership: Membership, name: str, *, expires_in_days: int | None = None) -> tuple[ApiToken, str]:
    """A personal token for `membership`'s user in its team; the plaintext is returned once, never stored.

    With `expires_in_days` the token stops working after that many days.
    """
    name = (name or "").strip()
    if not name:
        raise TeamError("invalid", "A token needs a name.", 400)
    if expires_in_days is not None and not 1 <= expires_in_days <= 3650:
        raise TeamError("invalid", "A token expires in 1 to 3,650 days.", 400)
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days else None
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=membership.user, team=membership.team, name=name[:100],
            prefix=plaintext[: ApiToken.PREFIX_LENGTH], token_hash=hash_token(plaintext), expires_at=expires_at,
        )
        audit.record(membership.team, membership.user, "token.created", token.name, prefix=token.prefix)
    return token, plaintext


def do_revoke_token(user, token: ApiToken) -> None:
    if token.user_id != user.pk:
        raise TeamError("token_not_found", "No such token.", 404)
    with transaction.atomic():
        if ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(revoked_at=timezone.now()):
            audit.record(token.team, user, "token.revoked", token.name, prefix=token.prefix)


def membership_for_token(plaintext: str) -> tuple[ApiToken, Membership] | None:
    """The live token and its user's current membership, or None (unknown, revoked, or no longer a member)."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    token = ApiToken.objects.select_related("user", "team").filter(
        token_hash=hash_token(plaintext), revoked_at=None
    ).first()
    if token is None or not token.user.is_active:
        return None
    if token.expires_at is not None and token.expires_at <= timezone.now():
        return None
    membership = Membership.objects.select_related("team", "user").filter(user=token.user, team=token.team).first()
    if membership is None:
        return None
    now = timezone.now()
    # Written at most once a minute per token, to keep hot tokens off the write path.
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token, membership


# -- sharing ------------------------------------------------------------------------------


def _check_editor(actor: Membership, flow: Flow) -> None:
    if flow.team_id != actor.team_id:
        raise TeamError("flow_not_found", "No such flow.", 404)
    if not has_role(actor, Role.EDITOR):
        raise _forbid("Only editors, admins and owners can share flows.")


def do_share_flow(actor: Membership, flow: Flow, team_code: str) -> FlowShare:
    """Share `flow` read-only with the team whose code is `team_code`."""
    _check_editor(actor, flow)
    team = Team.objects.filter(code=team_code).first()
    if team is None:
        raise TeamError("team_not_found", "No team has that code.", 404)
    if team.pk == flow.team_id:
        raise TeamError("invalid", "The flow already belongs to that team.", 400)
    with transaction.atomic():
        share, created = FlowShare.objects.get_or_create(flow=flow, team=team, defaults={"created_by": actor.user})
        if created:
            audit.record(actor.team, actor.user, "flow.shared", flow.name, flow=flow.code, shared_with=team.name)
    return share


def do_unshare_flow(actor: Membership, share: FlowShare) -> None:
    _check_editor(actor, share.flow)
    with transaction.atomic():
        share.delete()
        audit.record(actor.team, actor.user, "flow.unshared", share.flow.name, flow=share.flow.code)


def do_create_public_link(actor: Membership, flow: Flow) -> PublicLink:
    _check_editor(actor, flow)
    with transaction.atomic():
        link = PublicLink.objects.create(flow=flow, created_by=actor.user)
        audit.record(actor.team, actor.user, "link.created", flow.name, flow=flow.code)
    return link


def do_revoke_public_link(actor: Membership, link: PublicLink) -> None:
    _check_editor(actor, link.flow)
    with transaction.atomic():
        if PublicLink.objects.filter(pk=link.pk, revoked_at=None).update(revoked_at=timezone.now()):
            audit.record(actor.team, actor.user, "link.revoked", link.flow.name, flow=link.flow.code)


def do_duplicate_flow(user, flow: Flow, target: Membership) -> Flow:
    """Copy the flow's current graph into a new draft in `target`'s team.

    The caller has checked `user` may read `flow`; `target` must be the user's
    membership with at least the editor role.
    """
    from flows.actions import current_graph, do_create_flow

    if target.user_id != user.pk or not has_role(target, Role.EDITOR):
        raise _forbid("You need to be an editor in the team you copy the flow into.")
    _, graph = current_graph(flow)
    if not Membership.objects.filter(user=user, team_id=flow.team_id).exists():
        # Someone outside the flow's team sees only its redacted graph; a copy must not reveal more.
        from flows.teams.sharing import redacted_graph

        graph = redacted_graph(graph)
    with transaction.atomic():
        copy = do_create_flow(target.team, user, f"{flow.name} (copy)"[:120], flow.description, graph=graph)
        audit.record(target.team, user, "flow.duplicated", copy.name, source=flow.code, flow=copy.code)
    return copy


def role_choices_for(actor: Membership) -> list[tuple[str, str]]:
    """The roles `actor` may hand out."""
    return [(value, label) for value, label in Role.choices if actor.role == Role.OWNER or (
        ROLE_RANK[Role(value)] < ROLE_RANK[Role.OWNER] and has_role(actor, Role.ADMIN)
    )]


