"""Is a node's answer for a block's logs believable, before the listener's cursor passes the block?

Hosted providers run many nodes behind one URL. A node a block or two behind the
one that served the header answers ``eth_getLogs`` for that block with ``[]`` and
no error: the most common way events are missed. The header itself says whether
the block may hold matching logs: its ``logsBloom`` has three bits set for every
log's address and every topic. So:

* an empty answer for a block whose bloom says "maybe" is asked again, of the
  block's receipts (``eth_getBlockReceipts``, a second source inside the node),
  then of every endpoint's ``eth_getLogs``;
* if no endpoint can show the block's receipts, an empty answer is believed once
  it was given twice, at least CONFIRMING_DEPTH blocks apart (a lagging node has
  caught up by then): a busy chain's bloom is often saturated, so "maybe" is not
  "yes";
* a log whose block hash or number is not the header's is never believed.

``verify_logs`` answers the logs to process, or None: hold the cursor and ask again.

``agreed_logs`` is the optional second check (a chain's ``verify_with``): the
block's matching logs must be the same from that many endpoints, or, on a chain
with fewer endpoints, from two reads at least one block apart, before its runs fire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from eth_bloom.bloom import get_bloom_bits

from executor.chain import Block, ChainClient, log_from_rpc

logger = logging.getLogger("kwala.listener")

# How many blocks past a doubtful block the head must be before two agreeing empty
# answers are believed, when no endpoint serves receipts.
CONFIRMING_DEPTH = 3


@lru_cache(maxsize=65536)
def _bits(hex_value: str) -> int:
    """The three bloom bits of an address or topic, as one mask (cached: trigger filters repeat)."""
    mask = 0
    for bit in get_bloom_bits(bytes.fromhex(hex_value[2:])):
        mask |= bit
    return mask


def bloom_may_match(bloom_hex: str | None, addresses: list[str] | None, topics: list[Any]) -> bool:
    """Whether a block with this logsBloom may hold a log the eth_getLogs filter matches.

    True when the header has no bloom (nothing to check against).
    """
    if not bloom_hex:
        return True
    bloom = int(bloom_hex, 16)
    if bloom == 0:
        return False

    def any_in(values: list[str]) -> bool:
        return any(bloom & (mask := _bits(v)) == mask for v in values)

    if addresses is not None and not any_in(addresses):
        return False
    for position in topics:
        if position is None:
            continue
        if not any_in(position if isinstance(position, list) else [position]):
            return False
    return True


def log_matches_filter(log: dict[str, Any], addresses: list[str] | None, topics: list[Any]) -> bool:
    """eth_getLogs' own filter rule, for logs read from receipts."""
    if addresses is not None and log["address"] not in {a.lower() for a in addresses}:
        return False
    for index, position in enumerate(topics):
        if position is None:
            continue
        options = position if isinstance(position, list) else [position]
        if index >= len(log["topics"]) or log["topics"][index] not in {o.lower() for o in options}:
            return False
    return True


@dataclass
class Doubt:
    """A block whose empty logs answer the bloom contradicts, while it is being asked again."""

    block_hash: str
    number: int
    empty_answers: int = 0
    first_head: int | None = None  # the head when the first empty answer came
    reasons: list[str] = field(default_factory=list)


@dataclass
class Verdict:
    logs: list[dict[str, Any]] | None  # None: hold the cursor
    inconsistency: str = ""  # what the node got wrong, when it did (logged and counted by the caller)
    held: str = ""  # why the cursor is held


def _from_receipts(receipts: list[dict[str, Any]], block: Block, addresses, topics) -> list[dict[str, Any]]:
    logs = [log_from_rpc(raw) for receipt in receipts for raw in receipt.get("logs") or []]
    return [log for log in logs if log["block_hash"] == block.hash and log_matches_filter(log, addresses, topics)]


