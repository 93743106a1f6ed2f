"""The sandboxed expression language used by every node.

One language for two uses: text templates (``"Sent {{ trigger.args.value|from_wei }} ETH"``)
and conditions (``trigger.args.value > 10**24``). It is Jinja2's sandbox with
extra fences, because flows are written by users and run on shared workers:

* attribute and item names starting with ``_`` are refused when the source is
  parsed, so ``''.__class__.__mro__`` never reaches the runtime;
* ``import``, ``include``, ``extends``, ``macro`` and ``call`` blocks are refused;
* ``**``, ``*`` and ``+`` are intercepted so an expression cannot allocate a
  huge integer, string or list; ``~`` is routed through the same size check;
* ``range`` is capped, every loop draws from an iteration budget and every call,
  loop turn and output chunk checks a deadline (see _Budget.tick: what counts is the
  CPU time the evaluating thread spends, not time spent waiting for a core);
* rendered output is capped.

Numbers stay exact: uint256 values are Python ints and the web3 filters use
Decimal, never float.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, Sized, ValuesView
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import lru_cache
from itertools import chain
from typing import Any
from urllib.parse import quote, quote_plus

from eth_utils import is_address, to_checksum_address
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import LoopContext, Undefined
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace

__all__ = [
    "ExpressionError",
    "evaluate",
    "parse_expression",
    "parse_template",
    "redact",
    "references",
    "render_template",
    "render_value",
]

MAX_SOURCE_CHARS = 20_000
MAX_OUTPUT_CHARS = 100_000
MAX_SEQUENCE_LEN = 100_000
MAX_INT_BITS = 512
MAX_RANGE = 10_000
MAX_LOOP_ITERATIONS = 100_000
MAX_DEPTH = 64
# How deeply an expression's syntax may nest (templates add a few levels of their own).
MAX_NESTING = 80
DEFAULT_TIMEOUT_S = 0.25
# What one evaluation may allocate, summed over every operation that makes a new
# value, in bytes as if its text were ASCII (see _Budget.charge). Non-ASCII text takes
# up to 4 bytes a character, so the peak memory of one evaluation stays under
# MAX_PEAK_BYTES = 4 x MAX_ALLOCATION (tests/flows/test_expression_limits.py measures it).
MAX_ALLOCATION = 4 * 2**20
MAX_PEAK_BYTES = 4 * MAX_ALLOCATION
# Charged for each new object an operation creates (a list slot plus a small object).
_ITEM_BYTES = 56

_GLOBAL_NAMES = frozenset({"range", "dict", "namespace", "loop", "true", "false", "none"})
_FORBIDDEN_STATEMENTS = (
    nodes.Import,
    nodes.FromImport,
    nodes.Include,
    nodes.Extends,
    nodes.Macro,
    nodes.CallBlock,
    nodes.Block,
    nodes.Scope,
    nodes.ScopedEvalContextModifier,
    # Both buffer their whole body in memory, past the cap on rendered output.
    nodes.AssignBlock,
    nodes.FilterBlock,
)


class ExpressionError(Exception):
    """A template or expression that cannot be parsed, or failed to evaluate."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Budget:
    deadline: float  # time.monotonic()
    timeout: float
    loops_left: int
    bytes_left: int = MAX_ALLOCATION
    cpu_mark: float | None = None  # the thread's CPU time when the deadline first passed

    def tick(self) -> None:
        now = time.monotonic()
        if now <= self.deadline:
            return
        # Past the wall-clock deadline. A busy machine can keep even `a * b // c` waiting for a
        # core that long (a CI run failed so), so from here on only the CPU time this thread
        # spends counts: the expression is stopped once it has burnt `timeout` more of it, at
        # most twice the timeout in all. The thread's CPU clock is a system call (~1.7 µs here,
        # against ~0.05 µs for the wall clock: reading it on every tick made a loop-heavy
        # template 2.2x slower and a plain comparison 25% slower), so it is read only past the
        # deadline.
        cpu = time.thread_time()
        if self.cpu_mark is None:
            self.cpu_mark = cpu
        spent = cpu - self.cpu_mark
        if spent >= self.timeout:
            raise ExpressionError("Expression took too long to evaluate")
        self.deadline = now + (self.timeout - spent)

    def charge(self, size: int) -> None:
        """Spend ``size`` bytes of the evaluation's allocation budget, before allocating."""
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise ExpressionError(
                f"Expression allocates more than the limit of {MAX_ALLOCATION // 2**20} MiB"
            )
        self.tick()


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "kwala_expression_budget", default=None
)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _charge(size: int) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.charge(size)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:10]}…({len(text)} digits)"


