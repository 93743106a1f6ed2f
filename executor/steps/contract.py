"""contract.read (eth_call) and contract.write (a signed transaction) on any configured chain.

contract.write never loses or doubles a transaction:
- the nonce comes from a NonceCursor row locked FOR UPDATE, in the same database
  transaction that stores the signed bytes, so concurrent runs get consecutive
  nonces and a crash leaves either nothing or a stored transaction;
- a retry re-broadcasts the stored bytes (same hash), never signs anew;
- waiting for confirmations reschedules the step instead of holding a worker;
- an unmined transaction is replaced after KWALA_TX_REPLACE_AFTER_SECONDS by one
  with the same nonce and fees at least 12.5% higher (nodes require 10%);
- "nonce too low" / "already known" are settled by the receipts of every attempt.

The private key is decrypted only to sign and never leaves this module.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone
from eth_abi import decode, encode
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception, Web3RPCError

from executor.chain import ChainError, client_for_chain, scrub_urls
from executor.matching import to_json_value
from executor.models import Chain, NonceCursor, Notification, StepRun, Transaction
from executor.steps import spending
from executor.steps.base import Reschedule, StepContext, StepError, StepResult, to_jsonable
from flows import abi as abi_lib
from flows.models import SignerKey

FEE_BUMP_NUMERATOR, FEE_BUMP_DENOMINATOR = 9, 8  # +12.5%: above the 10% nodes require
# After a broadcast, look for the receipt this long before giving the worker back.
QUICK_RECEIPT_WAIT_SECONDS = 1.5
_ARRAY = re.compile(r"^(.*)\[(\d*)\]$")
# A request that never got an answer: every endpoint down (ChainError), or web3.py's own
# transport and decoding errors. A node's verdict (revert, bad nonce) is handled where it matters.
_RPC_FAILURES = (ChainError, Web3Exception, OSError)


def _coerce(type_str: str, value: Any) -> Any:
    if isinstance(value, Decimal):
        value = int(value)
    match = _ARRAY.match(type_str)
    if match:
        if not isinstance(value, list):
            raise abi_lib.AbiError(f"Expected a list for {type_str}")
        return [_coerce(match.group(1), item) for item in value]
    if type_str.startswith("("):
        return tuple(value) if isinstance(value, list) else value
    return abi_lib.coerce_value(type_str, value)


def _call_data(ctx: StepContext) -> tuple[dict, str, list[Any]]:
    function = ctx.config["function_abi"]
    args = ctx.render(ctx.config.get("args") or [], "arguments")
    if not isinstance(args, list) or len(args) != len(function["inputs"]):
        raise StepError(f"{function['name']} takes {len(function['inputs'])} arguments", permanent=True)
    types = [abi_lib.canonical_type(p) for p in function["inputs"]]
    try:
        values = [_coerce(t, a) for t, a in zip(types, args, strict=True)]
        data = ctx.config["selector"] + encode(types, values).hex()
    except (abi_lib.AbiError, TypeError, ValueError, OverflowError) as exc:
        raise StepError(f"bad arguments for {function['name']}: {ctx.redact(str(exc))}", permanent=True) from None
    return function, data if data.startswith("0x") else "0x" + data, values


def _chain_and_web3(ctx: StepContext) -> tuple[Chain, Web3]:
    """The step's chain and a Web3 that fails over across its endpoints (executor.chain)."""
    chain_id = int(ctx.config["chain"])
    chain = Chain.objects.filter(chain_id=chain_id, enabled=True).first()
    if chain is None:
        raise StepError(f"chain {chain_id} is not configured or is disabled", permanent=True)
    try:
        return chain, client_for_chain(chain).web3()
    except ChainError as exc:
        raise StepError(f"chain {chain.slug}: {exc.message}", permanent=True) from None


def _decode_outputs(function: dict, raw: bytes) -> dict:
    outputs = function["outputs"]
    types = [abi_lib.canonical_type(p) for p in outputs]
    try:
        values = decode(types, raw)
    except Exception as exc:  # eth_abi raises several unrelated types for short/garbled data
        raise StepError(f"could not decode the result of {function['name']}: {exc}", permanent=True) from None
    # The same JSON shape as event arguments (addresses checksummed, ints exact), so that
    # a read result and an event argument compare equal in an expression.
    values = [to_json_value(t, v) for t, v in zip(types, values, strict=True)]
    named = {(p.get("name") or str(i)): v for i, (p, v) in enumerate(zip(outputs, values, strict=True))}
    return {"result": values[0] if len(values) == 1 else values, "outputs": named}