def verify_logs(
    client: ChainClient,
    block: Block,
    logs: list[dict[str, Any]],
    addresses: list[str] | None,
    topics: list[Any],
    *,
    head: int,
    doubts: dict[str, Doubt],
) -> Verdict:
    """The logs to process for `block`, or a verdict to hold; see the module docstring.

    `doubts` carries what was asked before about blocks still held (the caller keeps it).
    """
    wrong = [log for log in logs if log["block_hash"] != block.hash or log["block_number"] != block.number]
    if wrong:
        # A node answering for another block (a reorg in between, or a broken node): ask by hash again.
        logs = client.get_logs_by_hash(block.hash, addresses, topics)
        if any(log["block_hash"] != block.hash or log["block_number"] != block.number for log in logs):
            return Verdict(None, inconsistency=f"block {block.number}: logs answered for another block",
                           held="logs answered for another block")
    if logs or not bloom_may_match(block.logs_bloom, addresses, topics):
        doubts.pop(block.hash, None)
        return Verdict(logs)

    doubt = doubts.setdefault(block.hash, Doubt(block.hash, block.number))
    # A second source: the block's receipts, from each endpoint in turn.
    receipts_seen = False
    for url, answer in client.ask_each("eth_getBlockReceipts", [block.hash]):
        if isinstance(answer, list):
            receipts_seen = True
            found = _from_receipts(answer, block, addresses, topics)
            doubts.pop(block.hash, None)
            if found:
                return Verdict(found, inconsistency=(
                    f"block {block.number}: eth_getLogs answered no logs, but its receipts at {url} hold "
                    f"{len(found)} matching log(s)"))
            return Verdict([])  # the bloom's "maybe" was a false positive
    # Every endpoint's eth_getLogs, by hash.
    for url, answer in client.ask_each("eth_getLogs", [_by_hash(block.hash, addresses, topics)]):
        if isinstance(answer, list) and answer:
            found = [log_from_rpc(raw) for raw in answer]
            if all(log["block_hash"] == block.hash for log in found):
                doubts.pop(block.hash, None)
                return Verdict(found, inconsistency=(
                    f"block {block.number}: one endpoint answered no logs, {url} answered {len(found)}"))
    doubt.empty_answers += 1
    if doubt.first_head is None:
        doubt.first_head = head
    if not receipts_seen and doubt.empty_answers >= 2 and head - doubt.first_head >= CONFIRMING_DEPTH:
        doubts.pop(block.hash, None)
        logger.info("block %s: no logs in answers %s blocks apart; the bloom's match was a false positive",
                    block.number, head - doubt.first_head)
        return Verdict([])
    return Verdict(None, held=(
        f"block {block.number}: its bloom may match the triggers but every node answered no logs "
        f"({doubt.empty_answers} time(s)); asking again"))


def _by_hash(block_hash: str, addresses: list[str] | None, topics: list[Any]) -> dict[str, Any]:
    flt: dict[str, Any] = {"blockHash": block_hash, "topics": topics}
    if addresses:
        flt["address"] = addresses
    return flt



@dataclass
class FirstRead:
    """What one read of a block's matching logs said, kept until a later read can agree with it."""

    keys: frozenset[tuple[int, str]]
    head: int


def _keys(logs: list[dict[str, Any]]) -> frozenset[tuple[int, str]]:
    return frozenset((log["log_index"], log["tx_hash"]) for log in logs)


def agreed_logs(
    client: ChainClient,
    block: Block,
    logs: list[dict[str, Any]],
    addresses: list[str] | None,
    topics: list[Any],
    *,
    verify_with: int,
    head: int,
    reads: dict[str, FirstRead],
) -> Verdict:
    """`logs` once `verify_with` sources agree on them (see the module docstring), else a verdict to hold.

    Blocks without matching logs are not asked again: the bloom check already
    stands behind an empty answer. `reads` carries the first reads of held blocks.
    """
    if verify_with <= 1 or not logs:
        reads.pop(block.hash, None)
        return Verdict(logs)
    wanted = _keys(logs)
    answers: dict[str, frozenset[tuple[int, str]] | None] = {}
    for url, answer in client.ask_each("eth_getLogs", [_by_hash(block.hash, addresses, topics)]):
        if isinstance(answer, list):
            answers[url] = _keys([log_from_rpc(raw) for raw in answer])
        if sum(1 for keys in answers.values() if keys == wanted) >= verify_with:
            reads.pop(block.hash, None)
            return Verdict(logs)
    disagreeing = [url for url, keys in answers.items() if keys != wanted]
    if disagreeing:
        reads.pop(block.hash, None)
        return Verdict(None, inconsistency=(
            f"block {block.number}: endpoints disagree on its matching logs ({len(wanted)} log(s) against "
            f"{', '.join(str(len(answers[url] or ())) for url in disagreeing)} at {', '.join(disagreeing)})"),
            held=f"block {block.number}: the endpoints disagree on its logs; asking again")
    # Fewer endpoints than verify_with, all agreeing: a second read, a block later, must agree too.
    first = reads.get(block.hash)
    if first is not None and first.keys == wanted and head > first.head:
        reads.pop(block.hash, None)
        return Verdict(logs)
    if first is None or first.keys != wanted:
        reads[block.hash] = FirstRead(wanted, head)
    return Verdict(None, held=f"block {block.number}: waiting for a second read of its logs, a block later")