_VIEWS = (KeysView, ValuesView, ItemsView)


_LEAF_TYPES = frozenset({str, bytes, int, float, bool, type(None), Decimal})


def _children(value: Any) -> Iterable[Any] | None:
    """The values inside a container, or None for a leaf."""
    kind = type(value)
    if kind in _LEAF_TYPES:  # the common case first: isinstance on ABCs is slow
        return None
    if kind is list or kind is tuple:
        return value
    if isinstance(value, Mapping):
        return chain.from_iterable(value.items())
    if isinstance(value, Namespace):
        return chain.from_iterable(object.__getattribute__(value, "_Namespace__attrs").items())
    if isinstance(value, (list, tuple, set, frozenset, *_VIEWS)):
        return value
    return None


def _leaf_weight(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1  # decimal digits, roughly
    if isinstance(value, range):
        return len(value)
    return 1


def _weight(value: Any, limit: int = MAX_SEQUENCE_LEN) -> int:
    """How many characters/items ``value`` turns into when rendered, counting shared parts each time.

    Stops counting once past ``limit``: a list of 100,000 references to one
    100,000-character string is small in memory but huge once joined or printed, and
    ``[a, a]`` nested 60 times is a few bytes that compare and print as 2**60. Walks with
    a stack of iterators, so it takes memory for the depth, not the size.
    """
    children = _children(value)
    if children is None:
        return _leaf_weight(value)
    total = 1
    stack: list[Iterator[Any]] = [iter(children)]
    while stack:
        for item in stack[-1]:
            inner = _children(item)
            if inner is None:
                total += _leaf_weight(item)
                if total > limit:
                    return total
                continue
            total += 1
            if len(stack) >= MAX_DEPTH:
                raise ExpressionError(f"Values are nested more than {MAX_DEPTH} levels deep")
            stack.append(iter(inner))
            break
        else:
            stack.pop()
    return total


def _check_weight(value: Any, what: str = "Value") -> int:
    weight = _weight(value)
    if weight > MAX_SEQUENCE_LEN:
        raise ExpressionError(f"{what} is over the size limit of {MAX_SEQUENCE_LEN:,}")
    return weight


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, bytes, list, tuple)) and len(value) > MAX_SEQUENCE_LEN:
        raise ExpressionError(
            f"Value of {len(value):,} items is over the limit of {MAX_SEQUENCE_LEN:,}"
        )
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value.bit_length() > MAX_INT_BITS * 4
    ):
        raise ExpressionError("Number is too large")
    return value


def _text_size(value: Any) -> int:
    """An upper bound on ``len(str(value))``.

    A string is its length; anything else prints through repr, where one character can
    become up to ten (``'\\U000e0001'``).
    """
    if isinstance(value, str):
        return len(value)
    return 10 * _weight(value, MAX_SEQUENCE_LEN * 10) + 2


def _refuse_over(size: int, what: str) -> int:
    if size > MAX_SEQUENCE_LEN:
        raise ExpressionError(f"{what}: the result would be over the size limit of {MAX_SEQUENCE_LEN:,}")
    return size


def _is_lazy(value: Any) -> bool:
    return isinstance(value, Iterator)


def _materialize(iterator: Iterator[Any], what: str) -> list[Any]:
    """Consume an iterator (a filter's generator) into a list, charging as it goes.

    Generators cannot be sized before they run, so they never leave a filter: each
    item is paid for as it comes, and the list is refused once over the size limit.
    """
    items: list[Any] = []
    for item in iterator:
        _charge(_ITEM_BYTES)
        items.append(item)
        if len(items) > MAX_SEQUENCE_LEN:
            raise ExpressionError(f"{what}: the result would be over the size limit of {MAX_SEQUENCE_LEN:,}")
    return items


# ---------------------------------------------------------------------------
# web3 filters: exact Decimal arithmetic, never float


