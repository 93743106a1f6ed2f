"""Fixtures for the team, API and gallery tests: one user per role, chains, API tokens.

Import the ones a module needs (`from tests.team_fixtures import ...`), or
register the module in pyproject's addopts with `-p tests.team_fixtures`.
"""

from __future__ import annotations

import pytest

# Imported by -p before Django is set up: model imports stay inside the functions.

ROLES = ["OWNER", "ADMIN", "EDITOR", "VIEWER"]


@pytest.fixture
def chains(db):
    from executor.models import Chain

    return [
        Chain.objects.get_or_create(chain_id=31337, defaults={"slug": "anvil-a", "name": "Anvil A"})[0],
        Chain.objects.get_or_create(chain_id=31338, defaults={"slug": "anvil-b", "name": "Anvil B"})[0],
    ]


@pytest.fixture
def make_member(db, team, django_user_model):
    """make_member(role) -> a new user with that role in alice's team."""

    from flows.models import Membership

    def make(role: str, username: str | None = None):
        username = username or f"{role.lower()}-user"
        user = django_user_model.objects.create_user(username, f"{username}@example.com", f"{username}-pw-1")
        Membership.objects.create(team=team, user=user, role=role)
        return user

    return make


@pytest.fixture
def users_by_role(alice, charlie, make_member):
    """Every role in alice's team plus the outsider charlie."""
    return {
        "OWNER": alice,
        "ADMIN": make_member("ADMIN"),
        "EDITOR": make_member("EDITOR"),
        "VIEWER": make_member("VIEWER"),
        "OUTSIDER": charlie,
    }


def token_for(user) -> str:
    from flows.models import Membership
    from flows.teams import do_create_token

    membership = Membership.objects.filter(user=user).select_related("team", "user").order_by("created_at").first()
    return do_create_token(membership, "tests")[1]


def api_client(user):
    from django.test import Client

    return Client(HTTP_AUTHORIZATION=f"Bearer {token_for(user)}")


def logged_in(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client
