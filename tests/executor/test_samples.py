"""Test-run samples: what each trigger type would hand a run now, read from a real anvil chain,
PostgreSQL and the webhook door, and a test run that gets the sample as its trigger's own output."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.test import Client

from executor.matching import TxIndex, compile_trigger
from executor.models import Chain, RpcEndpoint, Run, StepRun
from executor.samples import TX_LOOKBACK_BLOCKS, SampleError, trigger_samples
from flows import actions
from flows.nodes import NODE_TYPES
from kwala_site.dev.devchain import DEV_ACCOUNTS, contract, deploy, transact, wait_for_receipt
from tests.conftest import free_port
from tests.executor.chainkit import make_chain, trigger_graph
from tests.executor.conftest import wait_for_run

pytestmark = pytest.mark.django_db(transaction=True)

CHAIN_ID = 31337
OWNER = DEV_ACCOUNTS[0].address
STRANGER = DEV_ACCOUNTS[3].address
TRANSFER = "Transfer(address indexed from, address indexed to, uint256 value)"


def flow_with(team, user, trigger_type: str, config: dict, name: str = "Sampled"):
    return actions.do_create_flow(team, user, name, graph=trigger_graph(trigger_type, config))


def samples_of(flow) -> dict:
    """The Test tab's JSON answer, as an editor's browser gets it."""
    client = Client()
    client.force_login(flow.created_by)
    response = client.get(f"/flows/{flow.code}/samples/", HTTP_ACCEPT="application/json")
    assert response.status_code in (200, 422), response.content[:500]
    return response.json()


def payloads(answer: dict) -> list[dict]:
    return [json.loads(s["json"]) for s in answer["samples"]]


def send_value(w3, to: str, wei: int, sender: str = STRANGER) -> str:
    return wait_for_receipt(w3, w3.eth.send_transaction({"from": sender, "to": to, "value": wei}))[
        "transactionHash"].to_0x_hex()


# -- what each trigger samples ----------------------------------------------------------------


def test_a_block_trigger_samples_the_latest_blocks_of_its_rhythm(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    make_chain(fresh_anvil)
    w3.provider.make_request("anvil_mine", [hex(12)])
    flow = flow_with(team, alice, "chain.block", {"chain": CHAIN_ID, "every": 5})

    answer = samples_of(flow)

    latest = w3.eth.block_number
    first = latest - latest % 5
    assert [p["block_number"] for p in payloads(answer)] == [first, first - 5, first - 10][: len(answer["samples"])]
    block = w3.eth.get_block(first)
    assert payloads(answer)[0] == {"type": "chain.block", "chain_id": CHAIN_ID, "block_number": first,
                                   "block_hash": block["hash"].to_0x_hex(), "timestamp": block["timestamp"]}
    assert answer["title"] == "Latest blocks"


def test_a_transaction_trigger_samples_recent_matching_transfers_with_exact_values_and_receipts(
    fresh_anvil, team, alice
):
    w3 = fresh_anvil.web3()
    vault = deploy(w3, "Vault")
    make_chain(fresh_anvil)
    big = 3 * 10**18 + 1  # above 2**53: must stay exact all the way to the text
    first = send_value(w3, vault, 10**18)
    second = send_value(w3, vault, big)
    send_value(w3, OWNER, 10**18, sender=STRANGER)  # not to the vault
    flow = flow_with(team, alice, "chain.transaction", {"chain": CHAIN_ID, "to": [vault]})

    answer = samples_of(flow)

    found = payloads(answer)
    assert [p["hash"] for p in found] == [second, first]  # newest first
    assert f'"value": {big}' in answer["samples"][0]["json"]
    newest = found[0]
    receipt = w3.eth.get_transaction_receipt(second)
    assert (newest["type"], newest["from"], newest["to"], newest["value"], newest["status"]) == (
        "chain.transaction", STRANGER, vault, big, "success")
    assert newest["gas_used"] == receipt["gasUsed"] and newest["block_number"] == receipt["blockNumber"]
    assert newest["timestamp"] == w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert answer["note"] == ""


def test_a_failed_transaction_sample_carries_its_revert_reason(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    vault = contract(w3, "Vault", deploy(w3, "Vault"))
    make_chain(fresh_anvil)
    transact(w3, vault.functions.pause())
    failing = wait_for_receipt(w3, vault.functions.withdraw(OWNER, 1).transact({"from": OWNER, "gas": 200_000}))
    assert failing["status"] == 0
    flow = flow_with(team, alice, "chain.transaction", {"chain": CHAIN_ID, "to": [vault.address], "status": "failed"})

    (sample,) = payloads(samples_of(flow))

    assert sample["hash"] == failing["transactionHash"].to_0x_hex()
    assert (sample["function"], sample["status"], sample["revert_reason"]) == ("", "failed", "Vault: paused")


def test_with_no_recent_match_a_transaction_trigger_gets_a_made_up_one_its_own_filters_accept(
    fresh_anvil, team, alice
):
    w3 = fresh_anvil.web3()
    vault = deploy(w3, "Vault")
    make_chain(fresh_anvil)
    watched = "0x00000000000000000000000000000000000000AA"
    config = {"chain": CHAIN_ID, "to": [vault], "function": "transferOwnership(address newOwner)",
              "filters": [{"arg": "newOwner", "op": "eq", "value": watched}]}
    flow = flow_with(team, alice, "chain.transaction", config)

    answer = samples_of(flow)

    (sample,) = payloads(answer)
    assert f"last {TX_LOOKBACK_BLOCKS} blocks" in answer["note"] and answer["samples"][0]["label"].startswith("made up")
    assert (sample["to"], sample["function"], sample["args"], sample["status"]) == (
        vault, "transferOwnership", {"newOwner": watched}, "success")
    assert sample["block_number"] == w3.eth.block_number
    # The trigger's own matcher takes the made-up transaction.
    spec = NODE_TYPES["chain.transaction"].trigger_spec("t", NODE_TYPES["chain.transaction"].normalize(config))
    matcher = compile_trigger(spec, version_id=0, flow_id=0, team_id=0, flow_code="x")
    tx = {"to": sample["to"].lower(), "from": sample["from"].lower(), "input": sample["input"], "value": sample["value"]}
    assert TxIndex([matcher]).candidates(tx)


def test_a_state_trigger_samples_the_function_read_at_the_latest_block(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    feed = contract(w3, "PriceFeed", deploy(w3, "PriceFeed", 2_000 * 10**8))
    make_chain(fresh_anvil)
    transact(w3, feed.functions.setPrice(1_500 * 10**8))
    flow = flow_with(team, alice, "chain.state", {
        "chain": CHAIN_ID, "address": feed.address, "function": "latestAnswer() view returns (int256 answer)",
        "condition": "result < 1800 * 10**8"})

    answer = samples_of(flow)

    (sample,) = payloads(answer)
    latest = w3.eth.get_block("latest")
    assert sample == {"type": "chain.state", "chain_id": CHAIN_ID, "block_number": latest["number"],
                      "block_hash": latest["hash"].to_0x_hex(), "timestamp": latest["timestamp"],
                      "result": 1_500 * 10**8, "outputs": {"answer": 1_500 * 10**8}}
    assert "the condition holds now" in answer["samples"][0]["label"]


def test_an_event_trigger_samples_only_the_logs_its_filters_and_condition_let_through(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    token = contract(w3, "KwalaToken", deploy(w3, "KwalaToken", "Kwala Token", "KWL"))
    make_chain(fresh_anvil)
    receiver = DEV_ACCOUNTS[1].address
    transact(w3, token.functions.mint(OWNER, 10**20))
    transact(w3, token.functions.transfer(receiver, 5))  # below the condition
    big = transact(w3, token.functions.transfer(receiver, 2**60))
    transact(w3, token.functions.transfer(DEV_ACCOUNTS[2].address, 2**61))  # another receiver
    flow = flow_with(team, alice, "chain.event", {
        "chain": CHAIN_ID, "addresses": [token.address], "event": TRANSFER,
        "filters": [{"arg": "to", "op": "eq", "value": receiver}], "condition": "trigger.args.value > 10"})

    (sample,) = payloads(samples_of(flow))

    assert sample["args"] == {"from": OWNER, "to": receiver, "value": 2**60}
    assert (sample["type"], sample["event"], sample["contract"], sample["tx_hash"]) == (
        "chain.event", "Transfer", token.address, big["transactionHash"].to_0x_hex())
    assert sample["timestamp"] == w3.eth.get_block(big["blockNumber"])["timestamp"]


def test_a_webhook_trigger_samples_the_flows_last_requests_and_an_example_before_any(team, alice):
    flow = flow_with(team, alice, "webhook", {"verification": "none"})
    actions.do_publish_version(flow, alice)

    example = samples_of(flow)
    (shape,) = payloads(example)
    assert example["title"] == "Example request" and "example" in example["note"]
    assert set(shape) == {"type", "method", "body", "headers", "query"} and shape["method"] == "POST"

    body = {"order": 7, "amount": 2**64}
    response = Client().post(actions.webhook_path(flow, alice) + "?source=shop", json.dumps(body),
                             content_type="application/json")
    assert response.status_code == 202
    answer = samples_of(flow)
    (sample,) = payloads(answer)
    assert sample == Run.objects.get(flow=flow).trigger
    assert sample["body"] == body and sample["query"] == {"source": "shop"}
    assert answer["title"] == "Recent requests"


def test_a_schedule_samples_its_latest_windows(team, alice):
    now = datetime(2025, 3, 4, 10, 7, 30, tzinfo=UTC)
    cron = flow_with(team, alice, "schedule", {"cron": "*/15 * * * *"})
    _, graph = actions.current_graph(cron)

    windows = [s.payload for s in trigger_samples(cron, graph, now=now).items]

    assert windows[0] == {"type": "schedule", "scheduled_at": "2025-03-04T10:00:00+00:00",
                          "previous_at": "2025-03-04T09:45:00+00:00", "fired_at": now.isoformat()}
    assert [w["scheduled_at"][11:16] for w in windows] == ["10:00", "09:45", "09:30"]

    later = flow_with(team, alice, "schedule", {"start_at": "2025-03-05T08:00:00+00:00"}, "Once")
    (once,) = trigger_samples(later, actions.current_graph(later)[1], now=now).items
    assert once.payload["scheduled_at"] == once.payload["fired_at"] == "2025-03-05T08:00:00+00:00"


def test_a_manual_trigger_samples_its_own_sample_payload(team, alice):
    flow = flow_with(team, alice, "manual", {"sample_payload": {"amount": 12}})
    assert payloads(samples_of(flow)) == [{"amount": 12}]


# -- what stops a sample --------------------------------------------------------------------


def test_an_unreachable_chain_is_named_in_a_sentence(team, alice):
    chain = Chain.objects.create(slug="down", name="Down chain", chain_id=99_001)
    RpcEndpoint.objects.create(chain=chain, url=f"http://127.0.0.1:{free_port()}/", kind=RpcEndpoint.Kind.HTTP)
    flow = flow_with(team, alice, "chain.block", {"chain": 99_001})

    answer = samples_of(flow)
    assert answer["error"].startswith("Could not read the latest blocks from Down chain")

    client = Client()
    client.force_login(alice)
    fragment = client.get(f"/flows/{flow.code}/samples/", HTTP_HX_REQUEST="true").content.decode()
    assert "Could not read the latest blocks from Down chain" in fragment and 'data-action="reload-samples"' in fragment


def test_an_incomplete_trigger_asks_for_its_settings(team, alice):
    flow = flow_with(team, alice, "chain.event", {"chain": CHAIN_ID})
    _, graph = actions.current_graph(flow)
    with pytest.raises(SampleError, match="Finish the trigger's settings first"):
        trigger_samples(flow, graph)


@pytest.mark.parametrize("role", ["OWNER", "ADMIN", "EDITOR", "VIEWER", "OUTSIDER"])
def test_only_editors_may_load_samples(users_by_role, team, alice, role):
    flow = flow_with(team, alice, "manual", {})
    client = Client()
    client.force_login(users_by_role[role])
    response = client.get(f"/flows/{flow.code}/samples/", HTTP_HX_REQUEST="true")
    assert response.status_code == (200 if role in ("OWNER", "ADMIN", "EDITOR") else 404)


# -- the sample as the trigger's own output ---------------------------------------------------------


def test_a_dry_run_of_a_block_trigger_reads_the_sample_as_trigger_fields(
    fresh_anvil, executor_worker, http_sink, team, alice
):
    """Issue #19, C9: a sample {"block_number": 146, ...} ran as {type: manual, payload: ...}, and
    `trigger.block_number` failed with 'dict object' has no attribute 'block_number'."""
    make_chain(fresh_anvil)
    fresh_anvil.web3().provider.make_request("anvil_mine", [hex(146)])
    graph = trigger_graph("chain.block", {"chain": CHAIN_ID})
    hook = graph["nodes"][1]["config"]
    hook.update(url=f"{http_sink.url}/blocks", body={"block": "{{ trigger.block_number }}",
                                                     "hash": "{{ trigger.block_hash }}"})
    flow = actions.do_create_flow(team, alice, "Blocks", graph=graph)
    sample = samples_of(flow)["samples"][0]["json"]

    client = Client()
    client.force_login(alice)
    # As the editor's Test tab sends it: the sample as typed, so big ints stay exact.
    response = client.post(f"/api/v1/flows/{flow.code}/runs",
                           f'{{"draft": true, "dry_run": true, "payload": {sample}}}',
                           content_type="application/json")
    assert response.status_code == 201, response.content
    run = wait_for_run(Run.objects.get(code=response.json()["code"]))

    assert run.status == Run.Status.SUCCEEDED, run.error
    block = json.loads(sample)
    assert run.trigger == block and run.trigger["type"] == "chain.block"
    sent = StepRun.objects.get(run=run, step_id="hook").output["would_send"]
    assert block["block_number"] == 146
    assert json.loads(sent["body"]) == {"block": 146, "hash": block["block_hash"]}
    assert http_sink.requests == []


def test_a_manual_flows_test_run_still_hands_the_payload_on_as_trigger_payload(executor_worker, team, alice):
    flow = flow_with(team, alice, "manual", {})
    client = Client()
    client.force_login(alice)
    response = client.post(f"/api/v1/flows/{flow.code}/runs", '{"draft": true, "dry_run": true, "payload": {"amount": 3}}',
                           content_type="application/json")
    run = wait_for_run(Run.objects.get(code=response.json()["code"]))
    assert run.trigger == {"type": "manual", "payload": {"amount": 3}, "by": "alice"}


def test_the_picker_fragment_keeps_big_ints_exact(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    vault = deploy(w3, "Vault")
    make_chain(fresh_anvil)
    send_value(w3, vault, 2**60 + 7)
    flow = flow_with(team, alice, "chain.transaction", {"chain": CHAIN_ID, "to": [vault]})
    client = Client()
    client.force_login(alice)
    fragment = client.get(f"/flows/{flow.code}/samples/", HTTP_HX_REQUEST="true").content.decode()
    assert f"&quot;value&quot;: {2**60 + 7}," in fragment and "Recent transactions" in fragment
