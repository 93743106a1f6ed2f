"""Every gallery template, for real: instantiated and published over the API, triggered on anvil
(or by the scheduler or an inbound webhook), run by a worker, and judged by what arrived.

One set of services serves the whole module: the listener (`listen_chains`), the
scheduler (`run_scheduler`), a Dramatiq worker with the sweeper, and uvicorn
(the escalation template polls the API through it). Because the listener keeps
its chain rows for its whole life, the module writes committed data outside the
per-test transactions and flushes the database once at the end, as a
transactional test does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import time
import urllib.parse
import urllib.request

import pytest
from django.core.management import call_command
from django.utils import timezone
from eth_account import Account

from executor.models import Chain, ChainCursor, RpcEndpoint, Run, TriggerState
from flows.models import Flow, Membership, Secret, SignerKey, Team
from kwala_site.dev.devchain import DEV_ACCOUNTS, load_artifact
from tests.conftest import Service, start_worker
from tests.team_fixtures import api_client, token_for

SENDER = DEV_ACCOUNTS[0].address


def processed_past(chain_id: int, block: int) -> None:
    """Wait until the chain's listener has processed `block`: the runs it fires are claimed by then."""
    wait_until(lambda: ChainCursor.objects.filter(chain__chain_id=chain_id, block_number__gte=block).exists(),
               what=f"the listener to pass block {block}")


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in {timeout}s")
        time.sleep(0.1)


class World:
    """The team, its secrets and signer, the chains and the services, for the whole module."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.flows: list[str] = []

    def use(self, slug: str, inputs: dict) -> dict:
        response = self.api.post(f"/api/v1/templates/{slug}/use", {"inputs": inputs}, content_type="application/json")
        assert response.status_code == 201, response.content
        flow = response.json()
        published = self.api.post(f"/api/v1/flows/{flow['code']}/publish")
        assert published.status_code == 200, published.content
        self.flows.append(flow["code"])
        return flow

    def unpublish_all(self) -> None:
        for code in self.flows:
            self.api.post(f"/api/v1/flows/{code}/unpublish")
        self.flows.clear()

    def runs_of(self, flow: dict) -> list[Run]:
        return list(Run.objects.filter(flow__code=flow["code"]).order_by("created_at"))

    def first_run(self, flow: dict, timeout: float = 30) -> Run:
        """The flow's first run, once it has finished; fails with the step errors if it did not succeed."""
        run = wait_until(lambda: next(iter(self.runs_of(flow)), None), timeout, f"a run of {flow['name']}")
        wait_until(lambda: Run.objects.get(pk=run.pk).status in Run.FINISHED, timeout, f"run {run.code} to finish")
        run.refresh_from_db()
        assert run.status == Run.Status.SUCCEEDED, (run.error, list(run.steps.values_list("step_id", "error")))
        return run


