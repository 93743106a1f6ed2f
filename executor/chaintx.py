"""A block's transactions for chain.transaction triggers: fetched, checked, matched, with receipts.

Only chains with transaction triggers pay for this. Per block:

* one request for the block with its transactions (``eth_getBlockByHash(hash, true)``), or
  none when the block loop already read the block whole (``ChainClient.get_blocks(full=True)``
  while catching up);
* matching needs no receipt (addresses, selector, arguments, value), so receipts are read
  only for the transactions some trigger matched: one JSON-RPC batch of
  ``eth_getTransactionReceipt``, or ``eth_getBlockReceipts`` (one call) when more than a
  batch matched and the node has it;
* one ``eth_call`` per matched *failed* transaction, replaying it on the parent block's
  state, for the revert reason (the receipt has none). The replay runs on the state before
  the block, not between its transactions, so a reason that depended on an earlier
  transaction in the same block may be missing; the run then says none was given.

An answer is believed only if it is the block asked for: a block without its transactions
while its header's ``transactionsRoot`` is not the empty trie's, or a receipt of another
block, raises a retryable ChainError and the cursor stays (the loop asks again). Internal
calls (traces) are not seen: a transfer made by a contract inside another transaction has
no transaction of its own.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

from executor.chain import BATCH_SIZE, ChainClient, ChainError
from executor.matching import TxCandidate, TxIndex

logger = logging.getLogger(__name__)

# keccak256(rlp([])): the transactionsRoot of a block with no transactions.
EMPTY_TRIE_ROOT = "0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421"
# Blocks whose transactions a listener keeps, for triggers that fire some confirmations later.
BLOCKS_KEPT = 256
_ERROR_STRING = "0x08c379a0"  # Error(string)
_PANIC = "0x4e487b71"  # Panic(uint256)
_PANIC_CODES = {
    0x01: "assertion failed", 0x11: "arithmetic overflow or underflow", 0x12: "division by zero",
    0x21: "invalid enum value", 0x22: "bad storage byte array", 0x31: "pop on an empty array",
    0x32: "array index out of bounds", 0x41: "out of memory", 0x51: "call to an uninitialised function",
}


def tx_from_rpc(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A node's transaction object -> the plain dict matching works on (lower-case hex, ints)."""
    return {
        "hash": raw["hash"].lower(),
        "from": raw["from"].lower(),
        "to": raw["to"].lower() if raw.get("to") else None,
        "value": int(raw.get("value") or "0x0", 16),
        "input": (raw.get("input") or raw.get("data") or "0x").lower(),
        "nonce": int(raw.get("nonce") or "0x0", 16),
        "gas": int(raw.get("gas") or "0x0", 16),
        "block_number": int(raw["blockNumber"], 16),
        "block_hash": raw["blockHash"].lower(),
        "tx_index": int(raw["transactionIndex"], 16),
    }


def receipt_from_rpc(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hash": raw["transactionHash"].lower(),
        "block_hash": raw["blockHash"].lower(),
        "succeeded": int(raw.get("status") or "0x0", 16) == 1,
        "gas_used": int(raw.get("gasUsed") or "0x0", 16),
        "effective_gas_price": int(raw.get("effectiveGasPrice") or "0x0", 16),
        "contract_address": raw.get("contractAddress"),
        "revert_reason": None,
    }


def decode_revert(data: str | None) -> str | None:
    """Revert data -> a reason people can read: Error(string), Panic(uint256), or the raw custom error."""
    if not data or not isinstance(data, str) or len(data) < 10:
        return None
    data = data.lower()
    try:
        if data.startswith(_ERROR_STRING):
            return abi_decode(["string"], bytes.fromhex(data[10:]))[0]
        if data.startswith(_PANIC):
            code = abi_decode(["uint256"], bytes.fromhex(data[10:]))[0]
            return f"panic 0x{code:02x}: {_PANIC_CODES.get(code, 'unknown panic code')}"
    except (DecodingError, ValueError, OverflowError):
        pass
    return f"custom error {data[:10]}" + (f" (data {data[10:74]}…)" if len(data) > 74 else
                                          f" (data {data[10:]})" if len(data) > 10 else "")


@dataclass
class TxMatch:
    tx: dict[str, Any]
    receipt: dict[str, Any]
    found: list[TxCandidate]


@dataclass
class _Block:
    number: int
    parent_hash: str
    timestamp: int
    txs: list[dict[str, Any]]


