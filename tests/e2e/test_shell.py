"""The app shell in a real browser: log in, see the nav, log out."""

from __future__ import annotations

import pytest

from tests.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_person_logs_in_sees_the_nav_and_logs_out(asgi_server, page, alice):
    login(page, asgi_server.url, "alice", "alice-password-1")

    nav = page.get_by_role("navigation", name="Main")
    for label in ["Flows", "Runs", "Templates", "Team"]:
        assert nav.get_by_role("link", name=label).is_visible()
    assert nav.get_by_role("link", name="Admin").count() == 0  # alice is not staff
    assert page.get_by_role("heading", name="Acme DAO: flows").is_visible()

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{asgi_server.url}/login/")
    page.goto(f"{asgi_server.url}/")
    assert page.url.startswith(f"{asgi_server.url}/login/")
    assert page.console_errors == []


def test_a_wrong_password_shows_a_clear_error(asgi_server, page, alice):
    page.goto(f"{asgi_server.url}/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    assert page.get_by_role("alert").inner_text().startswith("Please enter a correct username and password")


def test_staff_see_the_admin_link(asgi_server, page, alice):
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    login(page, asgi_server.url, "alice", "alice-password-1")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    page.wait_for_url(f"{asgi_server.url}/admin/")


def test_an_unknown_page_is_a_friendly_404(asgi_server, page):
    response = page.goto(f"{asgi_server.url}/no/such/page/")
    assert response.status == 404
    assert page.get_by_role("heading", name="Not found").is_visible()
