"""Builders for executor tests: Chain rows for an anvil node, trigger graphs, published flows.

The chains themselves come from tests/chain_fixtures.py (kwala_site.dev.devchain.AnvilProcess).
"""

from __future__ import annotations

import threading
import time

from web3 import Web3
from web3.contract import Contract

from executor.listener import ChainListener, TriggerRegistry
from executor.models import Chain, RpcEndpoint
from flows import actions
from flows.models import FlowVersion
from kwala_site.dev.devchain import DEV_ACCOUNTS, AnvilProcess, contract, deploy


def make_chain(node: AnvilProcess, slug: str = "anvil-a", *, http_urls: list[str] | None = None,
               ws: bool = True, confirmations: int = 0) -> Chain:
    """The Chain row for `node` with its HTTP endpoints (in priority order) and its websocket."""
    chain = Chain.objects.create(slug=slug, name=slug, chain_id=node.chain_id,
                                 default_confirmations=confirmations)
    for priority, url in enumerate(http_urls or [node.http_url]):
        RpcEndpoint.objects.create(chain=chain, url=url, kind=RpcEndpoint.Kind.HTTP, priority=priority)
    if ws:
        RpcEndpoint.objects.create(chain=chain, url=node.ws_url, kind=RpcEndpoint.Kind.WS)
    return chain


def listener_for(chain: Chain, *, window: int = 128) -> ChainListener:
    """A listener driven by hand (`step()`), with the trigger index loaded now."""
    registry = TriggerRegistry()
    registry.reload()
    return ChainListener(chain, registry, threading.Event(), window=window)


def deploy_zoo(w3: Web3) -> Contract:
    return contract(w3, "EventZoo", deploy(w3, "EventZoo"))


def trigger_graph(trigger_type: str, config: dict) -> dict:
    return {
        "nodes": [
            {"id": "start", "type": trigger_type, "name": "Trigger", "position": {"x": 0, "y": 0}, "config": config},
            {"id": "hook", "type": "http.request", "name": "Hook", "position": {"x": 250, "y": 0},
             "config": {"method": "POST", "url": "https://example.com/hook", "body": {"t": "{{ trigger }}"}}},
        ],
        "edges": [{"source": "start", "source_port": "out", "target": "hook"}],
    }


def event_graph(chain_id: int, event: str, *, addresses=(), filters=(), condition=None, confirmations=0) -> dict:
    config = {"chain": chain_id, "addresses": [Web3.to_checksum_address(a) for a in addresses], "event": event,
              "filters": list(filters), "confirmations": confirmations}
    if condition:
        config["condition"] = condition
    return trigger_graph("chain.event", config)


def publish(team, user, graph: dict, name: str = "Flow") -> FlowVersion:
    flow = actions.do_create_flow(team, user, name, graph=graph)
    return actions.do_publish_version(flow, user)


BIG = "Big(uint256 indexed id, uint256 value)"
TAGGED = "Tagged(bytes32 indexed tag, address indexed who, uint256[] amounts, string note)"
MANY = "Many(address indexed a, uint256 indexed b, bytes32 indexed c, bool flag)"


def replacing(*calls) -> list[tuple[dict, int]]:
    """The calls as transactions from account 1, all in the first block of a reorg's new branch."""
    sender = DEV_ACCOUNTS[1].address
    txs = [call.build_transaction({"from": sender, "gas": 300_000}) for call in calls]
    return [({"from": sender, "to": tx["to"], "data": tx["data"], "gas": 300_000}, 0) for tx in txs]


def wait_for(predicate, timeout: float = 30, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
