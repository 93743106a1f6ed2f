"""The run page and the runs list: exact JSON, what a condition compared, timings, the trigger's
transaction, the "filtered" label, and the list's live socket (real worker, PostgreSQL, Redis, uvicorn)."""

from __future__ import annotations

import json
import uuid
from html import unescape

import pytest
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus

from executor.models import Chain, Run, StepRun
from executor.runs.manual import start_manual_run
from flows.models import Membership
from flows.teams import do_remove_member
from tests.executor.conftest import edge, make_version, manual, node, wait_for_run
from tests.site.test_services import open_socket

pytestmark = pytest.mark.django_db(transaction=True)
S = StepRun.Status
ADDRESS = "0x8ba1f109551bD432803012645Ac136ddd64DBA72"


def gated_flow(team, user, sink_url: str):
    """manual -> condition (amount over 10) -> HTTP request on true."""
    return make_version(team, user, [
        manual(),
        node("big", "condition", {"expression": "trigger.payload.amount > 10 and trigger.payload.to != none"}),
        node("tell", "http.request", {"method": "POST", "url": f"{sink_url}/tell",
                                      "body": {"amount": "{{ trigger.payload.amount }}"}}),
    ], [edge("start", "big"), edge("big", "tell", "true")])


def page(user, path: str, **headers) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(path, **headers)
    assert response.status_code == 200, response.status_code
    return unescape(response.content.decode())


def fragment_of(user, run: Run, step_id: str) -> str:
    return page(user, f"/runs/{run.code}/steps/{step_id}/")


# -- a step's details -----------------------------------------------------------------------


def test_step_output_is_indented_json_with_exact_big_ints_and_a_copy_button(team, alice, http_sink):
    version = gated_flow(team, alice, http_sink.url)
    run = Run.objects.create(team=team, flow=version.flow, version=version, trigger_key="manual:big",
                             trigger={"type": "manual", "payload": {"amount": 2**70 + 1}}, status=Run.Status.SUCCEEDED)
    StepRun.objects.create(run=run, step_id="tell", status=S.SUCCEEDED, attempt=1,
                           input={"to": ADDRESS, "flag": True, "none": None},
                           output={"value": 2**70 + 1, "ok": True, "missing": None})

    html = fragment_of(alice, run, "tell")

    assert f'"value": {2**70 + 1}\n' in html and '"ok": true' in html and '"missing": null' in html
    assert f'"to": "{ADDRESS}"' in html and '"flag": true' in html
    assert "True" not in html and "None" not in html  # no Python repr left
    assert 'data-action="copy" data-copy="step-output-tell"' in html and 'id="step-output-tell"' in html
    trigger = fragment_of(alice, run, "start")
    assert f'"amount": {2**70 + 1}' in trigger


def test_a_condition_shows_its_expression_the_values_it_compared_and_the_branch(
    executor_worker, team, alice, http_sink
):
    version = gated_flow(team, alice, http_sink.url)
    run = wait_for_run(start_manual_run(version, {"amount": 4, "to": ADDRESS}, user=alice, dry_run=True))

    html = fragment_of(alice, run, "big")

    shown = json.loads(html.split('id="step-input-big">', 1)[1].split("</pre>", 1)[0])
    assert shown == {"expression": "trigger.payload.amount > 10 and trigger.payload.to != none",
                     "values": {"trigger.payload.amount": 4, "trigger.payload.to": ADDRESS}}
    assert '"result": false' in html and "took the <strong>false</strong> branch" in html


def test_a_steps_start_duration_and_attempts_are_shown(executor_worker, team, alice, http_sink):
    version = gated_flow(team, alice, http_sink.url)
    run = wait_for_run(start_manual_run(version, {"amount": 40, "to": ADDRESS}, user=alice, dry_run=True))
    step = StepRun.objects.get(run=run, step_id="tell")
    took = round((step.finished_at - step.started_at).total_seconds() * 1000)

    html = fragment_of(alice, run, "tell")

    assert f'<span data-testid="step-duration">{took} ms</span>' in html
    assert '<span data-testid="step-attempts">attempt 1</span>' in html
    assert f'<time datetime="{step.started_at.isoformat()}"' in html
    assert f"{timezone.localtime(step.started_at):%H:%M:%S.%f}"[:-3] + "</time>" in html  # to the millisecond
    state = Client()
    state.force_login(alice)
    assert state.get(f"/runs/{run.code}/state/").json()["steps"]["tell"]["duration_ms"] == took


# -- the run header ---------------------------------------------------------------------------


def test_the_header_links_the_trigger_transaction_to_the_chains_explorer(team, alice, http_sink):
    chain = Chain.objects.create(slug="mainnet", name="Ethereum", chain_id=1, explorer_url="https://etherscan.io/")
    version = gated_flow(team, alice, http_sink.url)
    tx_hash = "0x" + "ab" * 32
    run = Run.objects.create(team=team, flow=version.flow, version=version, trigger_key="log:1:x:0", chain=chain,
                             trigger={"type": "chain.event", "tx_hash": tx_hash, "chain_id": 1}, block_number=7)

    html = page(alice, f"/runs/{run.code}/")

    assert f'href="https://etherscan.io/tx/{tx_hash}"' in html and f'<span id="tx-1" hidden>{tx_hash}</span>' in html
    Chain.objects.filter(pk=chain.pk).update(explorer_url="")
    html = page(alice, f"/runs/{run.code}/")
    assert "etherscan" not in html and f'title="{tx_hash}"' in html  # no explorer: the hash, unlinked


