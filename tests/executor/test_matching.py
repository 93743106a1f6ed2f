"""The matching index: pure code, no database, no chain."""

from __future__ import annotations

from eth_abi import decode as abi_decode
from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.matching import TriggerIndex, build_chain_triggers, condition_holds, log_payload
from flows.graph import compile_graph
from tests.executor.chainkit import BIG, MANY, TAGGED, event_graph

ZOO = "0x" + "ab" * 20
OTHER = "0x" + "cd" * 20
ALICE = "0x" + "11" * 20


def topic0(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


def word(type_str: str, value) -> str:
    return "0x" + encode([type_str], [value]).hex()


def big_log(id_: int, value: int, address: str = ZOO, log_index: int = 0) -> dict:
    return {
        "address": address, "topics": [topic0("Big(uint256,uint256)"), word("uint256", id_)],
        "data": "0x" + encode(["uint256"], [value]).hex(), "block_number": 7, "block_hash": "0x" + "77" * 32,
        "log_index": log_index, "tx_hash": "0x" + "99" * 32,
    }


def index_for(*graphs: dict) -> TriggerIndex:
    rows = [
        {"version_id": i, "flow_id": i, "team_id": 1, "flow_code": f"f{i}",
         "spec": compile_graph(graph, chains={31337: "anvil-a"})["trigger"]}
        for i, graph in enumerate(graphs, start=1)
    ]
    by_chain, problems = build_chain_triggers(rows)
    assert problems == []
    return by_chain[31337].logs


def matched_versions(index: TriggerIndex, log: dict) -> list[int]:
    return sorted(c.trigger.version_id for c in index.candidates(log))


def test_it_matches_by_address_and_topic():
    index = index_for(event_graph(31337, BIG, addresses=[ZOO]))
    assert matched_versions(index, big_log(1, 2)) == [1]
    assert matched_versions(index, big_log(1, 2, address=OTHER)) == []


def test_an_any_address_trigger_matches_every_contract():
    index = index_for(event_graph(31337, BIG))
    assert matched_versions(index, big_log(1, 2, address=OTHER)) == [1]


def test_indexed_filters_become_topic_filters():
    index = index_for(event_graph(31337, BIG, filters=[{"arg": "id", "op": "in", "value": [3, 5]}]))
    assert matched_versions(index, big_log(5, 0)) == [1]
    assert matched_versions(index, big_log(4, 0)) == []


def test_non_indexed_filters_compare_big_ints_exactly():
    threshold = 2**200 + 1
    index = index_for(event_graph(31337, BIG, filters=[{"arg": "value", "op": "gte", "value": str(threshold)}]))
    assert matched_versions(index, big_log(1, threshold)) == [1]
    assert matched_versions(index, big_log(1, threshold - 1)) == []


def test_the_payload_keeps_uint256_exact_and_decodes_every_argument():
    index = index_for(event_graph(31337, BIG))
    log = big_log(2**255, 2**256 - 1)
    (candidate,) = index.candidates(log)
    payload = log_payload(candidate, log, chain_id=31337, timestamp=1)
    assert payload["args"] == {"id": 2**255, "value": 2**256 - 1}
    assert payload["args_list"] == [2**255, 2**256 - 1]
    assert payload["event"] == "Big"
    assert payload["contract"] == to_checksum_address(ZOO)


def test_it_decodes_bytes32_arrays_and_strings():
    index = index_for(event_graph(31337, TAGGED, filters=[{"arg": "who", "op": "eq", "value": ALICE}]))
    tag = b"\x01" * 32
    log = {
        "address": ZOO,
        "topics": [topic0("Tagged(bytes32,address,uint256[],string)"), "0x" + tag.hex(), word("address", ALICE)],
        "data": "0x" + encode(["uint256[]", "string"], [[1, 2**70], "hi"]).hex(),
        "block_number": 1, "block_hash": "0x" + "11" * 32, "log_index": 0, "tx_hash": "0x" + "22" * 32,
    }
    (candidate,) = index.candidates(log)
    assert candidate.args["tag"] == "0x" + tag.hex()
    assert candidate.args["who"].lower() == ALICE
    assert candidate.args["amounts"] == [1, 2**70]
    assert candidate.args["note"] == "hi"


def test_a_bool_filter_on_a_three_topic_event():
    index = index_for(event_graph(31337, MANY, filters=[{"arg": "flag", "op": "eq", "value": True}]))
    base = {
        "address": ZOO,
        "topics": [topic0("Many(address,uint256,bytes32,bool)"), word("address", ALICE), word("uint256", 1),
                   "0x" + "33" * 32],
        "block_number": 1, "block_hash": "0x" + "11" * 32, "log_index": 0, "tx_hash": "0x" + "22" * 32,
    }
    assert matched_versions(index, {**base, "data": word("bool", True)}) == [1]
    assert matched_versions(index, {**base, "data": word("bool", False)}) == []


def test_a_log_with_the_same_topic0_but_other_indexing_does_not_match():
    index = index_for(event_graph(31337, BIG))
    log = big_log(1, 2)
    log["topics"] = log["topics"][:1]
    assert matched_versions(index, log) == []


def test_conditions_see_the_trigger_context():
    index = index_for(event_graph(31337, BIG, condition="trigger.args.value > 10 ** 20"))
    log = big_log(1, 10**21)
    (candidate,) = index.candidates(log)
    payload = log_payload(candidate, log, chain_id=31337, timestamp=1)
    assert condition_holds(candidate.trigger.condition, payload, flow_code="f", now=None)
    payload["args"]["value"] = 5
    assert not condition_holds(candidate.trigger.condition, payload, flow_code="f", now=None)


def test_log_filter_names_every_address_unless_one_trigger_takes_any():
    assert index_for(event_graph(31337, BIG, addresses=[ZOO])).log_filter() == ([ZOO], [[topic0("Big(uint256,uint256)")]])
    assert index_for(event_graph(31337, BIG, addresses=[ZOO]), event_graph(31337, BIG)).log_filter()[0] is None


# -- property: the index agrees with checking every trigger by hand -----------------------

ADDRESSES = [ZOO, OTHER, "0x" + "ef" * 20]
OPS = ["eq", "ne", "gt", "gte", "lt", "lte", "in"]
VALUES = [0, 1, 2**64, 2**64 + 1, 2**255]

trigger_strategy = st.fixed_dictionaries({
    "addresses": st.lists(st.sampled_from(ADDRESSES), max_size=2, unique=True),
    "ids": st.none() | st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True),
    "op": st.sampled_from(OPS),
    "value": st.sampled_from(VALUES),
    "in_values": st.lists(st.sampled_from(VALUES), min_size=1, max_size=3, unique=True),
    "filter_value": st.booleans(),
})
log_strategy = st.tuples(st.sampled_from(ADDRESSES), st.integers(0, 3), st.sampled_from(VALUES + [5, 2**64 - 1]))


