"""Team pages: members, invitations, team switching, secrets, signer keys, the audit log and sharing.

Every view starts with a permission helper from flows.permissions; writes go
through flows.teams, whose TeamError becomes a message on the page.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.mail import send_mail
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from executor.interface import limit_summary, spending_today
from flows import audit
from flows.actions import current_graph
from flows.editor.graph_svg import graph_svg
from flows.models import Flow, FlowShare, Invitation, Membership, PublicLink, Secret, SignerKey
from flows.permissions import SESSION_TEAM_KEY, get_flow_for_user, has_role, require_membership, safe_next
from flows.teams import (
    TeamError,
    do_accept_invitation,
    do_change_role,
    do_create_public_link,
    do_create_signer,
    do_create_team,
    do_delete_secret,
    do_delete_signer,
    do_duplicate_flow,
    do_invite,
    do_leave_team,
    do_remove_member,
    do_revoke_invitation,
    do_revoke_public_link,
    do_set_secret,
    do_set_signer_limits,
    do_share_flow,
    do_unshare_flow,
    invitation_from_token,
    role_choices_for,
)
from flows.teams.forms import InviteForm, RoleForm, SecretForm, ShareForm, SignerForm, SignerLimitsForm, TeamForm
from flows.teams.sharing import redacted_graph

Role = Membership.Role


def _fail(request: HttpRequest, exc: TeamError) -> None:
    if exc.status == 404:
        raise Http404(exc.message)
    messages.error(request, exc.message)


# -- the team and its members ------------------------------------------------------------------


@login_required
def team(request):
    membership = require_membership(request)
    members = membership.team.memberships.select_related("user").order_by("user__username")
    can_manage = has_role(membership, Role.ADMIN)
    context = {
        "membership": membership,
        "members": members,
        "can_manage": can_manage,
        "role_choices": role_choices_for(membership),
        "invitations": membership.team.invitations.filter(accepted_at=None, revoked_at=None) if can_manage else [],
        "invite_form": InviteForm(role_choices=role_choices_for(membership)),
        "team_form": TeamForm(),
        "my_memberships": Membership.objects.filter(user=request.user).select_related("team").order_by("team__name"),
        "shared_flows": Flow.objects.filter(shares__team=membership.team).select_related("team").order_by("name"),
    }
    return render(request, "teams/team.html", context)


@login_required
@require_POST
def switch_team(request):
    chosen = Membership.objects.filter(user=request.user, team__code=request.POST.get("team", "")).first()
    if chosen is None:
        raise Http404("No such team")
    request.session[SESSION_TEAM_KEY] = chosen.team.code
    messages.success(request, f"Now working in {chosen.team.name}.")
    return redirect(safe_next(request, request.POST.get("next"), reverse("home")))


@login_required
@require_POST
def create_team(request):
    form = TeamForm(request.POST)
    if not form.is_valid():
        messages.error(request, "A team needs a name (up to 100 characters).")
        return redirect("team")
    new = do_create_team(request.user, form.cleaned_data["name"])
    request.session[SESSION_TEAM_KEY] = new.code
    messages.success(request, f"Team {new.name} created.")
    return redirect("team")


@login_required
@require_POST
def invite(request):
    membership = require_membership(request, Role.ADMIN)
    form = InviteForm(request.POST, role_choices=role_choices_for(membership))
    if not form.is_valid():
        messages.error(request, "Give a valid email address and a role you can hand out.")
        return redirect("team")
    try:
        invitation, token = do_invite(membership, form.cleaned_data["email"], form.cleaned_data["role"])
    except TeamError as exc:
        _fail(request, exc)
        return redirect("team")
    link = request.build_absolute_uri(reverse("accept_invitation", args=[token]))
    send_mail(
        f"You are invited to {membership.team.name} on Kwala",
        f"{request.user.get_username()} invited you to join {membership.team.name} on Kwala "
        f"as {invitation.get_role_display().lower()}.\n\nAccept the invitation (valid for 7 days, once):\n{link}\n",
        settings.DEFAULT_FROM_EMAIL,
        [invitation.email],
    )
    messages.success(request, f"Invitation sent to {invitation.email}.")
    return redirect("team")


@login_required
@require_POST
def revoke_invitation(request, code: str):
    membership = require_membership(request, Role.ADMIN)
    invitation = get_object_or_404(Invitation, code=code, team=membership.team)
    try:
        do_revoke_invitation(membership, invitation)
    except TeamError as exc:
        _fail(request, exc)
    return redirect("team")


def accept_invitation(request, token: str):
    try:
        invitation = invitation_from_token(token)
    except TeamError as exc:
        return render(request, "teams/invitation.html", {"error": exc.message}, status=exc.status)
    if request.method == "POST" and request.user.is_authenticated:
        try:
            joined = do_accept_invitation(token, request.user)
        except TeamError as exc:
            return render(request, "teams/invitation.html", {"error": exc.message}, status=exc.status)
        request.session[SESSION_TEAM_KEY] = joined.team.code
        messages.success(request, f"Welcome to {joined.team.name}.")
        return redirect("home")
    return render(request, "teams/invitation.html", {"invitation": invitation})


def _member(membership: Membership, username: str) -> Membership:
    return get_object_or_404(
        Membership.objects.select_related("user", "team"), team=membership.team, user__username=username
    )


@login_required
@require_POST
def change_role(request, username: str):
    membership = require_membership(request, Role.ADMIN)
    target = _member(membership, username)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role.")
        return redirect("team")
    try:
        do_change_role(membership, target, form.cleaned_data["role"])
    except TeamError as exc:
        _fail(request, exc)
    else:
        messages.success(request, f"{username} is now {target.get_role_display().lower()}.")
    return redirect("team")


@login_required
@require_POST
def remove_member(request, username: str):
    membership = require_membership(request, Role.ADMIN)
    target = _member(membership, username)
    try:
        do_remove_member(membership, target)
    except TeamError as exc:
        _fail(request, exc)
    else:
        messages.success(request, f"{username} was removed from the team.")
    return redirect("team")


@login_required
@require_POST
def leave_team(request):
    membership = require_membership(request)
    try:
        do_leave_team(membership)
    except TeamError as exc:
        _fail(request, exc)
        return redirect("team")
    request.session.pop(SESSION_TEAM_KEY, None)
    messages.success(request, f"You left {membership.team.name}.")
    return redirect("home") if Membership.objects.filter(user=request.user).exists() else redirect("profile")


# -- secrets and signer keys -------------------------------------------------------------------


@login_required
def secrets(request):
    """Editors see the names (to use them in flows); admins add, replace and delete. Values never come back."""
    membership = require_membership(request, Role.EDITOR)
    can_manage = has_role(membership, Role.ADMIN)
    form = SecretForm(request.POST or None)
    if request.method == "POST":
        if not can_manage:
            raise Http404("No team")
        if form.is_valid():
            try:
                secret, created = do_set_secret(membership, form.cleaned_data["name"], form.cleaned_data["value"])
            except TeamError as exc:
                _fail(request, exc)
            else:
                messages.success(request, f"Secret {secret.name} {'created' if created else 'updated'}.")
                return redirect("secrets")
    listing = Secret.objects.filter(team=membership.team).only("name", "updated_at", "created_at")
    return render(
        request, "teams/secrets.html",
        {"membership": membership, "secrets": listing, "form": form, "can_manage": can_manage},
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def delete_secret(request, name: str):
    membership = require_membership(request, Role.ADMIN)
    secret = get_object_or_404(Secret, team=membership.team, name=name)
    do_delete_secret(membership, secret)
    messages.success(request, f"Secret {name} deleted.")
    return redirect("secrets")


@login_required
def signers(request):
    membership = require_membership(request, Role.EDITOR)
    can_manage = has_role(membership, Role.ADMIN)
    form = SignerForm(request.POST or None)
    if request.method == "POST":
        if not can_manage:
            raise Http404("No team")
        if form.is_valid():
            try:
                signer = do_create_signer(
                    membership, form.cleaned_data["name"], form.cleaned_data["private_key"] or None
                )
            except TeamError as exc:
                _fail(request, exc)
            else:
                messages.success(request, f"Signer key {signer.name} ready: {signer.address}.")
                return redirect("signers")
    listing = list(SignerKey.objects.filter(team=membership.team))
    for signer in listing:
        signer.spend = spending_today(signer)
        signer.limit_lines = limit_summary(signer)
        signer.limits_form = SignerLimitsForm.for_signer(signer) if can_manage else None
    return render(
        request, "teams/signers.html",
        {"membership": membership, "signers": listing, "form": form, "can_manage": can_manage},
        status=400 if form.errors else 200,
    )


@login_required
@require_POST
def signer_limits(request, code: str):
    membership = require_membership(request, Role.ADMIN)
    signer = get_object_or_404(SignerKey, team=membership.team, code=code)
    form = SignerLimitsForm.for_signer(signer, request.POST)
    if not form.is_valid():
        for field, errors in form.errors.items():
            messages.error(request, f"{form.fields[field].label if field in form.fields else field}: {errors[0]}")
        return redirect("signers")
    try:
        do_set_signer_limits(membership, signer, **form.limits())
    except TeamError as exc:
        _fail(request, exc)
    else:
        messages.success(request, f"Spending limits of {signer.name} saved.")
    return redirect("signers")


@login_required
@require_POST
def delete_signer(request, code: str):
    membership = require_membership(request, Role.ADMIN)
    signer = get_object_or_404(SignerKey, team=membership.team, code=code)
    do_delete_signer(membership, signer)
    messages.success(request, f"Signer key {signer.name} deleted.")
    return redirect("signers")


# -- audit log -----------------------------------------------------------------------------------


@login_required
def audit_log(request):
    membership = require_membership(request, Role.ADMIN)
    filters = {key: request.GET.get(key, "").strip()[:100] for key in ("action", "actor", "target")}
    events = audit.events_for(membership.team, **filters)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(
        request, "teams/audit.html",
        {"membership": membership, "page": page, "filters": filters, "actions": audit.ACTIONS},
    )


# -- sharing ---------------------------------------------------------------------------------------


@login_required
def flow_sharing(request, code: str):
    flow, membership = get_flow_for_user(request.user, code, Role.EDITOR)
    form = ShareForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            share = do_share_flow(membership, flow, form.cleaned_data["team_code"].strip())
        except TeamError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Shared read-only with {share.team.name}.")
            return redirect("flow_sharing", code=flow.code)
    return render(
        request, "teams/sharing.html",
        {
            "flow": flow,
            "membership": membership,
            "form": form,
            "shares": flow.shares.select_related("team").order_by("team__name"),
            "links": flow.public_links.filter(revoked_at=None).order_by("-created_at"),
        },
    )


@login_required
@require_POST
def unshare_flow(request, code: str, team_code: str):
    flow, membership = get_flow_for_user(request.user, code, Role.EDITOR)
    share = get_object_or_404(FlowShare.objects.select_related("flow"), flow=flow, team__code=team_code)
    do_unshare_flow(membership, share)
    return redirect("flow_sharing", code=flow.code)


@login_required
@require_POST
def create_public_link(request, code: str):
    flow, membership = get_flow_for_user(request.user, code, Role.EDITOR)
    do_create_public_link(membership, flow)
    return redirect("flow_sharing", code=flow.code)


@login_required
@require_POST
def revoke_public_link(request, code: str, token: str):
    flow, membership = get_flow_for_user(request.user, code, Role.EDITOR)
    link = get_object_or_404(PublicLink.objects.select_related("flow"), flow=flow, token=token)
    do_revoke_public_link(membership, link)
    return redirect("flow_sharing", code=flow.code)


def readable_flow(request, code: str) -> Flow:
    """A flow the user may read: one of their teams' flows, or one shared with their current team."""
    membership = require_membership(request)
    flow = Flow.objects.filter(code=code, team__memberships__user=request.user).select_related("team").first()
    if flow is None:
        flow = Flow.objects.filter(code=code, shares__team=membership.team).select_related("team").first()
    if flow is None:
        raise Http404("No such flow")
    return flow


