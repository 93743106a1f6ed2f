"""Replay and backtest: run a flow version's event or transaction trigger over a past block range.

A live replay uses the live keys (`log:<chain>:<block hash>:<log index>`, `tx:<chain>:<block
hash>:<index>`), so
events that already fired are not fired again. A dry run (backtest) creates
runs with `dry_run=True` under keys prefixed `replay:<uuid>:`, which never
collide with live runs or with another backtest, and are not enqueued by the
listener's claim (the caller decides what to do with them).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from executor.chain import BATCH_SIZE, ChainClient, ChainError
from executor.chaintx import BlockTransactions
from executor.matching import (
    MatchError,
    TriggerIndex,
    TxIndex,
    compile_trigger,
    condition_holds,
    log_payload,
    tx_payload,
)
from executor.models import Chain
from executor.runs.start import RunClaim, claim_runs
from flows.expressions import ExpressionError

logger = logging.getLogger(__name__)

MAX_REPLAY_BLOCKS = getattr(settings, "KWALA_MAX_REPLAY_BLOCKS", 100_000)
# A transaction trigger reads every block whole (not one eth_getLogs per range): a tenth as many.
MAX_TX_REPLAY_BLOCKS = getattr(settings, "KWALA_MAX_TX_REPLAY_BLOCKS", 10_000)
REPLAYABLE = ("chain.event", "chain.transaction")
FIRST_RANGE = 2000


class ReplayError(Exception):
    """Bad replay input (the message is for the user)."""


@dataclass
class ReplayResult:
    logs_seen: int
    matched: int
    run_ids: list[int]


def check_replay(version, chain: Chain, from_block: int, to_block: int) -> None:
    """What can be refused before any block is read; raises ReplayError."""
    if from_block < 0 or to_block < 0:
        raise ReplayError("Block numbers must not be negative.")
    if from_block > to_block:
        raise ReplayError(f"The range is empty: --from {from_block} is after --to {to_block}.")
    spec = (version.dag or {}).get("trigger") or {}
    if spec.get("type") not in REPLAYABLE:
        raise ReplayError("Only flows triggered by a contract event or a transaction can be replayed over blocks.")
    most = MAX_TX_REPLAY_BLOCKS if spec["type"] == "chain.transaction" else MAX_REPLAY_BLOCKS
    if to_block - from_block + 1 > most:
        raise ReplayError(f"The range is {to_block - from_block + 1:,} blocks; at most {most:,} at a time.")
    if int(spec.get("chain_id") or 0) != chain.chain_id:
        raise ReplayError(f"The flow listens to chain {spec.get('chain_id')}, not {chain.slug}.")


def replay_blocks(version, chain: Chain, from_block: int, to_block: int, dry_run: bool,
                  client: ChainClient | None = None, *, key_prefix: str | None = None) -> ReplayResult:
    """Create runs of `version` for the logs in blocks from_block..to_block that it matches.

    A dry run's keys start with `key_prefix` (a fresh one by default): a job that
    runs again with the same prefix creates no second run. Raises ReplayError for
    a bad range, a trigger that is not a contract event on `chain`, or a chain
    that cannot be read.
    """
    check_replay(version, chain, from_block, to_block)
    spec = version.dag["trigger"]
    flow = version.flow
    try:
        trigger = compile_trigger(spec, version_id=version.pk, flow_id=flow.pk, team_id=flow.team_id, flow_code=flow.code)
    except MatchError as exc:
        raise ReplayError(f"The trigger cannot be matched: {exc}") from None
    client = client or ChainClient.for_chain(chain)
    prefix = (key_prefix or f"replay:{uuid.uuid4()}:") if dry_run else ""
    if spec["type"] == "chain.transaction":
        return _replay_transactions(version, chain, trigger, from_block, to_block, dry_run, client, prefix)
    index = TriggerIndex([trigger])
    addresses, topics = index.log_filter()
    try:
        _check_head(client, to_block)
        logs = _logs(client, from_block, to_block, addresses, topics)
        timestamps: dict[str, int] = {}
        now = timezone.now()
        claims, matched = [], 0
        for log in logs:
            for candidate in index.candidates(log):
                if log["block_hash"] not in timestamps:
                    block = client.get_block_by_hash(log["block_hash"])
                    timestamps[log["block_hash"]] = block.timestamp if block else None
                payload = log_payload(candidate, log, chain_id=chain.chain_id, timestamp=timestamps[log["block_hash"]])
                if not _condition_holds(trigger, payload, flow.code, now, f"{log['block_hash']}#{log['log_index']}"):
                    continue
                matched += 1
                claims.append(RunClaim(
                    version_id=version.pk, flow_id=flow.pk, team_id=flow.team_id,
                    trigger_key=f"{prefix}log:{chain.chain_id}:{log['block_hash']}:{log['log_index']}",
                    trigger=payload, chain_id=chain.pk, block_number=log["block_number"],
                    block_hash=log["block_hash"], dry_run=dry_run,
                ))
    except ChainError as exc:
        raise ReplayError(f"Could not read chain {chain.slug}: {exc}") from None
    return ReplayResult(logs_seen=len(logs), matched=matched, run_ids=_claim(claims))


def _condition_holds(trigger, payload: dict, flow_code: str, now, what: str) -> bool:
    """The trigger's condition on one match; a broken one is logged, as the listener logs it, and
    matches nothing."""
    try:
        return condition_holds(trigger.condition, payload, flow_code=flow_code, now=now)
    except ExpressionError as exc:
        logger.warning("flow %s: trigger condition failed on %s during a replay: %s", flow_code, what, exc)
        return False


def _claim(claims: list[RunClaim]) -> list[int]:
    run_ids = []
    for start in range(0, len(claims), 500):
        run_ids += claim_runs(claims[start:start + 500])
    return run_ids


def _check_head(client: ChainClient, to_block: int) -> None:
    head = client.block_number()
    if to_block > head:
        raise ReplayError(f"Block {to_block} is beyond the chain head ({head}).")


def _replay_transactions(version, chain: Chain, trigger, from_block: int, to_block: int, dry_run: bool,
                         client: ChainClient, prefix: str) -> ReplayResult:
    """The transaction trigger over the range: blocks read whole, BATCH_SIZE a round trip, matched as the
    listener matches them (executor.chaintx), claimed under the listener's keys (or the backtest's)."""
    flow = version.flow
    index = TxIndex([trigger])
    reader = BlockTransactions(client, keep=BATCH_SIZE)
    now = timezone.now()
    claims, seen = [], 0
    try:
        _check_head(client, to_block)
        for first in range(from_block, to_block + 1, BATCH_SIZE):
            blocks = client.get_blocks(list(range(first, min(to_block, first + BATCH_SIZE - 1) + 1)), full=True)
            for block in blocks:
                if block is None:
                    raise ReplayError("The node has not every block of the range yet; try again in a moment.")
                reader.prime(block.full)
                seen += len(block.full.get("transactions") or [])
                for match in reader.matches(block.hash, index, now):
                    payload = tx_payload(match.found[0], match.tx, match.receipt, chain_id=chain.chain_id,
                                         timestamp=block.timestamp)
                    tx = match.tx
                    if not _condition_holds(trigger, payload, flow.code, now, f"transaction {tx['hash']}"):
                        continue
                    claims.append(RunClaim(
                        version_id=version.pk, flow_id=flow.pk, team_id=flow.team_id,
                        trigger_key=f"{prefix}tx:{chain.chain_id}:{tx['block_hash']}:{tx['tx_index']}",
                        trigger=payload, chain_id=chain.pk, block_number=tx["block_number"],
                        block_hash=tx["block_hash"], dry_run=dry_run,
                    ))
    except ChainError as exc:
        raise ReplayError(f"Could not read chain {chain.slug}: {exc}") from None
    return ReplayResult(logs_seen=seen, matched=len(claims), run_ids=_claim(claims))


def _logs(client: ChainClient, first: int, last: int, addresses, topics) -> list[dict]:
    """eth_getLogs over first..last in ranges, halving a range a provider refuses."""
    found: list[dict] = []
    size = FIRST_RANGE
    number = first
    while number <= last:
        end = min(last, number + size - 1)
        try:
            found += client.get_logs_range(number, end, addresses, topics)
        except ChainError as exc:
            if not exc.range_too_large or end == number:
                raise
            size = max(1, (end - number + 1) // 2)
            continue
        number = end + 1
    return [log for log in found if not log["removed"]]
