from __future__ import annotations

import copy
import json
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from flows import audit
from flows.actions import current_graph, do_create_flow
from flows.models import ApiToken, AuditEvent, Flow, Invitation, Membership, Team
from flows.permissions import SESSION_TEAM_KEY
from flows.teams import (
    TeamError,
    do_accept_invitation,
    do_change_role,
    do_create_token,
    do_invite,
    do_leave_team,
    do_remove_member,
    hash_token,
    invitation_token,
    membership_for_token,
)
from tests.team_fixtures import ROLES, logged_in

Role = Membership.Role


def membership(user, team):
    return Membership.objects.select_related("team", "user").get(user=user, team=team)


# -- sign up, profile, password reset ------------------------------------------------------


def test_sign_up_creates_a_personal_team_owned_by_the_new_user(client, db):
    response = client.post(
        reverse("signup"), {"username": "dora", "email": "Dora@Example.com", "password": "a-long-passphrase-9"}
    )
    assert response.status_code == 302
    m = Membership.objects.get(user__username="dora")
    assert m.role == Role.OWNER and m.team.name == "dora's team"
    assert m.user.email == "dora@example.com"
    assert client.get(reverse("home")).status_code == 200


def test_sign_up_refuses_a_weak_password_and_a_taken_username(client, alice):
    response = client.post(reverse("signup"), {"username": "alice", "email": "x@example.com", "password": "123"})
    assert response.status_code == 400
    assert b"That username is taken" in response.content
    assert b"too short" in response.content
    assert not Membership.objects.filter(user__email="x@example.com").exists()