def oracle(trigger: dict, address: str, id_: int, value: int) -> bool:
    if trigger["addresses"] and address not in trigger["addresses"]:
        return False
    if trigger["ids"] is not None and id_ not in trigger["ids"]:
        return False
    if not trigger["filter_value"]:
        return True
    op, target = trigger["op"], trigger["value"]
    return {
        "eq": value == target, "ne": value != target, "gt": value > target, "gte": value >= target,
        "lt": value < target, "lte": value <= target, "in": value in trigger["in_values"],
    }[op]


def graph_for(trigger: dict) -> dict:
    filters = []
    if trigger["ids"] is not None:
        filters.append({"arg": "id", "op": "in", "value": trigger["ids"]})
    if trigger["filter_value"]:
        value = trigger["in_values"] if trigger["op"] == "in" else trigger["value"]
        filters.append({"arg": "value", "op": trigger["op"], "value": value})
    return event_graph(31337, BIG, addresses=trigger["addresses"], filters=filters)


@settings(max_examples=60, deadline=None)
@given(st.lists(trigger_strategy, min_size=1, max_size=6), st.lists(log_strategy, min_size=1, max_size=8))
def test_the_index_matches_exactly_what_a_brute_force_check_matches(triggers, logs):
    index = index_for(*[graph_for(t) for t in triggers])
    for address, id_, value in logs:
        expected = [i for i, t in enumerate(triggers, start=1) if oracle(t, address, id_, value)]
        assert matched_versions(index, big_log(id_, value, address=address)) == expected