def transact(w3, call, sender: str = SENDER):
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}), poll_latency=0.01)
    assert receipt["status"] == 1
    return receipt


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker, child_env, service_logs, asgi_server, http_sink_server, smtp_sink_server,
          anvil_a, anvil_b, w3_a, w3_b, demo_contracts_a, demo_contracts_b):
    from django.contrib.auth import get_user_model

    env = child_env
    services: list[Service] = []
    with django_db_blocker.unblock():
        for slug, node in (("anvil-a", anvil_a), ("anvil-b", anvil_b)):
            chain = Chain.objects.create(slug=slug, name=slug, chain_id=node.chain_id)
            RpcEndpoint.objects.create(chain=chain, url=node.http_url, kind=RpcEndpoint.Kind.HTTP)
            RpcEndpoint.objects.create(chain=chain, url=node.ws_url, kind=RpcEndpoint.Kind.WS)
        team = Team.objects.create(name="Gallery DAO")
        owner = get_user_model().objects.create_user("gallery-owner", "owner@example.com", "gallery-pw-1")
        Membership.objects.create(team=team, user=owner, role=Membership.Role.OWNER)
        relayer = Account.create()
        for w3 in (w3_a, w3_b):
            w3.provider.make_request("anvil_setBalance", [relayer.address, hex(10**20)])
        signer = SignerKey(team=team, name="DEFAULT_SIGNER", address=relayer.address)
        signer.set_private_key(relayer.key.hex())
        signer.save()
        secrets = {
            "SLACK_WEBHOOK_URL": f"{http_sink_server.url}/slack",
            "DISCORD_WEBHOOK_URL": f"{http_sink_server.url}/discord",
            "TELEGRAM_BOT_TOKEN": "4242:gallery-bot-token",
            "KWALA_API_TOKEN": token_for(owner),
            "WEBHOOK_SECRET": "gallery-hook-secret",
        }
        for name, value in secrets.items():
            secret = Secret(team=team, name=name)
            secret.set_value(value)
            secret.save()
        try:
            services.append(start_worker(env, service_logs, "gallery-worker", threads=8))
            sweeper = Service("gallery-sweeper", [sys.executable, "manage.py", "sweep", "--interval", "0.5"], env,
                              service_logs)
            services.append(sweeper)
            sweeper.wait_for_output("sweeper started", timeout=30)
            listener = Service("gallery-listener", [sys.executable, "manage.py", "listen_chains", "--poll", "0.2"],
                               env, service_logs)
            services.append(listener)
            listener.wait_for_output("listening to", timeout=30)
            scheduler = Service("gallery-scheduler", [sys.executable, "manage.py", "run_scheduler", "--interval",
                                                      "0.2"], env, service_logs)
            services.append(scheduler)
            wait_until(lambda: ChainCursor.objects.filter(block_number__isnull=False).count() == 2, 30,
                       "the listener to start both cursors")
            yield World(team=team, owner=owner, api=api_client(owner), secrets=secrets, relayer=relayer,
                        a=demo_contracts_a, b=demo_contracts_b, w3_a=w3_a, w3_b=w3_b, web=asgi_server,
                        http=http_sink_server, smtp=smtp_sink_server, services=services)
        finally:
            for service in reversed(services):
                service.stop()
            call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def g(world, django_db_blocker, http_sink_server, smtp_sink_server):
    """The world, with database access, empty sinks, and every flow of the test unpublished afterwards."""
    with django_db_blocker.unblock():
        http_sink_server.reset()
        smtp_sink_server.messages.clear()
        try:
            yield world
        finally:
            world.unpublish_all()


TESTED = {
    "erc20-whale-slack", "cross-chain-mirror", "governance-proposal-alert", "nft-mint-discord", "block-heartbeat",
    "lending-health-watcher", "treasury-report", "vote-digest", "flow-failure-escalation", "webhook-relay",
    "treasury-deposit-slack", "failed-transaction-discord", "admin-function-email",
}


@pytest.mark.django_db  # also makes pytest-django create the test database when this module runs alone
def test_every_template_in_the_gallery_is_run_end_to_end_here(alice):
    listed = {t["slug"] for t in api_client(alice).get("/api/v1/templates").json()}
    assert listed == TESTED


def contract(w3, name: str, address: str):
    return w3.eth.contract(address=address, abi=load_artifact(name)["abi"])


def fresh_address() -> str:
    return Account.create().address


# -- chain events -----------------------------------------------------------------------------------


def test_treasury_deposits_reach_slack_though_a_transfer_emits_no_log(g):
    treasury = g.a["Vault"]
    flow = g.use("treasury-deposit-slack", {"chain": 31337, "treasury": treasury, "min_amount": 2})
    g.w3_a.eth.wait_for_transaction_receipt(
        g.w3_a.eth.send_transaction({"from": SENDER, "to": treasury, "value": 10**18}), poll_latency=0.01)
    receipt = g.w3_a.eth.wait_for_transaction_receipt(
        g.w3_a.eth.send_transaction({"from": SENDER, "to": treasury, "value": 25 * 10**17}), poll_latency=0.01)
    assert receipt["logs"] == []
    (message,) = [r.json() for r in g.http.wait_for("/slack")]
    assert message == {"text": f"Treasury received 2.5 from {SENDER} (block {receipt['blockNumber']}, "
                               f"tx {receipt['transactionHash'].to_0x_hex()})"}
    g.first_run(flow)
    assert len(g.runs_of(flow)) == 1