class Amount(Decimal):
    """A Decimal that renders in plain notation ("1000000", not "1E+6")."""

    def __str__(self) -> str:
        text = format(self, "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return text


_UNITS = {
    "wei": 0, "kwei": 3, "babbage": 3, "mwei": 6, "lovelace": 6, "gwei": 9,
    "shannon": 9, "szabo": 12, "microether": 12, "finney": 15, "milliether": 15,
    "ether": 18,
}


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ExpressionError("Expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and len(value) <= 1000:
        try:
            return _check_size(int(value, 0))
        except ValueError:
            pass
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    # Never echo the value: it may be a secret, and error text ends up in run records.
    raise ExpressionError(f"Expected an integer amount, got {type(value).__name__}")


def format_units(value: Any, decimals: int = 18) -> Amount:
    """Scale an integer amount down by ``decimals`` exactly (token units)."""
    if not isinstance(decimals, int) or not 0 <= decimals <= 255:
        raise ExpressionError("format_units: decimals must be an integer from 0 to 255")
    amount = _to_int(value)
    with localcontext() as ctx:
        ctx.prec = 200
        return Amount(Decimal(amount).scaleb(-decimals))


def from_wei(value: Any, unit: str = "ether") -> Amount:
    if unit not in _UNITS:
        raise ExpressionError(f"from_wei: unknown unit {unit!r}")
    return format_units(value, _UNITS[unit])


def to_checksum(value: Any) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ExpressionError(f"to_checksum: the {type(value).__name__} value is not an address")
    return to_checksum_address(value)


def short_address(value: Any, chars: int = 4) -> str:
    text = to_checksum(value)
    return f"{text[:2 + chars]}…{text[-chars:]}"


def explorer_url(value: Any, base: str) -> str:
    """Link a tx hash, address or block number to a block explorer."""
    base = str(base).rstrip("/")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{base}/block/{value}"
    text = str(value)
    if re.fullmatch(r"0x[0-9a-fA-F]{64}", text):
        return f"{base}/tx/{text}"
    if is_address(text):
        return f"{base}/address/{to_checksum_address(text)}"
    raise ExpressionError("explorer_url: the value is not a tx hash, address or block number")


WEB3_FILTERS = {
    "from_wei": from_wei,
    "format_units": format_units,
    "to_checksum": to_checksum,
    "short_address": short_address,
    "explorer_url": explorer_url,
}


# ---------------------------------------------------------------------------
# the environment
#
# Every operation that makes a new value works out the size of its result from its
# inputs and arguments *before* it runs, refuses a result over MAX_SEQUENCE_LEN, and
# pays for it from the evaluation's allocation budget. A builtin, method or filter whose
# result cannot be sized that way is not exposed: methods are an allowlist.


def _text(size: int, what: str) -> int:
    """Bytes to charge for a text result of at most ``size`` characters."""
    return _refuse_over(size, what) + 64


def _slots(count: int, what: str, *, new_items: bool = False) -> int:
    """Bytes to charge for a list of ``count`` items (new objects, or references)."""
    return _refuse_over(count, what) * (_ITEM_BYTES if new_items else 8) + 64


def _length(value: Any) -> int:
    return len(value) if isinstance(value, Sized) else _weight(value)


def _join_size(items: Any, sep: Any, what: str) -> int:
    items = list(items) if isinstance(items, Sized) else _materialize(iter(items), what)
    size = _text_size(sep) * max(len(items) - 1, 0)
    for item in items:
        size += _text_size(item)
        _refuse_over(size, what)
    return _text(size, what)


def _replace_size(text: Any, old: Any, new: Any, count: Any = None) -> int:
    text, old, new = str(text), str(old), str(new)
    if not old:
        size = len(text) + (len(text) + 1) * len(new)
    else:
        size = len(text) + text.count(old) * max(0, len(new) - len(old))
    return _text(size, "replace()")


def _json_size(value: Any, indent: Any = None) -> int:
    """An upper bound on the length of ``json.dumps(value, indent=indent)``."""
    if indent is None:
        step = 0
    elif isinstance(indent, int) and not isinstance(indent, bool):
        step = max(indent, 0)
    else:
        step = _text_size(indent)
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        children = _children(item)
        if isinstance(item, str):
            size += 6 * len(item) + 2  # \u00XX escapes
        elif children is None:
            size += 6 * _leaf_weight(item) + 4
        else:
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"Values are nested more than {MAX_DEPTH} levels deep")
            size += 2 + step * depth
            stack.extend((child, depth + 1) for child in children)
            size += (step * (depth + 1) + 3) * _length(item)
        _refuse_over(size, "tojson")
    return _text(size, "tojson")


def _round_size(value: Any, precision: Any = 0, method: Any = "common") -> int:
    # Jinja computes value * 10**precision for ceil and floor.
    if not isinstance(precision, int) or not 0 <= precision <= 100:
        raise ExpressionError("round: precision must be an integer from 0 to 100")
    return 64


def _sum_size(value: Any, attribute: Any = None, start: Any = 0) -> int:
    # With a number to start from, only numbers add up: sum never concatenates.
    if not isinstance(start, (int, float, Decimal)):
        raise ExpressionError("sum: start must be a number")
    return 64


def _case_size(value: Any, *args: Any, **kwargs: Any) -> int:
    return _text(3 * _text_size(value), "Changing case")  # 'ß'.upper() == 'SS', up to 3x


def _truncate_size(value: Any, length: Any = 255, killwords: Any = False, end: Any = "...", leeway: Any = None) -> int:
    return _text(_text_size(value) + _text_size(end), "truncate")


def _small(*args: Any, **kwargs: Any) -> int:
    """A number, a bool, or one of the values it was given."""
    return 64


def _fixed_text(size: int) -> Any:
    return lambda value, *args, **kwargs: _text(size, "Value")


def _text_times(factor: int, what: str) -> Any:
    return lambda value, *args, **kwargs: _text(factor * _text_size(value), what)


def _copy_of(what: str, *, new_items: bool = False) -> Any:
    def size(value: Any, *args: Any, **kwargs: Any) -> int:
        if isinstance(value, str):
            return _text(len(value), what)
        # Iterating a dict's items makes a new tuple for each.
        fresh = new_items or isinstance(value, ItemsView)
        return _slots(_length(value), what, new_items=fresh)

    return size


# Filter name -> the bytes its result takes, worked out before the call; raises when the
# result would be over the size limit. Only these filters exist.
_FILTER_SIZES: dict[str, Any] = {
    "abs": _small, "default": _small, "d": _small, "first": _small, "last": _small,
    "float": _small, "int": _small, "length": _small, "count": _small, "max": _small,
    "min": _small, "round": _round_size, "sum": _sum_size,
    "capitalize": _case_size, "lower": _case_size, "upper": _case_size, "title": _case_size,
    "trim": _text_times(1, "trim"), "string": _text_times(1, "string"),
    "escape": _text_times(6, "escape"), "e": _text_times(6, "escape"),  # '"' -> '&#34;'
    "urlencode": _text_times(12, "urlencode"),  # one character, 4 UTF-8 bytes, '%XX' each
    "truncate": _truncate_size,
    "replace": _replace_size,
    "join": lambda value, d="", attribute=None: _join_size(value, d, "join"),
    "tojson": _json_size,
    "list": _copy_of("list"), "sort": _copy_of("sort"), "reverse": _copy_of("reverse"),
    "unique": _copy_of("unique"), "select": _copy_of("select"), "reject": _copy_of("reject"),
    "selectattr": _copy_of("selectattr"), "rejectattr": _copy_of("rejectattr"),
    # map's own calls pay for what they make; map pays for the list that holds them.
    "map": _copy_of("map"),
    "items": _copy_of("items", new_items=True), "dictsort": _copy_of("dictsort", new_items=True),
    "from_wei": _fixed_text(1000), "format_units": _fixed_text(1000),
    "to_checksum": _fixed_text(64), "short_address": _fixed_text(64),
    "explorer_url": lambda value, base="": _text(_text_size(base) + 100, "explorer_url"),
}


def _guarded_filter(name: str, func: Any) -> Any:
    size_of = _FILTER_SIZES[name]
    pass_arg = hasattr(func, "jinja_pass_arg")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        head, (value, *params) = (args[:1], args[1:]) if pass_arg else ((), args)
        if _is_lazy(value):
            value = _materialize(value, name)
        _check_weight(value, "The filtered value")
        _charge(size_of(value, *params, **kwargs))
        result = func(*head, value, *params, **kwargs)
        if _is_lazy(result):
            # map, select, unique, ... return generators: they never leave the filter.
            result = _materialize(result, name)
        return _check_size(result)

    if pass_arg:
        wrapper.jinja_pass_arg = func.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


# Methods that may be called, by the type that owns them, each with the bytes its
# result takes, worked out before the call. Anything else is refused.
_STR_METHODS: dict[str, Any] = {
    **dict.fromkeys(
        ["capitalize", "casefold", "lower", "upper", "swapcase", "title"], _case_size
    ),
    **dict.fromkeys(
        ["strip", "lstrip", "rstrip", "removeprefix", "removesuffix"],
        lambda s, *args: _text(len(s), "Value"),
    ),
    **dict.fromkeys(
        [
            "startswith", "endswith", "find", "rfind", "index", "rindex", "count",
            "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "islower",
            "isnumeric", "isspace", "istitle", "isupper",
        ],
        _small,
    ),
    **dict.fromkeys(
        ["split", "rsplit", "splitlines"],
        lambda s, *args, **kwargs: _slots(len(s) + 1, "split", new_items=True) + len(s),
    ),
    **dict.fromkeys(
        ["partition", "rpartition"], lambda s, sep: _text(len(s) + len(sep), "partition") + 128
    ),
    "replace": _replace_size,
    "join": lambda sep, items: _join_size(items, sep, "join"),
}
_METHODS: dict[type, dict[str, Any]] = {
    str: _STR_METHODS,
    list: {"count": _small, "index": _small},
    tuple: {"count": _small, "index": _small},
    dict: {
        "get": _small,
        "keys": _small,
        "values": _small,
        "items": _small,  # views: paid for when something iterates them
    },
    int: {"bit_length": _small},
    LoopContext: {"cycle": _small, "changed": _small},
}


def _finalize(value: Any) -> Any:
    # Runs on every {{ ... }} before it is turned into text.
    _check_weight(value, "Printed value")
    _charge(_text_size(value))
    return value


def _safe_range(*args: Any) -> range:
    _tick()
    for arg in args:
        if not isinstance(arg, int) or isinstance(arg, bool):
            raise ExpressionError("range() takes integers")
    r = range(*args)
    if len(r) > MAX_RANGE:
        raise ExpressionError(f"range() of {len(r):,} items is over the limit of {MAX_RANGE:,}")
    return r


def _safe_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    size = sum(_length(arg) for arg in args) + len(kwargs)
    _charge(_slots(size, "dict()", new_items=True))
    return dict(*args, **kwargs)


def _loop_guard(iterable: Any) -> Iterator[Any]:
    """Wraps every ``for`` loop: spends the iteration budget, checks the deadline."""
    budget = _budget.get()
    for n, item in enumerate(iterable):
        if budget is not None:
            budget.loops_left -= 1
            if budget.loops_left < 0:
                raise ExpressionError(
                    f"Loops ran over the limit of {MAX_LOOP_ITERATIONS:,} iterations"
                )
            if n % 256 == 0:
                budget.tick()
        yield item


class _KwalaCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # ``a ~ b`` is not an intercepted binop in Jinja, so route it through a size check.
        self.write("environment.kwala_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    # List, tuple and dict literals are sized too: ``{% set ns.a = [ns.a, ns.a] %}`` in a
    # loop doubles what a value prints as on every turn, and a loop that keeps a new
    # literal every turn would otherwise grow without a charge.
    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.kwala_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.kwala_literal(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an unpacking target: ``for a, b in ...``
            super().visit_Tuple(node, frame)
            return
        self.write("environment.kwala_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")


def _text_or_seq_size(value: Any) -> int:
    """Bytes a str, list or tuple of this length takes."""
    return len(value) if isinstance(value, str) else 8 * len(value)


class KwalaEnvironment(SandboxedEnvironment):
    code_generator_class = _KwalaCodeGenerator
    intercepted_binops = frozenset({"**", "*", "+", "%"})

    def __init__(self) -> None:
        super().__init__(
            finalize=_finalize,
            undefined=StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            auto_reload=False,
            cache_size=0,
        )
        base_filters = {**self.filters, **WEB3_FILTERS}
        self.filters = {name: _guarded_filter(name, base_filters[name]) for name in _FILTER_SIZES}
        self.filters["_loop_guard"] = _loop_guard
        self.globals = {"range": _safe_range, "dict": _safe_dict, "namespace": self.globals["namespace"]}
        self._callable_globals = tuple(self.globals.values())

    def kwala_concat(self, parts: Iterable[Any]) -> str:
        parts = list(parts)
        _check_weight(parts, "Joined text")
        _charge(_text(sum(_text_size(p) for p in parts), "Joined text"))
        return "".join(str(p) for p in parts)

    def kwala_literal(self, value: Any) -> Any:
        _check_weight(value, "Value")
        _charge(_slots(len(value), "Value", new_items=isinstance(value, dict)))
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "**":
            # Estimate from bit lengths first so 10**(10**10) is refused before it runs.
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and abs(left).bit_length() * right > MAX_INT_BITS + 64
            ):
                raise ExpressionError(
                    f"{_short(left)} ** {_short(right)} is too large "
                    f"(results are limited to {MAX_INT_BITS} bits)"
                )
            try:
                result = left**right
            except OverflowError as exc:
                raise ExpressionError(f"{_short(left)} ** {_short(right)} overflows") from exc
            if isinstance(result, int) and result.bit_length() > MAX_INT_BITS + 1:
                raise ExpressionError(
                    f"{_short(left)} ** {_short(right)} is too large (results are limited to {MAX_INT_BITS} bits)"
                )
            return result
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if max(_weight(seq), 1) * max(times, 0) > MAX_SEQUENCE_LEN:
                        raise ExpressionError(
                            f"Repeating a value {times:,} times is over the size limit"
                        )
                    _charge(_text_or_seq_size(seq) * max(times, 0) + 64)
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS * 4
            ):
                raise ExpressionError("Multiplication result is too large")
            return left * right
        if operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                _check_weight([left, right], "The sum")
                _charge(_text_or_seq_size(left) + _text_or_seq_size(right) + 64)
            return _check_size(left + right)
        if operator == "%" and isinstance(left, str):
            # printf-style formatting can pad to any width ('%999999999d').
            raise ExpressionError("String formatting with % is not allowed; use ~ or filters")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `args.values` names the argument called "values", not dict.values: event and function
        # arguments, webhook bodies and step outputs are mappings whose keys are the data (an
        # ERC-1155 TransferBatch has `ids` and `values`; the picker offers those paths).
        if isinstance(obj, Mapping) and not attribute.startswith("_") and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(argument, str) and argument.startswith("_"):
            raise ExpressionError(f"Access to '{argument}' is not allowed")
        return super().getitem(obj, argument)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        if isinstance(obj, Undefined):
            obj._fail_with_undefined_error()
        if obj in self._callable_globals or isinstance(obj, LoopContext):
            return _check_size(super().call(context, obj, *args, **kwargs))
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        methods = next(
            (table for cls in type(owner).__mro__ if (table := _METHODS.get(cls)) is not None),
            {},
        )
        size_of = methods.get(name)
        if size_of is None or isinstance(owner, type):
            raise ExpressionError(f"Calling {name or type(obj).__name__}() is not allowed")
        _charge(size_of(owner, *args, **kwargs))
        return _check_size(super().call(context, obj, *args, **kwargs))


ENV = KwalaEnvironment()


# ---------------------------------------------------------------------------
# parsing and static checks


def _syntax_message(exc: TemplateSyntaxError, src: str) -> str:
    where = f" (line {exc.lineno})" if exc.lineno and "\n" in src else ""
    return f"Syntax error{where}: {exc.message}"


def _find_all(tree: nodes.Node, types: Any) -> Iterator[Any]:
    # Node.find_all skips the node itself, which for an expression is the root.
    if isinstance(tree, types):
        yield tree
    yield from tree.find_all(types)


def _check_depth(tree: nodes.Node) -> None:
    """Refuse expressions nested deeper than MAX_NESTING (``-----1``, ``((((1))))``, ``1+1+1+...``).

    Compiling a tree thousands of levels deep overflows the interpreter's stack.
    Walks with an explicit stack, so the check itself cannot.
    """
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ExpressionError(f"Expression is nested more than {MAX_NESTING} levels deep")
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())


