"""A new user's first minutes from the command line: team codes and an API token, without a browser."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from flows.models import ApiToken, Membership, Team


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_createtoken_prints_a_token_that_the_api_takes(alice, team):
    out, err = run("createtoken", "alice", "--name", "laptop")
    token = out.strip()
    assert f"in team {team.code}" in err and "shown only now" in err
    stored = ApiToken.objects.get(user=alice)
    assert stored.name == "laptop" and stored.team == team and token.startswith(stored.prefix)
    assert token not in err and stored.token_hash != token  # shown once, kept only as a hash
    response = Client().get("/api/v1/flows", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert Client().get("/api/v1/flows", HTTP_AUTHORIZATION="Bearer kw_wrong").status_code == 401


def test_createtoken_asks_which_team_when_there_are_several(alice, team):
    other = Team.objects.create(name="Second DAO")
    Membership.objects.create(team=other, user=alice, role=Membership.Role.VIEWER)
    with pytest.raises(CommandError, match=f"several teams; choose one with --team: .*{other.code}"):
        run("createtoken", "alice")
    out, _ = run("createtoken", "alice", "--team", other.code, "--expires-in-days", "30")
    assert ApiToken.objects.get(team=other).expires_at is not None and out.strip()
    with pytest.raises(CommandError, match="not a member of team 'nope'"):
        run("createtoken", "alice", "--team", "nope")
    with pytest.raises(CommandError, match="No active user 'mallory'"):
        run("createtoken", "mallory")
    with pytest.raises(CommandError, match="expires in 1 to 3,650 days"):
        run("createtoken", "alice", "--team", team.code, "--expires-in-days", "0")


def test_teams_lists_the_codes_and_roles(alice, team, make_member):
    make_member("viewer", "victor")
    out, _ = run("teams")
    assert f"{team.code}  Acme DAO  alice (owner), victor (viewer)" in out
    out, _ = run("teams", "victor")
    assert out.strip() == f"{team.code}  Acme DAO  (viewer)"
    with pytest.raises(CommandError, match="No user 'nobody'"):
        run("teams", "nobody")
