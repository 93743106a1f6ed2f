"""A fault-injecting JSON-RPC proxy: a real HTTP server on loopback in front of a real node.

It forwards every request (single or batch) to the upstream node and, as each
switchable fault says, answers as real hosted providers sometimes do. Every fault
it injects is written to ``journal``, so a test can show that the fault happened.
Faults are seeded (``seed``), so a failing run can be repeated.

Fault classes (``Faults`` fields):

* ``lag_logs``: a node N blocks behind the one that served the header:
  ``eth_getLogs`` for any of the newest N blocks answers ``[]`` with no error;
* ``hide_logs``: ``eth_getLogs`` always answers ``[]`` (a broken node, or one that disagrees
  with the others behind the same provider);
* ``lag_receipts``: the same node's ``eth_getBlockReceipts`` for those blocks answers ``null``;
* ``no_receipts``: ``eth_getBlockReceipts`` is not supported (-32601);
* ``rate_limit``: a share of requests answers HTTP 429 with ``Retry-After``;
* ``unavailable``: a share answers HTTP 503 with ``Retry-After``;
* ``slow``: a share of requests waits ``slow_seconds`` before it is answered;
* ``null_headers``: ``eth_getBlockByNumber`` for the newest block answers ``null``
  (announced, not yet served) for a share of requests;
* ``stale_head``: ``eth_getBlockByNumber("latest")`` answers a block 1-3 behind,
  for a share of requests (a head that goes backwards);
* ``max_range``: ``eth_getLogs`` over more blocks than this is refused (-32005);
* ``empty_blocks``: a block asked for with its transactions (``eth_getBlockByHash``/``Number``
  with ``true``) comes back with ``transactions: []`` for this many requests (its header still
  lists them in ``transactionsRoot``), as a node does that serves the header before the body;
* ``lag_tx_receipts``: ``eth_getTransactionReceipt`` answers ``null`` for this many requests;
* ``reorder_batches``: batch answers come back in a shuffled order (ids kept);
* ``refuse_batches``: a JSON-RPC batch is answered with one error object, as some nodes do;
* ``throttle_first``: the first N HTTP requests answer 429 (no Retry-After).

On the websocket (``ws_url``, in front of the node's own):

* ``ws_drop_after``: every connection is dropped this many seconds after it opened;
* ``ws_duplicate_heads`` / ``ws_drop_heads``: a share of ``newHeads`` notifications
  is sent twice / not at all;
* ``ws_reorder_heads``: ``newHeads`` notifications are held and sent two at a time,
  newest first;
* ``ws_orphan_logs``: a share of pushed ``logs`` notifications is preceded by the same log in
  a block that never makes the chain (same height, another block hash), as a node pushes the
  logs of a block it then reorganises away.

It serves from construction; use it as a context manager (``with RpcProxy(node.http_url,
Faults(lag_logs=2)) as proxy: proxy.url ...``) or call ``close()``. Change ``proxy.faults`` at any
time. ``requests`` counts the HTTP requests it received, ``calls`` the JSON-RPC methods inside
them, ``ranges`` the size of every eth_getLogs block range asked for.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve


@dataclass
class Faults:
    lag_logs: int = 0
    hide_logs: bool = False
    lag_receipts: bool = False
    no_receipts: bool = False
    rate_limit: float = 0.0
    unavailable: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 0.5
    null_headers: float = 0.0
    stale_head: float = 0.0
    max_range: int | None = None
    empty_blocks: int = 0
    lag_tx_receipts: int = 0
    reorder_batches: bool = False
    refuse_batches: bool = False
    throttle_first: int = 0
    ws_drop_after: float | None = None
    ws_duplicate_heads: float = 0.0
    ws_drop_heads: float = 0.0
    ws_reorder_heads: bool = False
    ws_orphan_logs: float = 0.0


class RpcProxy:
    def __init__(self, upstream: str, faults: Faults | None = None, *, seed: int = 1, ws_upstream: str | None = None):
        self.upstream = upstream
        self.ws_upstream = ws_upstream
        self.ws_connected_at: list[float] = []  # monotonic time of every websocket connection opened
        self.faults = faults or Faults()
        self.random = random.Random(seed)
        self.journal: list[tuple[str, str]] = []  # (method or "http", fault)
        self.requests = 0
        self.calls: list[str] = []
        self.ranges: list[int] = []
        self._lock = threading.Lock()
        self._session = requests.Session()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, headers, answer = proxy.handle(body)
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="rpc-proxy", daemon=True)
        self.ws_server = None
        if ws_upstream is not None:
            self.ws_server = ws_serve(self._ws_session, "127.0.0.1", 0, compression=None, max_size=None)
            self.ws_url = f"ws://127.0.0.1:{self.ws_server.socket.getsockname()[1]}"
            self._ws_thread = threading.Thread(target=self.ws_server.serve_forever, name="rpc-proxy-ws", daemon=True)

        self._thread.start()
        if self.ws_server is not None:
            self._ws_thread.start()

    def __enter__(self) -> RpcProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.ws_server is not None:
            self.ws_server.shutdown()
        self._session.close()

    # -- the websocket ------------------------------------------------------------------

    def _ws_session(self, client: Any) -> None:
        """One client connection: pump frames both ways, with the websocket faults."""
        opened = time.monotonic()
        with self._lock:
            self.ws_connected_at.append(opened)
        self._note("ws", "connected")
        held: list[str] = []
        with ws_connect(self.ws_upstream, compression=None, max_size=None) as upstream:
            done = threading.Event()

            def client_to_node() -> None:
                try:
                    for frame in client:
                        upstream.send(frame)
                except Exception as exc:  # either side closed: the session ends
                    self._note("ws", f"closed: {type(exc).__name__}")
                done.set()

            threading.Thread(target=client_to_node, daemon=True).start()
            while not done.is_set():
                drop_after = self.faults.ws_drop_after
                if drop_after is not None and time.monotonic() - opened >= drop_after:
                    self._note("ws", "dropped")
                    client.close()
                    return
                try:
                    frame = upstream.recv(timeout=0.05)
                except TimeoutError:
                    continue
                except Exception:
                    return
                if '"eth_subscription"' in frame and '"parentHash"' in frame:
                    if self._chance(self.faults.ws_drop_heads):
                        self._note("ws", "head dropped")
                        continue
                    if self.faults.ws_reorder_heads:
                        held.append(frame)
                        if len(held) < 2:
                            continue
                        self._note("ws", "heads reordered")
                        frames, held = held[::-1], []
                        for one in frames:
                            client.send(one)
                        continue
                    if self._chance(self.faults.ws_duplicate_heads):
                        self._note("ws", "head duplicated")
                        client.send(frame)
                elif '"eth_subscription"' in frame and '"logIndex"' in frame and self._chance(self.faults.ws_orphan_logs):
                    self._note("ws", "orphan log pushed")
                    try:
                        client.send(_orphaned(frame))
                    except Exception:
                        return
                try:
                    client.send(frame)
                except Exception:
                    return

    def faults_seen(self, fault: str) -> int:
        with self._lock:
            return sum(1 for _, f in self.journal if f == fault)

    # -- the proxy ---------------------------------------------------------------------

    def _note(self, method: str, fault: str) -> None:
        with self._lock:
            self.journal.append((method, fault))

    def _chance(self, share: float) -> bool:
        with self._lock:
            return share > 0 and self.random.random() < share

    def _upstream(self, payload: Any) -> Any:
        return self._session.post(self.upstream, json=payload, timeout=30).json()

    def handle(self, body: bytes) -> tuple[int, dict[str, str], Any]:
        faults = self.faults
        payload = json.loads(body)
        with self._lock:
            self.requests += 1
            self.calls.extend(call.get("method") for call in (payload if isinstance(payload, list) else [payload]))
            throttled = self.requests <= faults.throttle_first
        if throttled:
            self._note("http", "429")
            return 429, {}, {"error": "rate limited"}
        if isinstance(payload, list) and faults.refuse_batches:
            self._note("batch", "refused")
            return 200, {}, {"jsonrpc": "2.0", "id": None,
                             "error": {"code": -32600, "message": "batch requests are not supported"}}
        if self._chance(faults.rate_limit):
            self._note("http", "429")
            return 429, {"Retry-After": "1"}, {"error": "rate limited"}
        if self._chance(faults.unavailable):
            self._note("http", "503")
            return 503, {"Retry-After": "1"}, {"error": "unavailable"}
        if self._chance(faults.slow):
            self._note("http", "slow")
            time.sleep(faults.slow_seconds)
        if isinstance(payload, list):
            answers = [self._one(call) for call in payload]
            if faults.reorder_batches and len(answers) > 1:
                with self._lock:
                    self.random.shuffle(answers)
                self._note("batch", "reordered")
            return 200, {}, answers
        return 200, {}, self._one(payload)

    def _head(self) -> int:
        return int(self._upstream({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []})["result"], 16)

    def _number_of(self, block_hash: str) -> int | None:
        answer = self._upstream({"jsonrpc": "2.0", "id": 0, "method": "eth_getBlockByHash", "params": [block_hash, False]})
        block = answer.get("result")
        return int(block["number"], 16) if block else None

    def _lagging(self, first: int | None, last: int | None, lag: int) -> bool:
        """Whether a block range touches the newest `lag` blocks."""
        if lag <= 0 or last is None:
            return False
        return last > self._head() - lag

    def _one(self, call: dict[str, Any]) -> dict[str, Any]:
        method, params, faults = call.get("method"), call.get("params") or [], self.faults
        reply = {"jsonrpc": "2.0", "id": call.get("id")}
        if method == "eth_getLogs" and faults.hide_logs:
            self._note(method, "hidden logs")
            return {**reply, "result": []}
        if method == "eth_getLogs" and params:
            flt = params[0]
            if "blockHash" in flt:
                first = last = self._number_of(flt["blockHash"])
            else:
                head = None
                first = _number(flt.get("fromBlock"), head)
                last = _number(flt.get("toBlock"), head)
                if first is None or last is None:
                    head = self._head()
                    first = head if first is None else first
                    last = head if last is None else last
                with self._lock:
                    self.ranges.append(last - first + 1)
                if faults.max_range is not None and last - first + 1 > faults.max_range:
                    self._note(method, "range refused")
                    return {**reply, "error": {"code": -32005, "message": (
                        f"query returned more than 10000 results. Try with this block range "
                        f"[{hex(first)}, {hex(first + faults.max_range - 1)}].")}}
            if self._lagging(first, last, faults.lag_logs):
                self._note(method, "lagging logs")
                if "blockHash" in flt:
                    return {**reply, "result": []}
                # A range: the node answers what it has, up to where it lags.
                answer = self._upstream(call)
                cut = self._head() - faults.lag_logs
                kept = [log for log in answer.get("result") or [] if int(log["blockNumber"], 16) <= cut]
                return {**reply, "result": kept}
        if method == "eth_getBlockReceipts":
            if faults.no_receipts:
                self._note(method, "not supported")
                return {**reply, "error": {"code": -32601, "message": "the method eth_getBlockReceipts does not exist"}}
            if faults.lag_receipts and params:
                number = self._number_of(params[0]) if str(params[0]).startswith("0x") and len(params[0]) == 66 else None
                if number is not None and self._lagging(number, number, faults.lag_logs):
                    self._note(method, "lagging receipts")
                    return {**reply, "result": None}
        if method in ("eth_getBlockByHash", "eth_getBlockByNumber") and len(params) > 1 and params[1] is True:
            with self._lock:
                empty = faults.empty_blocks > 0
                faults.empty_blocks -= empty
            if empty:
                answer = self._upstream(call)
                if answer.get("result"):
                    self._note(method, "block without transactions")
                    return {**answer, "result": {**answer["result"], "transactions": []}}
                return answer
        if method == "eth_getTransactionReceipt":
            with self._lock:
                lagging = faults.lag_tx_receipts > 0
                faults.lag_tx_receipts -= lagging
            if lagging:
                self._note(method, "no receipt yet")
                return {**reply, "result": None}
        if method == "eth_getBlockByNumber" and params:
            if params[0] == "latest" and self._chance(faults.stale_head):
                head = self._head()
                back = self.random.randint(1, 3)
                self._note(method, "stale head")
                return self._upstream({**call, "params": [hex(max(head - back, 0)), *params[1:]]})
            if self._chance(faults.null_headers):
                number = _number(params[0], None)
                if params[0] == "latest" or (number is not None and number >= self._head()):
                    self._note(method, "null header")
                    return {**reply, "result": None}
        return self._upstream(call)


def _orphaned(frame: str) -> str:
    """A pushed log notification moved to a sibling block that is never canonical (hash derived from the real one)."""
    import hashlib

    message = json.loads(frame)
    log = message["params"]["result"]
    log["blockHash"] = "0x" + hashlib.sha256(("orphan" + log["blockHash"]).encode()).hexdigest()
    log["transactionHash"] = "0x" + hashlib.sha256(("orphan" + log["transactionHash"]).encode()).hexdigest()
    return json.dumps(message)


def _number(tag: Any, head: int | None) -> int | None:
    if isinstance(tag, str) and tag.startswith("0x"):
        return int(tag, 16)
    return head
