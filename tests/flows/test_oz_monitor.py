"""OpenZeppelin Monitor import: the examples of OZ's repository and docs become flows, secrets and a report.

The configurations under tests/flows/ozmonitor/ are OZ's own example files; only the watched
contract address (the first contract deployed on a fresh anvil: our KwalaToken, an ERC-20 like
USDC) and the Ethereum network's chain id (31337, the test anvil) were changed. RISE Mainnet
keeps its chain id 4153, which no test server has configured until a test starts such a chain.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from eth_utils import to_checksum_address

from executor.models import Chain, Run
from flows import actions, audit, ozmonitor
from flows.expressions import evaluate
from flows.graph import compile_graph
from flows.models import Flow, FlowVersion, Membership, Secret
from flows.ozmonitor import Operand, TemplateContext, Untranslatable, translate_expression, translate_template
from flows.teams import do_set_secret
from kwala_site.dev.devchain import DEV_ACCOUNTS, AnvilProcess, contract, deploy, mine, transact, wait_for_receipt
from tests.executor.chainkit import listener_for, make_chain, wait_for

EXAMPLES = Path(__file__).parent / "ozmonitor"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # KwalaToken, first deployment on a fresh anvil
SLACK_PLAIN = "https://hooks.slack.com/services/A/B/C"
SENDER, RECIPIENT = DEV_ACCOUNTS[1].address, DEV_ACCOUNTS[2].address
TRANSFER_PARAMS = (
    {"name": "from", "type": "address", "indexed": True},
    {"name": "to", "type": "address", "indexed": True},
    {"name": "value", "type": "uint256", "indexed": False},
)


def example(case: str) -> ozmonitor.OzConfig:
    return ozmonitor.read_directory(EXAMPLES / case)


def with_notifications(config: ozmonitor.OzConfig) -> ozmonitor.OzConfig:
    """The quickstart monitor sending every kind of notification of OZ's trigger examples."""
    extra = ozmonitor.read_files({"monitors": {"m.json": "{}"}, "triggers": {
        p.name: p.read_bytes() for p in (EXAMPLES / "notifications" / "triggers").glob("*.json")}})
    config.triggers.update(extra.triggers)
    monitor = dict(config.monitors[0][1])
    monitor["triggers"] = [*monitor["triggers"], "evm_large_transfer_usdc_discord",
                           "evm_large_transfer_usdc_telegram", "evm_large_transfer_usdc_webhook"]
    config.monitors[0] = (config.monitors[0][0], monitor)
    return config


def by_name(plan_or_result) -> dict:
    return {f.name: f for f in plan_or_result.flows}


# -- expressions ------------------------------------------------------------------------------

ARGS = {
    "from": Operand("trigger.args.from", "address"),
    "value": Operand("trigger.args.value", "uint256"),
    "note": Operand("trigger.args.note", "string"),
    "ok": Operand("trigger.args.ok", "bool"),
    "ids": Operand("trigger.args.ids", "uint256[]"),
}
ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


@pytest.mark.parametrize(("oz", "kwala"), [
    ("value > 10000000000", "trigger.args.value > 10000000000"),
    (f"value >= 5 AND from == {ALICE.lower()}",
     f'trigger.args.value >= 5 and ((trigger.args.from or "")|lower) == "{ALICE.lower()}"'),
    ("value > 1 && ok == TRUE || note contains 'Error'",
     '(trigger.args.value > 1 and trigger.args.ok == true) or "error" in ((trigger.args.note or "")|lower)'),
    ("(value < 3 or value > 7) and note starts_with 'big'",
     '(trigger.args.value < 3 or trigger.args.value > 7) and ((trigger.args.note or "")|lower).startswith("big")'),
    ("ids contains '20'", '"20" in (trigger.args.ids|map("string")|map("lower")|list)'),
    ("ids[1] == 20", "trigger.args.ids[1] == 20"),
    ("0 != 0x0000000000000000000000000000000000000000",
     '((trigger.args_list[0] or "")|lower) != "0x0000000000000000000000000000000000000000"'),
])
def test_oz_expressions_become_kwala_conditions(oz, kwala):
    positional = [Operand("trigger.args_list[0]", "address"), Operand("trigger.args_list[1]", "uint256")]
    assert translate_expression(oz, ARGS, positional) == kwala


def test_translated_conditions_keep_ozs_meaning_case_insensitive_addresses_and_text_exact_big_ints():
    condition = translate_expression(f"from == {ALICE.lower()} AND value > 10000000000 AND note ends_with 'DONE'",
                                     ARGS)
    context = {"trigger": {"args": {"from": ALICE, "value": 2**200, "note": "all done"}}}
    assert evaluate(condition, context) is True
    context["trigger"]["args"]["value"] = 10000000000
    assert evaluate(condition, context) is False