def _check_ast(tree: nodes.Node) -> None:
    _check_depth(tree)
    for node in _find_all(tree, _FORBIDDEN_STATEMENTS):
        kind = type(node).__name__.lower()
        raise ExpressionError(f"'{kind}' is not allowed in expressions")
    for node in _find_all(tree, (nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = node.arg.value if isinstance(node.arg.value, str) else None
        if attr is not None and (attr.startswith("_") or attr in {"mro", "gi_frame", "f_globals"}):
            raise ExpressionError(f"Access to '{attr}' is not allowed")
    for node in _find_all(tree, nodes.Name):
        if node.name.startswith("_"):
            raise ExpressionError(f"The name '{node.name}' is not allowed")
    for node in _find_all(tree, nodes.Filter):
        if node.name is None:
            continue
        if node.name.startswith("_") or node.name not in ENV.filters:
            raise ExpressionError(f"Unknown filter '{node.name}'")
    for node in _find_all(tree, nodes.Test):
        if node.name not in ENV.tests:
            raise ExpressionError(f"Unknown test '{node.name}'")


def _check_source(src: Any) -> str:
    if not isinstance(src, str):
        raise ExpressionError("Expected text")
    if len(src) > MAX_SOURCE_CHARS:
        raise ExpressionError(f"Expression is longer than {MAX_SOURCE_CHARS:,} characters")
    return src


@lru_cache(maxsize=8192)
def parse_template(src: str) -> nodes.Template:
    """Parse and check a text template; raise ExpressionError with a human message."""
    _check_source(src)
    try:
        tree = ENV.parse(src)
    except TemplateSyntaxError as exc:
        raise ExpressionError(_syntax_message(exc, src)) from None
    except RecursionError:
        raise ExpressionError(f"Expression is nested more than {MAX_NESTING} levels deep") from None
    _check_ast(tree)
    return tree


@lru_cache(maxsize=8192)
def parse_expression(src: str) -> nodes.Expr:
    """Parse and check a single expression (a condition); raise ExpressionError."""
    _check_source(src)
    if not src.strip():
        raise ExpressionError("Expression is empty")
    try:
        parser = Parser(ENV, src, state="variable")
        expr = parser.parse_expression()
        if not parser.stream.eos:
            raise TemplateSyntaxError(
                f"unexpected '{parser.stream.current.value}' after the expression",
                parser.stream.current.lineno,
            )
    except TemplateSyntaxError as exc:
        raise ExpressionError(_syntax_message(exc, src)) from None
    except RecursionError:
        raise ExpressionError(f"Expression is nested more than {MAX_NESTING} levels deep") from None
    _check_ast(expr)
    return expr


def _guard_loops(tree: nodes.Node) -> None:
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, "_loop_guard", [], [], None, None, lineno=loop.lineno)


@lru_cache(maxsize=4096)
def _compiled_template(src: str) -> Any:
    tree = parse_template(src)
    # parse_template's tree is cached and shared; guard a fresh copy.
    tree = ENV.parse(src)
    _guard_loops(tree)
    code = ENV.compile(tree)
    return ENV.template_class.from_code(ENV, code, ENV.make_globals(None), None)


@lru_cache(maxsize=4096)
def _compiled_expression(src: str) -> Any:
    parse_expression(src)
    parser = Parser(ENV, src, state="variable")
    expr = parser.parse_expression()
    tree = nodes.Template([nodes.Assign(nodes.Name("result", "store"), expr, lineno=1)], lineno=1)
    tree.set_environment(ENV)
    _guard_loops(tree)
    code = ENV.compile(tree)
    return ENV.template_class.from_code(ENV, code, ENV.make_globals(None), None)


# ---------------------------------------------------------------------------
# references, for the compiler's "only upstream steps" check


def _path_of(node: nodes.Node) -> list[str] | None:
    """Turn ``steps.n2.output.x`` / ``steps['n2']`` into ['steps', 'n2', 'output', 'x']."""
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(
            node.arg.value, str
        ):
            parts.append(node.arg.value)
            node = node.node
        elif isinstance(node, (nodes.Getitem)):
            parts.clear()
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return parts[::-1]
        else:
            return None


@lru_cache(maxsize=8192)
def _references(src: str, template: bool) -> frozenset[tuple[str, ...]]:
    tree = parse_template(src) if template else parse_expression(src)
    local_names = {n.name for n in _find_all(tree, nodes.Name) if n.ctx in ("store", "param")}
    refs: set[tuple[str, ...]] = set()
    seen: set[int] = set()
    for node in _find_all(tree, (nodes.Getattr, nodes.Getitem, nodes.Name)):
        if id(node) in seen:
            continue
        path = _path_of(node)
        # mark the whole chain as seen so only the longest path counts
        inner = node
        while isinstance(inner, (nodes.Getattr, nodes.Getitem)):
            seen.add(id(inner))
            inner = inner.node
        seen.add(id(inner))
        if path is None:
            continue
        root = path[0]
        if isinstance(inner, nodes.Name) and inner.ctx != "load":
            continue
        if root in local_names or root in _GLOBAL_NAMES:
            continue
        if root in ("steps", "secrets") and len(path) > 1:
            refs.add((root, path[1]))
        else:
            refs.add((root,))
    return frozenset(refs)


def references(src: str, *, template: bool) -> set[tuple[str, ...]]:
    """Top-level paths an expression reads: ("trigger",), ("steps", "n2"), ("secrets", "KEY").

    Unknown roots are returned as-is (e.g. ("foo",)) so the caller can report them.
    Raises ExpressionError if the source does not parse.
    """
    return set(_references(src, template))


# ---------------------------------------------------------------------------
# running


def _run(func: Any, timeout: float) -> Any:
    token = _budget.set(_Budget(time.monotonic() + timeout, timeout, MAX_LOOP_ITERATIONS))
    try:
        return func()
    except ExpressionError:
        raise
    except SecurityError as exc:
        raise ExpressionError(f"Not allowed: {exc}") from None
    except UndefinedError as exc:
        raise ExpressionError(f"Undefined value: {exc.message}") from None
    except TemplateError as exc:
        raise ExpressionError(str(exc.message or exc)) from None
    except ZeroDivisionError:
        raise ExpressionError("Division by zero") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        # Python's messages quote the values involved (int('...')); say only what failed.
        raise ExpressionError(f"{type(exc).__name__} while evaluating the expression") from None
    except (MemoryError, RecursionError):
        raise ExpressionError("Expression used too many resources") from None
    finally:
        _budget.reset(token)


def render_template(src: str, context: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Render a text template with the run context; output is capped in size."""
    template = _compiled_template(_check_source(src))

    def render() -> str:
        out: list[str] = []
        size = 0
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise ExpressionError(
                    f"Rendered text is over the limit of {MAX_OUTPUT_CHARS:,} characters"
                )
            out.append(chunk)
            _tick()
        return "".join(out)

    return _run(render, timeout)


def evaluate(src: str, context: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """Evaluate one expression and return its native value (ints stay exact ints)."""
    template = _compiled_expression(_check_source(src))

    def run() -> Any:
        ctx = template.new_context(dict(context))
        for _ in template.root_render_func(ctx):
            pass
        result = ctx.vars["result"]
        if isinstance(result, Undefined):
            result._fail_with_undefined_error()
        return result

    return _run(run, timeout)


_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{((?:(?!\}\}|\{\{).)*)\}\}\s*$", re.DOTALL)


def whole_expression(text: str) -> str | None:
    """If ``text`` is exactly one ``{{ expr }}``, return ``expr``."""
    match = _WHOLE_EXPRESSION.match(text)
    return match.group(1) if match else None


def render_value(value: Any, context: Mapping[str, Any], *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """Render a JSON-ish structure whose string leaves are templates.

    A leaf that is exactly ``{{ expr }}`` keeps the native type of ``expr`` so an
    int argument stays an int (and a uint256 stays exact); any other string leaf
    is rendered as text.
    """
    if isinstance(value, str):
        expr = whole_expression(value)
        if expr is not None:
            return evaluate(expr, context, timeout=timeout)
        return render_template(value, context, timeout=timeout)
    if isinstance(value, Mapping):
        return {k: render_value(v, context, timeout=timeout) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render_value(v, context, timeout=timeout) for v in value]
    return value


def template_leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield (path, text) for every string leaf of a JSON-ish structure."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from template_leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from template_leaves(item, f"{path}.{index}" if path else str(index))


def redact(text: str, secret_values: Iterable[str]) -> str:
    """Replace every occurrence of a secret value with "[redacted]".

    Longest values first, so a secret that contains another is hidden whole.
    """
    forms: set[str] = set()
    for secret in secret_values:
        if not secret:
            continue
        # The plain value and the ways it is escaped when it ends up in an error
        # message (repr), a JSON document or a URL.
        forms.update({secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)})
    for form in sorted((f for f in forms if f), key=len, reverse=True):
        text = text.replace(form, "[redacted]")
    return text