# -- filtered runs --------------------------------------------------------------------------


def test_a_run_its_condition_stopped_before_any_action_is_filtered_on_its_page_the_list_and_the_state(
    executor_worker, team, alice, http_sink
):
    version = gated_flow(team, alice, http_sink.url)
    stopped = wait_for_run(start_manual_run(version, {"amount": 4, "to": ADDRESS}, user=alice))
    acted = wait_for_run(start_manual_run(version, {"amount": 40, "to": ADDRESS}, user=alice))
    assert stopped.status == acted.status == Run.Status.SUCCEEDED

    client = Client()
    client.force_login(alice)
    assert client.get(f"/runs/{stopped.code}/state/").json()["filtered"] is True
    assert client.get(f"/runs/{acted.code}/state/").json()["filtered"] is False
    assert 'id="run-status" role="status" aria-live="polite" title="The run succeeded, but a condition stopped it' \
        in page(alice, f"/runs/{stopped.code}/")
    assert '>Succeeded</span>' in page(alice, f"/runs/{acted.code}/")
    rows = {line.split('data-run="')[1][:36]: line for line in page(alice, "/runs/").split("<tr")[1:]
            if 'data-run="' in line}
    assert ">Filtered</span>" in rows[str(stopped.code)] and ">Succeeded</span>" in rows[str(acted.code)]


def test_a_flow_without_actions_is_never_filtered(executor_worker, team, alice):
    version = make_version(team, alice, [manual(), node("no", "condition", {"expression": "false"})],
                           [edge("start", "no")])
    run = wait_for_run(start_manual_run(version, {}, user=alice))
    client = Client()
    client.force_login(alice)
    assert client.get(f"/runs/{run.code}/state/").json()["filtered"] is False


# -- the runs list, live --------------------------------------------------------------------------


def team_socket(asgi_server, team, user):
    return open_socket(asgi_server, f"/ws/teams/{team.code}/runs/", user)


@pytest.mark.parametrize("role", ["OWNER", "ADMIN", "EDITOR", "VIEWER"])
def test_every_member_hears_a_new_run_of_the_team(asgi_server, users_by_role, team, alice, http_sink, role):
    version = gated_flow(team, alice, http_sink.url)
    with team_socket(asgi_server, team, users_by_role[role]) as socket:
        assert json.loads(socket.recv(timeout=5)) == {"type": "live"}
        run = start_manual_run(version, {"amount": 1}, user=alice, dry_run=True)
        heard = json.loads(socket.recv(timeout=5))
    assert (heard["run"], heard["kind"], heard["data"]["status"]) == (str(run.code), "run.status", "QUEUED")


@pytest.mark.parametrize("who", ["OUTSIDER", "ANONYMOUS"])
def test_outsiders_and_anonymous_visitors_cannot_open_the_teams_runs_socket(asgi_server, users_by_role, team, who):
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with team_socket(asgi_server, team, users_by_role.get(who)) as socket:
            socket.recv(timeout=5)


def test_a_team_hears_only_its_own_runs_and_a_removed_member_is_cut_off(asgi_server, team, alice, bob, charlie,
                                                                         http_sink):
    theirs = Membership.objects.get(user=charlie).team
    other = gated_flow(theirs, charlie, http_sink.url)
    ours = gated_flow(team, alice, http_sink.url)
    with team_socket(asgi_server, team, bob) as socket:
        assert json.loads(socket.recv(timeout=5)) == {"type": "live"}
        start_manual_run(other, {"amount": 1}, user=charlie, dry_run=True)
        mine = start_manual_run(ours, {"amount": 1}, user=alice, dry_run=True)
        assert json.loads(socket.recv(timeout=5))["run"] == str(mine.code)  # not theirs, which came first
        do_remove_member(Membership.objects.get(user=alice, team=team), Membership.objects.get(user=bob, team=team))
        with pytest.raises(ConnectionClosed):
            for _ in range(10):
                socket.recv(timeout=5)
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with team_socket(asgi_server, team, bob) as socket:
            socket.recv(timeout=5)


def test_the_runs_list_names_its_socket_and_a_guessed_team_code_is_refused(asgi_server, team, alice, charlie):
    assert f'data-live="/ws/teams/{team.code}/runs/"' in page(alice, "/runs/")
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with team_socket(asgi_server, team, charlie) as socket:
            socket.recv(timeout=5)
    with pytest.raises((ConnectionClosed, InvalidStatus)):
        with open_socket(asgi_server, f"/ws/teams/{uuid.uuid4().hex[:12]}/runs/", alice) as socket:
            socket.recv(timeout=5)
