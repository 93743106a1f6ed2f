from __future__ import annotations

import textwrap

import pytest
import yaml

from flows.flowyaml import (
    DEFAULT_SIGNER,
    FlowYamlError,
    export_yaml,
    import_kwala_yaml,
    import_yaml,
)
from flows.graph import compile_graph

GOVERNOR = "0x408ED6354d4973f66138C91495F2f2FCbd8724C3"
MIRROR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PROPOSAL_CREATED = (
    "ProposalCreated(uint256 proposalId, address proposer, address[] targets, uint256[] values, "
    "string[] signatures, bytes[] calldatas, uint256 voteStart, uint256 voteEnd, string description)"
)
CHAINS = {1: "ethereum", 8453: "base"}

GRAPH = {
    "nodes": [
        {"id": "t", "type": "webhook", "name": "Incoming", "position": {"x": 0, "y": 0}, "config": {}},
        {
            "id": "post",
            "type": "http.request",
            "name": "Forward",
            "position": {"x": 0.5, "y": 120},
            "config": {
                "url": "https://example.com/{{ trigger.query.id }}",
                "body": {"text": "line one\nline two\n", "n": 10**30, "yes": "yes", "date": "2024-01-01", "none": None},
                "headers": {"X-Note": "on"},
            },
        },
    ],
    "edges": [{"id": "e1", "source": "t", "source_port": "out", "target": "post"}],
}
META = {"name": "Forwarder", "description": "Passes webhooks on.\nSecond line."}


def test_export_is_readable_and_ordered():
    text = export_yaml(META, GRAPH)
    lines = text.splitlines()
    assert lines[:2] == ["kwala_flow: 1", "name: Forwarder"]
    assert "- id: t" in lines
    assert "  position: {x: 0, y: 0}" in lines
    assert "- {id: e1, source: t, source_port: out, target: post}" in lines
    assert text.index("nodes:") < text.index("edges:")
    assert "|" in text  # the multi-line description is a literal block


def test_round_trip_is_exact():
    meta, graph = import_yaml(export_yaml(META, GRAPH))
    assert meta == META
    assert graph == GRAPH
    assert compile_graph(graph)["steps"][0]["id"] == "post"


def test_meta_cannot_use_reserved_keys():
    with pytest.raises(FlowYamlError, match="reserved"):
        export_yaml({"nodes": 1}, GRAPH)


def test_it_reports_the_line_of_a_yaml_syntax_error():
    text = "kwala_flow: 1\nname: x\nnodes:\n  - id: a\n    type: [unclosed\n"
    with pytest.raises(FlowYamlError) as info:
        import_yaml(text)
    assert info.value.line is not None and info.value.line >= 5
    assert "Invalid YAML" in info.value.message


def test_it_reports_the_line_of_a_shape_error():
    text = textwrap.dedent(
        """\
        kwala_flow: 1
        name: x
        nodes:
          - id: t
            type: manual
            config: {}
          - id: bad-id
            type: delay
            config: {duration: 5}
        edges: []
        """
    )
    with pytest.raises(FlowYamlError) as info:
        import_yaml(text)
    assert info.value.line == 7
    assert "nodes.1.id" in info.value.message


def test_it_refuses_python_tags_and_unknown_versions():
    with pytest.raises(FlowYamlError, match="Invalid YAML"):
        import_yaml("!!python/object/apply:os.system ['true']")
    with pytest.raises(FlowYamlError, match="version 2 is not supported") as info:
        import_yaml("name: x\nkwala_flow: 2\nnodes: []\n")
    assert info.value.line == 2
    with pytest.raises(FlowYamlError, match="'nodes' is missing"):
        import_yaml("name: x\n")


KWALA = textwrap.dedent(
    f"""\
    Name: governance_proposal_mirror
    Trigger:
      TriggerSourceContract: "{GOVERNOR.lower()}"
      TriggerChainID: 1
      TriggerEventName: "{PROPOSAL_CREATED}"
      TriggerEventFilter: NA
      RepeatEvery: event
      ExecuteAfter: event
      ExpiresIn: 1893456000
      ActionStatusNotificationPOSTURL: https://hooks.example.com/kwala/status
    Actions:
      - Name: Notify DAO backend
        Type: post
        APIEndpoint: https://api.example-dao.org/proposals
        APIPayload:
          proposal_id: re.event(0)
          proposer: re.event(1)
          summary: "New proposal by re.event(1): re.event(8)"
        TargetContract: NA
        TargetFunction: NA
        TargetParams: NA
        ChainID: NA
        RetriesUntilSuccess: 5
      - Name: mirror_on_base
        Type: call
        APIEndpoint: NA
        APIPayload: NA
        TargetContract: "{MIRROR}"
        TargetFunction: function mirror(uint256 value, address from)
        TargetParams:
          - re.event(0)
          - re.event(1)
        ChainID: 8453
        RetriesUntilSuccess: 3
    Execution:
      Mode: sequential
    """
)


