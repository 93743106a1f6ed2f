"""A signer's spending limits, checked before anything is signed.

Team admins set them per signer key (flows.models.SignerKey, flows.teams.do_set_signer_limits):
the largest value one transaction may send, the highest fees per gas, a budget per
chain and UTC day, and how many times a stuck transaction is re-sent with higher
fees. A transaction that would break one is never signed nor broadcast: the step
fails for good with a message that names the limit, which makes the run an alert,
and the refusal is logged.

What a day's budget counts: for every nonce the signer used on the chain that day,
the most its transaction can cost (value + gas limit x max fee per gas), taking the
dearest of its replacements, since only one of them can be mined. Refunded gas is
not given back: the budget is a ceiling on what could be spent, not a ledger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import connection
from django.utils import timezone

from executor.models import Chain, NonceCursor
from executor.steps.base import StepError
from flows.models import SignerKey

logger = logging.getLogger("kwala.spending")

WEI_PER_ETHER = 10**18
WEI_PER_GWEI = 10**9


def native(wei: int) -> str:
    """An amount for people: in the chain's native unit (ETH on Ethereum), exact up to 6 digits."""
    return f"{wei / WEI_PER_ETHER:.6g}"


def gwei(wei: int) -> str:
    return f"{wei / WEI_PER_GWEI:.6g} gwei"


def _ether(wei: int) -> str:
    return f"{native(wei)} ({wei} wei)"


def limit_summary(signer: SignerKey) -> list[str]:
    """The signer's limits in words, for the team's signer page; the first line warns when there are none."""
    lines = []
    if signer.max_value_wei is None and signer.daily_budget_wei is None:
        lines.append("No spending limit")
    if signer.max_value_wei is not None:
        lines.append(f"at most {native(int(signer.max_value_wei))} a transaction")
    if signer.daily_budget_wei is not None:
        lines.append(f"at most {native(int(signer.daily_budget_wei))} a day per chain")
    if signer.max_fee_per_gas_wei is not None:
        lines.append(f"fees at most {gwei(int(signer.max_fee_per_gas_wei))} per gas")
    if signer.max_priority_fee_per_gas_wei is not None:
        lines.append(f"tips at most {gwei(int(signer.max_priority_fee_per_gas_wei))} per gas")
    lines.append(f"re-sent at most {signer.max_replacements} times when stuck")
    return lines


def refuse(signer: SignerKey, message: str) -> StepError:
    logger.warning("signer %s (team %s): %s; nothing was signed", signer.name, signer.team_id, message)
    return StepError(f"signer {signer.name}: {message}; nothing was sent", permanent=True)


def check_value(signer: SignerKey, value: int) -> None:
    if signer.max_value_wei is not None and value > signer.max_value_wei:
        raise refuse(signer, f"the value {_ether(value)} is over its limit of {_ether(int(signer.max_value_wei))} "
                             f"per transaction")


def capped_fees(signer: SignerKey, max_fee: int, priority: int, base_fee: int) -> tuple[int, int]:
    """The fees to offer, within the signer's ceilings; refuses when the ceiling is below what the chain asks.

    ``max_fee`` is what Kwala would offer (twice the base fee plus the tip); a ceiling
    below it is still enough while it covers the current base fee and the tip.
    """
    if signer.max_priority_fee_per_gas_wei is not None:
        priority = min(priority, int(signer.max_priority_fee_per_gas_wei))
    if signer.max_fee_per_gas_wei is not None:
        ceiling = int(signer.max_fee_per_gas_wei)
        if ceiling < base_fee + priority:
            raise refuse(signer, f"the chain's base fee is {gwei(base_fee)}, over its limit of "
                                 f"{gwei(ceiling)} per gas")
        max_fee = min(max_fee, ceiling)
    return max_fee, min(priority, max_fee)


def day_start(now: datetime | None = None) -> datetime:
    now = now or timezone.now()
    return datetime.combine(now.astimezone(UTC).date(), time.min, tzinfo=UTC)


def spent_today(signer: SignerKey, chain: Chain, *, except_nonce: int | None = None) -> int:
    """What the signer's transactions on `chain` since 00:00 UTC can cost at most (see the module docstring)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(cost), 0) FROM (SELECT max(value + gas * max_fee_per_gas) AS cost "
            "FROM executor_transaction WHERE chain_id = %s AND from_address = %s AND created_at >= %s "
            "AND nonce IS DISTINCT FROM %s GROUP BY nonce) AS per_nonce",
            [chain.pk, signer.address, day_start(), except_nonce],
        )
        return int(cursor.fetchone()[0])


def check_budget(signer: SignerKey, chain: Chain, cost: int, *, nonce: int | None = None) -> None:
    """Refuse a transaction that would take the day's spending over the budget.

    Call inside the database transaction that stores it, after locking the signer's
    NonceCursor on this chain (lock_signer), so that two steps cannot both fit in
    what is left. For a replacement, `nonce` is the nonce it replaces: its earlier
    attempts are not counted twice.
    """
    if signer.daily_budget_wei is None:
        return
    budget = int(signer.daily_budget_wei)
    # A replacement's own cost stands for its whole nonce: the earlier attempts are left out.
    spent = spent_today(signer, chain, except_nonce=nonce)
    if spent + cost > budget:
        resets = day_start() + timedelta(days=1)
        raise refuse(signer, f"this transaction can cost up to {_ether(cost)}, and {_ether(spent)} of the "
                             f"{_ether(budget)} budget for today on {chain.slug} is already committed "
                             f"(it resets at {resets:%Y-%m-%d %H:%M} UTC)")


def lock_signer(chain: Chain, address: str) -> None:
    """Serialise the signer's spending checks on a chain: lock its NonceCursor row (inside a transaction)."""
    NonceCursor.objects.get_or_create(chain=chain, address=address)
    NonceCursor.objects.select_for_update().get(chain=chain, address=address)


def note_stuck(signer: SignerKey, tx_hash: str, why: str) -> None:
    logger.warning("signer %s (team %s): transaction %s is stuck and is no longer re-sent: %s",
                   signer.name, signer.team_id, tx_hash, why)


@dataclass
class Spend:
    """A signer's spending today on one chain, for the team's signer page."""

    chain: Chain
    committed_wei: int
    transactions: int

    @property
    def committed(self) -> str:
        return native(self.committed_wei)


def spending_today(signer: SignerKey) -> list[Spend]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT chain_id, coalesce(sum(cost), 0), count(*) FROM (SELECT chain_id, "
            "max(value + gas * max_fee_per_gas) AS cost FROM executor_transaction WHERE from_address = %s "
            "AND run_id IN (SELECT id FROM executor_run WHERE team_id = %s) AND created_at >= %s "
            "GROUP BY chain_id, nonce) AS per_nonce GROUP BY chain_id ORDER BY chain_id",
            [signer.address, signer.team_id, day_start()],
        )
        rows = cursor.fetchall()
    chains = Chain.objects.in_bulk([row[0] for row in rows])
    return [Spend(chains[chain_id], int(cost), count) for chain_id, cost, count in rows if chain_id in chains]