def test_password_reset_emails_a_link_that_sets_a_new_password(client, alice):
    response = client.post(reverse("password_reset"), {"email": "alice@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = next(line for line in mail.outbox[0].body.splitlines() if "/password-reset/" in line)
    path = link.split("testserver", 1)[1]
    response = client.get(path, follow=True)
    assert response.status_code == 200
    form_url = response.redirect_chain[-1][0]
    response = client.post(form_url, {"new_password1": "brand-new-pass-77", "new_password2": "brand-new-pass-77"})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("brand-new-pass-77")


def test_profile_saves_name_and_email(alice):
    client = logged_in(alice)
    response = client.post(reverse("profile"), {"first_name": "Alice", "last_name": "A", "email": "a2@example.com",
                                                "current_password": "alice-password-1"})
    assert response.status_code == 302
    alice.refresh_from_db()
    assert (alice.first_name, alice.email) == ("Alice", "a2@example.com")


# -- API tokens ------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_its_hash_and_shown_once(alice, team):
    client = logged_in(alice)
    response = client.post(reverse("tokens"), {"name": "ci"})
    assert response.status_code == 200
    token = ApiToken.objects.get(user=alice)
    plaintext = response.context["created"]["plaintext"]
    assert plaintext.startswith("kwl_") and plaintext.startswith(token.prefix)
    assert token.token_hash == hash_token(plaintext)
    assert not ApiToken.objects.filter(token_hash__contains=plaintext[12:]).exists()
    assert plaintext.encode() not in client.get(reverse("tokens")).content
    assert AuditEvent.objects.filter(team=team, action="token.created").count() == 1


def test_a_revoked_token_stops_working(alice, team):
    token, plaintext = do_create_token(membership(alice, team), "ci")
    assert membership_for_token(plaintext) is not None
    logged_in(alice).post(reverse("revoke_token", args=[token.pk]))
    assert membership_for_token(plaintext) is None


def test_someone_elses_token_cannot_be_revoked(alice, charlie, team):
    token, plaintext = do_create_token(membership(alice, team), "ci")
    assert logged_in(charlie).post(reverse("revoke_token", args=[token.pk])).status_code == 404
    assert membership_for_token(plaintext) is not None


def test_a_token_stops_working_when_its_user_leaves_the_team(alice, bob, team):
    _, plaintext = do_create_token(membership(bob, team), "ci")
    do_remove_member(membership(alice, team), membership(bob, team))
    assert membership_for_token(plaintext) is None


# -- invitations -------------------------------------------------------------------------------


def test_an_invitation_is_emailed_and_joins_the_team_once(alice, charlie, team, client):
    response = logged_in(alice).post(reverse("invite"), {"email": "charlie@example.com", "role": "EDITOR"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    path = mail.outbox[0].body.split("testserver", 1)[1].split()[0]
    charlie_client = logged_in(charlie)
    assert b"Join Acme DAO" in charlie_client.get(path).content
    assert charlie_client.post(path).status_code == 302
    assert membership(charlie, team).role == Role.EDITOR
    assert charlie_client.session[SESSION_TEAM_KEY] == team.code
    # Single use: a second person with the same link gets nothing.
    response = logged_in(make_user("eve")).post(path)
    assert response.status_code == 410
    assert not Membership.objects.filter(team=team, user__username="eve").exists()


def test_an_invitation_works_only_for_the_account_of_its_address_and_only_once(alice, charlie, team):
    _, token = do_invite(membership(alice, team), "charlie@example.com", Role.VIEWER)
    with pytest.raises(TeamError) as info:
        do_accept_invitation(token, make_user("mallory"))
    assert (info.value.code, info.value.status) == ("wrong_account", 403)
    do_accept_invitation(token, charlie)
    Membership.objects.filter(team=team, user=charlie).delete()
    with pytest.raises(TeamError) as info:
        do_accept_invitation(token, charlie)
    assert info.value.code == "invitation_used"


def test_changing_the_email_needs_the_current_password(charlie):
    client = logged_in(charlie)
    response = client.post("/account/", {"email": "new@example.com", "first_name": "", "last_name": ""})
    charlie.refresh_from_db()
    assert charlie.email == "charlie@example.com" and "current password" in response.content.decode()
    client.post("/account/", {"email": "new@example.com", "current_password": "charlie-password-1"})
    charlie.refresh_from_db()
    assert charlie.email == "new@example.com"


def make_user(name):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(name, f"{name}@example.com", f"{name}-pw-123")


def test_an_expired_invitation_is_refused(alice, charlie, team):
    invitation, token = do_invite(membership(alice, team), "charlie@example.com", Role.VIEWER)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(TeamError) as info:
        do_accept_invitation(token, charlie)
    assert info.value.code == "invitation_expired"
    assert not Membership.objects.filter(team=team, user=charlie).exists()


def test_a_tampered_invitation_link_is_refused(alice, charlie, team, client):
    _, token = do_invite(membership(alice, team), "charlie@example.com", Role.VIEWER)
    response = logged_in(charlie).post(reverse("accept_invitation", args=[token[:-2] + "xx"]))
    assert response.status_code == 404
    assert not Membership.objects.filter(team=team, user=charlie).exists()


def test_a_withdrawn_invitation_is_refused(alice, charlie, team):
    invitation, token = do_invite(membership(alice, team), "charlie@example.com", Role.VIEWER)
    logged_in(alice).post(reverse("revoke_invitation", args=[invitation.code]))
    with pytest.raises(TeamError) as info:
        do_accept_invitation(token, charlie)
    assert info.value.code == "invitation_revoked"


def test_an_admin_cannot_invite_an_owner_and_an_editor_cannot_invite_at_all(team, bob, make_member):
    admin = make_member("ADMIN")
    with pytest.raises(TeamError):
        do_invite(membership(admin, team), "x@example.com", Role.OWNER)
    with pytest.raises(TeamError):
        do_invite(membership(bob, team), "x@example.com", Role.VIEWER)
    assert logged_in(bob).post(reverse("invite"), {"email": "x@example.com", "role": "VIEWER"}).status_code == 404
    assert not Invitation.objects.exists()


def test_signing_up_from_an_invitation_link_comes_back_to_it(alice, team, client):
    _, token = do_invite(membership(alice, team), "new@example.com", Role.VIEWER)
    path = reverse("accept_invitation", args=[token])
    response = client.post(
        reverse("signup") + f"?next={path}", {"username": "newbie", "email": "new@example.com", "password": "long-pass-word-5"}
    )
    assert response["Location"] == path
    client.post(path)
    assert Membership.objects.filter(team=team, user__username="newbie", role=Role.VIEWER).exists()
    assert invitation_token  # the helper is public for the API's emails


# -- roles, removal, last owner ------------------------------------------------------------------


def test_an_owner_changes_roles_and_it_is_audited(alice, bob, team):
    response = logged_in(alice).post(reverse("change_role", args=["bob"]), {"role": "ADMIN"})
    assert response.status_code == 302
    assert membership(bob, team).role == Role.ADMIN
    event = audit.events_for(team, action="member.role_changed").get()
    assert (event.actor, event.target, event.data) == (alice, "bob", {"old": "EDITOR", "new": "ADMIN"})


def test_an_admin_cannot_promote_to_owner_or_touch_an_owner(alice, bob, team, make_member):
    admin = membership(make_member("ADMIN"), team)
    with pytest.raises(TeamError):
        do_change_role(admin, membership(bob, team), Role.OWNER)
    with pytest.raises(TeamError):
        do_change_role(admin, membership(alice, team), Role.VIEWER)
    with pytest.raises(TeamError):
        do_remove_member(admin, membership(alice, team))
    assert membership(alice, team).role == Role.OWNER


def test_an_admin_manages_editors_and_viewers(bob, team, make_member):
    admin = membership(make_member("ADMIN"), team)
    do_change_role(admin, membership(bob, team), Role.VIEWER)
    assert membership(bob, team).role == Role.VIEWER
    do_remove_member(admin, membership(bob, team))
    assert not Membership.objects.filter(team=team, user=bob).exists()


def test_an_editor_cannot_change_roles(alice, bob, team):
    response = logged_in(bob).post(reverse("change_role", args=["alice"]), {"role": "VIEWER"})
    assert response.status_code == 404
    assert membership(alice, team).role == Role.OWNER


def test_the_last_owner_cannot_be_demoted_removed_or_leave(alice, bob, team):
    owner = membership(alice, team)
    with pytest.raises(TeamError) as info:
        do_change_role(owner, owner, Role.ADMIN)
    assert info.value.code == "last_owner"
    with pytest.raises(TeamError):
        do_leave_team(owner)
    response = logged_in(alice).post(reverse("leave_team"), follow=True)
    assert b"last owner" in response.content
    assert membership(alice, team).role == Role.OWNER


def test_with_two_owners_one_may_step_down(alice, bob, team):
    do_change_role(membership(alice, team), membership(bob, team), Role.OWNER)
    do_change_role(membership(alice, team), membership(alice, team), Role.ADMIN)
    assert membership(alice, team).role == Role.ADMIN
    with pytest.raises(TeamError):
        do_change_role(membership(bob, team), membership(bob, team), Role.EDITOR)


def test_a_member_leaves_a_team(bob, alice, team):
    logged_in(bob).post(reverse("leave_team"))
    assert not Membership.objects.filter(team=team, user=bob).exists()
    assert audit.events_for(team, action="member.left").get().actor == bob


# -- switching teams ---------------------------------------------------------------------------------


def test_a_user_switches_between_their_teams_and_queries_follow(alice, team):
    other = Team.objects.create(name="Second DAO")
    Membership.objects.create(team=other, user=alice, role=Role.VIEWER)
    do_create_flow(team, alice, "In Acme")
    do_create_flow(other, alice, "In Second")
    client = logged_in(alice)
    assert b"In Acme" in client.get(reverse("home")).content
    client.post(reverse("switch_team"), {"team": other.code})
    page = client.get(reverse("home")).content
    assert b"In Second" in page and b"In Acme" not in page


def test_a_user_cannot_switch_into_a_team_they_are_not_in(alice, charlie):
    other_team = Membership.objects.get(user=charlie).team
    assert logged_in(alice).post(reverse("switch_team"), {"team": other_team.code}).status_code == 404


def test_creating_a_team_makes_the_creator_its_owner(alice):
    client = logged_in(alice)
    client.post(reverse("create_team"), {"name": "Side project"})
    m = Membership.objects.get(user=alice, team__name="Side project")
    assert m.role == Role.OWNER and client.session[SESSION_TEAM_KEY] == m.team.code


# -- audit log -------------------------------------------------------------------------------------


def test_the_audit_log_is_append_only(alice, team):
    event = audit.record(team, alice, "team.created", "x")
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(team=team).update(action="flow.published")
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(team=team).delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "team.created"


def test_the_audit_page_filters_and_is_for_admins_only(alice, bob, team):
    audit.record(team, alice, "secret.created", "SLACK_URL")
    audit.record(team, bob, "flow.published", "Whale alert")
    client = logged_in(alice)
    page = client.get(reverse("audit_log"), {"action": "secret.created"})
    assert page.status_code == 200
    events = list(page.context["page"])
    assert [e.target for e in events] == ["SLACK_URL"]
    assert [e.target for e in client.get(reverse("audit_log"), {"actor": "bob"}).context["page"]] == ["Whale alert"]
    assert logged_in(bob).get(reverse("audit_log")).status_code == 404


# -- sharing -----------------------------------------------------------------------------------------


SHARED_GRAPH = {
    "nodes": [
        {"id": "t", "type": "manual", "config": {}, "position": {"x": 0, "y": 0}},
        {"id": "s", "type": "notify.slack", "position": {"x": 0, "y": 100},
         "config": {"webhook_url": "https://hooks.slack.com/services/T000/B000/SECRETPATH", "text": "hi"}},
        {"id": "w", "type": "contract.write", "position": {"x": 0, "y": 200},
         "config": {"chain": 31337, "address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                    "function": "ping(string)", "args": ["x"], "signer": "TREASURY_SIGNER"}},
    ],
    "edges": [{"source": "t", "source_port": "out", "target": "s"}, {"source": "s", "source_port": "out", "target": "w"}],
}


def test_a_flow_shared_with_another_team_is_readable_there_without_credentials(alice, charlie, team):
    flow = do_create_flow(team, alice, "Shared alert", graph=SHARED_GRAPH)
    other = Membership.objects.get(user=charlie).team
    logged_in(alice).post(reverse("flow_sharing", args=[flow.code]), {"team_code": other.code})
    page = logged_in(charlie).get(reverse("shared_flow", args=[flow.code]))
    assert page.status_code == 200
    assert b"Shared alert" in page.content
    assert b"SECRETPATH" not in page.content and b"TREASURY_SIGNER" not in page.content
    # Read-only: sharing gives no way into the editor's write paths.
    assert logged_in(charlie).get(reverse("flow_sharing", args=[flow.code])).status_code == 404


def test_duplicating_a_shared_flow_into_another_team_copies_no_credentials(alice, charlie, team):
    graph = copy.deepcopy(SHARED_GRAPH)
    graph["nodes"].append(
        {"id": "h", "type": "http.request", "position": {"x": 0, "y": 300},
         "config": {"url": "https://api.example.com/hook?apikey=QUERYKEY", "headers": {"Authorization": "Bearer HDRTOKEN"},
                    "body": {"token": "BODYTOKEN"}}}
    )
    flow = do_create_flow(team, alice, "Shared alert", graph=graph)
    other = Membership.objects.get(user=charlie).team
    logged_in(alice).post(reverse("flow_sharing", args=[flow.code]), {"team_code": other.code})
    response = logged_in(charlie).post(reverse("duplicate_flow", args=[flow.code]), {"team": other.code})
    assert response.status_code == 302
    copied = Flow.objects.get(team=other)
    stored = json.dumps(current_graph(copied)[1])
    for leaked in ("SECRETPATH", "TREASURY_SIGNER", "QUERYKEY", "HDRTOKEN", "BODYTOKEN"):
        assert leaked not in stored
    hook = next(node for node in current_graph(copied)[1]["nodes"] if node["id"] == "h")
    assert hook["config"]["url"] == "https://api.example.com/…"


def test_an_unshared_flow_is_404_for_an_outsider_guessing_its_code(alice, charlie, team):
    flow = do_create_flow(team, alice, "Private", graph=SHARED_GRAPH)
    assert logged_in(charlie).get(reverse("shared_flow", args=[flow.code])).status_code == 404
    assert logged_in(charlie).post(reverse("duplicate_flow", args=[flow.code]), {"team": "x"}).status_code == 404


def test_a_public_link_shows_the_flow_until_revoked(alice, team, client):
    flow = do_create_flow(team, alice, "Public flow", graph=SHARED_GRAPH)
    logged_in(alice).post(reverse("create_public_link", args=[flow.code]))
    link = flow.public_links.get()
    page = client.get(reverse("public_flow", args=[link.token]))
    assert page.status_code == 200 and b"Public flow" in page.content
    assert b"SECRETPATH" not in page.content and b"TREASURY_SIGNER" not in page.content
    logged_in(alice).post(reverse("revoke_public_link", args=[flow.code, link.token]))
    assert client.get(reverse("public_flow", args=[link.token])).status_code == 404
    assert [e.action for e in audit.events_for(team, action="link.")] == ["link.revoked", "link.created"]


def test_a_viewer_cannot_share_or_make_public_links(alice, team, make_member):
    flow = do_create_flow(team, alice, "Flow", graph=SHARED_GRAPH)
    viewer = logged_in(make_member("VIEWER"))
    assert viewer.post(reverse("create_public_link", args=[flow.code])).status_code == 404
    assert not flow.public_links.exists()


def test_duplicating_a_flow_into_another_of_my_teams_makes_a_draft_there(alice, team):
    flow = do_create_flow(team, alice, "Original", graph=SHARED_GRAPH)
    other = Team.objects.create(name="Lab")
    Membership.objects.create(team=other, user=alice, role=Role.EDITOR)
    response = logged_in(alice).post(reverse("duplicate_flow", args=[flow.code]), {"team": other.code})
    assert response.status_code == 302
    copy = Flow.objects.get(team=other)
    assert copy.name == "Original (copy)"
    assert copy.versions.get().graph == SHARED_GRAPH


def test_duplicating_into_a_team_where_i_am_a_viewer_is_refused(alice, team):
    flow = do_create_flow(team, alice, "Original", graph=SHARED_GRAPH)
    other = Team.objects.create(name="Lab")
    Membership.objects.create(team=other, user=alice, role=Role.VIEWER)
    logged_in(alice).post(reverse("duplicate_flow", args=[flow.code]), {"team": other.code})
    assert not Flow.objects.filter(team=other).exists()


# -- the permission matrix for team pages -------------------------------------------------------------

# (url name, args, method, data, lowest role allowed)
PAGES = [
    ("team", [], "get", None, "VIEWER"),
    ("secrets", [], "get", None, "EDITOR"),
    ("secrets", [], "post", {"name": "X", "value": "v"}, "ADMIN"),
    ("signers", [], "get", None, "EDITOR"),
    ("signers", [], "post", {"name": "K", "private_key": ""}, "ADMIN"),
    ("audit_log", [], "get", None, "ADMIN"),
    ("invite", [], "post", {"email": "z@example.com", "role": "VIEWER"}, "ADMIN"),
    ("gallery", [], "get", None, "VIEWER"),
    ("use_template", ["block-heartbeat"], "get", None, "VIEWER"),
]
RANK = {"VIEWER": 0, "EDITOR": 1, "ADMIN": 2, "OWNER": 3}


@pytest.mark.parametrize("role", [*ROLES, "OUTSIDER"])
def test_team_pages_follow_the_role_matrix(role, users_by_role, team):
    client = logged_in(users_by_role[role])
    if role == "OUTSIDER":
        # charlie is owner of his own team: he sees his team's pages, never alice's.
        page = client.get(reverse("team"))
        assert b"Acme DAO" not in page.content
        return
    for name, args, method, data, lowest in PAGES:
        response = getattr(client, method)(reverse(name, args=args), data or {})
        allowed = RANK[role] >= RANK[lowest]
        assert (response.status_code in (200, 302)) == allowed, (name, method, role, response.status_code)
        if not allowed:
            assert response.status_code == 404


def test_the_nav_links_to_templates_and_team(alice):
    page = logged_in(alice).get(reverse("home")).content.decode()
    assert f'href="{reverse("gallery")}"' in page and f'href="{reverse("team")}"' in page


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_switching_team_never_redirects_off_site(alice, team, target):
    response = logged_in(alice).post(reverse("switch_team"), {"team": team.code, "next": target})
    assert response.status_code == 302
    assert response["Location"] == reverse("home")


def test_switching_team_returns_to_a_page_on_this_site(alice, team):
    response = logged_in(alice).post(reverse("switch_team"), {"team": team.code, "next": "/runs/?status=FAILED"})
    assert response["Location"] == "/runs/?status=FAILED"
