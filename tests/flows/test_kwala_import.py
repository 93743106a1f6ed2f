"""Kwala workflow files, as Kwala documents and writes them, imported verbatim.

The fixtures in tests/flows/kwala/ are whole Kwala workflow files: every documented
trigger form (event, filtered event, interval, cron, run once, oracle price) and
action form (post/api, call, deploy), sequential and parallel.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from eth_utils import keccak

from flows.expressions import evaluate
from flows.flowyaml import (
    STATUS_API_KEY_SECRET,
    FlowYamlError,
    import_kwala_yaml,
    translate_kwala_yaml,
)
from flows.graph import CompileError, compile_graph

FIXTURES = Path(__file__).parent / "kwala"
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
CHAINS = {1: "ethereum", 8453: "base", 11155111: "sepolia"}
SIGNERS = {"DEFAULT_SIGNER"}
VOTE_CAST_TOPIC0 = "0x" + keccak(text="VoteCast(uint256,uint8,bool,bytes32)").hex()


def kwala(name: str) -> str:
    return (FIXTURES / name).read_text()


def translate(name_or_text: str, **kwargs):
    text = kwala(name_or_text) if name_or_text.endswith(".yaml") else name_or_text
    return translate_kwala_yaml(text, chains=CHAINS, now=NOW, **kwargs)


def nodes_of(result) -> dict[str, dict]:
    return {n["id"]: n for n in result.graph["nodes"]}


# -- a file with every documented field ----------------------------------------------


def test_a_file_with_every_documented_field_imports_and_warns_only_about_the_indexed_layout():
    result = translate("dao_vote_every_field.yaml")
    assert result.warnings == [
        "Line 7: Trigger.TriggerEventName: VoteCast(uint256,uint8,bool,bytes32) marks no argument `indexed` "
        "and no ABI was given: which arguments are indexed is inferred from each log's topics; to be "
        "explicit, write the markers (e.g. VoteCast(uint256 indexed id, ...)) or paste the ABI in "
        "TriggerSourceContractABI"
    ]
    assert result.meta == {"name": "DAO_VoteCast_Notifier", "description": "Imported from a Kwala workflow"}
    nodes = nodes_of(result)
    assert set(nodes) == {"trigger", "telegram_vote_alert"}  # an empty status URL adds no report
    assert nodes["trigger"]["config"] == {
        "chain": 11155111,
        "addresses": ["0x9A3f6bD35C0dBC55b6C3a5b2e0B8F0f05a1E6d21"],
        "event": "VoteCast(uint256,uint8,bool,bytes32)",
        "expire_at": "2030-01-01T00:00:00+00:00",
    }
    alert = nodes["telegram_vote_alert"]["config"]
    assert alert["body"] == {
        "chat_id": "-1001234567890",
        "text": "New vote cast {{ trigger.args_list[1] }} on proposal {{ trigger.args_list[0] }}",
    }
    assert alert["retry"] == {"max_attempts": 6}
    dag = compile_graph(result.graph, chains=CHAINS)
    assert dag["trigger"]["topic0"] == VOTE_CAST_TOPIC0


def test_a_pasted_base64_abi_gives_the_event_its_names_and_indexed_markers():
    result = translate("dao_vote_with_abi.yaml")
    assert result.warnings == []
    trigger = nodes_of(result)["trigger"]["config"]
    assert trigger["event"] == "VoteCast(uint256 indexed proposalId, uint8 support, bool isPrivate, bytes32 commitment)"
    assert nodes_of(result)["telegram_vote_alert"]["config"]["body"]["text"] == (
        "New vote cast {{ trigger.args.support }} on proposal {{ trigger.args.proposalId }}"
    )
    dag = compile_graph(result.graph, chains=CHAINS)
    assert dag["trigger"]["topic0"] == VOTE_CAST_TOPIC0  # the same event, now decodable
    assert [p["indexed"] for p in dag["trigger"]["event_abi"]["inputs"]] == [True, False, False, False]


def test_the_recurring_abi_serves_when_only_the_recurring_section_has_one():
    text = re.sub(r"(?m)^  TriggerSourceContractABI: .*$", "  TriggerSourceContractABI: NA", kwala("dao_vote_with_abi.yaml"))
    assert "TriggerSourceContractABI: NA" in text
    assert "RecurringSourceContractABI: W3si" in text
    result = translate(text)
    assert result.warnings == []
    assert "uint256 indexed proposalId" in nodes_of(result)["trigger"]["config"]["event"]


def test_an_abi_placeholder_warns_and_the_signature_is_used_alone():
    text = kwala("dao_vote_every_field.yaml").replace(
        "TriggerSourceContractABI: NA", "TriggerSourceContractABI: <base64-encoded ABI from Kwala dashboard>"
    )
    result = translate(text)
    assert result.warnings[0] == (
        "Line 7: Trigger.TriggerEventName: VoteCast(uint256,uint8,bool,bytes32) marks no argument `indexed` "
        "and no ABI was given: which arguments are indexed is inferred from each log's topics; to be "
        "explicit, write the markers (e.g. VoteCast(uint256 indexed id, ...)) or paste the ABI in "
        "TriggerSourceContractABI"
    )
    assert result.warnings[1] == (
        "Line 9: Trigger.TriggerSourceContractABI: is neither a JSON ABI nor base64 of one; the event is "
        "read from TriggerEventName alone"
    )
    assert nodes_of(result)["trigger"]["config"]["event"] == "VoteCast(uint256,uint8,bool,bytes32)"


def test_fields_with_no_equivalent_and_unknown_fields_warn_instead_of_refusing():
    text = (
        kwala("dao_vote_every_field.yaml")
        .replace("  TriggerPrice: NA", "  TriggerPrice: 1800")
        .replace("    Bytecode: NA", "    Bytecode: '0x6080'")
        .replace("    Metadata: NA", "    Metadata: alerts the DAO chat")
        .replace("Execution:", "Owner: dao-ops\nExecution:")
    )
    warnings = translate(text).warnings
    assert warnings[1:] == [
        "Line 10: Trigger.TriggerPrice: a flow has one trigger and this one starts on the event; the price is "
        "not watched (import it as its own workflow)",
        "Line 35: Actions[0].Bytecode: only for 'call' and 'deploy' actions; ignored",
        "Line 38: Actions[0].Metadata: a note only; there is no place for it on a step, so it is left out",
        "Line 40: Owner: not a field of Kwala's workflow format; ignored",
    ]


def test_meta_becomes_the_flow_description():
    result = translate("hourly_report.yaml")
    assert result.meta["description"] == "Imported from a Kwala workflow. Meta: Hourly treasury snapshot"


def test_a_different_recurring_event_warns_that_one_flow_watches_one_source():
    text = kwala("dao_vote_every_field.yaml").replace(
        "RecurringEventName: VoteCast(uint256,uint8,bool,bytes32)", "RecurringEventName: ProposalQueued(uint256)"
    )
    (warning,) = [w for w in translate(text).warnings if "Recurring" in w]
    assert warning == (
        "Line 13: Trigger.RecurringEventName: a second event source (RecurringSourceContract, RecurringChainID, "
        "RecurringEventName) has no equivalent in one flow: this flow runs on the Trigger* event only; import "
        "the workflow again with the Recurring* values as Trigger* values for the other source"
    )


def test_a_recurring_event_alone_is_the_trigger():
    text = kwala("dao_vote_every_field.yaml").replace(
        "  TriggerEventName: VoteCast(uint256,uint8,bool,bytes32)\n", "  TriggerEventName: NA\n"
    )
    result = translate(text)
    assert nodes_of(result)["trigger"]["config"]["event"] == "VoteCast(uint256,uint8,bool,bytes32)"
    assert "Line 13: Trigger.RecurringEventName: VoteCast" in result.warnings[0]  # the indexed layout


@pytest.mark.parametrize(
    ("repeat", "warning"),
    [
        ("NA", "Line 17: Trigger.RepeatEvery: is NA, so Kwala would run once; this flow runs on every matching "
               "event (unpublish it after the first run to run once)"),
        ("5m", "Line 17: Trigger.RepeatEvery: '5m' after an event has no equivalent: this flow runs on every "
               "matching event (without TriggerEventName, RepeatEvery makes a schedule)"),
    ],
)
def test_an_event_trigger_that_does_not_repeat_on_events_says_what_the_flow_does(repeat, warning):
    text = kwala("dao_vote_every_field.yaml").replace("RepeatEvery: event", f"RepeatEvery: {repeat}")
    assert warning in translate(text).warnings


# -- event triggers ---------------------------------------------------------------


def test_docs_style_keys_a_json_abi_and_filter_operators_map_to_topic_and_argument_filters():
    result = translate("whale_transfers_docs_style.yaml")
    assert result.warnings == [
        "Line 26: Actions[0].Metadata: a note only; there is no place for it on a step, so it is left out"
    ]
    assert result.meta["name"] == "whale_transfers"
    call = nodes_of(result)["mirror_the_transfer"]
    assert call["type"] == "contract.write"
    assert call["config"]["args"] == ["{{ trigger.args.to }}", "{{ trigger.args.value }}"]
    assert call["config"]["retry"] == {"max_attempts": 4}

    dag = compile_graph(result.graph, chains=CHAINS, signer_names=SIGNERS)
    spec = dag["trigger"]
    assert spec["topic0"] == "0x" + keccak(text="Transfer(address,address,uint256)").hex()
    whale = "0x28C6c06298d514Db089934071355E5743bf21d60"
    assert spec["topic_filters"][0] == ["0x" + "00" * 12 + whale[2:].lower()]
    assert len(spec["topic_filters"][1]) == 2  # `to` is one of two addresses
    assert spec["arg_filters"] == [
        {"arg": "value", "type": "uint256", "op": "gte", "value": "1000000000000000000000"},
        {"arg": "value", "type": "uint256", "op": "lte", "value": "5000000000000000000000"},
    ]


def test_a_filter_expression_and_a_start_block_become_the_trigger_condition():
    result = translate("filter_expression.yaml")
    assert result.warnings == []
    config = nodes_of(result)["trigger"]["config"]
    assert config["condition"] == (
        '(trigger.args.value > 500000000 and trigger.args.to == "0xDFd5293D8e347dFe59E90eFd55b2956a1343963d") '
        "and (trigger.block_number >= 21000000)"
    )
    payload = {"args": {"value": 600000000, "to": "0xDFd5293D8e347dFe59E90eFd55b2956a1343963d"},
               "block_number": 21000001}
    assert evaluate(config["condition"], {"trigger": payload}) is True
    assert evaluate(config["condition"], {"trigger": {**payload, "block_number": 20999999}}) is False
    # {{re.event(N)}}, as some Kwala examples write it, is re.event(N).
    assert nodes_of(result)["discord_call"]["config"]["body"] == {
        "content": "USDC received: {{ trigger.args.value }} from {{ trigger.args.from }}"
    }
    compile_graph(result.graph, chains=CHAINS)


def test_a_filter_on_an_argument_the_event_does_not_have_is_a_problem():
    text = kwala("whale_transfers_docs_style.yaml").replace('    from: "0x28C6', '    sender: "0x28C6')
    with pytest.raises(FlowYamlError) as info:
        translate(text)
    assert info.value.message == (
        "Trigger.TriggerEventFilter.sender: the event has no argument 'sender' (from, to, value)"
    )
    assert info.value.line == 10


# -- time triggers ------------------------------------------------------------------


def test_an_interval_starts_at_once_and_a_short_expires_in_is_a_duration():
    result = translate("hourly_report.yaml")
    assert result.warnings == [
        "Line 12: Trigger.ExpiresIn: 2592000 is read as a duration: the flow stops at 2025-07-01T12:00:00+00:00"
    ]
    trigger = nodes_of(result)["trigger"]
    assert trigger["type"] == "schedule"
    assert trigger["config"] == {
        "interval": 3600,
        "start_at": "2025-06-01T12:00:00+00:00",
        "expire_at": "2025-07-01T12:00:00+00:00",
    }
    assert compile_graph(result.graph)["trigger"]["interval_seconds"] == 3600


def test_a_cron_repeat_starts_at_execute_after():
    result = translate("weekday_cron.yaml")
    assert result.warnings == []
    assert nodes_of(result)["trigger"]["config"] == {
        "cron": "0 9 * * 1-5",
        "start_at": "2030-01-01T00:00:00+00:00",
        "expire_at": "2031-01-01T00:00:00+00:00",
    }
    assert compile_graph(result.graph)["trigger"]["cron"] == "0 9 * * 1-5"


def test_an_immediate_workflow_that_does_not_repeat_runs_once_when_published():
    result = translate("run_once_now.yaml")
    trigger = nodes_of(result)["trigger"]
    # A schedule due now, not a manual trigger: Kwala runs it without anyone pressing Run.
    assert trigger == {"id": "trigger", "type": "schedule", "name": "Run once",
                       "config": {"start_at": "2025-06-01T12:00:00+00:00"}, "position": {"x": 0, "y": 0}}
    assert nodes_of(result)["ping"]["config"]["body"] == {"hello": "world"}  # Type api, payload as JSON text
    compile_graph(result.graph)


def test_an_expiry_in_the_past_warns_that_the_flow_will_never_run():
    text = kwala("dao_vote_every_field.yaml").replace("ExpiresIn: 1893456000", "ExpiresIn: 1700000000")
    assert (
        "Line 19: Trigger.ExpiresIn: 2023-11-14T22:13:20+00:00 has passed: the flow will never run"
        in translate(text).warnings
    )


# -- price triggers -----------------------------------------------------------------


def test_a_price_trigger_reads_the_feed_and_runs_inside_kwalas_band():
    result = translate("eth_price_alert.yaml")
    assert result.warnings == [
        "Line 9: Trigger.TriggerPrice: 2500.5 maps to reading latestAnswer() of "
        "0x694AA1769357215DE4FAC081bf1f309aDC325306 every block: the flow runs when the price enters "
        "2488.06–2513.07 (Kwala's ±0.5% band), assuming the feed has 8 decimals like Chainlink's USD feeds; "
        "edit the trigger's condition if not"
    ]
    trigger = nodes_of(result)["trigger"]
    assert trigger["type"] == "chain.state"
    condition = trigger["config"]["condition"]
    assert evaluate(condition, {"result": 2500_00000000}) is True
    assert evaluate(condition, {"result": 2488_10000000}) is True
    assert evaluate(condition, {"result": 2480_00000000}) is False
    assert evaluate(condition, {"result": 2520_00000000}) is False
    spec = compile_graph(result.graph, chains=CHAINS)["trigger"]
    assert spec["selector"] == "0x50d25bcd"  # latestAnswer()
    assert spec["address"] == "0x694AA1769357215DE4FAC081bf1f309aDC325306"


def test_a_price_without_a_feed_is_refused_naming_what_to_add():
    text = kwala("eth_price_alert.yaml").replace(
        "TriggerSourceContract: 0x694AA1769357215DE4FAC081bf1f309aDC325306", "TriggerSourceContract: NA"
    )
    with pytest.raises(FlowYamlError) as info:
        translate(text)
    assert info.value.message == (
        "Trigger.TriggerPrice: Kwala chooses the token's price feed in its dashboard and the file does not say "
        "which: give the feed's address (a Chainlink-style aggregator with latestAnswer()) in "
        "TriggerSourceContract and its chain in TriggerChainID"
    )
    assert info.value.line == 9


# -- actions and execution -------------------------------------------------------------


def test_parallel_actions_leave_out_the_deploy_and_report_status_with_the_key_from_a_secret():
    text = kwala("parallel_post_call_deploy.yaml")
    result = translate(text)
    assert result.warnings == [
        f"Line 14: Trigger.ActionStatusNotificationAPIKey: sent as the X-API-Key header from the team secret "
        f"{STATUS_API_KEY_SECRET}; the key in the file is not copied into the flow: create that secret with it "
        "before publishing",
        "Line 32: Actions[1].RetriesUntilSuccess: 30 retries is more than the 24 allowed here; the step is tried "
        "25 times",
        "Line 34: Actions[2].Type: 'deploy_reward_nft' deploys a contract, which has no equivalent here: the "
        "action is left out; deploy the contract yourself (its Bytecode and InitializationArgs are in the file)",
    ]
    assert "sk_live_do_not_copy_me" in text
    assert "sk_live_do_not_copy_me" not in repr(result.graph)
    nodes = nodes_of(result)
    assert set(nodes) == {"trigger", "announce", "mint_badge", "status_join", "status_report"}
    assert "retry" not in nodes["announce"]["config"]  # RetriesUntilSuccess: 0 is one try
    assert nodes["mint_badge"]["config"]["retry"] == {"max_attempts": 25}
    assert nodes["status_report"]["config"]["headers"] == {"X-API-Key": "{{ secrets.KWALA_STATUS_API_KEY }}"}
    assert nodes["trigger"]["config"]["filters"] == [{"arg": "score", "op": "gt", "value": 100}]

    with pytest.raises(CompileError) as info:
        compile_graph(result.graph, chains=CHAINS, signer_names=SIGNERS, secret_names=set())
    assert any("KWALA_STATUS_API_KEY" in p.message for p in info.value.problems)
    dag = compile_graph(result.graph, chains=CHAINS, signer_names=SIGNERS, secret_names={STATUS_API_KEY_SECRET})
    assert dag["entry"] == ["announce", "mint_badge"]
    steps = {s["id"]: s for s in dag["steps"]}
    assert steps["status_join"]["successors"] == {"out": ["status_report"]}
    assert [a["name"] for a in steps["status_report"]["config"]["body"]["actions"]] == ["announce", "mint_badge"]


def test_sequential_actions_chain_in_order_and_every_failure_reports():
    text = kwala("parallel_post_call_deploy.yaml").replace("Mode: parallel", "Mode: sequential")
    dag = compile_graph(translate(text).graph, chains=CHAINS, signer_names=SIGNERS,
                        secret_names={STATUS_API_KEY_SECRET})
    assert dag["entry"] == ["announce"]
    steps = {s["id"]: s for s in dag["steps"]}
    assert steps["announce"]["successors"] == {"out": ["mint_badge"], "error": ["status_report"]}
    assert steps["mint_badge"]["successors"] == {"out": ["status_report"], "error": ["status_report"]}


@pytest.mark.parametrize(("retries", "attempts"), [("0", None), ("1", 2), ("24", 25)])
def test_retries_until_success_counts_the_retries_after_the_first_try(retries, attempts):
    text = kwala("dao_vote_every_field.yaml").replace("RetriesUntilSuccess: 5", f"RetriesUntilSuccess: {retries}")
    config = nodes_of(translate(text))["telegram_vote_alert"]["config"]
    assert config.get("retry") == ({"max_attempts": attempts} if attempts else None)


def test_a_workflow_that_only_deploys_is_refused():
    text = kwala("parallel_post_call_deploy.yaml")
    only_deploy = text[: text.index("  - Name: announce")] + text[text.index("  - Name: deploy_reward_nft"):]
    with pytest.raises(FlowYamlError, match="no action is left to run"):
        translate(only_deploy)


def test_a_call_named_only_by_its_function_name_finds_it_in_encoded_abi():
    abi = '[{"type":"function","name":"mintBadge","stateMutability":"nonpayable","inputs":[{"name":"to","type":"address"},{"name":"score","type":"uint256"}],"outputs":[]}]'  # noqa: E501
    text = kwala("parallel_post_call_deploy.yaml").replace(
        "TargetFunction: function mintBadge(address to, uint256 score)", "TargetFunction: mintBadge"
    ).replace("    EncodedABI: NA\n", f"    EncodedABI: '{abi}'\n", 1)
    result = translate(text)
    function = nodes_of(result)["mint_badge"]["config"]["function"]
    assert function["name"] == "mintBadge(address,uint256)"
    compile_graph(result.graph, chains=CHAINS, signer_names=SIGNERS, secret_names={STATUS_API_KEY_SECRET})


# -- problems ---------------------------------------------------------------------------


def test_every_problem_of_a_file_is_reported_at_once_with_its_line():
    with pytest.raises(FlowYamlError) as info:
        translate("many_problems.yaml")
    assert info.value.problems == [
        (4, "Trigger.TriggerSourceContract: '0xYourContractAddress' is not an Ethereum address"),
        (5, "Trigger.TriggerChainID: chain 999999 is not configured on this server"),
        (14, "Actions[0].APIEndpoint: is required for a 'post' action"),
        (16, "Actions[0].APIPayload.amount: re.event(7) but the event has 3 arguments"),
        (22, "Actions[1].TargetParams: pay takes 2 arguments, got 1"),
    ]
    assert str(info.value).startswith("5 problems:\n  Line 4: Trigger.TriggerSourceContract")
    assert info.value.line == 4
    assert info.value.warnings == ["Line 10: Trigger.Colour: not a field of Kwala's trigger format; ignored"]


def test_the_two_value_import_still_gives_meta_and_graph():
    meta, graph = import_kwala_yaml(kwala("dao_vote_with_abi.yaml"), chains=CHAINS)
    assert meta["name"] == "DAO_VoteCast_Notifier"
    assert graph["nodes"][0]["type"] == "chain.event"


# -- the command ---------------------------------------------------------------------------


@pytest.fixture
def sepolia(db):
    from executor.models import Chain

    return Chain.objects.create(slug="sepolia", name="Sepolia", chain_id=11155111)


def test_the_command_imports_and_publishes_a_full_kwala_file_and_prints_its_warnings(team, sepolia):
    from flows.models import Flow, FlowVersion

    out, err = io.StringIO(), io.StringIO()
    path = str(FIXTURES / "dao_vote_every_field.yaml")
    call_command("flows", "import", path, "--kwala", "--team", team.code, "--publish", stdout=out, stderr=err)
    flow = Flow.objects.get(team=team, name="DAO_VoteCast_Notifier")
    live = flow.versions.get(status=FlowVersion.Status.PUBLISHED)
    assert live.dag["trigger"]["topic0"] == VOTE_CAST_TOPIC0
    assert f"flow {flow.code}: version 1 published" in out.getvalue()
    assert err.getvalue().startswith(f"warning: {path}: Line 7: Trigger.TriggerEventName: VoteCast(")


def test_the_command_lists_every_problem_and_saves_nothing(team, sepolia):
    from flows.models import Flow

    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("flows", "import", str(FIXTURES / "many_problems.yaml"), "--kwala", "--team", team.code,
                     "--publish", stderr=err)
    # The chains are the server's: only Sepolia is configured here.
    assert "6 problems:" in str(info.value)
    assert "Line 23: Actions[1].ChainID: chain 1 is not configured on this server" in str(info.value)
    assert "Trigger.Colour: not a field" in err.getvalue()
    assert not Flow.objects.exists()


def test_the_command_publishes_the_status_report_once_the_key_secret_exists(team, alice, tmp_path):
    from executor.models import Chain
    from flows.models import Flow, FlowVersion, Secret, SignerKey

    Chain.objects.create(slug="base", name="Base", chain_id=8453)
    signer = SignerKey(team=team, name="DEFAULT_SIGNER", created_by=alice)
    signer.set_private_key("0x" + "11" * 32)
    signer.save()
    path = str(FIXTURES / "parallel_post_call_deploy.yaml")
    with pytest.raises(CommandError, match="secret 'KWALA_STATUS_API_KEY', which does not exist"):
        call_command("flows", "import", path, "--kwala", "--team", team.code, "--publish",
                     stdout=io.StringIO(), stderr=io.StringIO())

    secret = Secret(team=team, name=STATUS_API_KEY_SECRET, created_by=alice)
    secret.set_value("sk_live_do_not_copy_me")
    secret.save()
    flow = Flow.objects.get(team=team)
    call_command("flows", "import", path, "--kwala", "--flow", flow.code, "--publish",
                 stdout=io.StringIO(), stderr=io.StringIO())
    live = flow.versions.get(status=FlowVersion.Status.PUBLISHED)
    assert {s["id"] for s in live.dag["steps"]} == {"announce", "mint_badge", "status_join", "status_report"}