@given(
    address=st.binary(min_size=20, max_size=20),
    number=st.integers(min_value=0, max_value=2**256 - 1),
    flag=st.booleans(),
    tag=st.binary(min_size=32, max_size=32),
)
def test_the_fast_topic_decoding_agrees_with_the_abi_decoder(address, number, flag, tag):
    from executor.matching import _topic_value, to_json_value

    for type_str, value in (("address", "0x" + address.hex()), ("uint256", number), ("bool", flag), ("bytes32", tag)):
        topic = "0x" + encode([type_str], [value]).hex()
        expected = to_json_value(type_str, abi_decode([type_str], bytes.fromhex(topic[2:]))[0])
        assert _topic_value(type_str, topic) == expected


# -- signatures without `indexed` markers (Kwala workflow files write them so) -----------------


def vote_cast_log(proposal: int, support: int, flag: bool, tag: bytes) -> dict:
    """VoteCast(uint256 indexed proposalId, uint8 support, bool flag, bytes32 tag), as a node sends it."""
    return {
        "address": ZOO, "topics": [topic0("VoteCast(uint256,uint8,bool,bytes32)"), word("uint256", proposal)],
        "data": "0x" + encode(["uint8", "bool", "bytes32"], [support, flag, tag]).hex(), "block_number": 7,
        "block_hash": "0x" + "77" * 32, "log_index": 0, "tx_hash": "0x" + "99" * 32,
    }


def test_a_signature_without_indexed_markers_still_decodes_and_says_it_guessed():
    index = index_for(event_graph(31337, "VoteCast(uint256 proposalId, uint8 support, bool flag, bytes32 tag)",
                                  filters=[{"arg": "support", "op": "eq", "value": 1}]))
    tag = b"\x05" * 32
    (found,) = index.candidates(vote_cast_log(42, 1, True, tag))
    assert found.args == {"proposalId": 42, "support": 1, "flag": True, "tag": "0x" + tag.hex()}
    payload = log_payload(found, vote_cast_log(42, 1, True, tag), chain_id=31337, timestamp=1)
    decoding = payload["decoding"]
    assert decoding["inferred"] and decoding["indexed"] == ["proposalId"] and decoding["ambiguous"]
    assert "Mark the indexed arguments" in decoding["message"]
    assert index.candidates(vote_cast_log(42, 0, True, tag)) == []  # the filter still applies


def test_the_only_layout_that_fits_is_not_called_a_guess():
    # Many(address indexed a, uint256 indexed b, bytes32 indexed c, bool flag): with `flag` data and c a
    # hash-like value, no other choice of three indexed arguments fits the topics.
    index = index_for(event_graph(31337, "Many(address a, uint256 b, bytes32 c, bool flag)"))
    c = "0x" + "fe" * 32
    log = {"address": ZOO, "topics": [topic0("Many(address,uint256,bytes32,bool)"), word("address", ALICE),
                                      word("uint256", 2**200), c],
           "data": word("bool", True), "block_number": 7, "block_hash": "0x" + "77" * 32, "log_index": 0,
           "tx_hash": "0x" + "99" * 32}
    (found,) = index.candidates(log)
    assert found.args == {"a": to_checksum_address(ALICE), "b": 2**200, "c": c, "flag": True}
    assert found.decoding["indexed"] == ["a", "b", "c"] and not found.decoding["ambiguous"]


def test_a_log_no_layout_fits_is_not_decoded_into_nonsense():
    index = index_for(event_graph(31337, "VoteCast(uint256 proposalId, uint8 support, bool flag, bytes32 tag)"))
    log = vote_cast_log(42, 1, True, b"\x05" * 32)
    log["data"] = log["data"][:-64]  # one word short: no layout with one indexed argument fits
    assert index.candidates(log) == []
    declared = index_for(event_graph(31337, "VoteCast(uint256 indexed proposalId, uint8 support, bool flag, "
                                            "bytes32 tag)"))
    (found,) = declared.candidates(vote_cast_log(42, 1, False, b"\x05" * 32))
    assert found.decoding is None and "decoding" not in log_payload(found, vote_cast_log(42, 1, False, b"\x05" * 32),
                                                                    chain_id=31337, timestamp=1)
