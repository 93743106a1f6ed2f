from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from flows import actions
from flows.models import Flow, FlowVersion
from tests.flows.test_actions import TOKEN, transfer_graph  # noqa: F401  (shared sample graph)

KWALA_YAML = f"""
Name: Mirror transfers
Trigger:
  TriggerSourceContract: {TOKEN}
  TriggerChainID: 31337
  TriggerEventName: Transfer(address indexed from, address indexed to, uint256 value)
  TriggerEventFilter: NA
  RepeatEvery: event
  ExecuteAfter: event
  ExpiresIn: NA
  ActionStatusNotificationPOSTURL: NA
Actions:
  - Name: tell
    Type: post
    APIEndpoint: https://example.com/hook
    APIPayload:
      value: re.event(2)
    RetriesUntilSuccess: 3
Execution:
  Mode: sequential
"""


@pytest.fixture
def chain(db):
    from executor.models import Chain

    return Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)


def test_export_then_import_gives_the_same_graph(team, alice, chain, tmp_path):
    flow = actions.do_create_flow(team, alice, "Whale alert", graph=transfer_graph())
    path = tmp_path / "flow.yaml"
    call_command("flows", "export", flow.code, "-o", str(path))
    out = io.StringIO()
    call_command("flows", "import", str(path), "--team", team.code, stdout=out)
    copy = Flow.objects.exclude(pk=flow.pk).get()
    assert copy.name == "Whale alert"
    assert actions.current_graph(copy)[1] == transfer_graph()


def test_import_of_a_kwala_workflow_publishes_a_compiling_flow(team, chain, tmp_path):
    path = tmp_path / "kwala.yaml"
    path.write_text(KWALA_YAML)
    out = io.StringIO()
    call_command("flows", "import", str(path), "--kwala", "--team", team.code, "--publish", stdout=out)
    flow = Flow.objects.get(name="Mirror transfers")
    live = flow.versions.get(status=FlowVersion.Status.PUBLISHED)
    assert live.dag["trigger"]["chain_id"] == 31337
    assert "version 1 published" in out.getvalue()


KWALA_CALL_YAML = KWALA_YAML.replace("""  - Name: tell
    Type: post
    APIEndpoint: https://example.com/hook
    APIPayload:
      value: re.event(2)
""", f"""  - Name: ping
    Type: call
    ChainID: 31337
    TargetContract: {TOKEN}
    TargetFunction: ping(string note)
    TargetParams: [hello]
""")


def test_a_kwala_call_is_signed_by_the_signer_key_named_on_the_command_line(team, alice, chain, tmp_path):
    from flows.models import SignerKey

    path = tmp_path / "kwala.yaml"
    path.write_text(KWALA_CALL_YAML)
    with pytest.raises(CommandError, match="Signer key 'DEFAULT_SIGNER' does not exist"):
        call_command("flows", "import", str(path), "--kwala", "--team", team.code, "--publish", stdout=io.StringIO())

    key = SignerKey(team=team, name="ops", created_by=alice)
    key.set_private_key("0x" + "11" * 32)
    key.save()
    call_command("flows", "import", str(path), "--kwala", "--team", team.code, "--signer", "ops", "--publish",
                 stdout=io.StringIO())
    live = FlowVersion.objects.get(flow__team=team, status=FlowVersion.Status.PUBLISHED)
    (write,) = [step for step in live.dag["steps"] if step["type"] == "contract.write"]
    assert write["config"]["signer"] == "ops"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "nope"], "No flow with code 'nope'"),
        (["import", "/no/such/file.yaml", "--team", "x"], "Cannot read /no/such/file.yaml"),
    ],
)
def test_bad_input_gives_a_clear_error(db, argv, message):
    with pytest.raises(CommandError, match=message):
        call_command("flows", *argv)


def test_a_broken_yaml_file_names_its_line(team, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("nodes:\n  - id: a\n    type: [unclosed\n")
    with pytest.raises(CommandError, match="Line 4: Invalid YAML"):
        call_command("flows", "import", str(path), "--team", team.code)
    assert not Flow.objects.exists()


def test_export_to_an_unwritable_path_is_a_clear_error(team, alice, chain):
    flow = actions.do_create_flow(team, alice, "Whale alert", graph=transfer_graph())
    with pytest.raises(CommandError, match="Cannot write /no/such/dir/flow.yaml"):
        call_command("flows", "export", flow.code, "-o", "/no/such/dir/flow.yaml")


def test_import_of_a_name_that_is_not_text_is_refused(team, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [1, 2]\nnodes: []\nedges: []\n")
    with pytest.raises(CommandError, match="name must be text"):
        call_command("flows", "import", str(path), "--team", team.code)
    assert not Flow.objects.exists()
