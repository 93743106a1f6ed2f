from __future__ import annotations

import time

import pytest
from eth_utils import to_checksum_address

from flows.expressions import (
    ExpressionError,
    evaluate,
    parse_expression,
    parse_template,
    redact,
    references,
    render_template,
    render_value,
)

CTX = {
    "trigger": {
        "args": {"value": 10**25, "from": "0x" + "ab" * 20, "amounts": [1, 2, 3]},
        "tx_hash": "0x" + "12" * 32,
        "block_number": 19_000_000,
    },
    "steps": {"n1": {"status": "succeeded", "output": {"x": 1, "name": "alice"}}},
    "secrets": {"API_KEY": "s3cr3t"},
    "flow": {"name": "Whale alert"},
}


def refused_quickly(func, *args) -> str:
    start = time.monotonic()
    with pytest.raises(ExpressionError) as info:
        func(*args)
    assert time.monotonic() - start < 1.0
    return info.value.message


def test_it_evaluates_conditions_on_big_ints():
    assert evaluate("trigger.args.value > 10**24", CTX) is True
    assert evaluate("trigger.args.value > 10**26", CTX) is False


def test_uint256_arithmetic_is_exact():
    assert evaluate("2**256-1", CTX) == 2**256 - 1
    assert evaluate("(trigger.args.value * 3) // 7", CTX) == (10**25 * 3) // 7
    big = {"trigger": {"args": {"value": 2**256 - 1}}}
    assert evaluate("(trigger.args.value * 3) // 7", big) == ((2**256 - 1) * 3) // 7


def test_it_renders_templates_with_web3_filters():
    out = render_template(
        "{{ trigger.args.value|from_wei }} ETH from {{ trigger.args.from|short_address }}", CTX
    )
    checksummed = to_checksum_address("0x" + "ab" * 20)
    assert out == f"10000000 ETH from {checksummed[:6]}…{checksummed[-4:]}"


def test_from_wei_and_format_units_are_exact_decimals():
    assert str(evaluate("1234567890123456789012345678901|from_wei", CTX)) == (
        "1234567890123.456789012345678901"
    )
    assert str(evaluate("1500000|format_units(6)", CTX)) == "1.5"
    assert evaluate("1500000|format_units(6) > 1", CTX) is True
    assert str(evaluate("1000000000|from_wei('gwei')", CTX)) == "1"


def test_to_checksum_and_explorer_url():
    assert evaluate("trigger.args.from|to_checksum", CTX) == to_checksum_address("0x" + "ab" * 20)
    assert evaluate("trigger.tx_hash|explorer_url('https://etherscan.io/')", CTX) == (
        "https://etherscan.io/tx/0x" + "12" * 32
    )
    assert evaluate("trigger.block_number|explorer_url('https://e.io')", CTX) == (
        "https://e.io/block/19000000"
    )


def test_render_value_keeps_native_types_for_whole_expressions():
    body = {"value": "{{ trigger.args.value }}", "note": "by {{ steps.n1.output.name }}", "n": 3}
    assert render_value(body, CTX) == {"value": 10**25, "note": "by alice", "n": 3}
    assert render_value(["{{ trigger.args.amounts }}"], CTX) == [[1, 2, 3]]


def test_references_lists_top_level_paths():
    src = "{{ steps.n1.output.x }} {{ steps['n2'].output }} {{ secrets.API_KEY }} {{ trigger.args }}"
    assert references(src, template=True) == {
        ("steps", "n1"),
        ("steps", "n2"),
        ("secrets", "API_KEY"),
        ("trigger",),
    }


def test_references_ignore_loop_variables_and_globals():
    src = "{% for a in trigger.args.amounts %}{{ a }}{{ loop.index }}{% endfor %}{{ range(2)|list }}"
    assert references(src, template=True) == {("trigger",)}
    assert references("foo.bar + 1", template=False) == {("foo",)}


def test_it_reports_syntax_errors_in_plain_words():
    with pytest.raises(ExpressionError, match="Syntax error"):
        parse_expression("trigger.args.value >")
    with pytest.raises(ExpressionError, match="Syntax error"):
        parse_template("{{ x }")
    with pytest.raises(ExpressionError, match="after the expression"):
        parse_expression("a b")
    with pytest.raises(ExpressionError, match="Unknown filter 'nope'"):
        parse_expression("1|nope")


@pytest.mark.parametrize(
    "src",
    [
        "''.__class__.__mro__",
        "cycler.__init__.__globals__",
        "trigger['__class__']",
        "().__class__.__base__.__subclasses__()",
    ],
)
def test_it_refuses_attribute_tricks(src):
    assert "not allowed" in refused_quickly(parse_expression, src)


@pytest.mark.parametrize(
    "src",
    ["{% import 'os' as os %}", "{% include 'x' %}", "{% extends 'x' %}", "{% macro m() %}{% endmacro %}"],
)
def test_it_refuses_imports_and_includes(src):
    assert "not allowed" in refused_quickly(parse_template, src)


