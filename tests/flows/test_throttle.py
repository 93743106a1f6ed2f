"""The account doors are throttled: guessing passwords stops at a 429 with Retry-After."""

from __future__ import annotations

import uuid

import pytest
import redis
from django.conf import settings
from django.test import Client

from kwala_site import ratelimit


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


def test_a_counter_counts_each_hit_and_its_key_ends_with_its_window(db):
    name = f"test:{uuid.uuid4()}"
    assert [ratelimit.hit(name, 60).count for _ in range(3)] == [1, 2, 3]
    other = f"test:{uuid.uuid4()}"
    assert [w.count for w in ratelimit.hit_each([name, other], 60)] == [4, 1]
    key, _ = ratelimit._key(name, 60)
    assert 0 < ratelimit.client().ttl(key) <= 61
    assert ratelimit.peek(name, 60).count == 4


def test_a_counter_goes_on_when_redis_has_forgotten_its_script(db):
    name = f"test:{uuid.uuid4()}"
    assert ratelimit.hit(name, 60).count == 1
    ratelimit.client().script_flush()  # as a restarted Redis has
    assert ratelimit.hit(name, 60).count == 2