def run_read(ctx: StepContext) -> StepResult:
    function, data, _ = _call_data(ctx)
    chain, w3 = _chain_and_web3(ctx)
    try:
        raw = w3.eth.call({"to": ctx.config["address"], "data": data})
    except ContractLogicError as exc:
        raise StepError(f"the call reverted: {exc.message or exc}", permanent=True) from None
    except _RPC_FAILURES as exc:
        raise _rpc_error(chain, exc) from None
    return StepResult(output=_decode_outputs(function, bytes(raw)))


# -- contract.write -----------------------------------------------------------------


def _signer(ctx: StepContext) -> SignerKey:
    name = ctx.config["signer"]
    signer = SignerKey.objects.filter(team_id=ctx.run.team_id, name=name).first()
    if signer is None:
        raise StepError(f"the team has no signer key named {name!r}", permanent=True)
    return signer


def _rpc_error(chain: Chain, exc: Exception) -> StepError:
    if isinstance(exc, ChainError):
        # Its message lists the endpoint URLs, which often carry a provider's API key:
        # run records are shown to the whole team, so they get the gist only.
        detail = "no RPC endpoint answered (their health is on the chain's endpoints)"
    else:
        detail = scrub_urls(f"{type(exc).__name__}: {exc}")
    return StepError(f"{chain.slug} RPC failed: {detail}"[:300])


def _fees(w3, signer: SignerKey) -> tuple[int, int]:
    """(max fee, priority fee) per gas to offer now, within the signer's ceilings."""
    block = w3.eth.get_block("latest")
    priority = int(w3.eth.max_priority_fee)
    base = int(block.get("baseFeePerGas") or 0)
    return spending.capped_fees(signer, 2 * base + priority, priority, base)


LIVE_STEP_STATUSES = (StepRun.Status.PENDING, StepRun.Status.QUEUED, StepRun.Status.RUNNING)


def _allocate_nonce(chain: Chain, address: str, chain_pending: int) -> tuple[int, int]:
    """The next nonce for `address` and the `replaces` number its first transaction takes.

    Call inside a transaction (the cursor row stays locked until commit). A nonce
    handed to a step that then failed before its transaction reached the chain
    would leave a gap that blocks every later transaction of the key, so the
    lowest such gap is handed out again first, numbered after the dead attempts.
    """
    NonceCursor.objects.get_or_create(chain=chain, address=address)
    cursor = NonceCursor.objects.select_for_update().get(chain=chain, address=address)
    if cursor.next_nonce > chain_pending:
        # A nonce is held while its step may still send it, and for good once any of its
        # transactions was broadcast (it may be pending or mined, whatever `chain_pending`,
        # read a moment ago, says).
        held = set(
            Transaction.objects.filter(chain=chain, from_address=address, nonce__gte=chain_pending,
                                       nonce__lt=cursor.next_nonce)
            .filter(Q(step_run__status__in=LIVE_STEP_STATUSES) | Q(broadcast_at__isnull=False))
            .values_list("nonce", flat=True)
        )
        gap = next((n for n in range(chain_pending, cursor.next_nonce) if n not in held), None)
        if gap is not None:
            dead = Transaction.objects.filter(chain=chain, from_address=address, nonce=gap)
            last = dead.aggregate(n=Max("replaces"))["n"]
            return gap, (last + 1 if last is not None else 0)
    # The chain's pending count wins when the key was also used outside Kwala.
    nonce = max(cursor.next_nonce, chain_pending)
    cursor.next_nonce = nonce + 1
    cursor.save(update_fields=["next_nonce", "updated_at"])
    return nonce, 0


def _sign_and_store(ctx: StepContext, chain: Chain, w3, signer: SignerKey, tx: dict, *, nonce: int | None,
                    replaces: int) -> Transaction:
    """Sign `tx` and store it (allocating a nonce when `nonce` is None) in one database transaction.

    The signer's daily budget is checked in the same transaction, under the lock on
    its nonce cursor, so two steps cannot both fit in what is left of it.
    """
    cost = int(tx["value"]) + int(tx["gas"]) * int(tx["maxFeePerGas"])
    with transaction.atomic():
        if nonce is None:
            pending = w3.eth.get_transaction_count(signer.address, "pending")
            nonce, replaces = _allocate_nonce(chain, signer.address, pending)
            spending.check_budget(signer, chain, cost)
        else:
            spending.lock_signer(chain, signer.address)
            spending.check_budget(signer, chain, cost, nonce=nonce)
        tx = {**tx, "nonce": nonce}
        signed = Account.sign_transaction(tx, signer.private_key())
        return Transaction.objects.create(
            run=ctx.run, step_run=ctx.step_run, chain=chain, from_address=signer.address, to_address=tx["to"],
            nonce=nonce, replaces=replaces, value=tx["value"], data=tx["data"], gas=tx["gas"],
            max_fee_per_gas=tx["maxFeePerGas"], max_priority_fee_per_gas=tx["maxPriorityFeePerGas"],
            raw="0x" + bytes(signed.raw_transaction).hex(), tx_hash="0x" + bytes(signed.hash).hex(),
        )