@pytest.mark.parametrize("src", ["10**(10**10)", "10**10**10**10", "2**100000", "(2**400) ** 2"])
def test_it_refuses_huge_powers(src):
    assert "too large" in refused_quickly(evaluate, src, CTX)


def test_left_associative_power_stays_within_limits():
    # Jinja reads a**b**c as (a**b)**c, so 10**10**10 is 10**100: allowed and exact.
    assert evaluate("10**10**10", CTX) == 10**100


@pytest.mark.parametrize("src", ["'x'*10**9", "[1]*10**9", "10**9*'x'", "'x'.ljust(10**9)", "'{:>999999999}'.format(1)"])
def test_it_refuses_huge_repetition(src):
    refused_quickly(evaluate, src, CTX)


@pytest.mark.parametrize(
    "src",
    [
        "{% for i in range(10**9) %}x{% endfor %}",
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "{% for i in range(10000) %}{{ 'x' * 100 }}{% endfor %}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% set s = 'x' * 90000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{{ ('x' * 90000)|replace('x', 'yyyy') }}",
        "{% set s = 'x' * 100000 %}{{ ([s] * 1000)|join }}",
        "{% set s = 'x' * 100000 %}{{ [s] * 1000 }}",
        "{% set s = 'x' * 60000 %}{{ [s, s] }}",
        "{% set s = 'x' * 100000 %}{% set l = [] %}{% for i in range(1000) %}{{ l.append(s) or '' }}{% endfor %}{{ '-'.join(l) }}",
        "{% set s = 'x' * 100000 %}{% set l = [] %}{% for i in range(1000) %}{{ l.append(s) or '' }}{% endfor %}{{ l|tojson }}",
        "{{ '%999999999d' % 1 }}",
    ],
)
def test_it_refuses_runaway_templates(src):
    refused_quickly(render_template, src, CTX)


def test_missing_values_raise_expression_error():
    with pytest.raises(ExpressionError, match="Undefined"):
        evaluate("trigger.args.nope > 1", CTX)
    assert evaluate("trigger.args.nope|default(5)", CTX) == 5


def test_runtime_errors_become_expression_errors():
    with pytest.raises(ExpressionError, match="Division by zero"):
        evaluate("1 // 0", CTX)
    with pytest.raises(ExpressionError):
        evaluate("'a' - 1", CTX)


def test_redact_hides_every_secret_longest_first():
    text = "key=s3cr3t and s3cr3t-long"
    assert redact(text, ["s3cr3t", "s3cr3t-long", ""]) == "key=[redacted] and [redacted]"


def test_now_and_flow_variables_are_available():
    from datetime import UTC, datetime

    ctx = {**CTX, "now": datetime(2030, 1, 2, 3, 4, tzinfo=UTC)}
    assert render_template("{{ flow.name }} at {{ now.year }}", ctx) == "Whale alert at 2030"
    assert evaluate("10 % 3", ctx) == 1


def test_str_format_reached_by_subscript_is_refused():
    with pytest.raises(ExpressionError, match="format"):
        evaluate("'{0:>900000000}'['format']('a')", {})


def test_in_place_list_growth_is_refused():
    template = "{% set ns = namespace(l=[1]) %}{% for i in range(40) %}{{ ns.l.extend(ns.l) }}{% endfor %}"
    with pytest.raises(ExpressionError, match="not allowed"):
        render_template(template, {})


def test_filter_errors_never_echo_the_value():
    secret = "-----BEGIN KEY-----\nMIIE\"quoted'"
    with pytest.raises(ExpressionError) as caught:
        render_template("{{ secrets.K|to_checksum }}", {"secrets": {"K": secret}})
    assert "MIIE" not in str(caught.value)
    with pytest.raises(ExpressionError) as caught:
        evaluate("secrets.K|int + 1 > 'x'", {"secrets": {"K": secret}})
    assert "MIIE" not in str(caught.value)


def test_redact_hides_escaped_forms_of_a_secret():
    secret = 'line1\nline2 "q" & more'
    import json
    from urllib.parse import quote

    text = f"repr={secret!r} json={json.dumps(secret)} url={quote(secret, safe='')} raw={secret}"
    redacted = redact(text, [secret])
    assert "line1" not in redacted and "line2" not in redacted


def test_a_key_named_like_a_dict_method_names_the_key():
    """An ERC-1155 TransferBatch's `values` rendered `<built-in method values of dict object>` before."""
    args = {"ids": [1, 2], "values": [10, 20], "keys": "k", "items": 3, "get": "g"}
    context = {"trigger": {"args": args}}
    assert evaluate("trigger.args.values", context) == [10, 20]
    assert evaluate("trigger.args.values | sum", context) == 30
    assert render_template("{{ trigger.args.values }} {{ trigger.args.keys }} {{ trigger.args.get }}", context) == (
        "[10, 20] k g")
    assert evaluate("trigger.args.items", context) == 3
    # Without such a key, the allowed method is still there.
    assert evaluate("{'a': 1}.keys() | list", {}) == ["a"]
