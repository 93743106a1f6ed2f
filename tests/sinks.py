"""Local stand-ins for the outside internet: a real HTTP server and a real SMTP server on loopback.

Register as a pytest plugin (``-p tests.sinks``). ``http_sink`` records every
request and answers from a script (status, body, delay, headers: e.g. a
redirect); ``smtp_sink`` is an aiosmtpd server that keeps every message.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class Reply:
    status: int = 200
    body: object = field(default_factory=lambda: {"ok": True})
    delay: float = 0.0
    headers: dict = field(default_factory=dict)
    hang_up: bool = False  # read the request, then close the connection without an answer


@dataclass
class Received:
    method: str
    path: str
    headers: dict
    body: bytes
    at: float

    def json(self):
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: more callers connecting at once than that
    # (a test's threads let go together) would be reset by the kernel, as no real server is.
    request_queue_size = 128


class HttpSink:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.connections = 0  # TCP connections accepted, to see whether callers keep theirs alive
        # The same requests by path (no query), so waiting for the n-th costs nothing per
        # arrival (recounting the whole list made a benchmark's sink quadratic).
        self._by_path: dict[str, list[Received]] = {}
        self.scripts: dict[str, deque[Reply]] = {}
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Like any production server: without it the body's write waits for the client's
            # delayed ACK of the headers (~40 ms) on a kept-alive connection.
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with sink.lock:
                    sink.connections += 1

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path
                with sink.lock:
                    received = Received(self.command, path, dict(self.headers), body, time.time())
                    sink.requests.append(received)
                    sink._by_path.setdefault(path.split("?")[0], []).append(received)
                    sink.arrived.notify_all()
                    queue = sink.scripts.get(path.split("?")[0])
                    reply = queue.popleft() if queue else Reply()
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.hang_up:
                    self.close_connection = True
                    return
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to `path` with these replies, in order (then 200)."""
        with self.lock:
            self.scripts.setdefault(path, deque()).extend(replies)

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return list(self._by_path.get(path, ()))

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self._by_path.get(path, ())) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{count} request(s) to {path} did not arrive; got {self.requests!r}")
                self.arrived.wait(left)
        return self.to(path)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.connections = 0
            self._by_path.clear()
            self.scripts.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[dict] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
                sink.messages.append(
                    {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "data": envelope.content.decode()}
                )
                return "250 OK"

        import socket

        with socket.socket() as probe:  # aiosmtpd checks its own port after start, so it cannot be 0
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait_for(self, count: int = 1, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} message(s) did not arrive")
            time.sleep(0.05)
        return self.messages

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture(scope="session")
def http_sink_server():
    sink = HttpSink()
    yield sink
    sink.close()


@pytest.fixture
def http_sink(http_sink_server):
    """The session's HTTP sink, emptied for this test."""
    http_sink_server.reset()
    yield http_sink_server
    http_sink_server.reset()


@pytest.fixture(scope="session")
def smtp_sink_server():
    sink = SmtpSink()
    yield sink
    sink.close()


@pytest.fixture
def smtp_sink(smtp_sink_server):
    smtp_sink_server.messages.clear()
    return smtp_sink_server
