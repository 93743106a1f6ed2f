"""Chain listeners: the block stream, reorgs, confirmations and claiming runs.

The model is one idea: a chain's cursor in PostgreSQL names the last processed
block (number and hash) and keeps the hashes of the recent, unfinalized ones.
Every block, whether it arrives live, while filling a gap after downtime or
while recovering from a reorg, goes through `process_block`, which in one
transaction, holding the cursor row lock:

* checks the block extends the cursor (the next number, parent hash = cursor
  hash), else answers GAP or REORG and changes nothing;
* stores the block's matching logs as Events (unique chain+block hash+log index);
* fires triggers whose confirmation depth is reached: depth 0 on this block's
  logs, depth c on the stored events of the block c below (its hash is taken
  from the cursor's recent blocks, so it is the canonical one);
* fires block triggers and state triggers (false-to-true edge, kept in
  TriggerState) for the block their depth points at;
* inserts the runs with ON CONFLICT DO NOTHING on (version, trigger_key) and
  sends `start_run` for the newly inserted ones after commit;
* advances the cursor.

The lock serialises listeners on a chain and the unique keys make a repeated
block harmless, so two listeners, a crash between commit and anything else, or
a replayed range all yield each run exactly once.

A websocket `newHeads` subscription wakes the loop; it polls when the socket
is down. On the same socket a `logs` subscription (filtered like the loop's
eth_getLogs) sends each pushed block's matching logs straight to a worker,
which stores them, claims their depth-0 runs and starts the first run in one
statement (runs.start.start_pushed_runs), before the loop has
read the block: the same rows the loop would write, so the loop then skips
them (once it has checked they are there) or finds them there. That is what
makes event-to-run latency close to the node's own. A pushed block that is
orphaned before the loop reaches it is retracted when the loop processes its
replacement at that height.

A reorg is found when a block's parent is not the cursor's hash
(or the head at the cursor's height has another hash); the listener walks back
through the recent blocks to the common ancestor and `rewind`s: the orphaned
blocks' events are retracted, their runs cancelled (not started) or marked
REORGED, and the cursor moves back, after which the new branch is processed
like any other block. A reorg deeper than the kept window halts the chain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from executor.blockcheck import Doubt, FirstRead, agreed_logs, verify_logs
from executor.chain import (
    BATCH_SIZE,
    Block,
    ChainClient,
    ChainError,
    block_from_rpc,
    client_for_chain,
    log_from_rpc,
    scrub_urls,
)
from executor.chainsocket import SOCKET_ERRORS, SubscriptionSocket
from executor.chaintx import BlockTransactions, TxMatch
from executor.matching import (
    Candidate,
    ChainTriggers,
    LogTrigger,
    build_chain_triggers,
    condition_holds,
    log_payload,
    tx_payload,
)
from executor.models import Chain, ChainCursor, Event, Run, TriggerState
from executor.quotas import ConditionBudget
from executor.runs import queue
from executor.runs.start import PUSHED_EVENT_FIELDS, RunClaim, claim_runs
from executor.runs.store import rows_json
from flows.expressions import ExpressionError
from flows.models import FlowVersion

logger = logging.getLogger(__name__)

# Blocks whose hashes the cursor keeps to find a common ancestor after a reorg.
REORG_WINDOW = getattr(settings, "KWALA_REORG_WINDOW", 128)
POLL_SECONDS = getattr(settings, "KWALA_LISTENER_POLL_SECONDS", 2.0)
# Largest eth_getLogs range asked for while filling a gap; halved when a provider refuses.
MAX_LOG_RANGE = getattr(settings, "KWALA_LOG_RANGE", 2000)
CHAIN_TRIGGER_TYPES = ("chain.event", "chain.transaction", "chain.block", "chain.state")
# How often a halted listener looks whether an operator has resumed its chain.
HALT_RECHECK_SECONDS = 5.0
# How long the block loop lets freshly claimed runs go first (see ChainListener._yield_to_claimed_runs).
YIELD_SECONDS = getattr(settings, "KWALA_LISTENER_YIELD_SECONDS", 0.03)
# How often the websocket thread looks whether the trigger index changed (to resubscribe).
RESUBSCRIBE_CHECK_SECONDS = 0.2
# Asking again about a held block (executor.blockcheck) backs off from the first to the last delay.
HOLD_FIRST_DELAY = 0.5
HOLD_MAX_DELAY = 8.0
# Reconnecting a dropped websocket backs off between these, starting again after every subscribe.
WS_FIRST_DELAY = 0.5
WS_MAX_DELAY = 30.0
# Blocks whose pushed logs (and headers) a listener remembers until its loop reaches them.
PUSHED_BLOCKS_KEPT = 1024

PROCESSED, ALREADY_DONE, GAP, REORG = "processed", "already done", "gap", "reorg"


# -- claiming runs ------------------------------------------------------------------------


# -- triggers -------------------------------------------------------------------------------


def load_triggers() -> dict[int, ChainTriggers]:
    """Compile the chain triggers of every published version of an unpaused flow, by chain id."""

    rows = [
        {"version_id": vid, "flow_id": fid, "team_id": tid, "flow_code": code, "spec": dag["trigger"]}
        for vid, fid, tid, code, dag in FlowVersion.objects.filter(
            status=FlowVersion.Status.PUBLISHED,
            flow__paused=False,
            dag__trigger__type__in=CHAIN_TRIGGER_TYPES,
        ).values_list("id", "flow_id", "flow__team_id", "flow__code", "dag")
    ]
    by_chain, problems = build_chain_triggers(rows)
    for version_id, problem in problems:
        logger.error("skipping the trigger of flow version %s: %s", version_id, problem)
    return by_chain


def paused_flow_ids(flow_ids: Iterable[int]) -> set[int]:
    """Flows paused since the index was built (pausing need not announce itself)."""
    from flows.models import Flow

    ids = set(flow_ids)
    return set(Flow.objects.filter(pk__in=ids, paused=True).values_list("pk", flat=True)) if ids else set()


# -- the core -------------------------------------------------------------------------------


def _recent(cursor: ChainCursor) -> dict[int, list]:
    return {entry[0]: entry for entry in cursor.recent_blocks}


def get_cursor(chain: Chain) -> ChainCursor:
    cursor, _ = ChainCursor.objects.get_or_create(chain=chain)
    return cursor


def start_cursor_at(chain: Chain, block: Block) -> None:
    """Begin a chain that has never been listened to at `block` (treated as processed)."""
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(pk=get_cursor(chain).pk)
        if cursor.block_number is not None:
            return
        cursor.block_number = block.number
        cursor.block_hash = block.hash
        cursor.recent_blocks = [[block.number, block.hash, block.parent_hash, block.timestamp]]
        cursor.processed_at = timezone.now()
        cursor.save(update_fields=["block_number", "block_hash", "recent_blocks", "processed_at", "updated_at"])


def process_block(
    chain: Chain,
    block: Block,
    logs: list[dict[str, Any]],
    triggers: ChainTriggers,
    client: ChainClient | None = None,
    *,
    window: int = REORG_WINDOW,
    pushed: frozenset[int] | set[int] = frozenset(),
    transactions: BlockTransactions | None = None,
) -> str:
    """Process one block that may extend the chain's cursor; see the module docstring.

    `logs` are the block's logs (at least those matching `triggers.logs`'s
    filter), all with this block's hash. `client` is needed for state triggers,
    `transactions` (reading the blocks' transactions) for transaction triggers.
    `pushed` names the log indexes whose events and depth-0 runs the pushed claim
    already stored with these same `triggers`: they are skipped (doing them again
    would only find every row there).
    Returns PROCESSED, ALREADY_DONE (another listener or an earlier attempt
    did it), GAP (blocks between the cursor and this one are missing) or REORG
    (the block does not extend the cursor's hash): nothing is written then.
    """
    now = timezone.now()
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(pk=get_cursor(chain).pk)
        if cursor.halted:
            raise ChainHalted(cursor.last_error)
        if cursor.block_number is not None:
            if block.number <= cursor.block_number:
                known = _recent(cursor).get(block.number)
                return REORG if known is not None and known[1] != block.hash else ALREADY_DONE
            if block.number > cursor.block_number + 1:
                return GAP
            if block.parent_hash != cursor.block_hash:
                return REORG

        recent = _recent(cursor)
        recent[block.number] = [block.number, block.hash, block.parent_hash, block.timestamp]
        claims: list[RunClaim] = []
        log_triggers = triggers.logs

        # Events: this block's logs that some trigger matches, stored at once.
        matched: list[tuple[dict, list[Candidate]]] = []
        for log in logs:
            if log["log_index"] in pushed:
                continue
            found = log_triggers.candidates(log, now)
            if found:
                matched.append((log, found))
        _settle_height(chain, block)
        event_ids = _store_events(chain, block.number, block.hash, [log for log, _ in matched]) if matched else {}

        budget = ConditionBudget(f"chain {chain.slug} block {block.number}")
        for log, found in matched:
            _log_claims(chain, log, [c for c in found if c.trigger.confirmations == 0], event_ids, block.timestamp, now,
                        claims, budget)

        # Deeper confirmations: the block `depth` below is now confirmed enough.
        for depth in sorted(triggers.confirmation_depths() - {0}):
            target = recent.get(block.number - depth)
            if target is None:
                continue
            _, target_hash, _, target_ts = target
            if any(t.confirmations == depth for t in log_triggers.triggers):
                events = list(Event.objects.filter(chain=chain, block_hash=target_hash, retracted_at__isnull=True))
                ids = {e.log_index: e.pk for e in events}
                for event in events:
                    log = _event_log(event)
                    found = [c for c in log_triggers.candidates(log, now) if c.trigger.confirmations == depth]
                    _log_claims(chain, log, found, ids, target_ts, now, claims, budget)

        # Transactions: of this block for depth 0, of the block `depth` below for the others.
        if triggers.txs.triggers:
            if transactions is None:
                raise ValueError("transaction triggers need the blocks' transactions")
            for depth in sorted({t.confirmations for t in triggers.txs.triggers}):
                target = recent.get(block.number - depth)
                if target is None:
                    continue
                for match in transactions.matches(target[1], triggers.txs, now):
                    _tx_claims(chain, match, [c for c in match.found if c.trigger.confirmations == depth],
                               target[3], now, claims, budget)

        for trigger in triggers.blocks:
            target = recent.get(block.number - trigger.confirmations)
            if target is None or target[0] % trigger.every:
                continue
            claims.append(
                RunClaim(
                    version_id=trigger.version_id, flow_id=trigger.flow_id, team_id=trigger.team_id,
                    trigger_key=f"block:{chain.chain_id}:{target[1]}",
                    trigger={"type": "chain.block", "chain_id": chain.chain_id, "block_number": target[0],
                             "block_hash": target[1], "timestamp": target[3]},
                    chain_id=chain.pk, block_number=target[0], block_hash=target[1],
                )
            )

        for trigger in triggers.states:
            target = recent.get(block.number - trigger.confirmations)
            if target is None or target[0] % trigger.every:
                continue
            claim = _state_claim(chain, trigger, target, client, now)
            if claim is not None:
                claims.append(claim)

        if claims:
            paused = paused_flow_ids(c.flow_id for c in claims)
            claim_runs([c for c in claims if c.flow_id not in paused])
        budget.enforce()  # after the claims: what was evaluated within the budget still runs

        keep = sorted(recent)[-max(window, triggers.max_confirmations() + 1):]
        cursor.recent_blocks = [recent[n] for n in keep]
        cursor.block_number = block.number
        cursor.block_hash = block.hash
        cursor.processed_at = now
        cursor.save(update_fields=["block_number", "block_hash", "recent_blocks", "processed_at", "updated_at"])
    return PROCESSED


@dataclass
class PushedBlock:
    """Logs a node pushed over its websocket, all of one block (not yet processed by the loop)."""

    number: int
    hash: str
    timestamp: int
    logs: list[dict[str, Any]] = field(default_factory=list)


# Runs claimed by one start_pushed_runs message at most: a burst is spread over the workers.
CLAIMS_PER_MESSAGE = 100


@dataclass
class PushedClaims:
    """What a batch of pushed logs asks for, as a worker message carries it (see pushed_claims)."""

    chain: int  # the Chain row's id
    # [block number, block hash, log index, tx hash, address, topics, data] of every matching log
    events: list[list[Any]] = field(default_factory=list)
    # the depth-0 runs: {team_id, flow_id, version_id, trigger_key, trigger, block_number, block_hash}
    claims: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        return {"chain": self.chain, "events": self.events, "claims": self.claims}


def pushed_claims(chain: Chain, blocks: Sequence[PushedBlock], triggers: ChainTriggers) -> list[PushedClaims]:
    """Match pushed logs against the triggers: the events to store and the runs to claim, in batches.

    As process_block does, every matching log is stored (deeper triggers fire from
    the stored events later) and runs are claimed for the depth-0 triggers, with
    the same trigger keys and payloads, so whichever of the two comes second finds
    every row there. Batches hold at most CLAIMS_PER_MESSAGE runs, each with its logs.
    """
    now = timezone.now()
    budget = ConditionBudget(f"chain {chain.slug}, pushed logs")
    batches = [PushedClaims(chain.pk)]
    for block in blocks:
        for log in block.logs:
            found = triggers.logs.candidates(log, now)
            if not found:
                continue
            claims: list[RunClaim] = []
            _log_claims(chain, log, [c for c in found if c.trigger.confirmations == 0], {}, block.timestamp, now,
                        claims, budget)
            batch = batches[-1]
            if batch.claims and len(batch.claims) + len(claims) > CLAIMS_PER_MESSAGE:
                batch = PushedClaims(chain.pk)
                batches.append(batch)
            batch.events.append([block.number, block.hash, log["log_index"], log["tx_hash"], log["address"],
                                 log["topics"], log["data"]])
            batch.claims += [
                {"team_id": c.team_id, "flow_id": c.flow_id, "version_id": c.version_id,
                 "trigger_key": c.trigger_key, "trigger": c.trigger, "block_number": c.block_number,
                 "block_hash": c.block_hash}
                for c in claims
            ]
    budget.enforce()
    return [batch for batch in batches if batch.events]


def reconcile_late_push(payload: dict[str, Any]) -> list[int]:
    """Pushed logs for blocks the block loop had already passed: store and claim what it missed.

    The pushed claim (runs.start.start_pushed_runs) writes only above the cursor. A log pushed for a block at or below
    it is checked against that block's stored events: if the block is the canonical
    one (the hash the cursor recorded at that height) and the event is missing, the
    loop was given an incomplete answer for it. The event is stored and its runs are
    claimed (exactly once, as always), and the inconsistency is logged and counted.
    Returns the new runs' ids (their starts are sent on commit).
    """
    events = [dict(zip(PUSHED_EVENT_FIELDS, event, strict=True)) for event in payload["events"]]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT block_hash, log_index FROM executor_event WHERE chain_id = %s AND block_hash = ANY(%s::varchar[])",
            [payload["chain"], sorted({e["block_hash"] for e in events})],
        )
        stored = set(cursor.fetchall())
    missing = [e for e in events if (e["block_hash"], e["log_index"]) not in stored]
    if not missing:
        return []  # the usual case: the loop stored them first
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().select_related("chain").get(chain_id=payload["chain"])
        chain = cursor.chain
        if cursor.halted or cursor.block_number is None:
            logger.warning("chain %s: %s pushed log(s) arrived while the listener is halted; left for resume_chain",
                           chain.slug, len(missing))
            return []
        recent = _recent(cursor)
        late = [e for e in missing if e["block_number"] <= cursor.block_number]
        canonical = [e for e in late if (recent.get(e["block_number"]) or [None, None])[1] == e["block_hash"]]
        for event in late:
            if event not in canonical:
                known = recent.get(event["block_number"])
                logger.info("chain %s: pushed log %s#%s is for a block %s; ignored", chain.slug, event["block_hash"],
                            event["log_index"], "no longer on the chain" if known else "older than the kept window")
        if not canonical:
            return []
        by_block: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for event in canonical:
            by_block.setdefault((event["block_number"], event["block_hash"]), []).append(event)
        ids: dict[tuple[str, int], int] = {}
        for (number, block_hash), logs in by_block.items():
            for log_index, event_id in _store_events(chain, number, block_hash, logs).items():
                ids[(block_hash, log_index)] = event_id
        wanted = {(e["block_hash"], e["log_index"]) for e in canonical}
        claims = [
            RunClaim(version_id=c["version_id"], flow_id=c["flow_id"], team_id=c["team_id"],
                     trigger_key=c["trigger_key"], trigger=c["trigger"], chain_id=chain.pk,
                     event_id=ids.get((c["block_hash"], c["trigger"]["log_index"])),
                     block_number=c["block_number"], block_hash=c["block_hash"])
            for c in payload["claims"] if (c["block_hash"], c["trigger"]["log_index"]) in wanted
        ]
        paused = paused_flow_ids(c.flow_id for c in claims)
        run_ids = claim_runs([c for c in claims if c.flow_id not in paused])
        blocks = ", ".join(str(number) for number, _ in sorted(by_block))
        note_inconsistency(chain, f"block(s) {blocks}: {len(canonical)} log(s) the block loop never got from "
                                  f"eth_getLogs arrived over the websocket; stored, {len(run_ids)} run(s) claimed")
    return run_ids


def note_inconsistency(chain: Chain, message: str) -> None:
    """Log and count an answer a node got wrong that the listener caught (shown in /readyz and the admin)."""
    message = scrub_urls(message)
    logger.warning("chain %s: RPC inconsistency: %s", chain.slug, message)
    ChainCursor.objects.filter(chain=chain).update(
        inconsistencies=F("inconsistencies") + 1, last_inconsistency=message[:1000],
        last_inconsistency_at=timezone.now(),
    )


def pushed_claims_landed(chain: Chain, block_hash: str, log_indexes: Sequence[int],
                         keys: Sequence[tuple[int, str]]) -> bool:
    """Whether every event and run a block's pushed claims asked for is stored (so the loop may skip them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM executor_event WHERE chain_id = %s AND block_hash = %s "
            "AND log_index = ANY(%s::int[])), "
            "(SELECT count(*) FROM executor_run r JOIN unnest(%s::bigint[], %s::varchar[]) AS k(version_id, key) "
            "ON r.version_id = k.version_id AND r.trigger_key = k.key)",
            [chain.pk, block_hash, list(log_indexes), [v for v, _ in keys], [k for _, k in keys]],
        )
        events, runs = cursor.fetchone()
    return events == len(log_indexes) and runs == len(keys)


class ChainHalted(Exception):
    """The chain's listener is halted (a reorg deeper than the window); an operator must act."""


def _event_log(event: Event) -> dict[str, Any]:
    return {
        "address": event.address,
        "topics": event.topics,
        "data": event.data,
        "block_number": event.block_number,
        "block_hash": event.block_hash,
        "log_index": event.log_index,
        "tx_hash": event.tx_hash,
    }


def _store_events(chain: Chain, number: int, block_hash: str, logs: list[dict]) -> dict[int, int]:
    """Insert the logs of one block as Events (existing ones kept); return {log_index: event id}."""
    rows = [{"log_index": log["log_index"], "tx_hash": log["tx_hash"], "address": log["address"],
             "topics": log["topics"], "data": log["data"]} for log in logs]
    with connection.cursor() as cursor:
        cursor.execute(_STORE_EVENTS_SQL, {"chain": chain.pk, "number": number, "hash": block_hash,
                                           "now": timezone.now(), "rows": rows_json(rows)})
        return dict(cursor.fetchall())


# One statement: the rows it inserts, plus the ones that were there before it (the statement's
# snapshot does not see its own inserts, so nothing is listed twice). Rows as one JSON parameter.
_STORE_EVENTS_SQL = (
    "WITH new AS (INSERT INTO executor_event (chain_id, block_number, block_hash, log_index, tx_hash, "
    "address, topics, data, created_at) SELECT %(chain)s, %(number)s, %(hash)s, log_index, tx_hash, address, "
    "topics, data, %(now)s FROM jsonb_to_recordset(%(rows)s::jsonb) "
    "AS r(log_index int, tx_hash varchar, address varchar, topics jsonb, data text) "
    "ON CONFLICT (chain_id, block_hash, log_index) DO NOTHING RETURNING log_index, id) "
    "SELECT log_index, id FROM new UNION ALL "
    "SELECT log_index, id FROM executor_event WHERE chain_id = %(chain)s AND block_hash = %(hash)s"
)


def _settle_height(chain: Chain, block: Block) -> None:
    """Make `block` the only block at its height with live events.

    Events stored at this height under another hash came from logs the node pushed
    for a block that was then orphaned before the block loop reached it (so no
    rewind knew about it): they are retracted with their runs, as in a reorg. This
    block's own events are live again if an earlier reorg had retracted them.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT block_hash, bool_or(retracted_at IS NULL), bool_or(retracted_at IS NOT NULL) "
            "FROM executor_event WHERE chain_id = %s AND block_number = %s GROUP BY block_hash",
            [chain.pk, block.number],
        )
        rows = cursor.fetchall()
        orphaned = [h for h, live, _ in rows if h != block.hash and live]
        if any(h == block.hash and retracted for h, _, retracted in rows):
            cursor.execute(
                "UPDATE executor_event SET retracted_at = NULL WHERE chain_id = %s AND block_hash = %s "
                "AND retracted_at IS NOT NULL",
                [chain.pk, block.hash],
            )
    if orphaned:
        logger.warning("chain %s: block %s replaced a block whose pushed logs were claimed; retracting them",
                       chain.slug, block.number)
        retract_blocks(chain, orphaned, f"Block reorganised away (chain {chain.slug}, block {block.number} "
                                        f"is {block.hash})")


def _log_claims(chain: Chain, log: dict, found: list[Candidate], event_ids: dict[int, int], timestamp: int,
                now, claims: list[RunClaim], budget: ConditionBudget | None = None) -> None:
    for candidate in found:
        trigger: LogTrigger = candidate.trigger
        if trigger.condition and budget is not None and not budget.allows(trigger.team_id):
            budget.skip(trigger.flow_id)  # paused with an alert once the block is done (executor.quotas)
            continue
        payload = log_payload(candidate, log, chain_id=chain.chain_id, timestamp=timestamp)
        started = budget.start() if budget is not None else 0.0
        try:
            if not condition_holds(trigger.condition, payload, flow_code=trigger.flow_code, now=now):
                continue
        except ExpressionError as exc:
            logger.warning("flow %s: trigger condition failed on %s#%s: %s",
                           trigger.flow_code, log["block_hash"], log["log_index"], exc)
            continue
        finally:
            if budget is not None and trigger.condition:
                budget.charge(trigger.team_id, started)
        claims.append(
            RunClaim(
                version_id=trigger.version_id, flow_id=trigger.flow_id, team_id=trigger.team_id,
                trigger_key=f"log:{chain.chain_id}:{log['block_hash']}:{log['log_index']}",
                trigger=payload, chain_id=chain.pk, event_id=event_ids.get(log["log_index"]),
                block_number=log["block_number"], block_hash=log["block_hash"],
            )
        )


def _tx_claims(chain: Chain, match: TxMatch, found: list, timestamp: int, now, claims: list[RunClaim],
               budget: ConditionBudget) -> None:
    """Runs for one matched transaction: one per trigger whose condition holds (keyed like a log's)."""
    tx = match.tx
    for candidate in found:
        trigger = candidate.trigger
        if trigger.condition and not budget.allows(trigger.team_id):
            budget.skip(trigger.flow_id)
            continue
        payload = tx_payload(candidate, tx, match.receipt, chain_id=chain.chain_id, timestamp=timestamp)
        started = budget.start()
        try:
            if not condition_holds(trigger.condition, payload, flow_code=trigger.flow_code, now=now):
                continue
        except ExpressionError as exc:
            logger.warning("flow %s: trigger condition failed on transaction %s: %s", trigger.flow_code, tx["hash"], exc)
            continue
        finally:
            if trigger.condition:
                budget.charge(trigger.team_id, started)
        claims.append(
            RunClaim(
                version_id=trigger.version_id, flow_id=trigger.flow_id, team_id=trigger.team_id,
                trigger_key=f"tx:{chain.chain_id}:{tx['block_hash']}:{tx['tx_index']}",
                trigger=payload, chain_id=chain.pk, block_number=tx["block_number"], block_hash=tx["block_hash"],
            )
        )


def _state_claim(chain: Chain, trigger, target: list, client: ChainClient | None, now) -> RunClaim | None:
    """Read the state at the target block and claim a run on a false-to-true edge.

    The edge is decided by a conditional update of TriggerState that only the
    first listener to reach this block wins, so restarts and several listeners agree.
    """
    number, block_hash, _, timestamp = target
    if client is None:
        raise ValueError("state triggers need a chain client")
    try:
        raw = client.call(trigger.address, trigger.call_data, block_hash)
        result, outputs = trigger.decode_result(raw)
        payload = {"type": "chain.state", "chain_id": chain.chain_id, "block_number": number,
                   "block_hash": block_hash, "timestamp": timestamp, "result": result, "outputs": outputs}
        value = condition_holds(trigger.condition, payload, flow_code=trigger.flow_code, now=now,
                                extra={"result": result})
    except (ChainError, ExpressionError, ValueError) as exc:
        # A failed read says nothing about the edge: keep the last value.
        logger.warning("flow %s: state trigger read failed at block %s: %s", trigger.flow_code, number, exc)
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT value, block_number FROM executor_triggerstate WHERE version_id = %s FOR UPDATE",
            [trigger.version_id],
        )
        row = cursor.fetchone()
        if row is not None and row[1] >= number:
            return None  # another listener already read this block (or a later one)
        cursor.execute(
            "INSERT INTO executor_triggerstate (version_id, chain_id, block_number, value, updated_at) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (version_id) DO UPDATE SET block_number = EXCLUDED.block_number, "
            "value = EXCLUDED.value, updated_at = EXCLUDED.updated_at "
            "WHERE executor_triggerstate.block_number < EXCLUDED.block_number",
            [trigger.version_id, chain.pk, number, value, now],
        )
    # Never seen counts as false: a condition already true when published fires once.
    if not value or (row is not None and row[0]):
        return None
    return RunClaim(
        version_id=trigger.version_id, flow_id=trigger.flow_id, team_id=trigger.team_id,
        trigger_key=f"block:{chain.chain_id}:{block_hash}", trigger=payload, chain_id=chain.pk,
        block_number=number, block_hash=block_hash,
    )


# -- reorgs ---------------------------------------------------------------------------------


def find_common_ancestor(chain: Chain, client: ChainClient) -> list | None:
    """The newest recent block the node still has at the same height, or None if none is."""
    cursor = get_cursor(chain)
    for entry in reversed(cursor.recent_blocks):
        canonical = client.get_block(entry[0])
        if canonical is not None and canonical.hash == entry[1]:
            return entry
    return None


def halt(chain: Chain, message: str) -> None:
    logger.critical("LISTENER HALTED for chain %s (%s): %s", chain.slug, chain.chain_id, message)
    ChainCursor.objects.filter(chain=chain).update(
        halted=True, last_error=message, last_error_at=timezone.now(), updated_at=timezone.now()
    )


def retract_blocks(chain: Chain, orphaned: Sequence[str], reason: str) -> None:
    """Retract the events of the blocks with hashes `orphaned`: runs not started yet are
    CANCELLED, the others REORGED, each with a run event for the UI. Call inside a transaction."""
    from executor.runs.store import record_run_event

    now = timezone.now()
    Event.objects.filter(chain=chain, block_hash__in=orphaned, retracted_at__isnull=True).update(retracted_at=now)
    runs = Run.objects.filter(chain=chain, block_hash__in=orphaned, dry_run=False).select_related("flow")
    # Every run locked first, in id order, before any is changed: a change takes its run's rollup
    # row too (the trigger), and a worker ending one of these runs holds that run and then needs
    # the same rollup row. Changed one at a time, the reorg held the rollup row and waited for the
    # run, a deadlock PostgreSQL broke by aborting one of them (tests/executor/test_rollups.py).
    retracted = runs.exclude(status__in=[Run.Status.CANCELLED, Run.Status.REORGED])
    for run in retracted.select_for_update(of=("self",)).order_by("pk"):
        cancelled = Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED, started_at__isnull=True).update(
            status=Run.Status.CANCELLED, error=reason, finished_at=now
        )
        if cancelled:
            record_run_event(run, "run.cancelled", {"status": Run.Status.CANCELLED, "reason": reason,
                                                    "block_hash": run.block_hash})
            continue
        reorged = Run.objects.filter(pk=run.pk).exclude(
            status__in=[Run.Status.CANCELLED, Run.Status.REORGED]
        ).update(status=Run.Status.REORGED, error=reason, finished_at=now)
        if reorged:
            record_run_event(run, "run.reorged", {"status": Run.Status.REORGED, "reason": reason,
                                                  "block_hash": run.block_hash})


