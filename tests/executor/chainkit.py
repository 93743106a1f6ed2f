"""Helpers for listener tests: a fresh anvil per test, chains pointing at it, flows that compile."""

from __future__ import annotations

import pytest
from web3 import Web3

from executor.devchain import DEV_ACCOUNTS, AnvilProcess, deploy, load_artifact
from executor.models import Chain, RpcEndpoint
from flows import actions

SENDER = DEV_ACCOUNTS[0].address


@pytest.fixture
def anvil():
    """A fresh anvil (chain id 31337) for one test: reorgs and kills stay inside it."""
    node = AnvilProcess(chain_id=31337).start()
    node.wait_ready()
    yield node
    node.stop()


@pytest.fixture
def anvil_b():
    node = AnvilProcess(chain_id=31338).start()
    node.wait_ready()
    yield node
    node.stop()


def make_chain(node: AnvilProcess, slug: str = "anvil-a", *, http_urls: list[str] | None = None,
               ws: bool = True, confirmations: int = 0) -> Chain:
    chain = Chain.objects.create(slug=slug, name=slug, chain_id=node.chain_id,
                                 default_confirmations=confirmations)
    for priority, url in enumerate(http_urls or [node.http_url]):
        RpcEndpoint.objects.create(chain=chain, url=url, kind=RpcEndpoint.Kind.HTTP, priority=priority)
    if ws:
        RpcEndpoint.objects.create(chain=chain, url=node.ws_url, kind=RpcEndpoint.Kind.WS)
    return chain


def web3_for(node: AnvilProcess) -> Web3:
    return Web3(Web3.HTTPProvider(node.http_url))


def deploy_zoo(w3: Web3):
    address = deploy(w3, "EventZoo")
    return w3.eth.contract(address=address, abi=load_artifact("EventZoo")["abi"])


def transact(w3: Web3, call, sender: str = SENDER) -> dict:
    tx_hash = call.transact({"from": sender})
    return w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)


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
    config = {"chain": chain_id, "addresses": [Web3.to_checksum_address(a) for a in addresses], "event": event, "filters": list(filters),
              "confirmations": confirmations}
    if condition:
        config["condition"] = condition
    return trigger_graph("chain.event", config)


def publish(team, user, graph: dict, name: str = "Flow"):
    flow = actions.create_flow(team, user, name, graph=graph)
    return actions.publish_version(flow, user)


BIG = "Big(uint256 indexed id, uint256 value)"
TAGGED = "Tagged(bytes32 indexed tag, address indexed who, uint256[] amounts, string note)"
MANY = "Many(address indexed a, uint256 indexed b, bytes32 indexed c, bool flag)"
