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
  loop turn and output chunk checks a wall-clock deadline;
* rendered output is capped.

Numbers stay exact: uint256 values are Python ints and the web3 filters use
Decimal, never float.
"""

from __future__ import annotations

import contextvars
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

from eth_utils import is_address, to_checksum_address
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.parser import Parser
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment, modifies_known_mutable

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
DEFAULT_TIMEOUT_S = 0.25

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
)
# str methods that can allocate far more than their input (padding, formatting).
_FORBIDDEN_STR_METHODS = frozenset(
    {"format", "format_map", "center", "ljust", "rjust", "zfill", "expandtabs"}
)
_SAFE_FILTERS = (
    "abs", "capitalize", "default", "d", "dictsort", "escape", "e", "first", "float",
    "int", "join", "last", "length", "count", "list", "lower", "upper", "map", "max",
    "min", "replace", "reject", "rejectattr", "reverse", "round", "select",
    "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "truncate",
    "unique", "urlencode", "items",
)


class ExpressionError(Exception):
    """A template or expression that cannot be parsed, or failed to evaluate."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class _Budget:
    deadline: float
    loops_left: int

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise ExpressionError("Expression took too long to evaluate")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "kwala_expression_budget", default=None
)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:10]}…({len(text)} digits)"


def _weight(value: Any, limit: int = MAX_SEQUENCE_LEN) -> int:
    """Roughly how many characters/items ``value`` turns into when rendered.

    Stops counting once past ``limit``: a list of 100,000 references to one
    100,000-character string is small in memory but huge once joined or printed.
    """
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        total = len(value)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if total > limit:
                break
            total += _weight(item, limit - total) + (_weight(key) if isinstance(value, dict) else 0)
        return total
    return 1


def _check_weight(value: Any, what: str = "Value") -> None:
    if _weight(value) > MAX_SEQUENCE_LEN:
        raise ExpressionError(f"{what} is over the size limit of {MAX_SEQUENCE_LEN:,}")


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
    if isinstance(value, str):
        try:
            return int(value, 0)
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


def _finalize(value: Any) -> Any:
    # Runs on every {{ ... }} before it is turned into text.
    _check_weight(value, "Printed value")
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


def _guarded_filter(func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        # The first argument is the filtered value, unless the filter takes the
        # context/environment first (jinja_pass_arg).
        value = args[1] if hasattr(func, "jinja_pass_arg") and len(args) > 1 else args[0] if args else None
        _check_weight(value, "The filtered value")
        return _check_size(func(*args, **kwargs))

    for attr in ("jinja_pass_arg",):
        if hasattr(func, attr):
            setattr(wrapper, attr, getattr(func, attr))
    return wrapper


def _safe_replace(value: Any, old: Any, new: Any, count: Any = None) -> str:
    text, old_s, new_s = str(value), str(old), str(new)
    worst = len(text) * max(1, len(new_s)) if not old_s else (
        len(text) + text.count(old_s) * max(0, len(new_s) - len(old_s))
    )
    if worst > MAX_SEQUENCE_LEN:
        raise ExpressionError("replace() result would be over the size limit")
    return text.replace(old_s, new_s) if count is None else text.replace(old_s, new_s, count)


class _KwalaCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # ``a ~ b`` is not an intercepted binop in Jinja, so route it through a size check.
        self.write("environment.kwala_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


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
        base_filters = self.filters
        self.filters = {name: _guarded_filter(base_filters[name]) for name in _SAFE_FILTERS}
        self.filters["replace"] = _guarded_filter(_safe_replace)
        self.filters.update(WEB3_FILTERS)
        self.filters["_loop_guard"] = _loop_guard
        self.globals = {"range": _safe_range, "dict": dict, "namespace": self.globals["namespace"]}

    def kwala_concat(self, parts: Iterable[Any]) -> str:
        _tick()
        parts = list(parts)
        _check_weight(parts, "Joined text")
        return _check_size("".join(str(p) for p in parts))

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
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(times, int)
                    and max(_weight(seq), 1) * max(times, 0) > MAX_SEQUENCE_LEN
                ):
                    raise ExpressionError(
                        f"Repeating a value {times:,} times is over the size limit"
                    )
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and left.bit_length() + right.bit_length() > MAX_INT_BITS * 4
            ):
                raise ExpressionError("Multiplication result is too large")
            return left * right
        if operator == "+":
            if not isinstance(left, (int, float)):
                _check_weight([left, right], "The sum")
            return _check_size(left + right)
        if operator == "%" and isinstance(left, str):
            # printf-style formatting can pad to any width ('%999999999d').
            raise ExpressionError("String formatting with % is not allowed; use ~ or filters")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # In-place mutators (list.extend, dict.update, ...) return None, so no size
        # check would ever see what they build: refuse them, as the immutable sandbox does.
        if modifies_known_mutable(obj, attr):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, str) and attribute in _FORBIDDEN_STR_METHODS:
            raise ExpressionError(f"The string method {attribute}() is not allowed")
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        # 'x'['format'] reaches the same methods as 'x'.format: apply the same rules.
        if isinstance(argument, str):
            if argument.startswith("_"):
                raise ExpressionError(f"Access to '{argument}' is not allowed")
            if isinstance(obj, str) and argument in _FORBIDDEN_STR_METHODS:
                raise ExpressionError(f"The string method {argument}() is not allowed")
        return super().getitem(obj, argument)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str):
            if name in _FORBIDDEN_STR_METHODS:
                raise ExpressionError(f"The string method {name}() is not allowed")
            if name == "replace":
                return _safe_replace(owner, *args, **kwargs)
            if name == "join" and args:
                _check_weight(args[0], "Joined text")
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


def _check_ast(tree: nodes.Node) -> None:
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
    token = _budget.set(_Budget(time.monotonic() + timeout, MAX_LOOP_ITERATIONS))
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