def test_a_reverted_call_reaches_discord_with_its_reason(g):
    vault = contract(g.w3_a, "Vault", g.a["Vault"])
    flow = g.use("failed-transaction-discord", {"chain": 31337, "target": vault.address})
    stranger = DEV_ACCOUNTS[2].address
    tx_hash = vault.functions.withdraw(stranger, 10**30).transact({"from": SENDER, "gas": 100_000})
    receipt = g.w3_a.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)
    assert receipt["status"] == 0
    (message,) = [r.json() for r in g.http.wait_for("/discord")]
    assert message == {"content": f"Reverted: {tx_hash.to_0x_hex()} from {SENDER} (selector "
                                  f"{vault.functions.withdraw(stranger, 1)._encode_transaction_data()[:10]}): "
                                  f"Vault: not enough balance"}
    g.first_run(flow)


def test_an_admin_call_is_emailed_with_its_name_and_other_calls_are_not(g):
    vault = contract(g.w3_a, "Vault", g.a["Vault"])
    flow = g.use("admin-function-email", {"chain": 31337, "target": vault.address, "email": "security@example.com"})
    transact(g.w3_a, vault.functions.ratio(4, 2))  # not an admin function
    receipt = transact(g.w3_a, vault.functions.upgradeTo(fresh_address()))
    (mail,) = g.smtp.wait_for(1)
    assert mail["to"] == ["security@example.com"] and f"Subject: upgradeTo called on {vault.address}" in mail["data"]
    assert f"in transaction {receipt['transactionHash'].to_0x_hex()}" in mail["data"]
    g.first_run(flow)
    assert len(g.runs_of(flow)) == 1 and len(g.smtp.messages) == 1



def test_erc20_whale_transfers_reach_slack_and_small_ones_do_not(g):
    flow = g.use("erc20-whale-slack", {"chain": 31337, "token": g.a["KwalaToken"], "decimals": 18, "threshold": 100})
    token = contract(g.w3_a, "KwalaToken", g.a["KwalaToken"])
    whale = fresh_address()
    transact(g.w3_a, token.functions.mint(whale, 5 * 10**18))
    receipt = transact(g.w3_a, token.functions.mint(whale, 150 * 10**18))
    (message,) = [r.json() for r in g.http.wait_for("/slack")]
    assert message == {"text": f"Whale alert: 150 tokens from 0x0000000000000000000000000000000000000000 to {whale} "
                               f"(tx 0x{receipt['transactionHash'].hex().removeprefix('0x')})"}
    g.first_run(flow)
    assert len(g.runs_of(flow)) == 1


def test_a_transfer_on_chain_a_is_mirrored_by_a_signed_call_on_chain_b(g):
    flow = g.use("cross-chain-mirror", {"source_chain": 31337, "token": g.a["KwalaToken"], "target_chain": 31338,
                                        "receiver": g.b["Receiver"], "signer": "DEFAULT_SIGNER"})
    token = contract(g.w3_a, "KwalaToken", g.a["KwalaToken"])
    receiver = contract(g.w3_b, "Receiver", g.b["Receiver"])
    start = g.w3_b.eth.block_number
    to = fresh_address()
    receipt = transact(g.w3_a, token.functions.mint(to, 777))
    run = g.first_run(flow, timeout=45)
    (log,) = receiver.events.Mirrored().get_logs(from_block=start + 1)
    assert log["args"]["sourceTxHash"] == receipt["transactionHash"]
    assert (log["args"]["from"], log["args"]["to"], log["args"]["value"]) == (
        "0x0000000000000000000000000000000000000000", to, 777)
    assert log["args"]["caller"] == g.relayer.address
    assert run.steps.get(step_id="mirror").output["tx_hash"] == "0x" + log["transactionHash"].hex().removeprefix("0x")


def test_a_new_proposal_reaches_telegram_and_email(g):
    flow = g.use("governance-proposal-alert", {"chain": 31337, "governor": g.a["Governance"], "chat_id": "-100777",
                                               "email": "dao@example.com"})
    governor = contract(g.w3_a, "Governance", g.a["Governance"])
    transact(g.w3_a, governor.functions.propose("Fund the audit"))
    proposal_id = governor.functions.proposalCount().call()
    (telegram,) = g.http.wait_for("/telegram/bot4242:gallery-bot-token/sendMessage")
    assert telegram.json() == {"chat_id": "-100777",
                               "text": f"Proposal {proposal_id} by {SENDER}: Fund the audit"}
    (mail,) = g.smtp.wait_for(1)
    assert mail["to"] == ["dao@example.com"] and f"Subject: New proposal {proposal_id}" in mail["data"]
    assert f"{SENDER} proposed:" in mail["data"] and "Fund the audit" in mail["data"]
    g.first_run(flow)


