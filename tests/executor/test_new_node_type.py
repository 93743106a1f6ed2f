"""Adding a node type means one NodeType class and one step function: nothing else in the
editor, the compiler, the runner or the previews has to learn about it (issue #21).

The type here exists only in this test: it is registered where every real type is
(flows.nodes.NODE_TYPES, executor.steps.STEP_KINDS) and must then appear in the palette, the
side panel, the compiler's problems, a real run and the server-drawn preview.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from executor.models import Run, StepRun
from executor.runs import engine, manual, queue, start
from executor.steps import STEP_KINDS, StepContext, StepResult
from flows import actions, editor
from flows.editor.graph_svg import graph_svg
from flows.graph import CompileError
from flows.nodes import NODE_TYPES, FieldSpec, NodeType
from flows.nodes.base import CATEGORY_COLOURS, Problems, ValidationContext

pytestmark = pytest.mark.django_db


class RepeatText(NodeType):
    key = "text.repeat"
    category = "logic"
    inline = True
    label = "Repeat text"
    description = "Writes a text several times, for later steps."
    fields = (
        FieldSpec("text", "Text", "text", required=True),
        FieldSpec("times", "Times", "int", required=True, min=1, max=10),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        return [("text", "Text must not be only spaces")] if not config["text"].strip() else []

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"text": {"type": "string", "description": "The text, repeated"}}


def run_repeat(ctx: StepContext) -> StepResult:
    return StepResult(output={"text": ctx.config["text"] * ctx.config["times"]})


@pytest.fixture
def repeat_type(monkeypatch):
    monkeypatch.setitem(NODE_TYPES, RepeatText.key, RepeatText())
    monkeypatch.setitem(STEP_KINDS, RepeatText.key, run_repeat)


def graph(config: dict) -> dict:
    return {
        "nodes": [
            {"id": "start", "type": "manual", "name": "Start", "position": {"x": 0, "y": 0}, "config": {}},
            {"id": "repeat_1", "type": "text.repeat", "name": "Repeat", "position": {"x": 250, "y": 0},
             "config": config},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "repeat_1"}],
    }


def test_a_new_type_is_in_the_palette_with_its_fields_and_ports(repeat_type):
    entry = next(e for e in editor.palette() if e["key"] == "text.repeat")

    assert entry["category"] == "logic" and entry["label"] == "Repeat text"
    assert [f["name"] for f in entry["fields"]] == ["text", "times"]
    assert entry["input_ports"] == ["in"] and entry["output_ports"] == ["out"]
    # The palette lists it among the logic types, after every trigger.
    order = [e["category"] for e in editor.palette()]
    assert order.index("logic") > max(i for i, c in enumerate(order) if c == "trigger")


def test_the_side_panel_shows_its_fields(repeat_type, team, alice):
    flow = actions.do_create_flow(team, alice, "Repeats", graph=graph({"text": "gm", "times": 2}))
    browser = Client()
    browser.force_login(alice)

    page = browser.get(reverse("node_inspector", args=[flow.code, "repeat_1"]))

    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="text"' in html and 'value="gm"' in html and 'name="times"' in html


def test_the_compiler_reports_its_problems_on_the_node(repeat_type, team, alice):
    flow = actions.do_create_flow(team, alice, "Repeats", graph=graph({"text": "gm", "times": 2}))

    with pytest.raises(CompileError) as caught:
        actions.compile_for(flow, graph({"text": "   ", "times": 11}))

    problems = {(p["node_id"], p["field"]) for p in caught.value.as_list()}
    assert ("repeat_1", "times") in problems
    dag = actions.compile_for(flow, graph({"text": "gm", "times": 2}))
    assert any(step["type"] == "text.repeat" for step in dag["steps"])


def test_a_run_runs_it(repeat_type, team, alice, monkeypatch, django_capture_on_commit_callbacks):
    # The queue is the seam between the run code and Dramatiq (executor.runs.queue): messages
    # go to a list and are handled here by the functions the actors call, so the run happens in
    # this process, which knows the test's type.
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(queue, "_senders", [])
    queue.connect(run=lambda run_id, _delay: sent.append(("run", run_id)),
                  step=lambda step_id, _delay: sent.append(("step", step_id)),
                  pushed=lambda payload: None, replay=lambda job_id: None)
    flow = actions.do_create_flow(team, alice, "Repeats", graph=graph({"text": "gm ", "times": 3}))
    version = actions.do_publish_version(flow, alice)

    with django_capture_on_commit_callbacks(execute=True):
        run = manual.start_manual_run(version, {}, user=alice)
    while sent:
        kind, pk = sent.pop(0)
        with django_capture_on_commit_callbacks(execute=True):
            start.start_run(pk) if kind == "run" else engine.run_step(pk)

    run.refresh_from_db()
    step = StepRun.objects.get(run=run, step_id="repeat_1")
    assert run.status == Run.Status.SUCCEEDED
    assert step.status == StepRun.Status.SUCCEEDED and step.output == {"text": "gm gm gm "}


def test_the_preview_draws_it_in_its_category_colour(repeat_type):
    svg = str(graph_svg(graph({"text": "gm", "times": 2})))

    assert "Repeat" in svg and CATEGORY_COLOURS["logic"] in svg


def test_every_type_that_runs_has_a_step_function_and_every_step_function_a_type():
    runnable = {key for key, node_type in NODE_TYPES.items() if node_type.category != "trigger"}

    assert runnable == set(STEP_KINDS)
