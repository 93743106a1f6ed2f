"""The SSRF guard refuses every internal address unless the allowlist opens it."""

from __future__ import annotations

import ipaddress

import pytest

from executor import ssrf
from executor.models import Run, StepRun
from executor.runs.manual import start_manual_run
from tests.executor.conftest import edge, make_version, manual, node, steps_of
from tests.sinks import Reply


@pytest.fixture
def no_allowlist(settings):
    settings.KWALA_OUTBOUND_ALLOW = []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://localhost:8000/",
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://172.16.5.4/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[64:ff9b::7f00:1]/",
    ],
)
def test_internal_addresses_are_refused_when_the_allowlist_is_empty(no_allowlist, url):
    with pytest.raises(ssrf.OutboundBlocked):
        ssrf.resolve(url)


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http://user:pw@example.com/", "http:///x"])
def test_only_plain_http_urls_are_accepted(no_allowlist, url):
    with pytest.raises(ssrf.OutboundBlocked):
        ssrf.resolve(url)


def test_a_public_address_passes_and_the_request_is_pinned_to_it(no_allowlist):
    target = ssrf.resolve("https://93.184.215.14:8443/path?q=1")
    assert target.address == ipaddress.ip_address("93.184.215.14")
    assert target.pinned_url == "https://93.184.215.14:8443/path?q=1"
    assert target.host_header == "93.184.215.14:8443"
    request = ssrf.build_request(target, "GET", headers={}, content=None, timeout=5)
    assert request.headers["Host"] == "93.184.215.14:8443"
    assert request.extensions["sni_hostname"] == "93.184.215.14"


def test_the_allowlist_opens_only_the_networks_it_names(settings):
    settings.KWALA_OUTBOUND_ALLOW = [ipaddress.ip_network("127.0.0.1/32")]
    assert ssrf.resolve("http://127.0.0.1:9/").address == ipaddress.ip_address("127.0.0.1")
    with pytest.raises(ssrf.OutboundBlocked):
        ssrf.resolve("http://127.0.0.2/")
    with pytest.raises(ssrf.OutboundBlocked):
        ssrf.resolve("http://169.254.169.254/")


def _drive(run: Run) -> Run:
    """Run a run in this process (no worker): start it, then each queued step until none is left."""
    from executor.runs import engine, start

    start.start_run(run.pk)
    for _ in range(20):
        queued = list(StepRun.objects.filter(run=run, status=StepRun.Status.QUEUED).values_list("pk", flat=True))
        if not queued:
            break
        for pk in queued:
            engine.run_step(pk)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
def test_a_flow_cannot_call_loopback_when_the_allowlist_is_empty(no_allowlist, http_sink, team, alice):
    version = make_version(team, alice, [manual(), node("call", "http.request", {"url": f"{http_sink.url}/x"})],
                           [edge("start", "call")])
    run = _drive(start_manual_run(version, {}, user=alice))

    assert run.status == Run.Status.FAILED
    assert "loopback" in steps_of(run)["call"].error
    assert http_sink.requests == []


@pytest.mark.django_db
def test_a_redirect_to_an_internal_address_is_not_followed(settings, http_sink, team, alice):
    settings.KWALA_OUTBOUND_ALLOW = [ipaddress.ip_network("127.0.0.1/32")]
    http_sink.script("/jump", Reply(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    http_sink.script("/jump-local", Reply(status=307, headers={"Location": f"{http_sink.url}/inside"}))
    version = make_version(
        team, alice,
        [manual(), node("a", "http.request", {"url": f"{http_sink.url}/jump", "retry": {"max_attempts": 3}}),
         node("b", "http.request", {"url": f"{http_sink.url}/jump-local"})],
        [edge("start", "a"), edge("start", "b")],
    )
    run = _drive(start_manual_run(version, {}, user=alice))

    assert run.status == Run.Status.FAILED
    assert "redirect" in steps_of(run)["a"].error
    assert len(http_sink.to("/jump")) == 1  # a redirect is permanent: no retry
    assert http_sink.to("/inside") == []


@pytest.mark.django_db
def test_a_cookie_one_flow_was_given_is_never_sent_by_another(settings, http_sink, team, alice, charlie):
    from flows.models import Team

    settings.KWALA_OUTBOUND_ALLOW = [ipaddress.ip_network("127.0.0.1/32")]
    http_sink.script("/login", Reply(headers={"Set-Cookie": "session=team-a-secret; Path=/"}))
    mine = make_version(team, alice, [manual(), node("a", "http.request", {"url": f"{http_sink.url}/login"})],
                        [edge("start", "a")])
    other_team = Team.objects.create(name="Other")
    theirs = make_version(other_team, charlie, [manual(), node("b", "http.request", {"url": f"{http_sink.url}/next"})],
                          [edge("start", "b")])
    assert _drive(start_manual_run(mine, {}, user=alice)).status == Run.Status.SUCCEEDED
    assert _drive(start_manual_run(theirs, {}, user=charlie)).status == Run.Status.SUCCEEDED

    (received,) = http_sink.to("/next")
    assert "Cookie" not in received.headers
