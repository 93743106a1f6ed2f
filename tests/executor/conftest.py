"""Fixtures for the executor: a worker and a sweeper with short leases, anvil chains, flow builders.

The anvil fixtures here are minimal stand-ins for tests/chain_fixtures.py
(branch `contracts`); the integrator can switch them over.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web3 import Web3

from executor.models import Chain, RpcEndpoint, Run
from flows.graph import compile_graph
from flows.models import Flow, FlowVersion
from tests.conftest import ROOT, Service, free_port, start_worker

# anvil's first dev accounts (public test keys, funded on every anvil chain).
DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
]


def anvil_binary() -> str:
    for candidate in (ROOT / "node_modules/.bin/anvil", Path("/work/main/node_modules/.bin/anvil")):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("anvil")
    if found is None:
        raise RuntimeError("anvil is missing: run npm ci")
    return found


class Anvil:
    def __init__(self, chain_id: int):
        self.chain_id = chain_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [anvil_binary(), "--port", str(self.port), "--chain-id", str(chain_id), "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.w3 = Web3(Web3.HTTPProvider(self.url))
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.w3.eth.chain_id == chain_id:
                    break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def deploy(self, name: str, key: str = DEV_KEYS[1]) -> str:
        artifact = json.loads((ROOT / "contracts" / "artifacts" / f"{name}.json").read_text())
        account = self.w3.eth.account.from_key(key)
        contract = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        tx = contract.constructor().build_transaction(
            {"from": account.address, "nonce": self.w3.eth.get_transaction_count(account.address, "pending")}
        )
        tx_hash = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        return self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=20)["contractAddress"]

    def contract(self, name: str, address: str):
        artifact = json.loads((ROOT / "contracts" / "artifacts" / f"{name}.json").read_text())
        return self.w3.eth.contract(address=address, abi=artifact["abi"])

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="session")
def anvil_a():
    chain = Anvil(31337)
    yield chain
    chain.stop()


@pytest.fixture(scope="session")
def anvil_b():
    chain = Anvil(31338)
    yield chain
    chain.stop()


@pytest.fixture
def chains(db, anvil_a, anvil_b):
    """Chain rows (with their RPC endpoints) for both anvils, in the test database."""
    rows = {}
    for slug, anvil in (("anvil-a", anvil_a), ("anvil-b", anvil_b)):
        chain, _ = Chain.objects.get_or_create(chain_id=anvil.chain_id, defaults={"slug": slug, "name": slug})
        RpcEndpoint.objects.get_or_create(chain=chain, url=anvil.url)
        rows[slug] = chain
    return rows


@pytest.fixture(scope="session")
def executor_env(child_env, http_sink_server, smtp_sink_server) -> dict:
    env = dict(child_env)
    env.update(
        KWALA_STEP_LEASE_SECONDS="3",
        KWALA_SWEEP_GRACE_SECONDS="2",
        KWALA_TX_POLL_SECONDS="1",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(smtp_sink_server.port),
        KWALA_TELEGRAM_API_URL=f"{http_sink_server.url}/telegram",
    )
    return env


@pytest.fixture(scope="session")
def executor_worker(executor_env, service_logs):
    """A Dramatiq worker and a sweeper loop, as production runs them (short leases for the tests)."""
    worker = start_worker(executor_env, service_logs, "executor-worker", threads=8)
    sweeper = Service("sweeper", [sys.executable, "manage.py", "sweep", "--interval", "0.5"], executor_env,
                      service_logs)
    sweeper.wait_for_output("sweeper started", timeout=30)
    yield worker
    sweeper.stop()
    worker.stop()


def restart_worker(executor_env, service_logs, name: str) -> Service:
    return start_worker(executor_env, service_logs, name, threads=8)


def manual(node_id: str = "start") -> dict:
    return {"id": node_id, "type": "manual", "name": "Start", "position": {"x": 0, "y": 0}, "config": {}}


def node(node_id: str, type_: str, config: dict, name: str | None = None) -> dict:
    return {"id": node_id, "type": type_, "name": name or node_id, "position": {"x": 0, "y": 0}, "config": config}


def edge(source: str, target: str, port: str = "out") -> dict:
    return {"source": source, "source_port": port, "target": target}


def make_version(team, user, nodes: list[dict], edges: list[dict]) -> FlowVersion:
    """A published version compiled by the real compiler (secret names unchecked: signer keys are not secrets)."""
    from flows.actions import new_signing_secret

    graph = {"nodes": nodes, "edges": edges}
    chain_ids = dict(Chain.objects.values_list("chain_id", "slug"))
    dag = compile_graph(graph, chains=chain_ids, secret_names=None)
    flow = Flow.objects.create(team=team, name="Test flow", created_by=user,
                               signing_secret=new_signing_secret())
    return FlowVersion.objects.create(flow=flow, number=1, graph=graph, dag=dag, status=FlowVersion.Status.PUBLISHED,
                                      created_by=user)


def wait_for_run(run: Run, timeout: float = 30) -> Run:
    deadline = time.monotonic() + timeout
    while True:
        run.refresh_from_db()
        if run.status in Run.FINISHED:
            return run
        if time.monotonic() > deadline:
            steps = list(run.steps.values_list("step_id", "status", "error"))
            raise TimeoutError(f"run is still {run.status}: {steps}")
        time.sleep(0.05)


def steps_of(run: Run) -> dict:
    return {row.step_id: row for row in run.steps.all()}


__all__ = ["edge", "make_version", "manual", "node", "steps_of", "wait_for_run", "DEV_KEYS", "sys"]
