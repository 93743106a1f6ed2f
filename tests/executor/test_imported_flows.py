"""Imported workflows fire on a real chain: Kwala files as Kwala writes them, published by the command."""

from __future__ import annotations

import io
from pathlib import Path

from django.core.management import call_command

from executor.models import Run
from flows.models import Flow
from kwala_site.dev.devchain import DEV_ACCOUNTS, contract, deploy, transact, wait_for_receipt
from tests.executor.chainkit import deploy_zoo, listener_for, make_chain

KWALA = Path(__file__).resolve().parent.parent / "flows" / "kwala"
FIRST_CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # deployer account 0, nonce 0, on a fresh anvil


def import_kwala(name: str, team) -> tuple[Flow, str]:
    err = io.StringIO()
    call_command("flows", "import", str(KWALA / name), "--kwala", "--team", team.code, "--publish",
                 stdout=io.StringIO(), stderr=err)
    return Flow.objects.filter(team=team).latest("created_at"), err.getvalue()


def test_a_kwala_event_without_indexed_markers_fires(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    assert zoo.address == FIRST_CONTRACT
    chain = make_chain(fresh_anvil)
    flow, warnings = import_kwala("zoo_big_every_field.yaml", team)
    assert "marks no argument `indexed`" in warnings
    listener = listener_for(chain)
    listener.step()
    transact(w3, zoo.functions.emitBig(7, 2**70))
    listener.step()
    (run,) = Run.objects.filter(flow=flow)
    assert run.trigger["args_list"] == [7, 2**70] and run.trigger["decoding"]["indexed"] == ["0"]
    (report,) = [n for n in run.version.graph["nodes"] if n["id"] == "report"]
    assert report["config"]["body"] == {"id": "{{ trigger.args_list[0] }}", "value": "{{ trigger.args_list[1] }}"}


def test_kwala_address_tracking_fires_on_a_plain_transfer(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    vault = contract(w3, "Vault", deploy(w3, "Vault"))
    assert vault.address == FIRST_CONTRACT
    chain = make_chain(fresh_anvil)
    flow, warnings = import_kwala("treasury_address_tracking.yaml", team)
    assert "address tracking maps to a transaction trigger" in warnings
    listener = listener_for(chain)
    listener.step()
    receipt = wait_for_receipt(w3, w3.eth.send_transaction(
        {"from": DEV_ACCOUNTS[1].address, "to": vault.address, "value": 3}))
    listener.step()
    (run,) = Run.objects.filter(flow=flow)
    assert run.trigger["hash"] == receipt["transactionHash"].to_0x_hex() and run.trigger["value"] == 3
