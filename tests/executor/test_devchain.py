from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError, TransactionNotFound

from kwala_site.dev import devchain
from kwala_site.dev.devchain import (
    DEV_ACCOUNTS,
    AnvilProcess,
    DevchainError,
    deploy_demo_contracts,
    transact,
)

ALICE, BOB, CAROL = (account.address for account in DEV_ACCOUNTS[:3])


def demo(w3: Web3, addresses: dict[str, str], name: str) -> Contract:
    return devchain.contract(w3, name, addresses[name])


def topic0(signature: str) -> str:
    # Computed from the signature text, not the ABI, so a wrong event declaration in
    # a contract cannot make the test agree with itself.
    return Web3.keccak(text=signature).to_0x_hex()


def test_it_connects_to_both_chains(w3_a: Web3, w3_b: Web3) -> None:
    assert w3_a.eth.chain_id == 31337
    assert w3_b.eth.chain_id == 31338


def test_dev_accounts_are_anvils_unlocked_accounts(w3_a: Web3) -> None:
    node_accounts = w3_a.eth.accounts[: len(DEV_ACCOUNTS)]
    assert list(node_accounts) == [a.address for a in DEV_ACCOUNTS]
    for account in DEV_ACCOUNTS:
        assert Account.from_key(account.private_key).address == account.address


