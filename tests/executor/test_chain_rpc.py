"""executor.chain against anvil and a misbehaving provider (a real proxy on loopback)."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from executor.chain import ChainClient, ChainError
from executor.devchain import transact
from executor.models import RpcEndpoint, Run
from tests.conftest import free_port
from tests.executor.chainkit import BIG, deploy_zoo, event_graph, listener_for, make_chain, publish


class ProviderProxy:
    """Forwards JSON-RPC to anvil, but refuses eth_getLogs ranges above `max_range` blocks
    the way hosted providers do, and can answer HTTP 429 to the first `throttle` requests."""

    def __init__(self, upstream: str, *, max_range: int | None = None, throttle: int = 0):
        self.upstream = upstream
        self.max_range = max_range
        self.throttle = throttle
        self.ranges: list[int] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                if proxy.throttle > 0:
                    proxy.throttle -= 1
                    self.send_response(429)
                    self.end_headers()
                    return
                if request["method"] == "eth_getLogs" and "fromBlock" in request["params"][0]:
                    flt = request["params"][0]
                    size = int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) + 1
                    proxy.ranges.append(size)
                    if proxy.max_range is not None and size > proxy.max_range:
                        return self.reply({"jsonrpc": "2.0", "id": request["id"], "error": {
                            "code": -32005,
                            "message": f"query returned more than 10000 results. Try with this block range "
                                       f"[{flt['fromBlock']}, {hex(int(flt['fromBlock'], 16) + proxy.max_range - 1)}].",
                        }})
                forwarded = urllib.request.Request(proxy.upstream, data=body,
                                                   headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(forwarded, timeout=10) as response:  # noqa: S310 (loopback http)
                    self.reply(json.loads(response.read()))

            def reply(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def closed_port_url():
    return f"http://127.0.0.1:{free_port()}"


def test_it_fails_over_from_a_dead_endpoint_to_the_next(anvil_a, closed_port_url, db):
    chain = make_chain(anvil_a, http_urls=[closed_port_url, anvil_a.http_url])
    client = ChainClient.for_chain(chain)
    assert client.block_number() >= 0
    dead = RpcEndpoint.objects.get(url=closed_port_url)
    assert dead.failures == 1 and "connection failed" in dead.last_error
    # The dead one is cooling down: the next request goes straight to the live one.
    assert client.get_block("latest").number >= 0
    assert RpcEndpoint.objects.get(url=closed_port_url).failures == 1


def test_a_rate_limited_endpoint_is_skipped(anvil_a):
    proxy = ProviderProxy(anvil_a.http_url, throttle=1)
    try:
        client = ChainClient([proxy.url, anvil_a.http_url])
        assert client.block_number() >= 0
        assert client.endpoints[0].failures == 1 and client.endpoints[0].down_until > 0
    finally:
        proxy.close()


def test_every_endpoint_down_is_a_retryable_error(closed_port_url):
    client = ChainClient([closed_port_url])
    with pytest.raises(ChainError) as caught:
        client.block_number()
    assert caught.value.retryable and closed_port_url in caught.value.endpoint


def test_a_node_error_is_raised_at_once_and_not_retryable(anvil_a):
    client = ChainClient([anvil_a.http_url])
    with pytest.raises(ChainError) as caught:
        client.request("eth_getBlockByNumber", ["not-a-block", False])
    assert not caught.value.retryable and caught.value.endpoint == anvil_a.http_url


def test_a_refused_log_range_is_flagged(anvil_a):
    proxy = ProviderProxy(anvil_a.http_url, max_range=2)
    try:
        with pytest.raises(ChainError) as caught:
            ChainClient([proxy.url]).get_logs_range(0, 5, None, [])
        assert caught.value.range_too_large and caught.value.code == -32005
    finally:
        proxy.close()


def test_gap_fill_shrinks_the_range_until_the_provider_accepts_it(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    proxy = ProviderProxy(fresh_anvil.http_url, max_range=3)
    try:
        chain = make_chain(fresh_anvil, http_urls=[proxy.url])
        version = publish(team, alice, event_graph(31337, BIG, addresses=[zoo.address]))
        listener = listener_for(chain)
        listener.max_range = listener.range_size = 16
        listener.step()
        for _ in range(12):  # a 12-block gap while the listener was away
            transact(w3, zoo.functions.emitBatch(1))
        listener.step()
    finally:
        proxy.close()
    assert sorted(r.trigger["args"]["id"] for r in Run.objects.filter(version=version)) == list(range(12))
    assert proxy.ranges[0] > 3  # refused, then asked again for less
    assert any(size <= 3 for size in proxy.ranges)