def _broadcast(chain: Chain, w3, record: Transaction) -> None:
    """Send the stored bytes; 'already known' and 'nonce too low' are left to the receipt check."""
    try:
        w3.eth.send_raw_transaction(record.raw)
    except (Web3RPCError, ValueError) as exc:
        text = str(exc).lower()
        if not any(s in text for s in ("already known", "nonce too low", "known transaction",
                                       "already imported", "replacement transaction underpriced")):
            if "insufficient funds" in text:
                raise StepError(f"the signer cannot pay for the transaction on {chain.slug}") from None
            raise _rpc_error(chain, exc) from None
    except _RPC_FAILURES as exc:
        raise _rpc_error(chain, exc) from None
    Transaction.objects.filter(pk=record.pk).update(
        attempts=record.attempts + 1, broadcast_at=record.broadcast_at or timezone.now(),
        status=Transaction.Status.BROADCAST if record.status == Transaction.Status.SIGNED else record.status,
    )


def _find_receipt(w3, records: list[Transaction]):
    for record in records:
        try:
            receipt = w3.eth.get_transaction_receipt(record.tx_hash)
        except TransactionNotFound:
            continue
        if receipt is not None:
            return record, receipt
    return None, None


def run_write(ctx: StepContext) -> StepResult | Reschedule:
    function, data, values = _call_data(ctx)
    chain, w3 = _chain_and_web3(ctx)
    signer = _signer(ctx)
    try:
        value = int(ctx.render(ctx.config.get("value_wei") or 0, "value"))
    except (TypeError, ValueError):
        raise StepError("value_wei must be a whole number of wei", permanent=True) from None
    to = ctx.config["address"]
    ctx.sent = {"chain_id": chain.chain_id, "from": signer.address, "to": to, "function": function["name"],
                "args": to_jsonable(values), "data": data, "value": str(value)}
    spending.check_value(signer, value)
    if ctx.dry_run:
        return StepResult(output={"dry_run": True, "would_send": ctx.sent})

    records = list(ctx.step_run.transactions.order_by("replaces"))
    try:
        if not records:
            gas = ctx.config.get("gas_limit")
            if not gas:
                try:
                    estimate = w3.eth.estimate_gas({"from": signer.address, "to": to, "data": data, "value": value})
                    gas = _gas_limit(estimate)
                except ContractLogicError as exc:
                    raise StepError(f"the transaction would revert: {exc.message or exc}", permanent=True) from None
            max_fee, priority = _fees(w3, signer)
            tx = {"chainId": chain.chain_id, "to": to, "data": data, "value": value, "gas": int(gas),
                  "maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority, "type": 2}
            try:
                records = [_sign_and_store(ctx, chain, w3, signer, tx, nonce=None, replaces=0)]
            except IntegrityError:
                # Another delivery of this step stored it first: use that one.
                records = list(ctx.step_run.transactions.order_by("replaces"))
            ctx.log(f"signed nonce {records[-1].nonce} as {records[-1].tx_hash}")

        record, receipt = _find_receipt(w3, records)
        if receipt is None:
            latest = records[-1]
            age = (timezone.now() - (latest.broadcast_at or latest.created_at)).total_seconds()
            if latest.broadcast_at is not None and age > settings.KWALA_TX_REPLACE_AFTER_SECONDS:
                replacement = _replace(ctx, chain, w3, signer, latest)
                if replacement is not None:
                    latest = replacement
                    records.append(latest)
            _broadcast(chain, w3, latest)
            deadline = time.monotonic() + QUICK_RECEIPT_WAIT_SECONDS
            while receipt is None and time.monotonic() < deadline:
                time.sleep(0.05)
                record, receipt = _find_receipt(w3, records)
            if receipt is None:
                if _nonce_taken_by_other(w3, latest):
                    raise StepError(f"nonce {latest.nonce} was used by a transaction Kwala did not send",
                                    permanent=True)
                return Reschedule(settings.KWALA_TX_POLL_SECONDS, {"tx_hash": latest.tx_hash})

        confirmations = int(ctx.config.get("confirmations") or 0)
        mined = int(receipt["blockNumber"])
        if confirmations and w3.eth.block_number - mined + 1 < confirmations:
            Transaction.objects.filter(pk=record.pk).update(status=Transaction.Status.MINED, block_number=mined)
            return Reschedule(settings.KWALA_TX_POLL_SECONDS, {"tx_hash": record.tx_hash})
    except _RPC_FAILURES as exc:
        raise _rpc_error(chain, exc) from None

    ok = int(receipt["status"]) == 1
    summary = {"status": int(receipt["status"]), "block_number": mined, "gas_used": int(receipt["gasUsed"]),
               "block_hash": "0x" + bytes(receipt["blockHash"]).hex()}
    Transaction.objects.filter(pk=record.pk).update(
        status=Transaction.Status.MINED if ok else Transaction.Status.REVERTED, block_number=mined, receipt=summary,
    )
    ctx.step_run.transactions.exclude(pk=record.pk).update(status=Transaction.Status.DROPPED)
    if not ok:
        raise StepError(f"transaction {record.tx_hash} reverted in block {mined}", permanent=True)
    return StepResult(output={"tx_hash": record.tx_hash, "nonce": record.nonce, "from": signer.address, **summary})


def _gas_limit(estimate: int) -> int:
    """Headroom over the estimate: it is made against today's state, and queued writes to the same
    contract change storage costs (a zero slot costs 20k gas to set) before this one is mined.
    Unused gas is not charged, so headroom only costs when the call would fail anyway."""
    return int(estimate * 1.25) + 100_000


def _nonce_taken_by_other(w3, latest: Transaction) -> bool:
    """True when the chain has moved past our nonce and none of our attempts has a receipt."""
    mined_count = w3.eth.get_transaction_count(latest.from_address, "latest")
    if mined_count <= latest.nonce:
        return False
    _, receipt = _find_receipt(w3, list(latest.step_run.transactions.all()))
    return receipt is None


def _stuck(ctx: StepContext, signer: SignerKey, latest: Transaction, why: str) -> None:
    """Alert once that the signer's limits stop a stuck transaction from being re-sent; it is still awaited."""
    if Transaction.objects.filter(pk=latest.pk, stuck_alerted_at__isnull=True).update(stuck_alerted_at=timezone.now()):
        spending.note_stuck(signer, latest.tx_hash, why)
        ctx.log(f"ALERT: {latest.tx_hash} is stuck and is not re-sent again ({why}); still waiting for it")
        run = ctx.run
        message = (f"“{run.flow.name}”: transaction {latest.tx_hash} from signer “{signer.name}” is stuck and is "
                   f"no longer re-sent ({why}); the run still waits for it")
        Notification.objects.get_or_create(run_id=run.pk, kind=Notification.Kind.TX_STUCK,
                                           defaults={"team_id": run.team_id, "message": message[:2000]})


def _replace(ctx: StepContext, chain: Chain, w3, signer: SignerKey, latest: Transaction) -> Transaction | None:
    """A same-nonce transaction with higher fees, stored before it is sent; None when the signer's
    limits allow no further replacement (then the stuck transaction is alerted on, once)."""
    if latest.replaces >= signer.max_replacements:
        _stuck(ctx, signer, latest, f"re-sent {latest.replaces} times, the signer's limit")
        return None
    bump = lambda old: int(old) * FEE_BUMP_NUMERATOR // FEE_BUMP_DENOMINATOR + 1  # noqa: E731
    try:
        max_fee, priority = _fees(w3, signer)
    except StepError as exc:
        _stuck(ctx, signer, latest, exc.message)
        return None
    tx = {
        "chainId": chain.chain_id, "to": latest.to_address, "data": latest.data, "value": int(latest.value),
        "gas": latest.gas, "type": 2,
        "maxFeePerGas": max(max_fee, bump(latest.max_fee_per_gas)),
        "maxPriorityFeePerGas": max(priority, bump(latest.max_priority_fee_per_gas)),
    }
    ceiling = signer.max_fee_per_gas_wei
    if ceiling is not None and tx["maxFeePerGas"] > ceiling:
        _stuck(ctx, signer, latest, "a higher fee would be over the signer's limit per gas")
        return None
    ceiling = signer.max_priority_fee_per_gas_wei
    if ceiling is not None and tx["maxPriorityFeePerGas"] > ceiling:
        _stuck(ctx, signer, latest, "a higher priority fee would be over the signer's limit")
        return None
    try:
        record = _sign_and_store(ctx, chain, w3, signer, tx, nonce=latest.nonce, replaces=latest.replaces + 1)
    except IntegrityError:
        return ctx.step_run.transactions.order_by("-replaces").first()
    except StepError as exc:  # over the day's budget: the stuck one may still be mined, so keep waiting
        _stuck(ctx, signer, latest, exc.message)
        return None
    ctx.log(f"replaced {latest.tx_hash} with {record.tx_hash} (higher fee, same nonce {latest.nonce})")
    return record