def rewind(chain: Chain, ancestor: Sequence) -> list[str]:
    """Move the cursor back to `ancestor` ([number, hash, ...]) and retract what came after.

    Events of the orphaned blocks get `retracted_at`; their runs that have not
    started are CANCELLED, the others REORGED, each with a run event for the UI.
    Returns the orphaned block hashes (empty if another listener rewound first).
    """
    number, block_hash = ancestor[0], ancestor[1]
    with transaction.atomic():
        cursor = ChainCursor.objects.select_for_update().get(pk=get_cursor(chain).pk)
        recent = _recent(cursor)
        if recent.get(number, [None, None])[1] != block_hash:
            return []
        orphaned = [recent[n][1] for n in sorted(recent) if n > number]
        if not orphaned:
            return []
        logger.warning("chain %s: reorg, rewinding from %s to %s (%d block(s) orphaned)",
                       chain.slug, cursor.block_number, number, len(orphaned))
        retract_blocks(chain, orphaned, f"Block reorganised away (chain {chain.slug} reorg back to block {number})")
        # State triggers re-read the new branch; their last value stays as it was.
        TriggerState.objects.filter(chain=chain, block_number__gt=number).update(block_number=number)
        cursor.recent_blocks = [recent[n] for n in sorted(recent) if n <= number]
        cursor.block_number = number
        cursor.block_hash = block_hash
        cursor.save(update_fields=["recent_blocks", "block_number", "block_hash", "updated_at"])
    return orphaned


