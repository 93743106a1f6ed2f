"""The one place that talks JSON-RPC to chains.

A ChainClient holds a chain's HTTP endpoints in priority order and fails over
between them: a connection error, a timeout, an HTTP 5xx or a 429 puts the
endpoint in a cool-down (exponential backoff) and the request goes to the next
one. A JSON-RPC error answered by a healthy node is the node's verdict and is
raised at once (except "range too large", which callers handle by asking for
less). Everything leaves this module as ChainError.

Results are returned raw (hex strings, as the node sent them) so callers decide
what to convert; helpers below turn blocks and logs into small dicts. Code that
wants web3.py's encoding and decoding (the contract steps) takes `client.web3()`:
a Web3 whose provider is this client, so it gets the same endpoint order,
failover and health records; node errors reach it as web3 exceptions as usual,
"every endpoint failed" as ChainError.

`client_for_chain(chain)` is the process's shared client for a Chain row, so the
listener, the contract steps and everything else in one process agree on which
endpoint is cooling down.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from django.utils import timezone
from web3 import HTTPProvider, Web3
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from executor import metrics

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
# Requests per JSON-RPC batch; hosted providers cap batches (Alchemy and Infura at 1000,
# some at 100), and a small batch keeps one slow answer from holding many blocks.
BATCH_SIZE = 50
# Cool-down after an endpoint fails: BASE * 2**(failures-1), capped.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 60.0

# What providers answer when an eth_getLogs range (or result) is too big:
# Infura/Alchemy -32005 "query returned more than 10000 results", QuickNode
# "eth_getLogs is limited to a 10,000 range", Ankr "block range is too wide",
# geth "exceed maximum block range", others "limit exceeded", "response size".
RANGE_TOO_LARGE_CODES = {-32005}
RANGE_TOO_LARGE_PHRASES = (
    "query returned more than",
    "block range",
    "too large",
    "too many",
    "limit exceeded",
    "range is too",
    "exceed maximum block range",
    "response size",
    "is limited to",
)


_URL = re.compile(r"\b((?:https?|wss?)://)([^/\s@]+@)?([^/\s?#:]+)(:\d+)?[^\s,)'\"]*", re.IGNORECASE)
# requests and urllib3 name the path alone: "Max retries exceeded with url: /v3/KEY (Caused by ...)".
_URL_PATH = re.compile(r"(\burl: )/[^\s,)'\"]*", re.IGNORECASE)


def scrub_urls(text: str) -> str:
    """Keep only scheme://host:port of every URL in `text`.

    RPC URLs carry provider API keys in their path, query or user part, and chain
    error text reaches run records, API answers, pages and logs: every ChainError's
    text goes through here, and so does any other error text from an RPC request.
    """
    text = _URL.sub(lambda m: f"{m.group(1)}{m.group(3)}{m.group(4) or ''}/…", text)
    return _URL_PATH.sub(lambda m: f"{m.group(1)}/…", text)


class ChainError(Exception):
    """A chain request failed.

    `retryable` is True when trying again later may work (every endpoint was
    down, timed out or rate-limited); False when a node answered with an error.
    `range_too_large` is set when the node refused an eth_getLogs range.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        endpoint: str = "",
        code: int | None = None,
        range_too_large: bool = False,
    ):
        message = scrub_urls(message)
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.endpoint = scrub_urls(endpoint)
        self.code = code
        self.range_too_large = range_too_large

    def __str__(self) -> str:
        where = f" ({self.endpoint})" if self.endpoint else ""
        return f"{self.message}{where}"


def is_range_too_large(code: int | None, message: str) -> bool:
    text = message.lower()
    return code in RANGE_TOO_LARGE_CODES or any(phrase in text for phrase in RANGE_TOO_LARGE_PHRASES)


@dataclass
class Endpoint:
    url: str
    pk: int | None = None  # the RpcEndpoint row, when it came from the database
    failures: int = 0
    down_until: float = 0.0
    provider: HTTPProvider | None = None
    batches: bool = True  # False once the endpoint refused a JSON-RPC batch
    label: str = ""  # scheme://host:port, for metrics


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    logs_bloom: str | None = None  # hex; what executor.blockcheck holds an empty logs answer against
    # The node's block object when it was read with its transactions (executor.chaintx keeps them).
    full: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def block_from_rpc(raw: dict[str, Any], *, full: bool = False) -> Block:
    return Block(
        number=int(raw["number"], 16),
        hash=raw["hash"].lower(),
        parent_hash=raw["parentHash"].lower(),
        timestamp=int(raw["timestamp"], 16),
        logs_bloom=raw.get("logsBloom"),
        full=raw if full else None,
    )


