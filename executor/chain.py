"""The one place that talks JSON-RPC to chains.

A ChainClient holds a chain's HTTP endpoints in priority order and fails over
between them: a connection error, a timeout, an HTTP 5xx or a 429 puts the
endpoint in a cool-down (exponential backoff) and the request goes to the next
one. A JSON-RPC error answered by a healthy node is the node's verdict and is
raised at once (except "range too large", which callers handle by asking for
less). Everything leaves this module as ChainError.

Results are returned raw (hex strings, as the node sent them) so callers decide
what to convert; helpers below turn blocks and logs into small dicts.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from django.utils import timezone
from web3 import HTTPProvider

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
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
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.endpoint = endpoint
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


@dataclass(frozen=True)
class Block:
    number: int
    hash: str
    parent_hash: str
    timestamp: int


def block_from_rpc(raw: dict[str, Any]) -> Block:
    return Block(
        number=int(raw["number"], 16),
        hash=raw["hash"].lower(),
        parent_hash=raw["parentHash"].lower(),
        timestamp=int(raw["timestamp"], 16),
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
        self.endpoints = [Endpoint(url=url, pk=pk) for url, pk in zip(urls, ids, strict=True)]
        self._lock = threading.Lock()

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

    def _failed(self, endpoint: Endpoint, message: str) -> None:
        with self._lock:
            endpoint.failures += 1
            delay = min(BACKOFF_BASE_S * 2 ** (endpoint.failures - 1), BACKOFF_MAX_S)
            endpoint.down_until = time.monotonic() + delay
            failures = endpoint.failures
        logger.warning("RPC endpoint %s failed (%s); backing off %.1fs", endpoint.url, message, delay)
        if self.record_health and endpoint.pk is not None:
            self._save_health(endpoint, error=message, failures=failures)

    def _succeeded(self, endpoint: Endpoint) -> None:
        if endpoint.failures == 0:
            return
        with self._lock:
            endpoint.failures = 0
            endpoint.down_until = 0.0
        logger.info("RPC endpoint %s recovered", endpoint.url)
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
            logger.warning("could not record health of %s", endpoint.url, exc_info=True)

    def request(self, method: str, params: list[Any]) -> Any:
        """Send one JSON-RPC request, failing over between endpoints; return its result."""
        errors: list[str] = []
        for endpoint in self._order():
            provider = self._provider(endpoint)
            try:
                response = provider.make_request(method, params)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                reason = "rate limited (HTTP 429)" if status == 429 else f"HTTP {status}"
                self._failed(endpoint, reason)
                errors.append(f"{endpoint.url}: {reason}")
                continue
            except requests.Timeout:
                self._failed(endpoint, f"timed out after {self.timeout:g}s")
                errors.append(f"{endpoint.url}: timed out")
                continue
            except (requests.ConnectionError, OSError) as exc:
                self._failed(endpoint, f"connection failed: {type(exc).__name__}")
                errors.append(f"{endpoint.url}: connection failed")
                continue
            except ValueError as exc:  # not JSON: a proxy's error page
                self._failed(endpoint, f"bad response: {exc}")
                errors.append(f"{endpoint.url}: bad response")
                continue
            self._succeeded(endpoint)
            error = response.get("error") if isinstance(response, dict) else None
            if error:
                code = error.get("code") if isinstance(error, dict) else None
                message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
                too_large = method == "eth_getLogs" and is_range_too_large(code, message)
                raise ChainError(
                    f"{method} failed: {message}",
                    retryable=too_large,
                    endpoint=endpoint.url,
                    code=code,
                    range_too_large=too_large,
                )
            return response.get("result")
        raise ChainError(
            f"{method}: every RPC endpoint failed ({'; '.join(errors)})",
            retryable=True,
            endpoint=", ".join(e.url for e in self.endpoints),
        )

    # -- helpers -----------------------------------------------------------------

    def block_number(self) -> int:
        return int(self.request("eth_blockNumber", []), 16)

    def get_block(self, number_or_tag: int | str) -> Block | None:
        tag = hex(number_or_tag) if isinstance(number_or_tag, int) else number_or_tag
        raw = self.request("eth_getBlockByNumber", [tag, False])
        return block_from_rpc(raw) if raw else None

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
