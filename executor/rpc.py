"""A JSON-RPC client per configured chain for the executor's contract steps.

Picks the highest-priority enabled HTTP endpoint of the chain. The listener's
executor/chain.py (with failover) supersedes this once both are merged.
"""

from __future__ import annotations

from web3 import Web3
from web3.providers.rpc import HTTPProvider

from executor.models import Chain, RpcEndpoint

RPC_TIMEOUT_SECONDS = 15

_clients: dict[tuple[int, str], Web3] = {}


class NoEndpoint(Exception):
    pass


def chain_by_id(chain_id: int) -> Chain:
    try:
        return Chain.objects.get(chain_id=chain_id, enabled=True)
    except Chain.DoesNotExist:
        raise NoEndpoint(f"chain {chain_id} is not configured or is disabled") from None


def web3_for_chain(chain: Chain) -> Web3:
    """A Web3 for the chain's first enabled HTTP endpoint (lowest priority number); cached per process."""
    endpoint = (
        RpcEndpoint.objects.filter(chain=chain, kind=RpcEndpoint.Kind.HTTP, enabled=True)
        .order_by("priority", "id")
        .first()
    )
    if endpoint is None:
        raise NoEndpoint(f"chain {chain.slug} has no enabled HTTP endpoint")
    key = (chain.chain_id, endpoint.url)
    w3 = _clients.get(key)
    if w3 is None:
        w3 = Web3(HTTPProvider(endpoint.url, request_kwargs={"timeout": RPC_TIMEOUT_SECONDS}))
        _clients[key] = w3
    return w3
