"""JSON-RPC subscriptions over a websocket, for the chain listeners.

A listener wants two things from a node's websocket: `newHeads` (to wake its
block loop) and `logs` (to claim a run as soon as the node pushes the event).
It wants them in a plain thread, because what it does with a notification is
Django ORM work, and raw (hex strings as the node sent them), because the same
`executor.chain.log_from_rpc` / `block_from_rpc` helpers then serve both the
HTTP and the websocket paths.

web3.py's `WebSocketProvider` is asyncio-only and formats every result into
HexBytes and AttributeDicts, so this module speaks the few JSON-RPC calls it
needs (`eth_subscribe`, `eth_unsubscribe`) over the `websockets` library's
synchronous client, which web3.py already depends on. Everything else a
listener asks a node goes over HTTP through `executor.chain.ChainClient`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from executor.chain import ChainError

# Frames larger than this are refused (a newHeads header is ~1 KiB, a log a few hundred bytes).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Most notifications handed out by one `notifications()` call; the rest wait for the next.
MAX_BATCH = 5000

# What a broken or closed socket raises, for callers to reconnect on.
SOCKET_ERRORS = (OSError, WebSocketException, TimeoutError, ChainError, ValueError)


class SubscriptionSocket:
    """One websocket connection to a node, with its subscriptions.

    `request()` sends a call and waits for its answer; notifications that arrive
    meanwhile are kept, in order, for `notifications()`. Not thread-safe: one
    thread owns a socket.
    """

    def __init__(self, url: str, *, open_timeout: float = 5.0):
        self.url = url
        # No permessage-deflate: on a local or LAN node it costs more CPU than it saves.
        self._ws = connect(url, open_timeout=open_timeout, max_size=MAX_MESSAGE_BYTES, compression=None).__enter__()
        self._next_id = 0
        self._backlog: deque[tuple[str, Any]] = deque()

    def __enter__(self) -> SubscriptionSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._ws.close()

    def request(self, method: str, params: list[Any], *, timeout: float = 10.0) -> Any:
        """Send one call and return its result; raise ChainError if the node answered an error."""
        self._next_id += 1
        request_id = self._next_id
        self._ws.send(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{method}: no answer from {self.url} in {timeout:.0f} s")
            message = self._decode(self._ws.recv(timeout=left))
            if message.get("id") == request_id:
                if "error" in message:
                    error = message["error"] or {}
                    raise ChainError(f"{method}: {error.get('message', error)}", retryable=False,
                                     endpoint=self.url, code=error.get("code"))
                return message.get("result")
            self._keep(message)

    def subscribe(self, *params: Any) -> str:
        """`eth_subscribe` with `params` (e.g. "newHeads", or "logs" and a filter); returns the id."""
        return self.request("eth_subscribe", list(params))

    def unsubscribe(self, subscription: str) -> None:
        self.request("eth_unsubscribe", [subscription])

    def notifications(self, timeout: float) -> list[tuple[str, Any]]:
        """(subscription id, result) of every notification that has arrived, oldest first.

        Waits up to `timeout` seconds for the first one; then takes whatever else is
        already there without waiting, so a burst comes back as one batch.
        """
        if not self._backlog:
            try:
                self._keep(self._decode(self._ws.recv(timeout=timeout)))
            except TimeoutError:
                return []
        while len(self._backlog) < MAX_BATCH:
            try:
                self._keep(self._decode(self._ws.recv(timeout=0)))
            except TimeoutError:
                break
        batch = list(self._backlog)
        self._backlog.clear()
        return batch

    def _keep(self, message: dict[str, Any]) -> None:
        if message.get("method") == "eth_subscription":
            params = message.get("params") or {}
            self._backlog.append((params.get("subscription"), params.get("result")))

    def _decode(self, frame: str | bytes) -> dict[str, Any]:
        message = json.loads(frame)
        if not isinstance(message, dict):
            raise ValueError(f"unexpected message from {self.url}: {str(message)[:200]}")
        return message
