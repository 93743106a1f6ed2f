"""The account doors are throttled: guessing passwords stops at a 429 with Retry-After."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from django.test import Client


@pytest.fixture(autouse=True)
def fresh_counters():
    """Each test starts with no hits counted (the counters live in the shared Redis)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("kwala:ratelimit:*"):
        client.delete(key)
    yield


def test_twenty_failed_logins_for_a_name_answer_429_even_with_the_right_password(alice):
    client = Client()
    for _ in range(20):
        response = client.post("/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200
    response = client.post("/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert "Too many attempts" in response.content.decode()
    # The right password does not get through either until the window ends, and the answer does
    # not tell a right password from a wrong one (the password is not even checked).
    right = client.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert right.status_code == 429
    for page in (right.content.decode(), response.content.decode()):
        assert "Too many attempts" in page and "correct username and password" not in page
    # Another name from elsewhere is not affected.
    other = Client(REMOTE_ADDR="10.9.8.7")
    assert other.post("/login/", {"username": "bob", "password": "wrong"}).status_code == 200


def test_a_good_login_still_works_below_the_limit(alice):
    client = Client()
    for _ in range(3):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/login/", {"username": "alice", "password": "alice-password-1"})
    assert response.status_code == 302


def test_sign_ups_and_reset_requests_are_limited_per_address(db):
    client = Client()
    statuses = [client.post("/password-reset/", {"email": f"x{i}@example.com"}).status_code for i in range(12)]
    assert statuses[:10] == [302] * 10 and statuses[10:] == [429, 429]
    statuses = [client.post("/signup/", {"username": ""}).status_code for _ in range(12)]
    assert 429 in statuses and 500 not in statuses
