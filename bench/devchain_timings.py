"""Time the dev chain: anvil cold start, demo deployment, solc build (cold and no-op).

Run from the repository root: `python bench/devchain_timings.py [repeats]`.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from web3 import Web3

from kwala_site.dev.devchain import AnvilProcess, deploy_demo_contracts


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build(*args: str) -> None:
    node = shutil.which("node") or "node"
    subprocess.run(
        [node, "contracts/build.mjs", *args],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
    )


def main(repeats: int) -> None:
    starts, deploys, stops = [], [], []
    for _ in range(repeats):
        anvil = AnvilProcess()
        t0 = time.perf_counter()
        anvil.start()
        anvil.wait_ready()
        t1 = time.perf_counter()
        deploy_demo_contracts(Web3(Web3.HTTPProvider(anvil.http_url)))
        t2 = time.perf_counter()
        anvil.stop()
        t3 = time.perf_counter()
        starts.append(t1 - t0)
        deploys.append(t2 - t1)
        stops.append(t3 - t2)
    with tempfile.TemporaryDirectory() as out:
        cold = [
            timed(lambda: build("--force", "--out", out))
            for _ in range(min(repeats, 3))
        ]
    noop = [timed(build) for _ in range(repeats)]

    def ms(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms (max {max(values) * 1000:.0f})"

    print(f"anvil start to first eth_chainId: {ms(starts)}")
    print(f"deploy_demo_contracts (6 deploys + 3 mints): {ms(deploys)}")
    print(f"anvil stop (SIGTERM): {ms(stops)}")
    print(f"solc build, cold (--force, 6 contracts): {ms(cold)}")
    print(f"solc build, no-op: {ms(noop)}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