@pytest.mark.parametrize(("oz", "why"), [
    ("value > 1.5", "not a whole number"),
    ("from > 0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "addresses compare with == and != only"),
    ("amount > 5", "'amount' is not an argument"),
    ("value >", "has no value"),
    ("(value > 1", "parenthesis"),
    ("user.name == 'bob'", "only plain names"),
])
def test_expressions_without_an_exact_translation_say_why(oz, why):
    with pytest.raises(Untranslatable, match=why):
        translate_expression(oz, ARGS)


# -- templates ---------------------------------------------------------------------------------


def test_both_template_styles_become_kwala_templates_for_an_event_flow():
    ctx = TemplateContext("event", "Large {{ USDC }}", TRANSFER_PARAMS, "Transfer(address,address,uint256)")
    new, warnings = translate_template(
        "${monitor.name}: ${events.0.args.value} from ${events.0.args.from} in ${transaction.hash} "
        "(${events.0.signature})", ctx)
    old, old_warnings = translate_template("${monitor_name} ${event_0_value} ${event_0_to} ${transaction_hash}", ctx)
    assert new == ('{{ "Large {{ USDC }}" }}: {{ trigger.args.value }} from {{ trigger.args.from }} in '
                   "{{ trigger.tx_hash }} (Transfer(address,address,uint256))")
    assert old == '{{ "Large {{ USDC }}" }} {{ trigger.args.value }} {{ trigger.args.to }} {{ trigger.tx_hash }}'
    assert warnings == old_warnings == []


def test_variables_a_flow_has_no_value_for_are_left_out_with_a_warning():
    event = TemplateContext("event", "M", TRANSFER_PARAMS, "Transfer(address,address,uint256)")
    text, warnings = translate_template("to ${transaction.to} ${functions.0.args.4} ${events.1.args.value} "
                                        "${events.0.args.nope} ${block.number}", event)
    assert text == "to     "
    assert [w.split(":")[0] for w in warnings] == [
        "${transaction.to}", "${functions.0.args.4}", "${events.1.args.value}", "${events.0.args.nope}",
        "${block.number}"]
    function = TemplateContext("function", "M", ({"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}))
    text, warnings = translate_template("${functions.0.args.value} to ${function_0_to} by ${transaction.from} "
                                        "${transaction.hash}", function)
    assert text == "{{ trigger.args.value }} to {{ trigger.args.to }} by {{ trigger.from }} {{ trigger.hash }}"
    assert warnings == []


# -- planning the examples ----------------------------------------------------------------------


def test_the_quickstart_example_becomes_one_flow_per_condition_and_stellar_is_refused():
    plan = ozmonitor.plan_import(example("quickstart"), {31337: "anvil-a"})
    flows = by_name(plan)
    assert set(flows) == {"Large Transfer of USDC Token: Transfer", "Large Transfer of USDC Token: transfer()"}

    event = flows["Large Transfer of USDC Token: Transfer"].graph
    trigger = event["nodes"][0]
    assert trigger["type"] == "chain.event"
    assert trigger["config"] == {
        "chain": 31337, "addresses": [TOKEN], "confirmations": 1, "filters": [],
        "event": "Transfer(address indexed from, address indexed to, uint256 value)",
        "condition": "trigger.args.value > 10000000000",
    }
    assert [(n["type"], n["id"]) for n in event["nodes"][1:]] == [
        ("notify.slack", "evm_large_transfer_usdc_slack"), ("notify.email", "evm_large_transfer_usdc_email")]
    slack, email = event["nodes"][1]["config"], event["nodes"][2]["config"]
    assert slack["webhook_secret"] == "EVM_LARGE_TRANSFER_USDC_SLACK_URL"
    assert slack["text"] == ("*large_transfer_slack triggered*\n\nLarge transfer of {{ trigger.args.value }} USDC from "
                             "{{ trigger.args.from }} to {{ trigger.args.to }} | "
                             "https://etherscan.io/tx/{{ trigger.tx_hash }}#eventlog")
    assert email["to"] == ["recipient1@example.com", "recipient2@example.com"]
    assert email["subject"] == "large_transfer_usdc_email triggered"
    assert "{{ trigger.args.value }} USDC from {{ trigger.args.from }}" in email["body"]
    compile_graph(event, chains={31337: "anvil-a"}, secret_names={"EVM_LARGE_TRANSFER_USDC_SLACK_URL"})

    call = flows["Large Transfer of USDC Token: transfer()"].graph
    compile_graph(call, chains={31337: "anvil-a"}, secret_names={"EVM_LARGE_TRANSFER_USDC_SLACK_URL"})
    function = call["nodes"][0]
    # OZ matches calls whatever their status unless a transaction condition says; this one says Success.
    assert function["type"] == "chain.transaction"
    assert function["config"] == {"chain": 31337, "to": [TOKEN], "from": [], "filters": [], "confirmations": 1,
                                  "function": "transfer(address to, uint256 value)", "status": "success"}

    # The filter script is not run, so nothing of this monitor may go live without a person's review.
    assert all(f.hold == ["filter script(s) not translated: ./config/filters/evm_filter_block_number.sh"]
               for f in plan.flows)
    assert any("evm_filter_block_number.sh" in w and "unpublished" in w for w in plan.warnings)
    assert any("host, port, username, password, sender are not used" in w for w in plan.warnings)
    assert any("${events.0.args.value}: a function flow has no matched event" in w for w in plan.warnings)
    (stellar,) = plan.refused
    assert stellar.monitor == "Large Swap By Dex" and "EVM chains only" in stellar.reasons[0]
    # The Plain slack URL becomes a secret; the email's SMTP password does not (it is not used).
    assert list(plan.secrets) == ["EVM_LARGE_TRANSFER_USDC_SLACK_URL"]
    assert plan.secrets["EVM_LARGE_TRANSFER_USDC_SLACK_URL"].value == SLACK_PLAIN
    assert SLACK_PLAIN not in json.dumps([f.graph for f in plan.flows]) and SLACK_PLAIN not in repr(plan)


def test_every_trigger_type_of_ozs_examples_becomes_an_action():
    plan = ozmonitor.plan_import(with_notifications(example("quickstart")), {31337: "anvil-a"})
    graph = by_name(plan)["Large Transfer of USDC Token: Transfer"].graph
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["evm_large_transfer_usdc_discord"]["type"] == "notify.discord"
    assert nodes["evm_large_transfer_usdc_discord"]["config"]["webhook_secret"] == "EVM_LARGE_TRANSFER_USDC_DISCORD_URL"
    telegram = nodes["evm_large_transfer_usdc_telegram"]["config"]
    assert telegram["bot_token_secret"] == "EVM_LARGE_TRANSFER_USDC_TELEGRAM_TOKEN"
    assert telegram["chat_id"] == "9876543210"
    assert telegram["text"].startswith("large_transfer_telegram triggered\n\nLarge transfer of {{ trigger.args.value }}")
    webhook = nodes["evm_large_transfer_usdc_webhook"]
    assert webhook["type"] == "http.request"
    assert webhook["config"]["url"] == "{{ secrets.EVM_LARGE_TRANSFER_USDC_WEBHOOK_URL }}"
    assert webhook["config"]["body"]["title"] == "large_transfer_webhook triggered"
    assert webhook["config"]["headers"] == {"Content-Type": "application/json"}
    assert any("disable_web_preview is not supported" in w for w in plan.warnings)
    assert any("HMAC signature" in w for w in plan.warnings)
    assert set(plan.secrets) == {"EVM_LARGE_TRANSFER_USDC_SLACK_URL", "EVM_LARGE_TRANSFER_USDC_DISCORD_URL",
                                 "EVM_LARGE_TRANSFER_USDC_TELEGRAM_TOKEN", "EVM_LARGE_TRANSFER_USDC_WEBHOOK_URL"}
    text = json.dumps(graph)
    for secret in ("1234567890:ABCDEFGHIJKLMNOPQRSTUVWXYZ", "https://discord.com/api/webhooks", "webhook.site",
                   "some-secret"):
        assert secret not in text
    compile_graph(graph, chains={31337: "anvil-a"}, secret_names=set(plan.secrets))


def test_networks_without_a_configured_chain_are_listed_as_missing():
    plan = ozmonitor.plan_import(example("rise"), {31337: "anvil-a"})
    assert plan.flows == []
    (missing,) = plan.missing_networks.values()
    assert (missing.slug, missing.chain_id) == ("rise_mainnet", 4153)
    assert sorted(missing.monitors) == ["RISE Bridge Withdrawal", "RISE USDC Transfer", "RISEx Emergency Pause Alert"]


def test_the_rise_examples_compile_on_a_server_with_their_chain():
    plan = ozmonitor.plan_import(example("rise"), {4153: "rise"})
    flows = by_name(plan)
    assert len(flows) == 1 + 1 + 6  # one flow per event condition
    for flow in plan.flows:
        compile_graph(flow.graph, chains={4153: "rise"}, secret_names=set(plan.secrets))
        assert flow.graph["nodes"][0]["config"]["confirmations"] == 12
    # OZ decodes a log with its own address's ABI: Pause() is only declared by the first contract.
    assert flows["RISEx Emergency Pause Alert: Pause"].graph["nodes"][0]["config"]["addresses"] == [
        "0x53f10fAcFC8965750494E6965F5d6dA39B41d852"]
    assert flows["RISEx Emergency Pause Alert: PausedFunction"].graph["nodes"][0]["config"]["addresses"] == [
        "0x53f10fAcFC8965750494E6965F5d6dA39B41d852", "0x2C03C7d7e2974C6599b6B108879109281ef3F818"]
    # The withdrawal monitor names a trigger its triggers file does not define (as in OZ's repository).
    assert flows["RISE Bridge Withdrawal: WithdrawalProcessed"].hold == ["no action"]
    assert any("rise_bridge_withdrawal_rise_slack is not defined" in w for w in plan.warnings)
    assert any("${transaction.to}: an event flow does not read" in w for w in plan.warnings)
    need = plan.secrets["RISE_USDC_TRANSFER_SLACK_URL"]
    assert (need.source, need.reference, need.value) == ("environment", "SLACK_WEBHOOK_URL", None)


DOCS_MONITOR = {  # the "Example Monitor Configuration" of OZ Monitor's docs
    "name": "Large USDC Transfers",
    "networks": ["ethereum_mainnet"],
    "paused": False,
    "addresses": [{"address": TOKEN.lower(), "contract_spec": [
        {"type": "event", "name": "Transfer", "anonymous": False, "inputs": list(TRANSFER_PARAMS)},
        {"type": "function", "name": "transfer", "stateMutability": "nonpayable",
         "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
         "outputs": [{"name": "", "type": "bool"}]}]}],
    "match_conditions": {
        "functions": [{"signature": "transfer(address,uint256)", "expression": "value > 1000000"}],
        "events": [{"signature": "Transfer(address,address,uint256)", "expression": "value > 1000000"}],
        "transactions": [{"status": "Success", "expression": "value > 1500000000000000000"}],
    },
    "trigger_conditions": [],
    "triggers": ["evm_large_transfer_usdc_slack"],
}


def config_with(*monitors: dict, triggers: dict | None = None) -> ozmonitor.OzConfig:
    config = example("quickstart")
    config.monitors = [(f"monitors/{i}.json", m) for i, m in enumerate(monitors)]
    if triggers is not None:
        config.triggers.update(triggers)
    return config


def test_a_monitor_with_a_condition_an_event_flow_cannot_check_is_refused_whole():
    # OZ ANDs the transaction's value with the Transfer event; an event flow does not see the value,
    # and leaving it out would fire on more than asked: nothing of the monitor is imported.
    plan = ozmonitor.plan_import(config_with(DOCS_MONITOR), {31337: "anvil-a"})
    assert plan.flows == []
    (refusal,) = plan.refused
    assert refusal.monitor == "Large USDC Transfers"
    assert "the transaction condition 'value > 1500000000000000000' reads the transaction" in refusal.reasons[0]


def test_function_and_transaction_conditions_are_anded_as_in_oz():
    monitor = {**DOCS_MONITOR, "match_conditions": {**DOCS_MONITOR["match_conditions"], "events": []}}
    (flow,) = ozmonitor.plan_import(config_with(monitor), {31337: "anvil-a"}).flows
    config = flow.graph["nodes"][0]["config"]
    assert (config["status"], config["condition"]) == (
        "success", "(trigger.args.value > 1000000) and (trigger.value > 1500000000000000000)")
    mixed = {**monitor, "match_conditions": {"functions": [{"signature": "transfer(address,uint256)"}], "transactions": [
        {"status": "Failure", "expression": None}, {"status": "Success", "expression": "gas_used > 50000"}]}}
    (flow,) = ozmonitor.plan_import(config_with(mixed), {31337: "anvil-a"}).flows
    config = flow.graph["nodes"][0]["config"]
    assert (config["status"], config["condition"]) == (
        "any", '(trigger.status == "failed") or (trigger.status == "success" and (trigger.gas_used > 50000))')
    unknown = {**monitor, "match_conditions": {"transactions": [{"status": "Any", "expression": "gas_limit > 1"}]}}
    plan = ozmonitor.plan_import(config_with(unknown), {31337: "anvil-a"})
    assert plan.flows == [] and "'gas_limit' is not in what Kwala reads" in plan.refused[0].reasons[0]


def test_a_monitor_of_transactions_only_watches_what_its_addresses_send_and_receive_once_each():
    besu = {"name": "Besu Private AssetTransfer", "paused": True, "networks": ["ethereum_mainnet"],
            "addresses": [{"address": "0xc0577f6dabcc09a7f226af8af818703fb2351055", "contract_spec": []}],
            "match_conditions": {"functions": [], "events": [], "transactions": []},
            "trigger_conditions": [], "triggers": []}  # OZ's besu_private_asset_transfer.json
    plan = ozmonitor.plan_import(config_with(besu), {31337: "anvil-a"})
    received, sent = plan.flows
    watched = to_checksum_address("0xc0577f6dabcc09a7f226af8af818703fb2351055")
    assert received.graph["nodes"][0]["config"] == {"chain": 31337, "confirmations": 1, "to": [watched], "from": [],
                                                    "filters": [], "status": "any"}
    assert sent.graph["nodes"][0]["config"]["from"] == [watched]
    assert sent.graph["nodes"][0]["config"]["condition"] == f'((trigger.to or "")|lower) not in ["{watched.lower()}"]'
    assert received.paused and sent.paused and received.hold == ["no action"]


def test_environment_and_vault_secrets_are_named_after_their_trigger_and_keep_no_value():
    triggers = {
        "stellar_large_transfer_usdc_slack": {"name": "Large Transfer Slack Notification", "trigger_type": "slack",
                                              "config": {"slack_url": {"type": "environment", "value": "SLACK_WEBHOOK_URL"},
                                                         "message": {"title": "t", "body": "b"}}},
        "vault_telegram": {"name": "T", "trigger_type": "telegram", "config": {
            "token": {"type": "HashicorpCloudVault", "value": "telegram-bot-token"}, "chat_id": "1",
            "message": {"title": "Alert Title", "body": "Alert message for ${transaction.hash}"}}},
        "custom": {"name": "Script", "trigger_type": "script", "config": {"script_path": "x.py", "language": "Python"}},
    }
    monitor = {**DOCS_MONITOR, "match_conditions": {"events": [{"signature": "Transfer(address,address,uint256)"}]},
               "triggers": list(triggers)}
    plan = ozmonitor.plan_import(config_with(monitor, triggers=triggers), {31337: "anvil-a"})
    env, vault = plan.secrets["STELLAR_LARGE_TRANSFER_USDC_SLACK_URL"], plan.secrets["VAULT_TELEGRAM_TOKEN"]
    assert (env.source, env.reference, env.value) == ("environment", "SLACK_WEBHOOK_URL", None)
    assert (vault.source, vault.reference, vault.value) == ("vault", "telegram-bot-token", None)
    assert any("Trigger custom: script triggers are not run" in w for w in plan.warnings)
    (flow,) = plan.flows
    assert [n["type"] for n in flow.graph["nodes"]] == ["chain.event", "notify.slack", "notify.telegram"]


def test_odd_but_valid_configs_make_flows_that_compile():
    slack = {"name": "S", "trigger_type": "slack", "config": {"slack_url": {"type": "Plain", "value": "https://a.example/1"},
                                                               "message": {"title": "t", "body": "b"},
                                                               "retry_policy": {"max_retries": 5,
                                                                                "initial_backoff": 10**9}}}
    other = {**slack, "config": {**slack["config"], "slack_url": {"type": "Plain", "value": "https://a.example/2"}}}
    monitor = {**DOCS_MONITOR, "addresses": DOCS_MONITOR["addresses"] * 2,  # the same contract listed twice
               "match_conditions": {"events": [{"signature": "Transfer(address, address, uint256)"}]},
               "triggers": ["team-alerts", "team_alerts"]}
    plan = ozmonitor.plan_import(config_with(monitor, triggers={"team-alerts": slack, "team_alerts": other}),
                                 {31337: "anvil-a"})
    (flow,) = plan.flows
    assert flow.graph["nodes"][0]["config"]["addresses"] == [TOKEN]
    # Two trigger ids that differ only in punctuation get a secret each, with their own value.
    assert {n.name: n.value for n in plan.secrets.values()} == {"TEAM_ALERTS_URL": "https://a.example/1",
                                                               "TEAM_ALERTS_URL_2": "https://a.example/2"}
    assert flow.graph["nodes"][1]["config"]["retry"] == {"max_attempts": 6, "backoff_seconds": 86400}
    compile_graph(flow.graph, chains={31337: "anvil-a"}, secret_names=set(plan.secrets))


def test_reading_a_zip_finds_the_config_in_a_folder_and_bad_files_are_named():
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for path in (EXAMPLES / "quickstart").rglob("*.json"):
            archive.write(path, f"config/{path.relative_to(EXAMPLES / 'quickstart')}")
        archive.writestr("config/triggers/broken.json", "{not json")
        archive.writestr("config/filters/evm_filter_block_number.sh", "#!/bin/bash")
    config = ozmonitor.read_zip(data.getvalue())
    assert sorted(config.networks) == ["ethereum_mainnet", "stellar_mainnet"]
    assert [m["name"] for _, m in config.monitors] == ["Large Transfer of USDC Token", "Large Swap By Dex"]
    assert any(w.startswith("Skipped triggers/broken.json: not valid JSON") for w in config.warnings)
    with pytest.raises(ozmonitor.OzConfigError, match="not a zip"):
        ozmonitor.read_zip(b"nope")
    with pytest.raises(ozmonitor.OzConfigError, match="No monitor found"):
        ozmonitor.read_files({"networks": {}, "triggers": {}})


# -- importing for a team -----------------------------------------------------------------------


@pytest.fixture
def anvil_chain(db):
    return Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)


def test_the_import_creates_flows_and_stores_plain_secrets_encrypted_and_audited(team, alice, anvil_chain):
    result = ozmonitor.import_oz_monitor(team, alice, with_notifications(example("quickstart")), publish=True)
    flows = {f.name: f for f in result.flows}
    assert set(flows) == {"Large Transfer of USDC Token: Transfer", "Large Transfer of USDC Token: transfer()"}
    # The filter script holds both flows back although --publish was given.
    assert not any(f.published for f in result.flows)
    assert flows["Large Transfer of USDC Token: Transfer"].not_published == [
        "filter script(s) not translated: ./config/filters/evm_filter_block_number.sh"]
    assert sorted(result.secrets_stored) == ["EVM_LARGE_TRANSFER_USDC_DISCORD_URL", "EVM_LARGE_TRANSFER_USDC_SLACK_URL",
                                             "EVM_LARGE_TRANSFER_USDC_TELEGRAM_TOKEN",
                                             "EVM_LARGE_TRANSFER_USDC_WEBHOOK_URL"]
    assert Secret.objects.get(team=team, name="EVM_LARGE_TRANSFER_USDC_SLACK_URL").reveal() == SLACK_PLAIN
    assert Secret.objects.get(team=team, name="EVM_LARGE_TRANSFER_USDC_TELEGRAM_TOKEN").reveal() == (
        "1234567890:ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    stored = json.dumps([list(FlowVersion.objects.values_list("graph", flat=True)),
                         list(Flow.objects.values_list("description", flat=True)), result.as_dict(),
                         list(audit.events_for(team).values_list("data", flat=True))])
    for value in (SLACK_PLAIN, "1234567890:ABCDEFGHIJKLMNOPQRSTUVWXYZ", "discord.com/api/webhooks", "webhook.site"):
        assert value not in stored
    assert audit.events_for(team, action="secret.created").count() == 4
    assert {r["monitor"] for r in result.refused} == {"Large Swap By Dex"}
    # A person who reviewed the script's logic publishes the event flow: it compiles as imported.
    version = actions.do_publish_version(Flow.objects.get(code=flows["Large Transfer of USDC Token: Transfer"].code), alice)
    assert version.dag["trigger"]["condition"] == "trigger.args.value > 10000000000"


def test_secrets_to_fill_in_hold_the_flow_back_until_they_exist(team, alice):
    Chain.objects.create(slug="rise", name="RISE", chain_id=4153)
    result = ozmonitor.import_oz_monitor(team, alice, example("rise"), publish=True)
    assert result.secrets_stored == []
    fill = {s["name"]: s for s in result.secrets_to_fill}
    assert fill["RISE_USDC_TRANSFER_SLACK_URL"]["hint"] == "was the environment variable SLACK_WEBHOOK_URL"
    transfer = next(f for f in result.flows if f.name == "RISE USDC Transfer: Transfer")
    assert not transfer.published
    assert transfer.not_published == ["fill in the secret(s) RISE_USDC_TRANSFER_SLACK_URL, then publish"]
    assert result.missing_networks == []

    do_set_secret(Membership.objects.get(user=alice), "RISE_USDC_TRANSFER_SLACK_URL", "https://example.com/slack")
    assert actions.do_publish_version(Flow.objects.get(code=transfer.code), alice).status == "PUBLISHED"


def test_an_editor_imports_flows_but_may_not_store_secrets(team, bob, anvil_chain):
    result = ozmonitor.import_oz_monitor(team, bob, example("quickstart"), store_secrets=False)
    assert result.secrets_stored == [] and not Secret.objects.filter(team=team).exists()
    (need,) = result.secrets_to_fill
    assert need["name"] == "EVM_LARGE_TRANSFER_USDC_SLACK_URL" and need["source"] == "plain"
    assert "admins only" in need["hint"]


def test_importing_again_adds_only_what_is_missing_and_keeps_existing_secret_values(team, alice, anvil_chain):
    do_set_secret(Membership.objects.get(user=alice), "EVM_LARGE_TRANSFER_USDC_SLACK_URL", "https://kept.example/x")
    first = ozmonitor.import_oz_monitor(team, alice, example("quickstart"))
    again = ozmonitor.import_oz_monitor(team, alice, example("quickstart"))
    assert len(first.flows) == 2 and again.flows == []
    assert sum("exists already; not imported again" in w for w in again.warnings) == 2
    assert first.secrets_stored == [] and first.secrets_to_fill == []
    assert Secret.objects.get(team=team, name="EVM_LARGE_TRANSFER_USDC_SLACK_URL").reveal() == "https://kept.example/x"


def test_a_paused_monitor_is_imported_paused(team, alice, anvil_chain):
    monitor = {**DOCS_MONITOR, "paused": True,
               "match_conditions": {"events": [{"signature": "Transfer(address,address,uint256)"}]}}
    result = ozmonitor.import_oz_monitor(team, alice, config_with(monitor), publish=True)
    (flow,) = result.flows
    assert flow.published and flow.paused
    assert Flow.objects.get(code=flow.code).paused


# -- the command and the API -----------------------------------------------------------------


def test_the_command_imports_a_directory_and_prints_what_it_did(team, anvil_chain):
    out = io.StringIO()
    call_command("flows", "import-oz-monitor", str(EXAMPLES / "quickstart"), "--team", team.code, "--publish",
                 stdout=out)
    text = out.getvalue()
    assert text.count("\nflow ") + text.startswith("flow ") == 2
    assert "secret EVM_LARGE_TRANSFER_USDC_SLACK_URL: stored from the configuration" in text
    assert "refused monitor Large Swap By Dex: Kwala watches EVM chains only" in text
    assert "warning: Monitor Large Transfer of USDC Token: its filter script" in text
    assert SLACK_PLAIN not in text
    with pytest.raises(CommandError, match="No team"):
        call_command("flows", "import-oz-monitor", str(EXAMPLES / "quickstart"), "--team", "nope")
    with pytest.raises(CommandError, match="is not a directory"):
        call_command("flows", "import-oz-monitor", str(EXAMPLES / "missing"), "--team", team.code)


def test_the_command_lists_missing_networks(team):
    out = io.StringIO()
    call_command("flows", "import-oz-monitor", str(EXAMPLES / "rise"), "--team", team.code, stdout=out)
    assert "missing network rise_mainnet (chain id 4153): " in out.getvalue()
    assert not Flow.objects.filter(team=team).exists()


def api_files(case: str) -> dict:
    return {section: {p.name: json.loads(p.read_text()) for p in (EXAMPLES / case / section).glob("*.json")}
            for section in ozmonitor.SECTIONS}


def test_the_api_imports_for_admins_with_secrets_and_for_editors_without(team, alice, bob, anvil_chain):
    from tests.team_fixtures import api_client

    response = api_client(bob).post("/api/v1/flows/import-oz-monitor", api_files("quickstart"),
                                    content_type="application/json")
    assert response.status_code == 201, response.content
    data = json.loads(response.content)
    assert len(data["flows"]) == 2 and data["secrets_stored"] == []
    assert data["secrets_to_fill"][0]["name"] == "EVM_LARGE_TRANSFER_USDC_SLACK_URL"
    Flow.objects.all().delete()
    response = api_client(alice).post("/api/v1/flows/import-oz-monitor", {**api_files("quickstart"), "publish": True},
                                      content_type="application/json")
    assert response.status_code == 201
    assert json.loads(response.content)["secrets_stored"] == ["EVM_LARGE_TRANSFER_USDC_SLACK_URL"]


def test_the_api_refuses_viewers_outsiders_and_configs_without_monitors(team, make_member, charlie, anvil_chain):
    from tests.team_fixtures import api_client

    viewer = api_client(make_member("VIEWER"))
    assert viewer.post("/api/v1/flows/import-oz-monitor", api_files("quickstart"),
                       content_type="application/json").status_code == 403
    outsider = api_client(charlie).post("/api/v1/flows/import-oz-monitor", api_files("quickstart"),
                                        content_type="application/json")
    assert outsider.status_code == 201  # into his own team, which has none of alice's flows
    assert not Flow.objects.filter(team=team).exists()
    empty = api_client(charlie).post("/api/v1/flows/import-oz-monitor", {"monitors": {}},
                                     content_type="application/json")
    assert empty.status_code == 400 and json.loads(empty.content)["error"]["code"] == "invalid_config"


def zipped(case: str) -> io.BytesIO:
    import zipfile

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for path in (EXAMPLES / case).rglob("*.json"):
            archive.write(path, str(path.relative_to(EXAMPLES)))
    data.seek(0)
    data.name = f"{case}.zip"
    return data


def test_the_editors_import_page_takes_a_zip_and_lists_what_it_made(team, alice, make_member, anvil_chain):
    from django.urls import reverse

    from tests.team_fixtures import logged_in

    flow = actions.do_create_flow(team, alice, "Existing")
    url = reverse("flow_import", args=[flow.code])
    page = logged_in(alice).post(url, {"oz_config": zipped("quickstart")})
    assert page.status_code == 200
    made = Flow.objects.get(team=team, name="Large Transfer of USDC Token: Transfer")
    assert f'href="/flows/{made.code}/"'.encode() in page.content
    assert b"refused monitor Large Swap By Dex" in page.content
    assert b"filter script(s) not translated" in page.content
    assert SLACK_PLAIN.encode() not in page.content
    assert actions.current_graph(flow)[1] == actions.EMPTY_GRAPH  # the flow the page belongs to is unchanged

    bad = logged_in(alice).post(url, {"oz_config": io.BytesIO(b"not a zip")})
    assert bad.status_code == 422 and b"not a zip archive" in bad.content
    viewer = logged_in(make_member("VIEWER")).post(url, {"oz_config": zipped("quickstart")})
    assert viewer.status_code in (403, 404)
    assert Flow.objects.filter(team=team).count() == 3


# -- on a real chain -----------------------------------------------------------------------------


def copy_example(case: str, tmp_path: Path, replace: dict[str, str]) -> Path:
    """The example with its outbound URLs pointed at the local sink (the only change)."""
    target = tmp_path / case
    shutil.copytree(EXAMPLES / case, target)
    for path in target.rglob("*.json"):
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        path.write_text(text)
    return target


@pytest.fixture
def token_chain(fresh_anvil):
    """A fresh anvil (chain 31337) whose first contract is KwalaToken, the examples' watched address."""
    w3 = fresh_anvil.web3()
    token = contract(w3, "KwalaToken", deploy(w3, "KwalaToken", "Kwala Token", "KWL"))
    assert token.address == TOKEN
    transact(w3, token.functions.mint(SENDER, 10**15))
    listener = listener_for(make_chain(fresh_anvil))
    listener.step()  # past the setup's blocks: the mint is a large Transfer too
    return w3, token, listener


def listening(listener):
    """The listener with the flows published since it last loaded its triggers."""
    listener.registry.reload()
    listener.step()
    return listener


def finished_runs(flow: Flow, count: int) -> list[Run]:
    wait_for(lambda: Run.objects.filter(flow=flow, status__in=Run.FINISHED).count() >= count)
    return list(Run.objects.filter(flow=flow).order_by("block_number"))


@pytest.mark.django_db(transaction=True)
def test_the_quickstart_example_fires_on_anvil_with_its_slack_message_and_email(
    token_chain, dramatiq_worker, http_sink, smtp_sink, team, alice, tmp_path
):
    w3, token, listener = token_chain
    directory = copy_example("quickstart", tmp_path, {SLACK_PLAIN: f"{http_sink.url}/slack/quickstart"})
    out = io.StringIO()
    call_command("flows", "import-oz-monitor", str(directory), "--team", team.code, "--publish", stdout=out)
    assert "not published: filter script(s) not translated" in out.getvalue()
    # The person who reviewed the filter script (a block-number filter) publishes both flows as imported.
    event_flow = Flow.objects.get(team=team, name="Large Transfer of USDC Token: Transfer")
    call_flow = Flow.objects.get(team=team, name="Large Transfer of USDC Token: transfer()")
    for flow in (event_flow, call_flow):
        actions.do_publish_version(flow, alice)

    listening(listener)
    small = transact(w3, token.functions.transfer(RECIPIENT, 5), sender=SENDER)
    big = transact(w3, token.functions.transfer(RECIPIENT, 2 * 10**10), sender=SENDER)
    mine(w3)  # the network's confirmation_blocks: 1
    listener.step()

    (event_run,) = finished_runs(event_flow, 1)  # value > 10000000000: the big one only
    call_runs = finished_runs(call_flow, 2)  # every successful transfer() call
    assert [r.status for r in [event_run, *call_runs]] == [Run.Status.SUCCEEDED] * 3
    assert [r.trigger["hash"] for r in call_runs] == [small["transactionHash"].to_0x_hex(),
                                                       big["transactionHash"].to_0x_hex()]
    texts = sorted(r.json()["text"] for r in http_sink.wait_for("/slack/quickstart", 3))
    big_hash = big["transactionHash"].to_0x_hex()
    assert f"*large_transfer_slack triggered*\n\nLarge transfer of 20000000000 USDC from {SENDER} to {RECIPIENT} | " \
           f"https://etherscan.io/tx/{big_hash}#eventlog" in texts
    # The call flows have no matched event: OZ leaves those variables empty, and so do they.
    assert f"*large_transfer_slack triggered*\n\nLarge transfer of  USDC from  to  | https://etherscan.io/tx/" \
           f"{big_hash}#eventlog" in texts
    mails = smtp_sink.wait_for(3)
    assert all(sorted(m["to"]) == ["recipient1@example.com", "recipient2@example.com"] for m in mails)
    assert any(f"Large transfer of 20000000000 USDC from {SENDER}" in m["data"] for m in mails)


@pytest.mark.django_db(transaction=True)
def test_a_rise_monitor_fires_once_its_chain_is_configured_and_its_secret_filled_in(
    dramatiq_worker, http_sink, team, alice
):
    with AnvilProcess(port=0, chain_id=4153) as rise:
        w3 = rise.web3()
        token = contract(w3, "KwalaToken", deploy(w3, "KwalaToken", "Kwala Token", "KWL"))
        transact(w3, token.functions.mint(SENDER, 10**15))
        out = io.StringIO()
        call_command("flows", "import-oz-monitor", str(EXAMPLES / "rise"), "--team", team.code, stdout=out)
        assert "missing network rise_mainnet (chain id 4153)" in out.getvalue()
        assert not Flow.objects.filter(team=team).exists()

        listener = listener_for(make_chain(rise, "rise"))
        listener.step()  # past the mint
        out = io.StringIO()
        call_command("flows", "import-oz-monitor", str(EXAMPLES / "rise"), "--team", team.code, "--publish",
                     stdout=out)
        assert "secret RISE_USDC_TRANSFER_SLACK_URL: to fill in (was the environment variable SLACK_WEBHOOK_URL" \
            in out.getvalue()
        flow = Flow.objects.get(team=team, name="RISE USDC Transfer: Transfer")
        assert actions.live_version(flow) is None
        do_set_secret(Membership.objects.get(user=alice), "RISE_USDC_TRANSFER_SLACK_URL", f"{http_sink.url}/rise")
        actions.do_publish_version(flow, alice)

        listening(listener)
        receipt = transact(w3, token.functions.transfer(RECIPIENT, 3 * 10**10), sender=SENDER)
        mine(w3, 12)  # RISE's confirmation_blocks
        listener.step()
        (run,) = finished_runs(flow, 1)
        assert run.status == Run.Status.SUCCEEDED
        (message,) = http_sink.wait_for("/rise")
        text = message.json()["text"]
        assert text.startswith("*RISE USDC Transfer triggered*\n\n*USDC Transfer on RISE*\n*Amount:* 30000000000\n")
        assert f"<https://explorer.risechain.com/tx/{receipt['transactionHash'].to_0x_hex()}|" in text


@pytest.mark.django_db(transaction=True)
def test_a_transaction_monitor_fires_on_value_sent_to_and_by_its_address_through_a_webhook(
    token_chain, dramatiq_worker, http_sink, team, alice
):
    w3, _, listener = token_chain
    watched = DEV_ACCOUNTS[4].address
    webhook = json.loads((EXAMPLES / "notifications" / "triggers" / "webhook_notifications.json").read_text())
    webhook["evm_large_transfer_usdc_webhook"]["config"]["url"]["value"] = f"{http_sink.url}/hook"
    webhook["evm_large_transfer_usdc_webhook"]["config"]["message"]["body"] = (
        "${monitor.name}: ${transaction.value} wei from ${transaction.from} to ${transaction.to}")
    monitor = {"name": "Treasury moves", "networks": ["ethereum_mainnet"], "paused": False,
               "addresses": [{"address": watched}],
               # The transaction condition of OZ's docs: more than 1.5 ETH, successful.
               "match_conditions": {"transactions": [{"status": "Success", "expression": "value > 1500000000000000000"}]},
               "triggers": ["evm_large_transfer_usdc_webhook"]}
    config = ozmonitor.read_files({"networks": api_files("quickstart")["networks"],
                                   "monitors": {"treasury.json": monitor}, "triggers": {"webhook.json": webhook}})
    result = ozmonitor.import_oz_monitor(team, alice, config, publish=True)
    assert [f.published for f in result.flows] == [True, True]

    listening(listener)
    for sender, to, wei in ((SENDER, watched, 2 * 10**18), (SENDER, watched, 10**18), (watched, RECIPIENT, 3 * 10**18),
                            (SENDER, RECIPIENT, 5 * 10**18)):
        wait_for_receipt(w3, w3.eth.send_transaction({"from": sender, "to": to, "value": wei}))
    mine(w3)
    listener.step()
    bodies = sorted(r.json()["body"] for r in http_sink.wait_for("/hook", 2))
    assert bodies == [f"Treasury moves: 2000000000000000000 wei from {SENDER} to {watched}",
                      f"Treasury moves: 3000000000000000000 wei from {watched} to {RECIPIENT}"]
    received, sent = (Flow.objects.get(team=team, name=f"Treasury moves: transactions {w}") for w in ("to", "from"))
    assert len(finished_runs(received, 1)) == 1 and len(finished_runs(sent, 1)) == 1