def resume_chain(chain: Chain, client: ChainClient, *, from_block: int | None = None) -> str:
    """Clear a halted chain after an operator has checked it; returns what was done, for the operator.

    Without `from_block`, the listener carries on from the newest kept block the node
    still has (the endpoint was at fault and now agrees again); if none is, the
    operator must name the last block they trust. With `from_block`, the cursor
    moves to that block of the node's chain, and the stored events of every block the
    node no longer has at or after it (or in the kept window) are retracted like a
    normal reorg's. Raises ValueError with a message for the operator.
    """
    cursor = get_cursor(chain)
    if not cursor.halted:
        raise ValueError(f"Chain {chain.slug} is not halted; nothing to resume.")
    if from_block is None:
        ancestor = find_common_ancestor(chain, client)
        if ancestor is None:
            raise ValueError(
                f"None of the {len(cursor.recent_blocks)} kept blocks of {chain.slug} is on the node's chain: "
                "give --from-block N, the last block you trust (its events after it are checked again)."
            )
        with transaction.atomic():
            orphaned = rewind(chain, ancestor)
            ChainCursor.objects.filter(pk=cursor.pk).update(halted=False, last_error="", updated_at=timezone.now())
        return (f"Chain {chain.slug} resumed from block {ancestor[0]}"
                + (f"; {len(orphaned)} orphaned block(s) retracted." if orphaned else "."))

    head = client.block_number()
    if not 0 <= from_block <= head:
        raise ValueError(f"Block {from_block} is not on {chain.slug} (its head is {head}).")
    start = client.get_block(from_block)
    floor = min([from_block + 1] + [entry[0] for entry in cursor.recent_blocks])
    stored = sorted(set(
        Event.objects.filter(chain=chain, block_number__gte=floor, retracted_at__isnull=True)
        .values_list("block_number", "block_hash")
    ))
    canonical = dict(zip([n for n, _ in stored], client.get_blocks([n for n, _ in stored]), strict=True))
    orphaned = [h for n, h in stored if canonical[n] is None or canonical[n].hash != h]
    with transaction.atomic():
        locked = ChainCursor.objects.select_for_update().get(pk=cursor.pk)
        retract_blocks(chain, orphaned, f"Block reorganised away (chain {chain.slug} resumed at block {from_block})")
        TriggerState.objects.filter(chain=chain, block_number__gt=from_block).update(block_number=from_block)
        locked.block_number = start.number
        locked.block_hash = start.hash
        locked.recent_blocks = [[start.number, start.hash, start.parent_hash, start.timestamp]]
        locked.halted = False
        locked.last_error = ""
        locked.save(update_fields=["block_number", "block_hash", "recent_blocks", "halted", "last_error",
                                   "updated_at"])
    logger.warning("chain %s: resumed by an operator at block %s (%d orphaned block(s) retracted)",
                   chain.slug, from_block, len(orphaned))
    return (f"Chain {chain.slug} resumes after block {from_block}; "
            f"{len(orphaned)} block(s) with stored events were not on the node's chain and were retracted.")


