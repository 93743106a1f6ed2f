"""Local anvil chains and the demo contracts, for `manage.py dev` and the test suite.

Pure helpers: no Django imports, so tests and scripts can use them without settings.
Everything here is for local development only; nothing in it belongs on a real network.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint, TxReceipt

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "contracts" / "artifacts"


def _resolve_anvil_bin() -> Path:
    override = os.environ.get("KWALA_ANVIL_BIN")
    if override:
        return Path(override)
    # Prefer the native binary over node_modules/.bin/anvil: that one is a Node wrapper
    # which adds ~60 ms to every start and, on SIGTERM, forwards the signal and then
    # kills itself at once, so stop() could not tell when anvil has finished dumping
    # its --state file.
    native = sorted(
        (REPO_ROOT / "node_modules" / "@foundry-rs").glob("anvil-*/bin/anvil")
    )
    if native:
        return native[0]
    return REPO_ROOT / "node_modules" / ".bin" / "anvil"


ANVIL_BIN: Path = _resolve_anvil_bin()

# Anvil's default mnemonic ("test test ... junk"), passed explicitly so a future anvil
# default cannot change the accounts tests and demos rely on.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


@dataclass(frozen=True)
class DevAccount:
    address: str
    private_key: str


# DEV ONLY. These are anvil's / Hardhat's publicly known default accounts. Anyone can
# sign with these keys: never fund them on a real network or use them outside dev/test.
DEV_ACCOUNTS: tuple[DevAccount, ...] = (
    DevAccount(
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    ),
    DevAccount(
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    ),
    DevAccount(
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    ),
    DevAccount(
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    ),
    DevAccount(
        "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65",
        "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    ),
)


class DevchainError(Exception):
    """Anvil could not be started, or a demo deployment failed."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR so a port left in TIME_WAIT by the anvil we just stopped counts
        # as free (anvil can bind it too); a live listener still makes bind() fail.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class AnvilProcess:
    """One anvil node on `host:port`.

    With `state_path`, anvil loads the file on start (if it exists) and dumps the chain to
    it on SIGTERM/SIGINT, so blocks, receipts, logs, contracts and balances survive a
    restart and the block number carries on where it stopped. A SIGKILL (or a crash)
    loses everything since the last dump; `state_interval` dumps every N seconds to bound
    that loss. Historical state (eth_call/eth_getBalance at a block before the restart)
    is only restored with `preserve_history=True`; without it anvil answers
    "BlockOutOfRangeError" for those blocks, although their headers, receipts and logs
    are still there. It makes the state file grow with every block.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        chain_id: int = 31337,
        state_path: str | os.PathLike[str] | None = None,
        state_interval: float | None = None,
        preserve_history: bool = False,
        block_time: float | None = None,
        log_path: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        anvil_bin: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.requested_port = port
        self.port = port
        self.chain_id = chain_id
        self.state_path = Path(state_path) if state_path is not None else None
        self.state_interval = state_interval
        self.preserve_history = preserve_history
        self.block_time = block_time
        self.log_path = Path(log_path) if log_path is not None else None
        self.host = host
        self.anvil_bin = Path(anvil_bin) if anvil_bin is not None else ANVIL_BIN
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def web3(self) -> Web3:
        """A Web3 on this node's HTTP endpoint."""
        return Web3(Web3.HTTPProvider(self.http_url))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        cmd = [
            str(self.anvil_bin),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--mnemonic", DEV_MNEMONIC,
        ]  # fmt: skip
        if self.state_path is not None:
            cmd += ["--state", str(self.state_path)]
        if self.preserve_history:
            cmd.append("--preserve-historical-states")
        if self.state_interval is not None:
            cmd += ["--state-interval", _seconds(self.state_interval)]
        if self.block_time is not None:
            cmd += ["--block-time", _seconds(self.block_time)]
        if self.log_path is None:
            # anvil has no --silent; --quiet keeps the banner and per-request lines away.
            cmd.append("--quiet")
        cmd += list(self.extra_args)
        return cmd

    def start(self) -> Self:
        """Spawn anvil; returns at once. Call wait_ready() before using the node."""
        if self.running:
            raise DevchainError(f"anvil is already running on {self.http_url}")
        if not self.anvil_bin.exists():
            raise DevchainError(
                f"anvil not found at {self.anvil_bin}: run `npm install` in {REPO_ROOT} "
                "or set KWALA_ANVIL_BIN"
            )
        if self.requested_port == 0:
            # Racy in theory (another process may grab the port before anvil binds it);
            # wait_ready() notices anvil exiting and retries with a fresh port.
            self.port = _free_port(self.host)
        elif not _port_is_free(self.host, self.port):
            # Checked up front because a node already listening there (say, a second
            # `manage.py dev`) would answer wait_ready() before our anvil fails to bind.
            raise DevchainError(f"{self.host}:{self.port} is already in use")
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._output = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        else:
            # A file rather than a pipe: nobody drains a pipe while anvil runs.
            self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until eth_chainId answers; raise DevchainError if anvil exits or times out."""
        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            if self.process is None:
                raise DevchainError("anvil was not started")
            if self.process.poll() is not None:
                output = self._read_output()
                attempts += 1
                if (
                    self.requested_port == 0
                    and "in use" in output.lower()
                    and attempts < 3
                ):
                    self._close_output()
                    self.process = None
                    self.start()
                    continue
                self._close_output()
                raise DevchainError(
                    f"anvil exited with code {self.process.returncode}: {output.strip()[-2000:]}"
                )
            try:
                chain_id = int(_rpc(self.http_url, "eth_chainId", timeout=1.0), 16)
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise DevchainError(
                        f"anvil did not answer on {self.http_url} in {timeout}s"
                    ) from None
                time.sleep(0.01)
                continue
            if chain_id != self.chain_id:
                # Someone else's node on our port: never run tests against it.
                self.stop()
                raise DevchainError(
                    f"{self.http_url} answered chain id {chain_id}, expected {self.chain_id}"
                )
            return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, so anvil dumps --state, then SIGKILL if it has not exited in `timeout`."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        self._close_output()

    def _read_output(self) -> str:
        if self._output is None:
            return ""
        self._output.flush()
        if self.log_path is not None:
            return self.log_path.read_text(errors="replace")
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<AnvilProcess chain_id={self.chain_id} {self.http_url} running={self.running}>"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _rpc(
    url: str, method: str, params: list[Any] | None = None, timeout: float = 5.0
) -> Any:
    """A bare JSON-RPC call, so readiness checks do not pay for building a Web3 object."""
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
    )
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) RPC URL: {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        reply = json.loads(response.read())
    if "error" in reply:
        raise ValueError(f"{method}: {reply['error']}")
    return reply["result"]


@cache
def _load_artifact_cached(name: str) -> str:
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        return path.read_text()
    except FileNotFoundError:
        raise DevchainError(
            f"no artifact {path}: run `node contracts/build.mjs`"
        ) from None


def load_artifact(name: str) -> dict[str, Any]:
    """The compiled contract: {"contractName", "abi", "bytecode", "sourceHash", ...}.

    Returns a fresh dict each call so callers may mutate it.
    """
    return json.loads(_load_artifact_cached(name))


# Receipts in anvil 1.7 appear a few milliseconds after eth_sendTransaction returns,
# even with automine; web3's default 0.1 s poll would make each deploy cost 100 ms.
_RECEIPT_POLL_SECONDS = 0.005


def deploy(w3: Web3, name: str, *args: Any, sender: str | None = None) -> str:
    """Deploy artifact `name` with constructor `args`; return its checksummed address.

    `sender` must be an account the node signs for (anvil's unlocked dev accounts);
    it defaults to DEV_ACCOUNTS[0].
    """
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    tx_hash = factory.constructor(*args).transact(
        {"from": Web3.to_checksum_address(sender or DEV_ACCOUNTS[0].address)}
    )
    receipt = wait_for_receipt(w3, tx_hash)
    if receipt["status"] != 1 or not receipt["contractAddress"]:
        raise DevchainError(f"deploying {name} failed: {receipt!r}")
    return Web3.to_checksum_address(receipt["contractAddress"])


def wait_for_receipt(w3: Web3, tx_hash: HexBytes | str) -> TxReceipt:
    return w3.eth.wait_for_transaction_receipt(
        tx_hash, timeout=30, poll_latency=_RECEIPT_POLL_SECONDS
    )


def contract(w3: Web3, name: str, address: str) -> Contract:
    """The deployed artifact `name` at `address`."""
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"]
    )


def transact(w3: Web3, call: Any, sender: str | None = None) -> TxReceipt:
    """Send a contract function call from an unlocked dev account and wait for its receipt.

    Raises DevchainError when the transaction reverts, so a test cannot read a
    failed setup step as success.
    """
    tx_hash = call.transact(
        {"from": Web3.to_checksum_address(sender or DEV_ACCOUNTS[0].address)}
    )
    receipt = wait_for_receipt(w3, tx_hash)
    if receipt["status"] != 1:
        raise DevchainError(f"transaction {tx_hash.to_0x_hex()} reverted: {receipt!r}")
    return receipt


DEMO_TOKEN_AMOUNT = 1_000_000 * 10**18
DEMO_INITIAL_PRICE = 2_000 * 10**8  # 8 decimals, like Chainlink USD feeds
DEMO_VOTING_PERIOD = 100  # blocks
DEMO_NFT_BASE_URI = "https://kwala.invalid/nft/"


def deploy_demo_contracts(w3: Web3) -> dict[str, str]:
    """Deploy the demo set from DEV_ACCOUNTS[0] and mint KWL to the first three accounts.

    On a fresh anvil chain the addresses are always the same, because they only depend
    on the deployer's nonce; on a chain that already has transactions they differ.
    """
    addresses = {
        "KwalaToken": deploy(w3, "KwalaToken", "Kwala Token", "KWL"),
        "KwalaNFT": deploy(w3, "KwalaNFT", "Kwala NFT", "KNFT", DEMO_NFT_BASE_URI),
        "Governance": deploy(w3, "Governance", DEMO_VOTING_PERIOD),
        "Receiver": deploy(w3, "Receiver"),
        "PriceFeed": deploy(w3, "PriceFeed", DEMO_INITIAL_PRICE),
        "EventZoo": deploy(w3, "EventZoo"),
        "Vault": deploy(w3, "Vault"),
    }
    token = contract(w3, "KwalaToken", addresses["KwalaToken"])
    for account in DEV_ACCOUNTS[:3]:
        transact(w3, token.functions.mint(account.address, DEMO_TOKEN_AMOUNT))
    return addresses


# Chain control for listener tests. These are anvil-only RPCs; the formats below are the
# ones anvil 1.7.1 accepts (checked by tests/executor/test_devchain.py).


def _anvil_call(w3: Web3, method: str, params: list[Any]) -> Any:
    return w3.manager.request_blocking(RPCEndpoint(method), params)


def mine(w3: Web3, blocks: int = 1) -> None:
    """Mine `blocks` empty blocks at once (`anvil_mine [hex count]`)."""
    _anvil_call(w3, "anvil_mine", [hex(blocks)])


def snapshot(w3: Web3) -> str:
    """`evm_snapshot`; the id can be reverted to once (anvil forgets it after use)."""
    return _anvil_call(w3, "evm_snapshot", [])


def revert(w3: Web3, snapshot_id: str) -> bool:
    """`evm_revert`: the chain goes back to the snapshot's height, as if later blocks
    were never mined. Returns False for an unknown or already used id."""
    return bool(_anvil_call(w3, "evm_revert", [snapshot_id]))


def reorg(w3: Web3, depth: int, txs: Sequence[tuple[dict[str, Any], int]] = ()) -> None:
    """Replace the last `depth` blocks with new ones at the same heights (`anvil_reorg`).

    Transactions in the replaced blocks are dropped (their receipts disappear); `txs`
    are (transaction request, block offset within the new blocks) pairs to include
    instead, e.g. `[({"from": a, "to": b, "value": 1}, 0)]`. Log filters created with
    eth_newFilter do not report the dropped logs as `removed`: a listener must notice the
    changed block hashes itself.
    """
    pairs = [[_rpc_transaction(tx), offset] for tx, offset in txs]
    _anvil_call(w3, "anvil_reorg", [depth, pairs])


def _rpc_transaction(tx: dict[str, Any]) -> dict[str, Any]:
    # anvil_reorg takes the raw JSON-RPC form, which wants hex quantities.
    return {
        key: hex(value) if isinstance(value, int) else value
        for key, value in tx.items()
    }