def log_from_rpc(raw: dict[str, Any]) -> dict[str, Any]:
    """A node's log object -> the plain dict matching works on (lower-case hex, int numbers)."""
    return {
        "address": raw["address"].lower(),
        "topics": [t.lower() for t in raw["topics"]],
        "data": raw["data"].lower(),
        "block_number": int(raw["blockNumber"], 16),
        "block_hash": raw["blockHash"].lower(),
        "log_index": int(raw["logIndex"], 16),
        "tx_hash": raw["transactionHash"].lower(),
        "removed": bool(raw.get("removed", False)),
    }


# How a request can fail on the way (as opposed to a node answering with an error);
# requests.HTTPError, Timeout and ConnectionError are OSErrors too.
_TRANSPORT_ERRORS = (requests.RequestException, OSError, ValueError)


def _retry_after(response) -> float | None:
    """The seconds a 429 or 503 answer's Retry-After asks for (a number of seconds or an HTTP date)."""
    if response is None or response.status_code not in (429, 503):
        return None
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


class ChainClient:
    """JSON-RPC over HTTP to one chain, with failover across its endpoints.

    Thread-safe for the endpoint bookkeeping; one client per chain per process.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        chain_id: int | None = None,
        endpoint_ids: list[int | None] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        record_health: bool = False,
    ):
        if not urls:
            raise ChainError("No RPC endpoint is configured for this chain", retryable=False)
        ids = endpoint_ids or [None] * len(urls)
        self.chain_id = chain_id
        self.timeout = timeout
        self.record_health = record_health
        self.endpoints = [Endpoint(url=url, pk=pk, label=metrics.endpoint_label(url))
                          for url, pk in zip(urls, ids, strict=True)]
        self._chain_label = str(chain_id) if chain_id is not None else "?"
        self._lock = threading.Lock()
        self._web3: Web3 | None = None

    @classmethod
    def for_chain(cls, chain, **kwargs: Any) -> ChainClient:
        """A client for a Chain row's enabled HTTP endpoints, recording their health."""
        from executor.models import RpcEndpoint

        rows = list(chain.endpoints.filter(kind=RpcEndpoint.Kind.HTTP, enabled=True).order_by("priority", "id"))
        kwargs.setdefault("record_health", True)
        return cls([r.url for r in rows], chain_id=chain.chain_id, endpoint_ids=[r.pk for r in rows], **kwargs)

    # -- transport ---------------------------------------------------------------

    def _provider(self, endpoint: Endpoint) -> HTTPProvider:
        if endpoint.provider is None:
            # No retries inside web3: failing over to the next endpoint is faster
            # than retrying a dead one.
            endpoint.provider = HTTPProvider(
                endpoint.url, request_kwargs={"timeout": self.timeout}, exception_retry_configuration=None
            )
        return endpoint.provider

    def _order(self) -> list[Endpoint]:
        now = time.monotonic()
        with self._lock:
            up = [e for e in self.endpoints if e.down_until <= now]
            down = sorted((e for e in self.endpoints if e.down_until > now), key=lambda e: e.down_until)
        # When everything is cooling down, still try the one that recovers first.
        return up or down[:1]

    def _failed(self, endpoint: Endpoint, message: str, retry_after: float | None = None) -> None:
        """Put the endpoint in a cool-down: the node's own Retry-After when it sent one, else
        exponential (a node that says when to come back is asked again then, not later)."""
        metrics.RPC_REQUESTS.labels(self._chain_label, endpoint.label,
                                    "rate_limited" if retry_after is not None else "failed").inc()
        with self._lock:
            endpoint.failures += 1
            if retry_after is not None:
                delay = min(max(retry_after, BACKOFF_BASE_S / 5), BACKOFF_MAX_S)
            else:
                delay = min(BACKOFF_BASE_S * 2 ** (endpoint.failures - 1), BACKOFF_MAX_S)
            endpoint.down_until = time.monotonic() + delay
            failures = endpoint.failures
        logger.warning("RPC endpoint %s failed (%s); backing off %.1fs", scrub_urls(endpoint.url), message, delay)
        if self.record_health and endpoint.pk is not None:
            self._save_health(endpoint, error=message, failures=failures)

    def ready_in(self) -> float:
        """Seconds until an endpoint is out of its cool-down (0 when one is up now)."""
        now = time.monotonic()
        with self._lock:
            return max(0.0, min((e.down_until for e in self.endpoints), default=0.0) - now)

    def _succeeded(self, endpoint: Endpoint) -> None:
        metrics.RPC_REQUESTS.labels(self._chain_label, endpoint.label, "ok").inc()
        if endpoint.failures == 0:
            return
        with self._lock:
            endpoint.failures = 0
            endpoint.down_until = 0.0
        logger.info("RPC endpoint %s recovered", scrub_urls(endpoint.url))
        if self.record_health and endpoint.pk is not None:
            self._save_health(endpoint, error=None, failures=0)

    def _save_health(self, endpoint: Endpoint, *, error: str | None, failures: int) -> None:
        from executor.models import RpcEndpoint

        now = timezone.now()
        fields: dict[str, Any] = {"failures": failures}
        if error is None:
            fields["last_ok_at"] = now
        else:
            fields.update(last_error=error[:1000], last_error_at=now)
        try:
            RpcEndpoint.objects.filter(pk=endpoint.pk).update(**fields)
        except Exception:
            logger.warning("could not record health of %s", scrub_urls(endpoint.url), exc_info=True)

    def send(self, method: str, params: list[Any]) -> tuple[str, dict[str, Any]]:
        """Send one JSON-RPC request, failing over between endpoints.

        Returns (endpoint url, the node's response object, error included); raises a
        retryable ChainError when no endpoint answered.
        """
        errors: list[str] = []
        for endpoint in self._order():
            started = time.monotonic()
            try:
                response = self._provider(endpoint).make_request(RPCEndpoint(method), params)
            except _TRANSPORT_ERRORS as exc:
                errors.append(self._transport_failed(endpoint, exc))
                continue
            finally:
                metrics.RPC_SECONDS.labels(self._chain_label, endpoint.label).observe(time.monotonic() - started)
            self._succeeded(endpoint)
            return endpoint.url, response
        raise self._all_failed(method, errors)

    def request(self, method: str, params: list[Any]) -> Any:
        """Send one JSON-RPC request, failing over between endpoints; return its result."""
        url, response = self.send(method, params)
        return self._result(method, url, response)

    def ask_each(self, method: str, params: list[Any]) -> Iterator[tuple[str, Any]]:
        """Ask every endpoint that is up, one after another: (url, result) for each that answers.

        For a second opinion (executor.blockcheck): an error answer or a failed
        transport just moves on to the next endpoint, and the caller stops reading
        once it has what it needs.
        """
        for endpoint in self._order():
            try:
                response = self._provider(endpoint).make_request(RPCEndpoint(method), params)
            except _TRANSPORT_ERRORS as exc:
                self._transport_failed(endpoint, exc)
                continue
            self._succeeded(endpoint)
            try:
                yield endpoint.url, self._result(method, endpoint.url, response)
            except ChainError:
                continue  # e.g. the method is not supported there

    def request_batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """The results of `calls` in order, sent as JSON-RPC batches of BATCH_SIZE.

        An endpoint that does not take batches (it answers one error object, or not
        a list) is remembered and asked one request at a time.
        """
        results: list[Any] = []
        for start in range(0, len(calls), BATCH_SIZE):
            results.extend(self._batch(calls[start:start + BATCH_SIZE]))
        return results

    def _batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        errors: list[str] = []
        for endpoint in self._order():
            if not endpoint.batches:
                break
            try:
                responses = self._provider(endpoint).make_batch_request(
                    [(RPCEndpoint(method), params) for method, params in calls]
                )
            except _TRANSPORT_ERRORS as exc:
                errors.append(self._transport_failed(endpoint, exc))
                continue
            self._succeeded(endpoint)
            if not isinstance(responses, list) or len(responses) != len(calls):
                logger.info("RPC endpoint %s does not answer JSON-RPC batches; sending one by one",
                            scrub_urls(endpoint.url))
                endpoint.batches = False
                break
            return [
                self._result(method, endpoint.url, response)
                for (method, _), response in zip(calls, responses, strict=True)
            ]
        else:
            raise self._all_failed(calls[0][0] if calls else "batch", errors)
        return [self.request(method, params) for method, params in calls]

    def _transport_failed(self, endpoint: Endpoint, exc: Exception) -> str:
        """Record a failed attempt at `endpoint`; return the line for the final error."""
        if isinstance(exc, requests.HTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            reason = "rate limited (HTTP 429)" if status == 429 else f"HTTP {status}"
            self._failed(endpoint, reason, _retry_after(exc.response))
            return f"{endpoint.url}: {reason}"
        if isinstance(exc, requests.Timeout):
            self._failed(endpoint, f"timed out after {self.timeout:g}s")
            return f"{endpoint.url}: timed out"
        if isinstance(exc, ValueError):  # not JSON: a proxy's error page
            self._failed(endpoint, f"bad response: {exc}")
            return f"{endpoint.url}: bad response"
        self._failed(endpoint, f"connection failed: {type(exc).__name__}")
        return f"{endpoint.url}: connection failed"

    def _all_failed(self, method: str, errors: list[str]) -> ChainError:
        return ChainError(
            f"{method}: every RPC endpoint failed ({'; '.join(errors)})",
            retryable=True,
            endpoint=", ".join(e.url for e in self.endpoints),
        )

    @staticmethod
    def _result(method: str, url: str, response: Any) -> Any:
        error = response.get("error") if isinstance(response, dict) else None
        if error:
            code = error.get("code") if isinstance(error, dict) else None
            message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
            too_large = method == "eth_getLogs" and is_range_too_large(code, message)
            raise ChainError(
                f"{method} failed: {message}",
                retryable=too_large,
                endpoint=url,
                code=code,
                range_too_large=too_large,
            )
        return response.get("result") if isinstance(response, dict) else None

    def web3(self) -> Web3:
        """A Web3 that sends every request through this client (same failover and health)."""
        if self._web3 is None:
            self._web3 = Web3(FailoverProvider(self))
        return self._web3

    # -- helpers -----------------------------------------------------------------

    def block_number(self) -> int:
        return int(self.request("eth_blockNumber", []), 16)

    def get_block(self, number_or_tag: int | str, *, full: bool = False) -> Block | None:
        """A block's header (`full`: with its transactions, for executor.chaintx)."""
        tag = hex(number_or_tag) if isinstance(number_or_tag, int) else number_or_tag
        raw = self.request("eth_getBlockByNumber", [tag, full])
        return block_from_rpc(raw, full=full) if raw else None

    def get_block_by_hash(self, block_hash: str) -> Block | None:
        raw = self.request("eth_getBlockByHash", [block_hash, False])
        return block_from_rpc(raw) if raw else None

    def get_logs_by_hash(self, block_hash: str, addresses: list[str] | None, topics: list[Any]) -> list[dict]:
        """The block's logs (EIP-234 blockHash filter), so they cannot belong to another fork."""
        flt: dict[str, Any] = {"blockHash": block_hash, "topics": topics}
        if addresses:
            flt["address"] = addresses
        return [log_from_rpc(raw) for raw in self.request("eth_getLogs", [flt])]

    def get_logs_range(
        self, from_block: int, to_block: int, addresses: list[str] | None, topics: list[Any]
    ) -> list[dict]:
        flt: dict[str, Any] = {"fromBlock": hex(from_block), "toBlock": hex(to_block), "topics": topics}
        if addresses:
            flt["address"] = addresses
        return [log_from_rpc(raw) for raw in self.request("eth_getLogs", [flt])]

    def call(self, to: str, data: str, block_hash: str) -> str:
        """eth_call at a block given by hash (EIP-1898), so a reorg cannot change what it read."""
        return self.request("eth_call", [{"to": to, "data": data}, {"blockHash": block_hash}])

    def get_blocks(self, numbers: list[int], *, full: bool = False) -> list[Block | None]:
        """Several headers in one round trip per BATCH_SIZE blocks (None where the node has none);
        `full`: with their transactions."""
        raws = self.request_batch([("eth_getBlockByNumber", [hex(n), full]) for n in numbers])
        return [block_from_rpc(raw, full=full) if raw else None for raw in raws]


class FailoverProvider(JSONBaseProvider):
    """A web3.py provider that sends through a ChainClient.

    The node's response goes back to web3.py as it came, so reverts and node errors
    raise web3's own exceptions (ContractLogicError, Web3RPCError); when no endpoint
    answers, ChainError (retryable) propagates.
    """

    def __init__(self, client: ChainClient) -> None:
        super().__init__()
        self.client = client

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return self.client.send(method, list(params or []))[1]  # type: ignore[return-value]

    def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            self.client.block_number()
        except ChainError:
            if show_traceback:
                raise
            return False
        return True


_shared: dict[int, tuple[tuple, ChainClient]] = {}
_shared_lock = threading.Lock()


def client_for_chain(chain) -> ChainClient:
    """The process's ChainClient for a Chain row's enabled HTTP endpoints.

    Shared so every caller in the process sees the same endpoint health; rebuilt when
    the endpoints (urls, priorities, enabled) change. Raises a non-retryable
    ChainError when the chain has no enabled HTTP endpoint.
    """
    from executor.models import RpcEndpoint

    rows = tuple(
        chain.endpoints.filter(kind=RpcEndpoint.Kind.HTTP, enabled=True)
        .order_by("priority", "id")
        .values_list("pk", "url")
    )
    with _shared_lock:
        known = _shared.get(chain.chain_id)
        if known is not None and known[0] == rows:
            return known[1]
        client = ChainClient(
            [url for _, url in rows], chain_id=chain.chain_id, endpoint_ids=[pk for pk, _ in rows],
            record_health=True,
        )
        _shared[chain.chain_id] = (rows, client)
        return client