# -- the loop ---------------------------------------------------------------------------------


class TriggerRegistry:
    """The compiled triggers of every chain, reloaded when a flow is published or unpublished.

    `watch()` LISTENs on `kwala_triggers` with its own psycopg connection and
    reloads within the notification's round trip; a periodic reload is the
    safety net for a lost connection.
    """

    def __init__(self, refresh_seconds: float = 30.0):
        self.refresh_seconds = refresh_seconds
        self._by_chain: dict[int, ChainTriggers] = {}
        self._lock = threading.Lock()
        self.generation = 0
        self.listeners: list[threading.Event] = []

    def reload(self) -> None:
        by_chain = load_triggers()
        with self._lock:
            self._by_chain = by_chain
            self.generation += 1
        for wake in self.listeners:
            wake.set()

    def get(self, chain_id: int) -> ChainTriggers:
        """The chain's triggers: the same object until the next reload, so callers can tell a change by identity."""
        with self._lock:
            return self._by_chain.setdefault(chain_id, ChainTriggers(chain_id))

    def watch(self, stop: threading.Event) -> None:
        import psycopg

        from flows.actions import TRIGGERS_CHANNEL

        while not stop.is_set():
            try:
                params = connection.get_connection_params()
                params = {k: v for k, v in params.items() if k not in ("cursor_factory", "context")}
                with psycopg.connect(**params, autocommit=True) as conn:
                    conn.execute(f"LISTEN {TRIGGERS_CHANNEL}")
                    self.reload()  # anything published while we were not listening
                    last = time.monotonic()
                    while not stop.is_set():
                        changed = False
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            changed = True
                        if changed or time.monotonic() - last > self.refresh_seconds:
                            self.reload()
                            last = time.monotonic()
            except Exception:
                logger.exception("trigger notifications: connection lost, reconnecting")
                stop.wait(2)
            finally:
                connection.close()


