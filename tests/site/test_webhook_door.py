"""The webhook door: POST /hooks/... answered straight from ASGI, the same answers as the Django view."""

from __future__ import annotations

import hashlib
import hmac
import json

import httpx
import pytest

from executor.models import Run
from flows.actions import webhook_path
from tests.flows.test_webhooks import SECRET, hooked  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)


def signed(body: bytes) -> dict:
    return {"X-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/json"}


def test_the_door_starts_a_run_and_refuses_what_the_view_refuses(asgi_server, hooked):  # noqa: F811
    url = asgi_server.url + webhook_path(hooked, hooked.created_by)
    body = json.dumps({"message": "through the door"}).encode()
    with httpx.Client(timeout=30) as client:
        accepted = client.post(url + "?source=door", content=body, headers=signed(body))
        assert accepted.status_code == 202, accepted.text
        run = Run.objects.get(code=accepted.json()["run"])
        assert run.trigger["body"] == {"message": "through the door"} and run.trigger["query"] == {"source": "door"}
        assert run.status == Run.Status.RUNNING

        again = client.post(url, content=body, headers=signed(body))
        assert (again.status_code, again.json()["run"], again.json()["repeat"]) == (200, str(run.code), True)
        assert client.post(url, content=body, headers={**signed(body), "X-Signature-256": "sha256=00"}).status_code == 401
        wrong_token = url.rstrip("/").rsplit("/", 1)[0] + "/not-the-token/"
        assert client.post(wrong_token, content=body, headers=signed(body)).json()["error"]["code"] == "not_found"
        big = b"{" + b" " * (3 * 1024 * 1024) + b"}"
        assert client.post(url, content=big, headers=signed(big)).status_code == 413
        assert client.post(url, content=body, headers={**signed(body), "Host": "evil.example"}).status_code == 400
        assert client.get(url).status_code == 405  # not a POST: Django answers
    assert Run.objects.count() == 1


def test_no_log_line_shows_a_webhook_token(asgi_server, hooked):  # noqa: F811
    path = webhook_path(hooked, hooked.created_by)
    token = path.rstrip("/").rsplit("/", 1)[1]
    httpx.get(asgi_server.url + path, timeout=30)  # Django logs the path of a 405
    httpx.get(asgi_server.url + path, timeout=30)
    logged = asgi_server.output()
    assert f"/hooks/{hooked.code}/…" in logged
    assert token not in logged


def test_a_url_with_bytes_postgresql_cannot_hold_is_a_404_not_a_500(asgi_server, hooked):  # noqa: F811
    # A NUL in the flow code or token (%00 in the path) cannot be sent to PostgreSQL as text.
    path = webhook_path(hooked, hooked.created_by)
    code, token = path.strip("/").split("/")[1:3]
    with httpx.Client(timeout=30) as client:
        for bad in (f"/hooks/{code}%00/{token}/", f"/hooks/%00/{token}/", f"/hooks/{code}/{token}%00/"):
            answer = client.post(asgi_server.url + bad, json={"n": 1})
            assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found"), (bad, answer.text)
    assert Run.objects.count() == 0