def test_demo_contracts_are_deployed_with_code(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    assert set(demo_contracts_a) == {
        "KwalaToken", "KwalaNFT", "Governance", "Receiver", "PriceFeed", "EventZoo", "Vault",
    }  # fmt: skip
    for address in demo_contracts_a.values():
        assert Web3.is_checksum_address(address)
        assert len(w3_a.eth.get_code(address)) > 0
    token = demo(w3_a, demo_contracts_a, "KwalaToken")
    assert token.functions.symbol().call() == "KWL"
    assert token.functions.decimals().call() == 18
    assert token.functions.balanceOf(CAROL).call() >= devchain.DEMO_TOKEN_AMOUNT


def test_demo_deployment_is_deterministic_on_a_fresh_chain() -> None:
    # Same deployer, same nonces, so a different chain id gives the same addresses.
    # Fresh chains: the session chains are shared with other tests' transactions.
    deployed = []
    for chain_id in (31337, 31338):
        with AnvilProcess(chain_id=chain_id) as anvil:
            deployed.append(deploy_demo_contracts(anvil.web3()))
    assert deployed[0] == deployed[1]
    assert deployed[0]["KwalaToken"] == "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def test_erc20_transfer_is_found_with_get_logs(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    token = demo(w3_a, demo_contracts_a, "KwalaToken")
    receipt = transact(w3_a, token.functions.transfer(BOB, 12345 * 10**18))

    logs = w3_a.eth.get_logs(
        {
            "address": demo_contracts_a["KwalaToken"],
            "topics": [topic0("Transfer(address,address,uint256)")],
            "fromBlock": receipt["blockNumber"],
            "toBlock": receipt["blockNumber"],
        }
    )

    assert len(logs) == 1
    event = token.events.Transfer().process_log(logs[0])
    assert event["event"] == "Transfer"
    assert event["args"]["from"] == ALICE
    assert event["args"]["to"] == BOB
    assert event["args"]["value"] == 12345 * 10**18
    assert event["transactionHash"] == receipt["transactionHash"]


def test_governance_events_decode(w3_a: Web3, demo_contracts_a: dict[str, str]) -> None:
    gov = demo(w3_a, demo_contracts_a, "Governance")
    receipt = transact(w3_a, gov.functions.propose("Fund the koala sanctuary"))
    [created] = gov.events.ProposalCreated().process_receipt(receipt)
    assert created["args"]["proposer"] == ALICE
    assert created["args"]["description"] == "Fund the koala sanctuary"
    assert created["args"]["startBlock"] == receipt["blockNumber"]
    assert created["args"]["endBlock"] == receipt["blockNumber"] + 100
    assert receipt["logs"][0]["topics"][0].to_0x_hex() == topic0(
        "ProposalCreated(uint256,address,string,uint256,uint256)"
    )
    proposal_id = created["args"]["proposalId"]

    receipt = transact(w3_a, gov.functions.castVote(proposal_id, 1, "eucalyptus"), BOB)

    [vote] = gov.events.VoteCast().process_receipt(receipt)
    assert vote["args"]["voter"] == BOB
    assert vote["args"]["proposalId"] == proposal_id
    assert vote["args"]["support"] == 1
    assert vote["args"]["weight"] == 1
    assert vote["args"]["reason"] == "eucalyptus"
    assert receipt["logs"][0]["topics"][0].to_0x_hex() == topic0(
        "VoteCast(address,uint256,uint8,uint256,string)"
    )


def test_event_zoo_decodes_big_numbers_bytes32_and_arrays(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    zoo = demo(w3_a, demo_contracts_a, "EventZoo")
    big = 2**255 + 12345
    tag = Web3.keccak(text="koala")
    amounts = [0, 1, 2**64, 2**256 - 1]

    [event] = zoo.events.Big().process_receipt(
        transact(w3_a, zoo.functions.emitBig(2**70, big))
    )
    assert event["args"]["id"] == 2**70
    assert event["args"]["value"] == big

    [event] = zoo.events.Tagged().process_receipt(
        transact(w3_a, zoo.functions.emitTagged(tag, CAROL, amounts, "gum leaves"))
    )
    assert event["args"]["tag"] == tag
    assert event["args"]["who"] == CAROL
    assert event["args"]["amounts"] == amounts
    assert event["args"]["note"] == "gum leaves"

    receipt = transact(w3_a, zoo.functions.emitMany(BOB, 2**200, tag, True))
    [event] = zoo.events.Many().process_receipt(receipt)
    assert event["args"] == {"a": BOB, "b": 2**200, "c": tag, "flag": True}
    assert len(receipt["logs"][0]["topics"]) == 4


def test_emit_batch_emits_n_big_events_in_one_transaction(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    zoo = demo(w3_a, demo_contracts_a, "EventZoo")
    first_id = zoo.functions.nextBatchId().call()

    receipt = transact(w3_a, zoo.functions.emitBatch(25))

    events = zoo.events.Big().process_receipt(receipt)
    assert [e["args"]["id"] for e in events] == list(range(first_id, first_id + 25))
    assert all(e["args"]["value"] == (e["args"]["id"] + 1) << 64 for e in events)
    assert [e["logIndex"] for e in events] == list(range(25))


def test_nft_mint_emits_transfer_with_indexed_token_id(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    nft = demo(w3_a, demo_contracts_a, "KwalaNFT")

    receipt = transact(w3_a, nft.functions.mint(BOB), CAROL)

    [event] = nft.events.Transfer().process_receipt(receipt)
    token_id = event["args"]["tokenId"]
    assert event["args"]["from"] == "0x" + "0" * 40
    assert event["args"]["to"] == BOB
    # ERC-721 Transfer indexes the token id, so it shares topic0 with ERC-20 Transfer
    # but has four topics and no data: listeners must tell them apart by topic count.
    assert len(receipt["logs"][0]["topics"]) == 4
    assert receipt["logs"][0]["data"] == b""
    assert nft.functions.ownerOf(token_id).call() == BOB
    assert nft.functions.tokenURI(token_id).call() == (
        f"{devchain.DEMO_NFT_BASE_URI}{token_id}"
    )
    transact(w3_a, nft.functions.transferFrom(BOB, CAROL, token_id), BOB)
    assert nft.functions.ownerOf(token_id).call() == CAROL


def test_receiver_stores_the_last_mirror_call(
    w3_b: Web3, demo_contracts_b: dict[str, str]
) -> None:
    receiver = demo(w3_b, demo_contracts_b, "Receiver")
    source_tx = Web3.keccak(text="source tx on chain a")
    count = receiver.functions.mirrorCount().call()

    receipt = transact(w3_b, receiver.functions.mirror(source_tx, ALICE, BOB, 7), CAROL)

    [event] = receiver.events.Mirrored().process_receipt(receipt)
    assert event["args"]["sourceTxHash"] == source_tx
    assert event["args"]["caller"] == CAROL
    assert receiver.functions.last().call() == [source_tx, ALICE, BOB, 7, CAROL]
    assert receiver.functions.mirrorCount().call() == count + 1


def test_price_feed_state_can_be_set(
    w3_b: Web3, demo_contracts_b: dict[str, str]
) -> None:
    feed = demo(w3_b, demo_contracts_b, "PriceFeed")
    transact(w3_b, feed.functions.setPrice(-5))
    transact(w3_b, feed.functions.setHealthFactor(BOB, 9 * 10**17))
    assert feed.functions.latestAnswer().call() == -5
    assert feed.functions.healthFactor(BOB).call() == 9 * 10**17


def test_only_the_owner_can_mint(w3_a: Web3, demo_contracts_a: dict[str, str]) -> None:
    token = demo(w3_a, demo_contracts_a, "KwalaToken")
    not_owner = Web3.keccak(text="NotOwner()")[:4].to_0x_hex()
    with pytest.raises(ContractCustomError, match=not_owner):
        token.functions.mint(BOB, 1).transact({"from": BOB})


def test_a_chain_with_state_path_keeps_contracts_and_balances_after_restart(
    tmp_path: Path,
) -> None:
    state_path = tmp_path / "chain.json"
    with AnvilProcess(chain_id=31339, state_path=state_path) as anvil:
        w3 = anvil.web3()
        addresses = deploy_demo_contracts(w3)
        token = demo(w3, addresses, "KwalaToken")
        receipt = transact(w3, token.functions.transfer(BOB, 42))
        bob_balance = token.functions.balanceOf(BOB).call()
        block_number = w3.eth.block_number
        block_hash = w3.eth.get_block(receipt["blockNumber"])["hash"]
    assert state_path.exists()

    with AnvilProcess(chain_id=31339, state_path=state_path) as anvil:
        w3 = anvil.web3()
        token = demo(w3, addresses, "KwalaToken")
        assert token.functions.balanceOf(BOB).call() == bob_balance
        # The chain carries on: same height, same hashes, old receipts and logs.
        assert w3.eth.block_number == block_number
        assert w3.eth.get_block(receipt["blockNumber"])["hash"] == block_hash
        assert w3.eth.get_transaction_receipt(receipt["transactionHash"])["status"] == 1
        logs = token.events.Transfer().get_logs(
            from_block=receipt["blockNumber"], to_block=receipt["blockNumber"]
        )
        assert [log["args"]["value"] for log in logs] == [42]
        # New transactions go on top, with the nonce anvil restored for the sender.
        new_receipt = transact(w3, token.functions.transfer(BOB, 1))
        assert new_receipt["blockNumber"] == block_number + 1


def test_reorg_replaces_blocks_and_drops_their_transactions(
    w3_a: Web3, demo_contracts_a: dict[str, str]
) -> None:
    token = demo(w3_a, demo_contracts_a, "KwalaToken")
    receipt = transact(w3_a, token.functions.transfer(CAROL, 3))
    devchain.mine(w3_a, 2)
    height = w3_a.eth.block_number
    old_hash = w3_a.eth.get_block(receipt["blockNumber"])["hash"]

    devchain.reorg(w3_a, 3, [({"from": ALICE, "to": BOB, "value": 1}, 0)])

    assert w3_a.eth.block_number == height
    assert w3_a.eth.get_block(receipt["blockNumber"])["hash"] != old_hash
    assert (
        w3_a.eth.get_block(receipt["blockNumber"])["parentHash"]
        == (w3_a.eth.get_block(receipt["blockNumber"] - 1)["hash"])
    )
    with pytest.raises(TransactionNotFound):
        w3_a.eth.get_transaction_receipt(receipt["transactionHash"])
    replacement = w3_a.eth.get_block(receipt["blockNumber"], full_transactions=True)
    assert [tx["to"] for tx in replacement["transactions"]] == [BOB]


def test_snapshot_and_revert_roll_the_chain_back(w3_a: Web3) -> None:
    height = w3_a.eth.block_number
    snapshot_id = devchain.snapshot(w3_a)
    devchain.mine(w3_a, 5)
    assert w3_a.eth.block_number == height + 5

    assert devchain.revert(w3_a, snapshot_id) is True
    assert w3_a.eth.block_number == height
    assert devchain.revert(w3_a, snapshot_id) is False


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None, "node is needed to build the contracts"
    return subprocess.run(
        [node, "contracts/build.mjs", *args],
        cwd=devchain.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,  # the assertion shows solc's messages instead of a bare CalledProcessError
    )


def test_artifacts_are_up_to_date_and_reproducible(tmp_path: Path) -> None:
    artifacts = devchain.ARTIFACTS_DIR
    before = {p.name: p.read_bytes() for p in artifacts.glob("*.json")}

    noop = run_build()
    assert noop.returncode == 0, noop.stderr
    assert noop.stdout == ""
    assert {p.name: p.read_bytes() for p in artifacts.glob("*.json")} == before

    rebuilt = run_build("--force", "--out", str(tmp_path))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.json")} == before


def test_it_retries_when_the_picked_port_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = devchain._free_port
        monkeypatch.setattr(
            devchain,
            "_free_port",
            lambda host: next(ports, None) or real_free_port(host),
        )

        with AnvilProcess(chain_id=31340) as anvil:
            assert anvil.port != taken
            assert anvil.web3().eth.chain_id == 31340


def test_it_refuses_a_port_that_is_already_taken() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        anvil = AnvilProcess(port=squatter.getsockname()[1])
        with pytest.raises(DevchainError, match="already in use"), anvil:
            pass
        assert not anvil.running


def test_it_reports_why_anvil_would_not_start() -> None:
    anvil = AnvilProcess(extra_args=("--no-such-flag",))
    with pytest.raises(DevchainError, match="no-such-flag"), anvil:
        pass
    assert not anvil.running


def test_it_restarts_on_the_same_fixed_port(tmp_path: Path) -> None:
    with AnvilProcess(state_path=tmp_path / "state.json") as anvil:
        port = anvil.port
        devchain.mine(anvil.web3(), 3)
    with AnvilProcess(port=port, state_path=tmp_path / "state.json") as anvil:
        assert anvil.web3().eth.block_number == 3


def test_preserve_history_keeps_old_state_readable_after_restart(
    tmp_path: Path,
) -> None:
    state_path = tmp_path / "state.json"
    with AnvilProcess(state_path=state_path, preserve_history=True) as anvil:
        w3 = anvil.web3()
        addresses = deploy_demo_contracts(w3)
        token = demo(w3, addresses, "KwalaToken")
        minted_at = w3.eth.block_number
        transact(w3, token.functions.transfer(BOB, 5))

    with AnvilProcess(state_path=state_path, preserve_history=True) as anvil:
        w3 = anvil.web3()
        token = demo(w3, addresses, "KwalaToken")
        balance_then = token.functions.balanceOf(BOB).call(block_identifier=minted_at)
        assert balance_then == devchain.DEMO_TOKEN_AMOUNT
        assert token.functions.balanceOf(BOB).call() == devchain.DEMO_TOKEN_AMOUNT + 5