def test_a_mint_is_announced_on_discord_and_a_transfer_is_not(g):
    flow = g.use("nft-mint-discord", {"chain": 31337, "collection": g.a["KwalaNFT"]})
    nft = contract(g.w3_a, "KwalaNFT", g.a["KwalaNFT"])
    owner = DEV_ACCOUNTS[1].address
    receipt = transact(g.w3_a, nft.functions.mint(owner))
    token_id = nft.events.Transfer().process_receipt(receipt)[0]["args"]["tokenId"]
    moved = transact(g.w3_a, nft.functions.transferFrom(owner, SENDER, token_id), sender=owner)
    (message,) = g.http.wait_for("/discord")
    assert message.path == "/discord?wait=true"
    assert message.json() == {"content": f"New mint: token #{token_id} went to {owner}"}
    g.first_run(flow)
    # Once the listener has processed the transfer's block, every run it fired is claimed.
    processed_past(31337, moved["blockNumber"])
    assert len(g.runs_of(flow)) == 1 and len(g.http.to("/discord")) == 1


# -- blocks and state ---------------------------------------------------------------------------------


def test_the_heartbeat_pings_every_n_blocks(g):
    flow = g.use("block-heartbeat", {"chain": 31338, "every": 3, "heartbeat_url": f"{g.http.url}/heartbeat"})
    # Blocks mined before the listener's trigger index has the new flow fire nothing: mine a few
    # at a time until two heartbeats came (a positive signal, not a guess at how long that takes).
    deadline = time.monotonic() + 45
    while len(g.http.to("/heartbeat")) < 2:
        assert time.monotonic() < deadline, "no two heartbeats in 45 s"
        g.w3_b.provider.make_request("anvil_mine", [hex(3)])
        time.sleep(0.5)
    pings = sorted((r.json() for r in g.http.to("/heartbeat")), key=lambda p: p["block"])
    assert all(p["chain_id"] == 31338 and p["block"] % 3 == 0 and p["timestamp"] > 0 for p in pings)
    assert pings[1]["block"] - pings[0]["block"] == 3
    g.first_run(flow)


def test_the_health_watcher_calls_the_webhook_once_per_crossing(g):
    feed = contract(g.w3_a, "PriceFeed", g.a["PriceFeed"])
    borrower = fresh_address()
    transact(g.w3_a, feed.functions.setHealthFactor(borrower, 2 * 10**18))
    flow = g.use("lending-health-watcher", {"chain": 31337, "pool": g.a["PriceFeed"], "account": borrower,
                                            "every": 1, "webhook_url": f"{g.http.url}/health"})
    g.w3_a.provider.make_request("anvil_mine", [hex(2)])
    # The listener must have read the healthy value first; only then is the drop a crossing.
    wait_until(lambda: TriggerState.objects.filter(version__flow__code=flow["code"], value=False).exists(),
               what="the first reading")
    receipt = transact(g.w3_a, feed.functions.setHealthFactor(borrower, 10**18))
    (call,) = g.http.wait_for("/health")
    # 10**18 is beyond JavaScript's exact integers: it goes out as a decimal string.
    assert call.json() == {"account": borrower, "health_factor": str(10**18), "block": receipt["blockNumber"]}
    g.w3_a.provider.make_request("anvil_mine", [hex(3)])  # still low: no new crossing
    g.first_run(flow)
    processed_past(31337, g.w3_a.eth.block_number)
    assert len(g.runs_of(flow)) == 1 and len(g.http.to("/health")) == 1


# -- schedules ---------------------------------------------------------------------------------------

EVERY_TWO_SECONDS = "* * * * * */2"  # croniter's optional sixth field is seconds


def test_the_treasury_report_emails_the_balance_on_schedule(g):
    token = contract(g.w3_a, "KwalaToken", g.a["KwalaToken"])
    treasury = fresh_address()
    transact(g.w3_a, token.functions.mint(treasury, 12345 * 10**17))
    flow = g.use("treasury-report", {"chain": 31337, "token": g.a["KwalaToken"], "treasury": treasury,
                                     "cron": EVERY_TWO_SECONDS, "email": "cfo@example.com"})
    mail = g.smtp.wait_for(1)[0]
    assert mail["to"] == ["cfo@example.com"] and "Subject: Treasury balance report" in mail["data"]
    assert f"Treasury {treasury} holds 1234.5 tokens." in mail["data"]
    assert g.first_run(flow).trigger["type"] == "schedule"