class BlockTransactions:
    """One listener's view of the blocks' transactions, kept for BLOCKS_KEPT blocks.

    `matches(block_hash, index)` answers the transactions of the block that the
    index's triggers match, each with its receipt; the status and the condition are
    left to the caller (listener.process_block), which claims the runs.
    """

    def __init__(self, client: ChainClient, keep: int = BLOCKS_KEPT):
        self.client = client
        self.keep = keep
        self._blocks: OrderedDict[str, _Block] = OrderedDict()
        self._receipts: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def prime(self, raw_block: Mapping[str, Any]) -> None:
        """Keep a block the loop already read with its transactions (eth_get*(…, true))."""
        self._keep_block(raw_block)

    def matches(self, block_hash: str, index: TxIndex, now: datetime | None = None) -> list[TxMatch]:
        block = self._block(block_hash)
        matched = [(tx, found) for tx in block.txs if (found := index.candidates(tx, now))]
        if not matched:
            return []
        receipts = self._receipts_for(block_hash, [tx for tx, _ in matched])
        out = []
        for tx, found in matched:
            receipt = receipts[tx["hash"]]
            if not receipt["succeeded"] and receipt["revert_reason"] is None:
                receipt["revert_reason"] = self._revert_reason(tx, block)
            wanted = [c for c in found if c.trigger.wants_status(receipt["succeeded"])]
            if wanted:
                out.append(TxMatch(tx, receipt, wanted))
        return out

    def timestamp(self, block_hash: str) -> int:
        return self._block(block_hash).timestamp

    # -- reading --------------------------------------------------------------------

    def _block(self, block_hash: str) -> _Block:
        block = self._blocks.get(block_hash)
        if block is None:
            raw = self.client.request("eth_getBlockByHash", [block_hash, True])
            if not raw:
                raise ChainError(f"the node has no block {block_hash} (asked for its transactions)", retryable=True)
            block = self._keep_block(raw)
        return block

    def _keep_block(self, raw: Mapping[str, Any]) -> _Block:
        block_hash = raw["hash"].lower()
        transactions = raw.get("transactions") or []
        if transactions and isinstance(transactions[0], str):
            raise ValueError("a block read without its transactions (full=False)")
        if not transactions and (raw.get("transactionsRoot") or EMPTY_TRIE_ROOT).lower() != EMPTY_TRIE_ROOT:
            raise ChainError(f"block {int(raw['number'], 16)} came without the transactions its header "
                             f"lists (transactionsRoot {raw['transactionsRoot']})", retryable=True)
        txs = [tx_from_rpc(t) for t in transactions]
        if any(t["block_hash"] != block_hash for t in txs):
            raise ChainError(f"block {block_hash}: the node answered transactions of another block", retryable=True)
        block = _Block(int(raw["number"], 16), raw["parentHash"].lower(), int(raw["timestamp"], 16), txs)
        self._blocks[block_hash] = block
        self._blocks.move_to_end(block_hash)
        while len(self._blocks) > self.keep:
            self._blocks.popitem(last=False)
        return block

    def _receipts_for(self, block_hash: str, txs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        wanted = [tx["hash"] for tx in txs if tx["hash"] not in self._receipts]
        if len(wanted) > BATCH_SIZE:
            fetched = self._block_receipts(block_hash)
        elif wanted:
            fetched = [r for r in self.client.request_batch(
                [("eth_getTransactionReceipt", [tx_hash]) for tx_hash in wanted]) if r]
        else:
            fetched = []
        for raw in fetched:
            receipt = receipt_from_rpc(raw)
            if receipt["block_hash"] != block_hash:
                raise ChainError(f"the receipt of {receipt['hash']} is of block {receipt['block_hash']}, not "
                                 f"{block_hash} (a reorg while reading?)", retryable=True)
            self._receipts[receipt["hash"]] = receipt
        missing = [tx["hash"] for tx in txs if tx["hash"] not in self._receipts]
        if missing:
            raise ChainError(f"block {block_hash}: the node has no receipt for {len(missing)} of its transactions "
                             f"(e.g. {missing[0]})", retryable=True)
        while len(self._receipts) > self.keep * 64:
            self._receipts.popitem(last=False)
        return {tx["hash"]: self._receipts[tx["hash"]] for tx in txs}

    def _block_receipts(self, block_hash: str) -> list[dict[str, Any]]:
        try:
            return self.client.request("eth_getBlockReceipts", [block_hash]) or []
        except ChainError as exc:
            if exc.retryable:
                raise
            # Not every node has eth_getBlockReceipts: the receipts one by one, in batches.
            block = self._blocks[block_hash]
            return [r for r in self.client.request_batch(
                [("eth_getTransactionReceipt", [tx["hash"]]) for tx in block.txs]) if r]

    def _revert_reason(self, tx: dict[str, Any], block: _Block) -> str | None:
        """Replay a failed transaction on its parent block's state: the node's revert data, decoded."""
        call = {"from": tx["from"], "data": tx["input"], "value": hex(tx["value"]), "gas": hex(tx["gas"] or 30_000_000)}
        if tx["to"]:
            call["to"] = tx["to"]
        try:
            _, response = self.client.send("eth_call", [call, {"blockHash": block.parent_hash}])
        except ChainError as exc:
            logger.info("could not replay %s for its revert reason: %s", tx["hash"], exc)
            return None
        error = response.get("error") if isinstance(response, dict) else None
        if not isinstance(error, dict):
            return None  # it does not revert on the parent's state: the reason lay in this block
        data = error.get("data")
        if isinstance(data, dict):  # some nodes nest it: {"data": {"data": "0x..."}}
            data = data.get("data")
        reason = decode_revert(data if isinstance(data, str) else None)
        if reason is None:
            message = str(error.get("message") or "")
            reason = message.split("execution reverted:", 1)[1].strip() if "execution reverted:" in message else None
        return reason or None
