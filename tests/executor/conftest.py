"""Fixtures for the executor: a worker and a sweeper with short leases, Chain rows for the session chains,
flow builders.
"""

from __future__ import annotations

import sys
import time

import pytest

from executor.models import Chain, Run
from flows.actions import compile_context, new_signing_secret
from flows.graph import compile_graph
from flows.models import Flow, FlowVersion
from tests.conftest import Service, start_worker
from tests.executor.chainkit import deploy_zoo, make_chain


@pytest.fixture
def chains(db, anvil_a, anvil_b) -> dict[str, Chain]:
    """Chain rows (with their HTTP endpoints) for both session anvils, in the test database."""
    return {slug: make_chain(node, slug, ws=False) for slug, node in (("anvil-a", anvil_a), ("anvil-b", anvil_b))}


@pytest.fixture
def zoo_setup(fresh_anvil, team, alice):
    """A fresh anvil with the EventZoo contract deployed and its Chain row: (web3, zoo, chain)."""
    w3 = fresh_anvil.web3()
    zoo = deploy_zoo(w3)
    chain = make_chain(fresh_anvil)
    return w3, zoo, chain


@pytest.fixture(scope="session")
def executor_env(child_env) -> dict:
    return child_env


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
    """A published version compiled by the real compiler against the team's chains, secrets and signers."""
    graph = {"nodes": nodes, "edges": edges}
    dag = compile_graph(graph, **compile_context(team))
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



@pytest.fixture
def signer(team, alice):
    """The team's signer key "hot": dev account 0, which the executor signs with in these tests."""
    from flows.models import SignerKey
    from kwala_site.dev.devchain import DEV_ACCOUNTS

    key = SignerKey(team=team, name="hot", created_by=alice)
    key.set_private_key(DEV_ACCOUNTS[0].private_key)
    key.save()
    return key