def test_the_vote_digest_emails_the_newest_proposals_tally(g):
    governor = contract(g.w3_a, "Governance", g.a["Governance"])
    transact(g.w3_a, governor.functions.propose("Digest me"))
    proposal_id = governor.functions.proposalCount().call()
    transact(g.w3_a, governor.functions.castVote(proposal_id, 1, "yes"), sender=DEV_ACCOUNTS[1].address)
    transact(g.w3_a, governor.functions.castVote(proposal_id, 1, "yes"), sender=DEV_ACCOUNTS[2].address)
    transact(g.w3_a, governor.functions.castVote(proposal_id, 2, "meh"))
    flow = g.use("vote-digest", {"chain": 31337, "governor": g.a["Governance"], "cron": EVERY_TWO_SECONDS,
                                 "email": "voters@example.com"})
    mail = g.smtp.wait_for(1)[0]["data"]
    assert f"Subject: Votes on proposal {proposal_id}" in mail
    assert f"Proposal {proposal_id} by {SENDER}" in mail
    assert "For: 2" in mail and "Against: 0" in mail and "Abstain: 1" in mail
    g.first_run(flow)


def test_escalation_polls_the_api_and_alerts_when_the_watched_flow_failed(g):
    watched = Flow.objects.create(team=g.team, name="Watched", created_by=g.owner)
    flow = g.use("flow-failure-escalation", {"kwala_url": g.web.url, "flow_code": watched.code, "interval": 10,
                                             "email": "oncall@example.com"})
    version = watched.versions.create(number=1, graph={}, status="PUBLISHED")
    # Right after publishing: the first check's window starts at publication.
    for n in range(2):
        Run.objects.create(team=g.team, flow=watched, version=version, trigger_key=f"manual:{n}",
                           status=Run.Status.FAILED, error="boom", finished_at=timezone.now())
    try:
        (mail,) = g.smtp.wait_for(1, timeout=30)
    except TimeoutError:
        raise AssertionError([(r.status, r.error, list(r.steps.values_list("step_id", "input")))
                              for r in g.runs_of(flow)]) from None
    assert mail["to"] == ["oncall@example.com"] and f"Subject: Flow {watched.code}: 2 failed runs" in mail["data"]
    (slack,) = g.http.wait_for("/slack")
    assert slack.json() == {"text": f"2 runs of flow {watched.code} failed"}
    run = g.first_run(flow)
    # It really asked the API, with the token from the secret (not recorded in the run).
    assert run.steps.get(step_id="failures").output["body"]["count"] == 2
    assert g.secrets["KWALA_API_TOKEN"] not in json.dumps(list(run.steps.values("input", "output", "logs")))


# -- inbound webhook -----------------------------------------------------------------------------------


def test_a_signed_webhook_is_relayed_to_receiver_ping_and_an_unsigned_one_is_refused(g):
    flow = g.use("webhook-relay", {"chain": 31338, "receiver": g.b["Receiver"]})
    receiver = contract(g.w3_b, "Receiver", g.b["Receiver"])
    start = g.w3_b.eth.block_number
    body = json.dumps({"message": "gm from the webhook"}).encode()
    signature = hmac.new(g.secrets["WEBHOOK_SECRET"].encode(), body, hashlib.sha256).hexdigest()

    path = urllib.parse.urlsplit(g.api.get(f"/api/v1/flows/{flow['code']}/webhook").json()["url"]).path

    def post(headers: dict):
        request = urllib.request.Request(f"{g.web.url}{path}", data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert post({"X-Signature-256": "sha256=" + "0" * 64}) == 401
    assert post({"X-Signature-256": f"sha256={signature}"}) == 202
    run = g.first_run(flow, timeout=45)
    (log,) = receiver.events.Pinged().get_logs(from_block=start + 1)
    assert (log["args"]["caller"], log["args"]["message"]) == (g.relayer.address, "gm from the webhook")
    assert len(g.runs_of(flow)) == 1 and run.trigger["body"] == {"message": "gm from the webhook"}
