from __future__ import annotations

import json

import pytest

from flows.abi import (
    AbiError,
    encode_topic,
    event_topic0,
    function_selector,
    parse_abi_json,
    parse_event_signature,
    parse_function_signature,
    resolve_event,
    resolve_function,
    signature_of,
)

TRANSFER_TOPIC0 = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
ERC20_ABI = [
    {
        "type": "event",
        "name": "Transfer",
        "anonymous": False,
        "inputs": [
            {"name": "from", "type": "address", "indexed": True},
            {"name": "to", "type": "address", "indexed": True},
            {"name": "value", "type": "uint256", "indexed": False},
        ],
    },
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


def test_it_parses_a_named_event_signature():
    fragment = parse_event_signature("Transfer(address indexed from, address indexed to, uint256 value)")
    assert fragment["name"] == "Transfer"
    assert [(p["name"], p["type"], p["indexed"]) for p in fragment["inputs"]] == [
        ("from", "address", True),
        ("to", "address", True),
        ("value", "uint256", False),
    ]
    assert event_topic0(fragment) == TRANSFER_TOPIC0


def test_unnamed_and_prefixed_signatures_give_the_same_topic():
    assert event_topic0(parse_event_signature("Transfer(address,address,uint256)")) == TRANSFER_TOPIC0
    assert event_topic0(parse_event_signature("event Transfer(address indexed, address indexed, uint value);")) == TRANSFER_TOPIC0


def test_it_parses_function_signatures_with_mutability_and_returns():
    fragment = parse_function_signature("balanceOf(address owner) view returns (uint256)")
    assert fragment["stateMutability"] == "view"
    assert fragment["outputs"] == [{"type": "uint256", "name": ""}]
    assert function_selector(fragment) == "0x70a08231"
    transfer = parse_function_signature("function transfer(address to, uint256 amount) external returns (bool)")
    assert function_selector(transfer) == "0xa9059cbb"


def test_it_supports_tuples_arrays_and_fixed_bytes():
    fragment = parse_function_signature(
        "submit((uint256 amount, address[] to)[] orders, bytes32 id, uint8[3] flags) payable"
    )
    assert signature_of(fragment) == "submit((uint256,address[])[],bytes32,uint8[3])"
    assert fragment["inputs"][0]["type"] == "tuple[]"
    assert [c["name"] for c in fragment["inputs"][0]["components"]] == ["amount", "to"]
    assert fragment["stateMutability"] == "payable"
    assert signature_of(parse_function_signature("f(tuple(uint256,bool) x)")) == "f((uint256,bool))"


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("Transfer(address indexed from, uint7 value)", "'uint7' is not a valid Solidity type"),
        ("Transfer(address from", "Unbalanced parentheses"),
        ("not a signature", "Expected a event like"),
        ("E(uint a, uint b, uint c, uint d, uint e) extra", "Unexpected 'extra'"),
        ("E(uint indexed a, uint indexed b, uint indexed c, uint indexed d)", "at most 3 indexed"),
        ("E(address from to)", "Unexpected 'to'"),
    ],
)
def test_it_rejects_bad_event_signatures(signature, message):
    with pytest.raises(AbiError, match=message):
        parse_event_signature(signature)


def test_indexed_is_refused_on_functions():
    with pytest.raises(AbiError, match="only allowed on event"):
        parse_function_signature("f(address indexed a)")


def test_it_reads_pasted_json_abis_and_artifacts():
    assert event_topic0(resolve_event({"abi": json.dumps(ERC20_ABI), "name": "Transfer"})) == TRANSFER_TOPIC0
    assert function_selector(resolve_function({"abi": {"abi": ERC20_ABI}, "name": "balanceOf"})) == "0x70a08231"


def test_it_explains_what_the_abi_has_when_the_name_is_wrong():
    with pytest.raises(AbiError, match=r"no event named 'Approval' \(it has: Transfer\)"):
        resolve_event({"abi": ERC20_ABI, "name": "Approval"})
    with pytest.raises(AbiError, match="not valid JSON"):
        parse_abi_json("[{")
    with pytest.raises(AbiError, match="not a valid Solidity type"):
        parse_abi_json([{"type": "event", "name": "X", "inputs": [{"name": "a", "type": "uint3"}]}])


def test_it_encodes_indexed_topics():
    address = "0x000000000000000000000000000000000000dEaD"
    assert encode_topic({"type": "address"}, address) == "0x" + "0" * 60 + "dead"
    assert encode_topic({"type": "uint256"}, "0x10") == "0x" + "0" * 62 + "10"
    assert encode_topic({"type": "string"}, "hi") == "0x7624778dedc75f8b322b9fa1632a610d40b85e106c7d9bf0e743a9ce291b9c6f"
    with pytest.raises(AbiError, match="not supported"):
        encode_topic({"type": "uint256[]"}, [1])
