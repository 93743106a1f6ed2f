"""Session-scoped anvil chains for tests: a pytest plugin, free of Django.

Load it with `-p tests.chain_fixtures` or `pytest_plugins = ["tests.chain_fixtures"]`
in tests/conftest.py. Two chains run side by side so cross-chain flows (event on A,
call on B) can be tested; both are shared by the whole session, so tests must not
assume a fresh chain: read what your own transactions did, not absolute balances.

A test that reorganises, kills or restarts a chain, or needs to know every block
on it, takes `fresh_anvil` instead: its own chain 31337, stopped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from kwala_site.dev.devchain import AnvilProcess, deploy_demo_contracts

CHAIN_ID_A = 31337
CHAIN_ID_B = 31338


def _anvil(chain_id: int) -> Iterator[AnvilProcess]:
    with AnvilProcess(port=0, chain_id=chain_id) as anvil:
        yield anvil


@pytest.fixture(scope="session")
def anvil_a() -> Iterator[AnvilProcess]:
    yield from _anvil(CHAIN_ID_A)


@pytest.fixture(scope="session")
def anvil_b() -> Iterator[AnvilProcess]:
    yield from _anvil(CHAIN_ID_B)


@pytest.fixture(scope="session")
def w3_a(anvil_a: AnvilProcess) -> Web3:
    return anvil_a.web3()


@pytest.fixture(scope="session")
def w3_b(anvil_b: AnvilProcess) -> Web3:
    return anvil_b.web3()


@pytest.fixture
def fresh_anvil() -> Iterator[AnvilProcess]:
    """A chain of its own (id 31337) for one test: its reorgs and restarts touch nobody else."""
    yield from _anvil(CHAIN_ID_A)


@pytest.fixture(scope="session")
def demo_contracts_a(w3_a: Web3) -> dict[str, str]:
    return deploy_demo_contracts(w3_a)


@pytest.fixture(scope="session")
def demo_contracts_b(w3_b: Web3) -> dict[str, str]:
    return deploy_demo_contracts(w3_b)