@dataclass
class ChainListener:
    """Follows one chain: wakes on new heads (or polls), processes blocks in order."""

    chain: Chain
    registry: TriggerRegistry
    stop: threading.Event
    poll_seconds: float = POLL_SECONDS
    window: int = REORG_WINDOW
    max_range: int = MAX_LOG_RANGE
    halt_recheck_seconds: float = HALT_RECHECK_SECONDS
    wake: threading.Event = field(default_factory=threading.Event)
    client: ChainClient | None = None
    ws_connected: bool = False
    # The trigger index the websocket's logs subscription follows (None before the first subscribe).
    logs_follow: ChainTriggers | None = None

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = client_for_chain(self.chain)
        self.range_size = self.max_range
        self.registry.listeners.append(self.wake)
        self.transactions = BlockTransactions(self.client)
        # Block hash -> what was asked for its pushed logs (see _note_pushed).
        self._pushed: OrderedDict[str, _Pushed] = OrderedDict()
        self._pushed_lock = threading.Lock()
        self._claimed_at = float("-inf")  # when pushed logs were last claimed (monotonic)
        # Blocks held because their logs answer is not believable yet (executor.blockcheck).
        self._doubts: dict[str, Doubt] = {}
        self._reads: dict[str, FirstRead] = {}  # first reads of blocks a second source must agree with
        self._held: int | None = None  # the block number the cursor is held at
        self._ask_again_at = 0.0  # monotonic; asking a held block again backs off
        self._hold_delay = HOLD_FIRST_DELAY
        self._error_shown = True  # whether last_error may hold an error to clear (once, at start)

    def _note_pushed(self, triggers: ChainTriggers, blocks: list[PushedBlock], batches: list[PushedClaims]) -> None:
        """Remember what was asked for each pushed block, for the loop to check and skip."""
        with self._pushed_lock:
            for block in blocks:
                indexes = {log["log_index"] for log in block.logs}
                events = [e[2] for batch in batches for e in batch.events if e[1] == block.hash]
                keys = [(c["version_id"], c["trigger_key"]) for batch in batches for c in batch.claims
                        if c["block_hash"] == block.hash]
                entry = self._pushed.get(block.hash)
                if entry is not None and entry.triggers is triggers:
                    entry.indexes |= indexes
                    entry.events += events
                    entry.keys += keys
                else:
                    self._pushed[block.hash] = _Pushed(triggers, indexes, events, keys)
            while len(self._pushed) > PUSHED_BLOCKS_KEPT:  # orphans the loop never reached
                self._pushed.popitem(last=False)

    def _take_pushed(self, block_hash: str, triggers: ChainTriggers) -> set[int]:
        """The log indexes of this block whose events and runs a pushed claim stored, with these same triggers.

        Checked in the database (one query): a worker may not have taken the
        message yet, or it may have failed; then the loop does it all itself.
        """
        with self._pushed_lock:
            entry = self._pushed.pop(block_hash, None)
        if entry is None or entry.triggers is not triggers:
            return set()
        if (entry.events or entry.keys) and not pushed_claims_landed(self.chain, block_hash, entry.events, entry.keys):
            return set()
        return entry.indexes

    # one pass: catch up to the head ----------------------------------------------------

    def step(self) -> None:
        client = self.client
        head = client.get_block("latest", full=len(self.registry.get(self.chain.chain_id).txs) > 0)
        if head is None:
            return
        try:
            self._step_to(head)
        finally:
            # After the blocks, not before: this write's commit would otherwise delay every run.
            ChainCursor.objects.filter(chain=self.chain).update(head_block=head.number, head_seen_at=timezone.now())

    def _step_to(self, head: Block) -> None:
        client = self.client
        cursor = get_cursor(self.chain)
        if cursor.halted:
            raise ChainHalted(cursor.last_error)
        if cursor.block_number is None:
            start = client.get_block(max(head.number - 1, 0))
            start_cursor_at(self.chain, start)
            logger.info("chain %s: starting at block %s", self.chain.slug, start.number)
            cursor = get_cursor(self.chain)
        if head.number < cursor.block_number or (
            head.number == cursor.block_number and head.hash != cursor.block_hash
        ):
            # The node's chain is shorter, or has another block at our height.
            self.recover_from_reorg()
            return
        if head.number > cursor.block_number:
            if self._held is not None and time.monotonic() < self._ask_again_at:
                return  # a held block is asked again with backoff
            self.catch_up(cursor.block_number + 1, head.number, head=head)

    def catch_up(self, first: int, last: int, head: Block | None = None) -> None:
        """Process blocks first..last in order; ranges of logs when behind, one block's logs when live.

        Headers come in JSON-RPC batches (executor.chain.BATCH_SIZE a round trip), so a gap
        of a thousand blocks costs tens of requests, not a thousand. `head`, the block just
        read as the latest, is used as is rather than read again.
        """
        number = first
        while number <= last and not self.stop.is_set():
            triggers = self.registry.get(self.chain.chain_id)
            addresses, topics = triggers.logs.log_filter()
            want_logs = len(triggers.logs) > 0
            want_txs = len(triggers.txs) > 0  # read blocks whole (executor.chaintx)
            end = min(last, number + self.range_size - 1)
            by_block: dict[int, list[dict]] | None = None  # None: ask each block for its own logs
            if want_logs and last - number >= 2:
                try:
                    range_logs = self.client.get_logs_range(number, end, addresses, topics)
                except ChainError as exc:
                    if not exc.range_too_large or end == number:
                        raise
                    self.range_size = max(1, (end - number + 1) // 2)
                    logger.info("chain %s: provider refused %s blocks of logs, trying %s",
                                self.chain.slug, end - number + 1, self.range_size)
                    continue
                by_block = {}
                for log in range_logs:
                    by_block.setdefault(log["block_number"], []).append(log)
            for chunk in range(number, end + 1, BATCH_SIZE):
                numbers = list(range(chunk, min(end, chunk + BATCH_SIZE - 1) + 1))
                if len(numbers) > 1:
                    blocks = self.client.get_blocks(numbers, full=want_txs)
                elif head is not None and head.number == numbers[0]:
                    blocks = [head]
                else:
                    blocks = [self.client.get_block(numbers[0], full=want_txs)]
                for block in blocks:
                    if block is None:
                        return  # the node's head moved back; the next pass sees it
                    if by_block is None:
                        logs = self.client.get_logs_by_hash(block.hash, addresses, topics) if want_logs else []
                    else:
                        logs = by_block.get(block.number, [])
                        if any(log["block_hash"] != block.hash for log in logs):
                            # The range answer straddled a reorg: ask for this block's own logs.
                            logs = self.client.get_logs_by_hash(block.hash, addresses, topics)
                    if want_logs:
                        logs = self._believable(block, logs, addresses, topics, last)
                        if logs is None:
                            return
                    if not self.process(block, logs, triggers, self._take_pushed(block.hash, triggers)):
                        return
                    if self._held is not None and block.number >= self._held:
                        self._release_hold(block)
                    if self.stop.is_set():
                        return
            number = end + 1
            if by_block is not None:
                self.range_size = min(self.max_range, self.range_size * 2)

    def _believable(self, block: Block, logs: list[dict], addresses, topics, head: int) -> list[dict] | None:
        """The block's logs once they can be believed; None holds the cursor (see executor.blockcheck)."""
        verdict = verify_logs(self.client, block, logs, addresses, topics, head=head, doubts=self._doubts)
        if verdict.inconsistency:
            note_inconsistency(self.chain, verdict.inconsistency)
        if verdict.logs is not None:
            verdict = agreed_logs(self.client, block, verdict.logs, addresses, topics,
                                  verify_with=self.chain.verify_with, head=head, reads=self._reads)
            if verdict.inconsistency:
                note_inconsistency(self.chain, verdict.inconsistency)
        if verdict.logs is None:
            self._hold(block, verdict.held)
        return verdict.logs

    def _hold(self, block: Block, reason: str) -> None:
        now = time.monotonic()
        if self._held != block.number:
            self._held, self._hold_delay = block.number, HOLD_FIRST_DELAY
            logger.warning("chain %s: holding at block %s: %s", self.chain.slug, block.number, reason)
            ChainCursor.objects.filter(chain=self.chain).update(
                held_block=block.number, held_reason=reason[:1000], held_since=timezone.now())
        else:
            self._hold_delay = min(self._hold_delay * 2, HOLD_MAX_DELAY)
            logger.info("chain %s: still holding at block %s: %s", self.chain.slug, block.number, reason)
            ChainCursor.objects.filter(chain=self.chain).update(held_reason=reason[:1000])
        self._ask_again_at = now + self._hold_delay

    def _release_hold(self, block: Block) -> None:
        logger.warning("chain %s: block %s verified; carrying on", self.chain.slug, self._held)
        self._held, self._ask_again_at = None, 0.0
        ChainCursor.objects.filter(chain=self.chain).update(held_block=None, held_reason="", held_since=None)

    def process(self, block: Block, logs: list[dict], triggers: ChainTriggers,
                pushed: frozenset[int] | set[int] = frozenset()) -> bool:
        """Process a block; False when the caller must stop and look again (reorg or gap)."""
        if triggers.txs.triggers:
            self._read_transactions(block, triggers)
        result = process_block(self.chain, block, logs, triggers, self.client, window=self.window, pushed=pushed,
                               transactions=self.transactions)
        if result == REORG:
            self.recover_from_reorg()
            return False
        return result != GAP

    def _read_transactions(self, block: Block, triggers: ChainTriggers) -> None:
        """Read, before taking the cursor's lock, the transactions and receipts process_block will match:
        this block's, and those of the blocks deeper-confirmation triggers reach back to."""
        if block.full is not None:
            self.transactions.prime(block.full)
        recent = _recent(get_cursor(self.chain))
        now = timezone.now()
        for depth in {t.confirmations for t in triggers.txs.triggers}:
            target = [block.number, block.hash] if depth == 0 else recent.get(block.number - depth)
            if target is not None:
                self.transactions.matches(target[1], triggers.txs, now)

    def recover_from_reorg(self) -> None:
        ancestor = find_common_ancestor(self.chain, self.client)
        if ancestor is None:
            cursor = get_cursor(self.chain)
            oldest = cursor.recent_blocks[0][0] if cursor.recent_blocks else cursor.block_number
            halt(self.chain, (
                f"Reorg deeper than the {len(cursor.recent_blocks)} kept blocks: none of blocks "
                f"{oldest}..{cursor.block_number} is on the node's chain any more. Events after block "
                f"{oldest} may be wrong. Check the RPC endpoints, then run `manage.py resume_chain "
                f"{self.chain.slug} --from-block N` with the last block you trust."
            ))
            raise ChainHalted(f"chain {self.chain.slug} halted")
        rewind(self.chain, ancestor)

    # the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        logger.info("chain %s: listening", self.chain.slug)
        failures = 0
        halted = False
        while not self.stop.is_set():
            self.wake.clear()
            try:
                self.step()
                if halted:
                    logger.warning("chain %s: resumed", self.chain.slug)
                halted = False
                failures = 0
                if self._error_shown:
                    # The error cleared with its cause: health shows what is wrong now, not once.
                    ChainCursor.objects.filter(chain=self.chain, halted=False).update(last_error="")
                    self._error_shown = False
                if self.ws_connected:
                    # The socket wakes us; polling is only a safety net.
                    self.wake.wait(self.poll_seconds * 5)
                else:
                    self.wake.wait(self.poll_seconds)
                self._yield_to_claimed_runs()
            except ChainHalted:
                # Halted by this or another listener: wait for `manage.py resume_chain`.
                if not halted:
                    logger.critical("chain %s: listener halted, see its cursor's last_error; waiting for "
                                    "`manage.py resume_chain %s`", self.chain.slug, self.chain.slug)
                halted = True
                self.stop.wait(self.halt_recheck_seconds)
                continue
            except Exception as exc:
                failures += 1
                message = f"{type(exc).__name__}: {exc}"
                logger.warning("chain %s: %s", self.chain.slug, message, exc_info=not isinstance(exc, ChainError))
                try:
                    ChainCursor.objects.filter(chain=self.chain).update(
                        last_error=message[:2000], last_error_at=timezone.now()
                    )
                    self._error_shown = True
                except Exception:
                    connection.close()
                if isinstance(exc, ChainError) and exc.retryable and self.client is not None:
                    # Every endpoint failed: ask again as soon as one is out of its cool-down (a
                    # rate-limited node's Retry-After), not after a backoff of the listener's own
                    # stacked on the endpoints' (measured: ~25 s median delay under 429s).
                    self.stop.wait(min(max(self.client.ready_in(), 0.2), 60))
                else:
                    self.stop.wait(min(0.5 * 2 ** min(failures, 7), 60))
        connection.close()

    def _yield_to_claimed_runs(self) -> None:
        """Let runs just claimed from pushed logs go first.

        When the node pushed a block's logs, their runs are already claimed and
        starting by the time its header wakes the loop; the loop's reads of that
        block (head, cursor, logs, then its transaction) would only confirm them,
        and on a small machine they compete with those runs for the CPU and the
        database. So the loop waits a moment after such a block (one run's worth,
        YIELD_SECONDS); block and state triggers of that block fire that much later.
        """
        wait = self._claimed_at + YIELD_SECONDS - time.monotonic()
        if wait > 0:
            self.stop.wait(wait)

    def watch(self, ws_urls: list[str]) -> None:
        """Follow the node's websocket: newHeads wakes the loop, pushed logs are claimed at once.

        Tries each URL in turn and backs off when all fail; the loop polls meanwhile.
        The logs subscription follows the trigger index: when it changes, the old
        subscription is replaced by one with the new filter (a log missed in between
        is still claimed by the loop, only later).
        """
        try:
            self._watch(ws_urls)
        finally:
            connection.close()  # this thread's, if it ever used one

    def _watch(self, ws_urls: list[str]) -> None:
        delay = WS_FIRST_DELAY
        while not self.stop.is_set():
            for url in ws_urls:
                try:
                    with SubscriptionSocket(url) as socket:
                        self._follow(socket)
                except SOCKET_ERRORS as exc:
                    logger.warning("chain %s: websocket %s failed (%s); polling", self.chain.slug, scrub_urls(url),
                                   scrub_urls(f"{type(exc).__name__}: {exc}"))
                except Exception:
                    logger.exception("chain %s: websocket %s failed; polling", self.chain.slug, scrub_urls(url))
                finally:
                    if self.ws_connected:
                        # It was subscribed: this is a new drop, not one more failure in a row.
                        delay = WS_FIRST_DELAY
                        self.ws_connected = False
                        self._record_ws("down")
                if self.stop.is_set():
                    return
            self.stop.wait(delay)
            delay = min(delay * 2, WS_MAX_DELAY)

    def _record_ws(self, state: str) -> None:
        try:
            get_cursor(self.chain)  # the socket may be up before the loop made the chain's cursor
            ChainCursor.objects.filter(chain=self.chain).update(ws_state=state, ws_changed_at=timezone.now())
        except Exception:
            logger.warning("chain %s: could not record the websocket's state", self.chain.slug, exc_info=True)
            connection.close()

    def _follow(self, socket: SubscriptionSocket) -> None:
        heads = socket.subscribe("newHeads")
        logs_subscription, triggers = None, None
        self.ws_connected = True
        self._record_ws("connected")
        logger.info("chain %s: subscribed to new heads at %s", self.chain.slug, scrub_urls(socket.url))
        headers: OrderedDict[str, int] = OrderedDict()  # recent block hash -> timestamp
        waiting: dict[str, PushedBlock] = {}  # pushed logs whose block's timestamp is not known yet
        while not self.stop.is_set():
            current = self.registry.get(self.chain.chain_id)
            if current is not triggers:
                logs_subscription = self._resubscribe_logs(socket, logs_subscription, current)
                triggers = self.logs_follow = current
            ready: dict[str, PushedBlock] = {}
            new_head = False
            for subscription, result in socket.notifications(timeout=RESUBSCRIBE_CHECK_SECONDS):
                if subscription == heads:
                    block = block_from_rpc(result)
                    headers[block.hash] = block.timestamp
                    if len(headers) > PUSHED_BLOCKS_KEPT:
                        headers.popitem(last=False)
                    if block.hash in waiting:
                        ready[block.hash] = waiting.pop(block.hash)
                        ready[block.hash].timestamp = block.timestamp
                    new_head = True
                elif subscription == logs_subscription and subscription is not None:
                    log = log_from_rpc(result)
                    if log["removed"]:
                        continue  # the loop finds the reorg itself
                    block_hash = log["block_hash"]
                    pending = ready.get(block_hash) or waiting.get(block_hash)
                    if pending is None:
                        stamp = result.get("blockTimestamp")
                        timestamp = int(stamp, 16) if stamp else headers.get(block_hash)
                        pending = PushedBlock(log["block_number"], block_hash, timestamp or 0)
                        (ready if timestamp is not None else waiting)[block_hash] = pending
                    pending.logs.append(log)
            if ready:
                self._claim_pushed(list(ready.values()), triggers)
            if new_head:
                # After the claims (see _yield_to_claimed_runs).
                self.wake.set()
            while len(waiting) > PUSHED_BLOCKS_KEPT:  # a header that never came: the loop has them
                waiting.pop(next(iter(waiting)))

    def _resubscribe_logs(self, socket: SubscriptionSocket, old: str | None, triggers: ChainTriggers) -> str | None:
        if old is not None:
            socket.unsubscribe(old)
        if not any(t.confirmations == 0 for t in triggers.logs.triggers):
            return None
        if self.chain.verify_with > 1:
            return None  # one node's push is one source: its runs wait for the block loop's agreement
        addresses, topics = triggers.logs.log_filter()
        log_filter: dict[str, Any] = {"topics": topics}
        if addresses is not None:
            log_filter["address"] = addresses
        return socket.subscribe("logs", log_filter)

    def _claim_pushed(self, blocks: list[PushedBlock], triggers: ChainTriggers) -> None:
        """Send the pushed logs' claims to the workers, which claim and start the runs in one transaction."""
        try:
            batches = pushed_claims(self.chain, blocks, triggers)
            for batch in batches:
                queue.send_pushed(batch.payload())
        except Exception:
            # Nothing is lost: the loop stores and claims the same logs from the block.
            logger.exception("chain %s: sending pushed logs' claims failed; the block loop will", self.chain.slug)
            connection.close()
            return
        self._claimed_at = time.monotonic()
        self._note_pushed(triggers, blocks, batches)


@dataclass
class _Pushed:
    triggers: ChainTriggers
    indexes: set[int]  # every log index the node pushed for the block
    events: list[int]  # the log indexes sent to be stored
    keys: list[tuple[int, str]]  # the (version id, trigger key) of the runs sent to be claimed


def listen(chains: list[Chain], stop: threading.Event, *, poll_seconds: float = POLL_SECONDS,
           use_websocket: bool = True) -> list[threading.Thread]:
    """Start the trigger watcher and one listener thread (plus a websocket thread) per chain."""
    from executor.models import RpcEndpoint

    registry = TriggerRegistry()
    registry.reload()
    threads = [threading.Thread(target=registry.watch, args=(stop,), name="triggers", daemon=True)]
    for chain in chains:
        listener = ChainListener(chain, registry, stop, poll_seconds=poll_seconds)
        threads.append(threading.Thread(target=listener.run, name=f"chain-{chain.slug}", daemon=True))
        ws_urls = list(
            chain.endpoints.filter(kind=RpcEndpoint.Kind.WS, enabled=True).order_by("priority").values_list("url", flat=True)
        )
        if use_websocket and ws_urls:
            threads.append(threading.Thread(target=listener.watch, args=(ws_urls,),
                                            name=f"heads-{chain.slug}", daemon=True))
    for thread in threads:
        thread.start()
    return threads