def test_it_imports_a_kwala_governance_workflow_that_compiles():
    meta, graph = import_kwala_yaml(KWALA, chains=CHAINS)
    assert meta["name"] == "governance_proposal_mirror"
    by_id = {n["id"]: n for n in graph["nodes"]}
    assert set(by_id) == {"trigger", "notify_dao_backend", "mirror_on_base", "status_report"}

    trigger = by_id["trigger"]["config"]
    assert trigger["addresses"] == [GOVERNOR]  # checksummed on the way in
    assert trigger["chain"] == 1
    assert trigger["expire_at"] == "2030-01-01T00:00:00+00:00"

    post = by_id["notify_dao_backend"]
    assert post["type"] == "http.request"
    assert post["config"]["body"] == {
        "proposal_id": "{{ trigger.args.proposalId }}",
        "proposer": "{{ trigger.args.proposer }}",
        "summary": "New proposal by {{ trigger.args.proposer }}: {{ trigger.args.description }}",
    }
    assert post["config"]["retry"] == {"max_attempts": 6}  # Kwala: one try, then 5 retries

    call = by_id["mirror_on_base"]
    assert call["type"] == "contract.write"
    assert call["config"]["chain"] == 8453
    assert call["config"]["args"] == ["{{ trigger.args.proposalId }}", "{{ trigger.args.proposer }}"]
    assert call["config"]["signer"] == DEFAULT_SIGNER
    assert call["config"]["retry"] == {"max_attempts": 4}

    dag = compile_graph(graph, chains=CHAINS)
    assert dag["trigger"]["type"] == "chain.event"
    assert dag["trigger"]["event_abi"]["name"] == "ProposalCreated"
    assert [s["id"] for s in dag["steps"]] == ["notify_dao_backend", "mirror_on_base", "status_report"]
    steps = {s["id"]: s for s in dag["steps"]}
    assert steps["notify_dao_backend"]["successors"] == {"out": ["mirror_on_base"], "error": ["status_report"]}
    assert steps["mirror_on_base"]["successors"] == {"out": ["status_report"], "error": ["status_report"]}
    report_body = steps["status_report"]["config"]["body"]
    assert report_body["actions"][1] == {"name": "mirror_on_base", "status": "{{ steps.mirror_on_base.status }}"}


def test_parallel_mode_fans_out_and_joins_before_the_report():
    text = KWALA.replace("Mode: sequential", "Mode: parallel")
    _, graph = import_kwala_yaml(text, chains=CHAINS)
    dag = compile_graph(graph, chains=CHAINS)
    assert dag["entry"] == ["notify_dao_backend", "mirror_on_base"]
    steps = {s["id"]: s for s in dag["steps"]}
    assert steps["status_join"]["join"] == "all"
    assert len(steps["status_join"]["inputs"]) == 4
    assert steps["status_join"]["successors"] == {"out": ["status_report"]}


def test_unnamed_event_arguments_use_args_list():
    text = KWALA.replace(PROPOSAL_CREATED, "Transfer(address,address,uint256)").replace("re.event(8)", "re.event(2)")
    _, graph = import_kwala_yaml(text, chains=CHAINS)
    body = graph["nodes"][1]["config"]["body"]
    assert body["proposal_id"] == "{{ trigger.args_list[0] }}"
    assert body["summary"] == "New proposal by {{ trigger.args_list[1] }}: {{ trigger.args_list[2] }}"
    compile_graph(graph, chains=CHAINS)


def test_a_time_trigger_becomes_a_schedule():
    text = textwrap.dedent(
        """\
        Name: hourly
        Trigger:
          TriggerEventName: NA
          RepeatEvery: 1h
          ExecuteAfter: "2030-01-01T00:00:00Z"
          ExpiresIn: NA
        Actions:
          - Name: ping
            Type: post
            APIEndpoint: https://example.com/ping
            APIPayload: {ok: true}
        """
    )
    _, graph = import_kwala_yaml(text)
    assert graph["nodes"][0]["type"] == "schedule"
    assert graph["nodes"][0]["config"] == {"interval": 3600, "start_at": "2030-01-01T00:00:00+00:00"}
    assert compile_graph(graph)["trigger"]["interval_seconds"] == 3600


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("Type: call", "Type: teleport"), "Actions[1].Type: 'teleport' is not supported"),
        (("ChainID: 8453", "ChainID: 10"), "Actions[1].ChainID: chain 10 is not configured"),
        (("TriggerChainID: 1", "TriggerChainID: 5"), "Trigger.TriggerChainID: chain 5 is not configured"),
        (("re.event(8)", "re.event(9)"), "Actions[0].APIPayload.summary: re.event(9) but the event has 9 arguments"),
        (("      - re.event(1)\n", ""), "Actions[1].TargetParams: mirror takes 2 arguments, got 1"),
        (("function mirror(uint256 value, address from)", "mirror(uint257 value)"), "Actions[1].TargetFunction: 'uint257'"),
        (("TriggerEventFilter: NA", "TriggerEventFilter: value > 5"), "Trigger.TriggerEventFilter: 'value > 5' uses value"),
        (("Mode: sequential", "Mode: random"), "Execution.Mode: 'random'"),
    ],
)
def test_it_names_the_field_it_cannot_map(change, message):
    old, new = change
    assert old in KWALA
    with pytest.raises(FlowYamlError) as info:
        import_kwala_yaml(KWALA.replace(old, new), chains=CHAINS)
    assert message in info.value.message
    assert info.value.line is not None


def test_kwala_import_uses_safe_load_only():
    with pytest.raises(FlowYamlError):
        import_kwala_yaml("!!python/object/apply:os.system ['true']")
    assert yaml.safe_load(KWALA)["Name"] == "governance_proposal_mirror"


def test_yaml_aliases_are_refused_so_a_billion_laughs_file_cannot_expand():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nnodes: [*b]\n'
    with pytest.raises(FlowYamlError, match="aliases") as caught:
        import_yaml(bomb)
    assert caught.value.line == 2


def test_flow_name_must_be_text():
    with pytest.raises(FlowYamlError, match="name must be text"):
        import_yaml("name: [1, 2]\nnodes: []\nedges: []\n")
