"""Solidity signatures and JSON ABIs -> ABI fragments, topic0 and selectors.

Users paste either a human-readable signature
(``Transfer(address indexed from, address indexed to, uint256 value)``,
``balanceOf(address owner) view returns (uint256)``) or a JSON ABI copied from
an explorer. Both end up as the same ABI fragment dicts that web3 and eth_abi
understand, so the rest of Kwala never looks at the text again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from eth_abi.exceptions import ABITypeError, EncodingError, ParseError
from eth_abi.grammar import TupleType, normalize
from eth_abi.grammar import parse as parse_type
from eth_utils import keccak

__all__ = [
    "AbiError",
    "canonical_type",
    "encode_topic",
    "event_topic0",
    "find_fragment",
    "function_selector",
    "parse_abi_json",
    "parse_event_signature",
    "parse_function_signature",
    "resolve_event",
    "resolve_function",
    "signature_of",
]

_NAME = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_MUTABILITY = ("pure", "view", "nonpayable", "payable")
_LOCATIONS = ("memory", "calldata", "storage")


class AbiError(ValueError):
    """A signature or ABI that cannot be understood; the message is for a person."""


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise AbiError("Unbalanced parentheses")
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise AbiError("Unbalanced parentheses")
    tail = "".join(current).strip()
    if tail or parts:
        parts.append(tail)
    return parts


def _matching_paren(text: str, start: int) -> int:
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return index
    raise AbiError("Unbalanced parentheses")


def _check_type(type_str: str) -> None:
    try:
        parsed = parse_type(type_str)
        parsed.validate()
    except (ParseError, ABITypeError) as exc:
        raise AbiError(f"'{type_str}' is not a valid Solidity type ({exc})") from None


def _parse_param(text: str, *, allow_indexed: bool) -> dict[str, Any]:
    text = text.strip()
    if not text:
        raise AbiError("Empty parameter")
    param: dict[str, Any] = {}
    if text.startswith("tuple("):
        text = text[len("tuple"):]
    if text.startswith("("):
        end = _matching_paren(text, 0)
        inner, rest = text[1:end], text[end + 1 :]
        suffix_match = re.match(r"^((?:\[\d*\])*)(.*)$", rest, re.DOTALL)
        assert suffix_match is not None
        suffix, rest = suffix_match.group(1), suffix_match.group(2)
        components = [_parse_param(p, allow_indexed=False) for p in _split_top_level(inner)]
        param["type"] = "tuple" + suffix
        param["components"] = components
        words = rest.split()
    else:
        words = text.split()
        type_str = normalize(words[0])
        _check_type(type_str)
        param["type"] = type_str
        words = words[1:]
    indexed = False
    name = ""
    for word in words:
        if word == "indexed":
            if not allow_indexed:
                raise AbiError("'indexed' is only allowed on event parameters")
            indexed = True
        elif word in _LOCATIONS:
            continue
        elif not name and _NAME.match(word):
            name = word
        else:
            raise AbiError(f"Unexpected '{word}' in parameter '{text}'")
    param["name"] = name
    if allow_indexed:
        param["indexed"] = indexed
    if "components" in param:
        _check_type(canonical_type(param))
    return param


def _parse_head(signature: str, keyword: str) -> tuple[str, str, str]:
    text = " ".join(signature.strip().rstrip(";").split())
    if text.startswith(keyword + " "):
        text = text[len(keyword) + 1 :]
    match = re.match(r"^([A-Za-z_$][A-Za-z0-9_$]*)\s*\(", text)
    if not match:
        raise AbiError(f"Expected a {keyword} like Name(type name, ...), got '{signature}'")
    open_at = match.end() - 1
    close_at = _matching_paren(text, open_at)
    return match.group(1), text[open_at + 1 : close_at], text[close_at + 1 :].strip()


@lru_cache(maxsize=2048)
def _parse_event_cached(signature: str) -> str:
    name, params, rest = _parse_head(signature, "event")
    anonymous = False
    if rest == "anonymous":
        anonymous = True
    elif rest:
        raise AbiError(f"Unexpected '{rest}' after the event parameters")
    inputs = [_parse_param(p, allow_indexed=True) for p in _split_top_level(params)]
    if sum(1 for p in inputs if p["indexed"]) > (4 if anonymous else 3):
        raise AbiError("An event can have at most 3 indexed parameters")
    fragment = {"type": "event", "name": name, "inputs": inputs, "anonymous": anonymous}
    return json.dumps(fragment)


def parse_event_signature(signature: str) -> dict[str, Any]:
    """``Transfer(address indexed from, address indexed to, uint256 value)`` -> event fragment."""
    if not isinstance(signature, str):
        raise AbiError("Expected an event signature")
    # Cached as JSON text so callers can never mutate the shared copy.
    return json.loads(_parse_event_cached(signature))


@lru_cache(maxsize=2048)
def _parse_function_cached(signature: str) -> str:
    name, params, rest = _parse_head(signature, "function")
    inputs = [_parse_param(p, allow_indexed=False) for p in _split_top_level(params)]
    outputs: list[dict[str, Any]] = []
    mutability = "nonpayable"
    returns_at = rest.find("returns")
    modifiers = rest[:returns_at] if returns_at >= 0 else rest
    for word in modifiers.split():
        if word in _MUTABILITY:
            mutability = word
        elif word in ("external", "public", "virtual", "override", "constant"):
            mutability = "view" if word == "constant" else mutability
        else:
            raise AbiError(f"Unexpected '{word}' in function signature")
    if returns_at >= 0:
        tail = rest[returns_at + len("returns") :].strip()
        if not tail.startswith("("):
            raise AbiError("Expected 'returns (type, ...)'")
        close_at = _matching_paren(tail, 0)
        if tail[close_at + 1 :].strip():
            raise AbiError(f"Unexpected '{tail[close_at + 1:].strip()}' after returns (...)")
        outputs = [_parse_param(p, allow_indexed=False) for p in _split_top_level(tail[1:close_at])]
    fragment = {
        "type": "function",
        "name": name,
        "inputs": inputs,
        "outputs": outputs,
        "stateMutability": mutability,
    }
    return json.dumps(fragment)


def parse_function_signature(signature: str) -> dict[str, Any]:
    """``balanceOf(address owner) view returns (uint256)`` -> function fragment."""
    if not isinstance(signature, str):
        raise AbiError("Expected a function signature")
    return json.loads(_parse_function_cached(signature))


def canonical_type(param: Mapping[str, Any]) -> str:
    """The type as it appears in a canonical signature: tuples become ``(a,b)[]``."""
    type_str = param.get("type")
    if not isinstance(type_str, str):
        raise AbiError("Parameter has no type")
    if type_str.startswith("tuple"):
        components = param.get("components")
        if not isinstance(components, list):
            raise AbiError("Tuple parameter has no components")
        inner = ",".join(canonical_type(c) for c in components)
        return f"({inner}){type_str[len('tuple'):]}"
    return normalize(type_str)


def signature_of(fragment: Mapping[str, Any]) -> str:
    """Canonical signature text: ``Transfer(address,address,uint256)``."""
    inputs = fragment.get("inputs") or []
    return f"{fragment['name']}({','.join(canonical_type(p) for p in inputs)})"


@lru_cache(maxsize=4096)
def _keccak_hex(text: str) -> str:
    return "0x" + keccak(text=text).hex()


def event_topic0(fragment: Mapping[str, Any]) -> str:
    return _keccak_hex(signature_of(fragment))


def function_selector(fragment: Mapping[str, Any]) -> str:
    return _keccak_hex(signature_of(fragment))[:10]


def _check_fragment(fragment: Any) -> dict[str, Any]:
    if not isinstance(fragment, dict):
        raise AbiError("Each ABI entry must be an object")
    kind = fragment.get("type", "function")
    if kind in ("event", "function"):
        if not isinstance(fragment.get("name"), str) or not _NAME.match(fragment["name"]):
            raise AbiError(f"An ABI {kind} has no valid name")
        for key in ("inputs", "outputs") if kind == "function" else ("inputs",):
            params = fragment.get(key, [])
            if not isinstance(params, list):
                raise AbiError(f"'{key}' of {fragment['name']} must be a list")
            for param in params:
                if not isinstance(param, dict):
                    raise AbiError(f"A parameter of {fragment['name']} is not an object")
                _check_type(canonical_type(param))
    return fragment


def parse_abi_json(abi: Any) -> list[dict[str, Any]]:
    """A pasted JSON ABI (text, a list of fragments, or a single fragment) -> list."""
    if isinstance(abi, str):
        try:
            abi = json.loads(abi)
        except json.JSONDecodeError as exc:
            raise AbiError(f"The ABI is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(abi, dict) and "abi" in abi:  # a Hardhat/Foundry artifact
        abi = abi["abi"]
    if isinstance(abi, dict):
        abi = [abi]
    if not isinstance(abi, list):
        raise AbiError("The ABI must be a JSON list")
    return [_check_fragment(f) for f in abi]


def find_fragment(abi: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """Find one event/function by name or by canonical signature (for overloads)."""
    matches = [
        f
        for f in abi
        if f.get("type", "function") == kind
        and (f.get("name") == name or signature_of(f) == name.replace(" ", ""))
    ]
    if not matches:
        names = sorted({f["name"] for f in abi if f.get("type", "function") == kind})
        hint = f" (it has: {', '.join(names)})" if names else ""
        raise AbiError(f"The ABI has no {kind} named '{name}'{hint}")
    if len(matches) > 1:
        options = ", ".join(signature_of(f) for f in matches)
        raise AbiError(f"'{name}' is overloaded; use the full signature: {options}")
    return matches[0]


def _resolve(value: Any, kind: str) -> dict[str, Any]:
    if isinstance(value, str):
        if kind == "event":
            return parse_event_signature(value)
        return parse_function_signature(value)
    if isinstance(value, dict):
        if value.get("type") == kind and "inputs" in value:
            return _check_fragment(value)
        if "abi" in value:
            name = value.get("name")
            if not isinstance(name, str) or not name:
                raise AbiError(f"Choose the {kind} name from the ABI")
            return find_fragment(parse_abi_json(value["abi"]), kind, name)
    raise AbiError(f"Expected a {kind} signature, or an ABI and a {kind} name")


def resolve_event(value: Any) -> dict[str, Any]:
    """A config value (signature text, or {"abi": ..., "name": ...}) -> event fragment."""
    return _resolve(value, "event")


def resolve_function(value: Any) -> dict[str, Any]:
    """A config value (signature text, or {"abi": ..., "name": ...}) -> function fragment."""
    return _resolve(value, "function")


def encode_topic(param: Mapping[str, Any], value: Any) -> str:
    """The 32-byte topic a log carries for an indexed argument equal to ``value``.

    Value types are ABI-encoded in place; ``string``/``bytes`` are hashed.
    Indexed arrays and tuples are hashed from an encoding the listener cannot
    match against a user value reliably, so they are refused.
    """
    from eth_abi import encode

    type_str = canonical_type(param)
    if type_str == "string":
        if not isinstance(value, str):
            raise AbiError("Expected text")
        return "0x" + keccak(text=value).hex()
    if type_str == "bytes":
        return "0x" + keccak(_to_bytes(value)).hex()
    parsed = parse_type(type_str)
    if isinstance(parsed, TupleType) or parsed.is_array:
        raise AbiError(f"Filtering on an indexed {type_str} is not supported")
    coerced = coerce_value(type_str, value)
    try:
        return "0x" + encode([type_str], [coerced]).hex()
    except (EncodingError, ValueError, TypeError, OverflowError) as exc:
        raise AbiError(f"{value!r} is not a valid {type_str}: {exc}") from None


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, str) and re.fullmatch(r"0x([0-9a-fA-F]{2})*", value):
        return bytes.fromhex(value[2:])
    raise AbiError(f"Expected 0x-prefixed hex bytes, got {value!r}")


def coerce_value(type_str: str, value: Any) -> Any:
    """Turn a JSON value from the editor into the Python value eth_abi expects."""
    if type_str.startswith(("uint", "int")):
        if isinstance(value, bool):
            raise AbiError(f"Expected a number for {type_str}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""), 0)
            except ValueError:
                pass
        raise AbiError(f"{value!r} is not a valid {type_str}")
    if type_str == "bool":
        if isinstance(value, bool):
            return value
        raise AbiError(f"Expected true or false for {type_str}")
    if type_str == "address":
        from eth_utils import is_address, to_checksum_address

        if isinstance(value, str) and is_address(value):
            return to_checksum_address(value)
        raise AbiError(f"{value!r} is not an address")
    if type_str.startswith("bytes"):
        raw = _to_bytes(value)
        size = int(type_str[5:]) if type_str != "bytes" else None
        if size is not None and len(raw) > size:
            raise AbiError(f"{value!r} is longer than {size} bytes")
        return raw
    return value
