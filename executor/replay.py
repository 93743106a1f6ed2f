"""Replay and backtest: run a flow version's event trigger over a past block range.

A live replay uses the live keys (`log:<chain>:<block hash>:<log index>`), so
events that already fired are not fired again. A dry run (backtest) creates
runs with `dry_run=True` under keys prefixed `replay:<uuid>:`, which never
collide with live runs or with another backtest, and are not enqueued by the
listener's claim (the caller decides what to do with them).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from executor.chain import ChainClient, ChainError
from executor.matching import MatchError, TriggerIndex, compile_trigger, condition_holds, log_payload
from executor.models import Chain
from executor.runs.start import RunClaim, claim_runs
from flows.expressions import ExpressionError

MAX_REPLAY_BLOCKS = getattr(settings, "KWALA_MAX_REPLAY_BLOCKS", 100_000)
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
    if to_block - from_block + 1 > MAX_REPLAY_BLOCKS:
        raise ReplayError(f"The range is {to_block - from_block + 1:,} blocks; at most {MAX_REPLAY_BLOCKS:,} at a time.")
    spec = (version.dag or {}).get("trigger") or {}
    if spec.get("type") != "chain.event":
        raise ReplayError("Only flows triggered by a contract event can be replayed over blocks.")
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
    index = TriggerIndex([trigger])
    addresses, topics = index.log_filter()
    client = client or ChainClient.for_chain(chain)
    try:
        head = client.block_number()
        if to_block > head:
            raise ReplayError(f"Block {to_block} is beyond the chain head ({head}).")
        logs = _logs(client, from_block, to_block, addresses, topics)
        prefix = (key_prefix or f"replay:{uuid.uuid4()}:") if dry_run else ""
        timestamps: dict[str, int] = {}
        now = timezone.now()
        claims, matched = [], 0
        for log in logs:
            for candidate in index.candidates(log):
                if log["block_hash"] not in timestamps:
                    block = client.get_block_by_hash(log["block_hash"])
                    timestamps[log["block_hash"]] = block.timestamp if block else None
                payload = log_payload(candidate, log, chain_id=chain.chain_id, timestamp=timestamps[log["block_hash"]])
                try:
                    if not condition_holds(trigger.condition, payload, flow_code=flow.code, now=now):
                        continue
                except ExpressionError:
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
    run_ids = []
    for start in range(0, len(claims), 500):
        run_ids += claim_runs(claims[start:start + 500])
    return ReplayResult(logs_seen=len(logs), matched=matched, run_ids=run_ids)


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
