"""Nonce allocation per (chain, address), and how contract steps decode what the chain returns."""

from __future__ import annotations

import itertools

import pytest
from django.db import transaction
from django.utils import timezone

from executor.models import Chain, NonceCursor, Run, StepRun, Transaction
from executor.steps.contract import _allocate_nonce
from flows.models import Flow, FlowVersion

SIGNER = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"
_serial = itertools.count()


@pytest.fixture
def chain(db):
    return Chain.objects.create(slug="anvil-a", name="Anvil A", chain_id=31337)


@pytest.fixture
def sign(chain, team, alice):
    """Allocate a nonce and store its transaction in one database transaction, as the write step does."""
    flow = Flow.objects.create(team=team, name="Writer", created_by=alice)
    version = FlowVersion.objects.create(flow=flow, number=1, graph={}, status=FlowVersion.Status.PUBLISHED)

    def sign(pending: int) -> StepRun:
        n = next(_serial)
        with transaction.atomic():
            run = Run.objects.create(team=team, flow=flow, version=version, trigger_key=f"manual:{n}")
            step = StepRun.objects.create(run=run, step_id="write", status=StepRun.Status.RUNNING)
            nonce, replaces = _allocate_nonce(chain, SIGNER, pending)
            Transaction.objects.create(
                run=run, step_run=step, chain=chain, from_address=SIGNER, to_address=SIGNER, nonce=nonce,
                replaces=replaces,
                gas=21000, max_fee_per_gas=1, max_priority_fee_per_gas=1, raw="0x", tx_hash=f"0x{n:064x}",
            )
        step.nonce = nonce
        return step

    return sign


def test_nonces_are_consecutive_and_follow_the_chain(chain, sign):
    assert [sign(0).nonce for _ in range(3)] == [0, 1, 2]
    # The key was used outside Kwala: the chain's pending count wins.
    assert sign(10).nonce == 10
    assert NonceCursor.objects.get(chain=chain, address=SIGNER).next_nonce == 11


def test_a_nonce_held_by_a_failed_step_is_handed_out_again(chain, sign):
    first, lost, waiting = sign(0), sign(0), sign(0)
    StepRun.objects.filter(pk=first.pk).update(status=StepRun.Status.SUCCEEDED)  # mined
    StepRun.objects.filter(pk=lost.pk).update(status=StepRun.Status.FAILED)  # never reached the chain
    assert waiting.nonce == 2

    # The chain has mined nonce 0 only: 1 is a gap that would block nonce 2 forever.
    assert sign(1).nonce == 1
    # Once the chain is past the gap, the cursor goes on.
    assert sign(3).nonce == 3


def test_a_broadcast_nonce_is_never_handed_out_again(chain, sign):
    done = sign(0)
    # Its step finished and the count we read is stale (the transaction is pending or just mined).
    StepRun.objects.filter(pk=done.pk).update(status=StepRun.Status.SUCCEEDED)
    Transaction.objects.filter(step_run=done).update(broadcast_at=timezone.now())
    assert sign(0).nonce == 1


def test_a_contract_read_decodes_like_an_event_argument():
    from eth_abi import encode

    from executor.steps.contract import _decode_outputs

    owner = "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a"
    function = {"name": "last", "outputs": [{"name": "owner", "type": "address"}, {"name": "value", "type": "uint256"}]}
    decoded = _decode_outputs(function, encode(["address", "uint256"], [owner, 2**200]))
    assert decoded["outputs"] == {"owner": "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A", "value": 2**200}
