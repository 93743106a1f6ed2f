"""Values derived from a secret (reversed, sliced, upper-cased...) reach the receiver but never the run record.

Redacting the secret's exact text is not enough: an editor could write
``{{ secrets.KEY|reverse }}`` and read the key back from the step's record, which the
whole team (viewers too) can see. Secrets may be used only where an action sends
them out, and what is recorded is rendered with stand-ins.
"""

from __future__ import annotations

import json

import pytest

from executor.models import RunEvent, StepRun
from executor.runs.manual import start_manual_run
from flows.graph import CompileError
from flows.models import Secret
from tests.executor.conftest import edge, make_version, manual, node, wait_for_run
from tests.sinks import Reply

pytestmark = pytest.mark.django_db(transaction=True)
CANARY = "cnry-5a9f1e77-derive-me"
DERIVED = {
    "rev": "{{ secrets.CANARY|reverse }}",
    "tail": "{{ secrets.CANARY[5:] }}",
    "up": "{{ secrets.CANARY|upper }}",
    "joined": "id-{{ secrets.CANARY|replace('-', '') }}",
}
FORMS = [CANARY, CANARY[::-1], CANARY[5:], CANARY.upper(), "id-" + CANARY.replace("-", "")]


@pytest.fixture
def canary(team):
    secret = Secret(team=team, name="CANARY")
    secret.set_value(CANARY)
    secret.save()


def record_of(run) -> str:
    rows = list(StepRun.objects.filter(run=run).values("input", "output", "logs", "error"))
    events = list(RunEvent.objects.filter(run=run).values("data"))
    return json.dumps([rows, events, run.error], default=str)


@pytest.mark.parametrize("dry_run", [False, True])
def test_derived_values_reach_the_receiver_but_not_the_record(
    executor_worker, http_sink, canary, team, alice, dry_run
):
    # The receiver echoes one derived form back: the step's output must not keep it either.
    http_sink.script("/derived", Reply(body={"echo": CANARY[::-1]}))
    version = make_version(team, alice, [manual(), node("h", "http.request", {
        "method": "POST", "url": f"{http_sink.url}/derived", "headers": {"X-Rev": DERIVED["rev"]}, "body": DERIVED,
    })], [edge("start", "h")])
    run = wait_for_run(start_manual_run(version, {}, user=alice, dry_run=dry_run), timeout=60)

    if not dry_run:
        (request,) = http_sink.wait_for("/derived")
        assert request.json()["rev"] == CANARY[::-1] and request.headers["X-Rev"] == CANARY[::-1]
    record = record_of(run)
    for form in FORMS:
        assert form not in record, form
    assert "[secret CANARY]" in record


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("transform", {"fields": [{"name": "k", "expression": "secrets.CANARY|reverse"}]}),
        ("condition", {"expression": "secrets.CANARY[0] == 'c'"}),
    ],
)
def test_secrets_in_a_logic_node_are_refused_by_the_compiler(canary, team, alice, kind, config):
    with pytest.raises(CompileError) as caught:
        make_version(team, alice, [manual(), node("n", kind, config)], [edge("start", "n")])
    assert any("secrets can be used only in what an action sends out" in p.message for p in caught.value.problems)
