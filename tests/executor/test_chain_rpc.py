"""executor.chain against anvil and a misbehaving provider (a real proxy on loopback)."""

from __future__ import annotations

import pytest
from web3.exceptions import ContractLogicError

from executor.chain import ChainClient, ChainError, client_for_chain
from executor.models import RpcEndpoint, Run
from kwala_site.dev.devchain import DEV_ACCOUNTS, contract, mine, transact
from tests.conftest import free_port
from tests.executor.chainkit import BIG, deploy_zoo, event_graph, listener_for, make_chain, publish, trigger_graph
from tests.rpcproxy import Faults, RpcProxy


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
    proxy = RpcProxy(anvil_a.http_url, Faults(throttle_first=1))
    try:
        client = ChainClient([proxy.url, anvil_a.http_url])
        assert client.block_number() >= 0
        assert client.endpoints[0].failures == 1 and client.endpoints[0].down_until > 0
    finally:
        proxy.close()


def test_a_rate_limited_node_is_asked_again_when_its_retry_after_says_not_later(anvil_a):
    """Measured before: the cool-down doubled on every 429 whatever the node asked for, and the
    listener's own backoff came on top (a ~25 s median delay with a rate-limited HTTP-only node)."""
    proxy = RpcProxy(anvil_a.http_url, Faults(rate_limit=1.0))  # every request: 429, Retry-After: 1
    try:
        client = ChainClient([proxy.url])
        for _ in range(5):  # five refusals in a row would have meant a 8 s cool-down
            with pytest.raises(ChainError):
                client.block_number()
        assert client.endpoints[0].failures == 5
        assert 0.5 < client.ready_in() <= 1.0
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
    # The endpoint as error text shows it: scheme, host and port only (a path may hold a provider's key).
    assert not caught.value.retryable and caught.value.endpoint == f"{anvil_a.http_url}/…"


def test_a_refused_log_range_is_flagged(anvil_a):
    proxy = RpcProxy(anvil_a.http_url, Faults(max_range=2))
    try:
        with pytest.raises(ChainError) as caught:
            ChainClient([proxy.url]).get_logs_range(0, 5, None, [])
        assert caught.value.range_too_large and caught.value.code == -32005
    finally:
        proxy.close()


def test_gap_fill_shrinks_the_range_until_the_provider_accepts_it(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    proxy = RpcProxy(fresh_anvil.http_url, Faults(max_range=3))
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


def test_web3_on_the_client_fails_over_and_still_raises_the_nodes_verdict(anvil_a, demo_contracts_a, closed_port_url):
    client = ChainClient([closed_port_url, anvil_a.http_url])
    w3 = client.web3()
    token = contract(w3, "KwalaToken", demo_contracts_a["KwalaToken"])
    assert token.functions.symbol().call() == "KWL"
    assert client.endpoints[0].failures == 1
    with pytest.raises(ContractLogicError):  # only the owner may mint: the node says so, no failover
        token.functions.mint(DEV_ACCOUNTS[1].address, 1).call({"from": DEV_ACCOUNTS[1].address})


def test_web3_on_the_client_raises_a_retryable_chain_error_when_every_endpoint_is_down(closed_port_url):
    with pytest.raises(ChainError) as caught:
        ChainClient([closed_port_url]).web3().eth.block_number  # noqa: B018 (the property sends the request)
    assert caught.value.retryable


def test_the_process_shares_one_client_per_chain_until_its_endpoints_change(anvil_a, closed_port_url, db):
    chain = make_chain(anvil_a, ws=False)
    assert client_for_chain(chain) is client_for_chain(chain)
    before = client_for_chain(chain)
    RpcEndpoint.objects.create(chain=chain, url=closed_port_url, kind=RpcEndpoint.Kind.HTTP, priority=1)
    after = client_for_chain(chain)
    assert after is not before and [e.url for e in after.endpoints] == [anvil_a.http_url, closed_port_url]


def test_headers_come_in_batches(anvil_a):
    mine(anvil_a.web3(), 3)
    head = ChainClient([anvil_a.http_url]).block_number()
    numbers = [head - n for n in range(3)] * 40  # 120 headers
    proxy = RpcProxy(anvil_a.http_url)
    try:
        blocks = ChainClient([proxy.url]).get_blocks(numbers)
    finally:
        proxy.close()
    assert [b.number for b in blocks] == numbers
    assert proxy.requests == 3 and len(proxy.calls) == 120  # 50 + 50 + 20


def test_an_endpoint_that_refuses_batches_is_asked_one_request_at_a_time(anvil_a):
    proxy = RpcProxy(anvil_a.http_url, Faults(refuse_batches=True))
    try:
        client = ChainClient([proxy.url])
        blocks = client.get_blocks([0, 1, 2])
        assert [b.number for b in blocks] == [0, 1, 2] and not client.endpoints[0].batches
        client.get_blocks([0, 1])
    finally:
        proxy.close()
    assert proxy.requests == 1 + 3 + 2  # the refused batch is not tried again


def test_gap_fill_fetches_headers_in_batches(fresh_anvil, team, alice):
    w3 = fresh_anvil.web3()
    proxy = RpcProxy(fresh_anvil.http_url)
    try:
        chain = make_chain(fresh_anvil, http_urls=[proxy.url])
        version = publish(team, alice, trigger_graph("chain.block", {"chain": 31337, "every": 10}))
        listener = listener_for(chain)
        listener.step()
        mine(w3, 120)  # blocks the listener missed while it was away
        proxy.calls.clear()
        listener.step()
    finally:
        proxy.close()
    assert proxy.calls.count("eth_getBlockByNumber") >= 120
    assert proxy.requests < 20
    numbers = sorted(Run.objects.filter(version=version).values_list("block_number", flat=True))
    assert numbers == [n for n in range(numbers[0], w3.eth.block_number + 1) if n % 10 == 0] and len(numbers) >= 12
