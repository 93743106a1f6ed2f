"""One team's costly trigger conditions cannot starve the others on a shared chain listener."""

from __future__ import annotations

import logging

import pytest

from executor.models import Run
from flows.models import AuditEvent, Flow, Membership
from kwala_site.dev.devchain import transact
from tests.executor.chainkit import BIG, event_graph, listener_for, publish

pytestmark = pytest.mark.django_db(transaction=True)

# About 10 ms of work per evaluation in the sandbox, within its own per-evaluation limits.
COSTLY = "(range(5000)|map('string')|join|length) > 0 and trigger.args.id >= 0"


def test_a_team_over_its_condition_budget_is_paused_with_an_alert_and_the_others_run(
    zoo_setup, team, alice, charlie, caplog
):
    caplog.set_level(logging.ERROR)
    w3, zoo, chain = zoo_setup
    team.condition_ms_per_block = 20
    team.save(update_fields=["condition_ms_per_block"])
    costly = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address], condition=COSTLY), "Costly")
    other_team = Membership.objects.get(user=charlie).team
    cheap = publish(other_team, charlie, event_graph(31337, BIG, addresses=[zoo.address],
                                                     condition="trigger.args.id >= 0"), "Cheap")
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBatch(20))  # 20 logs in one block
    listener.step()

    assert Run.objects.filter(version=cheap).count() == 20  # the other team lost nothing
    evaluated = Run.objects.filter(version=costly).count()
    assert 1 <= evaluated < 20  # what fit in the budget ran; the rest was skipped...
    assert Flow.objects.get(pk=costly.flow_id).paused  # ...and the flow paused
    assert not Flow.objects.get(pk=cheap.flow_id).paused
    assert "ALERT" in caplog.text and f"{20 - evaluated} evaluation(s) skipped" in caplog.text
    assert AuditEvent.objects.filter(team=team, action="flow.paused").exists()