def _read_only_page(request, flow: Flow, *, public: bool, status: int = 200):
    _, graph = current_graph(flow)
    graph = redacted_graph(graph)
    context = {"flow": flow, "graph": graph, "svg": graph_svg(graph), "public": public}
    if not public:
        context["targets"] = Membership.objects.filter(
            user=request.user, role__in=[Role.OWNER, Role.ADMIN, Role.EDITOR]
        ).select_related("team")
    return render(request, "teams/shared_flow.html", context, status=status)


@login_required
def shared_flow(request, code: str):
    return _read_only_page(request, readable_flow(request, code), public=False)


def public_flow(request, token: str):
    link = PublicLink.objects.select_related("flow__team").filter(token=token, revoked_at=None).first()
    if link is None:
        raise Http404("This link was revoked or never existed")
    response = _read_only_page(request, link.flow, public=True)
    response["X-Robots-Tag"] = "noindex"
    return response


@login_required
@require_POST
def duplicate_flow(request, code: str):
    flow = readable_flow(request, code)
    target = Membership.objects.filter(user=request.user, team__code=request.POST.get("team", "")).select_related(
        "team", "user"
    ).first()
    if target is None:
        raise Http404("No such team")
    try:
        copy = do_duplicate_flow(request.user, flow, target)
    except TeamError as exc:
        messages.error(request, exc.message)
        return redirect("shared_flow", code=flow.code)
    request.session[SESSION_TEAM_KEY] = target.team.code
    messages.success(request, f"Copied into {target.team.name} as a draft.")
    return redirect(flow_page_url(copy))


def flow_page_url(flow: Flow) -> str:
    """The editor's page for a flow when it exists (URL name flow_detail), else the flow list."""
    from django.urls import NoReverseMatch

    try:
        return reverse("flow_detail", args=[flow.code])
    except NoReverseMatch:
        return reverse("home")
