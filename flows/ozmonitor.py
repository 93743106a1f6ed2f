"""OpenZeppelin Monitor configuration import: a config directory becomes flows, secrets and a report.

An OZ Monitor directory holds ``networks/*.json`` (chains), ``monitors/*.json`` (what to match
and which triggers to run) and ``triggers/*.json`` (notifications, keyed by trigger id). Three
steps, the first two pure:

* ``read_directory`` / ``read_zip`` / ``read_files`` parse the files into an ``OzConfig``;
* ``plan_import(config, chains)`` translates it into flow graphs, the team secrets they need,
  the networks with no configured chain, the monitors refused and every warning;
* ``import_oz_monitor(team, user, config, ...)`` writes the plan for a team (flows, secrets,
  optionally publishing) and returns an ``ImportResult``.

How OZ's meaning is kept (docs/dag.md, "OpenZeppelin Monitor import", has the table):

* A flow has one trigger while an OZ monitor fires on any of its conditions, so a monitor
  becomes one flow per (event or function condition, network); a monitor with only
  transaction conditions becomes one flow for transactions sent to its addresses and one for
  transactions sent by them. OZ's transaction conditions are AND-ed into each flow.
* A condition that cannot be translated exactly refuses the whole monitor: dropping it would
  fire on more than the monitor asked, and a half-imported monitor would look complete.
* Filter scripts (``trigger_conditions``) are not run: the flows are created but never
  published by the import, with a warning, for the same reason.
* Secrets are never copied into a graph: each becomes a team secret the graph names.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from flows import abi as abi_lib

logger = logging.getLogger(__name__)

SECTIONS = ("networks", "monitors", "triggers")
MAX_FILES = 500
MAX_FILE_BYTES = 2 * 2**20
MAX_TOTAL_BYTES = 20 * 2**20
MAX_CONFIRMATIONS = 1000  # the chain triggers' own limit
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_MONITOR_KEYS = {"name", "paused", "networks", "addresses", "match_conditions", "trigger_conditions", "triggers"}
_TRIGGER_KEYS = {
    "slack": {"slack_url", "message", "retry_policy"},
    "discord": {"discord_url", "message", "retry_policy"},
    "telegram": {"token", "chat_id", "disable_web_preview", "message", "retry_policy"},
    "email": {"host", "port", "username", "password", "message", "sender", "recipients", "retry_policy"},
    "webhook": {"url", "method", "secret", "headers", "message", "payload_mode", "retry_policy"},
}
_JINJA_WORDS = {"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"}


class OzConfigError(Exception):
    """The files are not an OZ Monitor configuration at all (no monitors, not a zip, ...)."""


# -- reading the files ------------------------------------------------------------------------


@dataclass
class OzConfig:
    """The parsed files: networks by slug, monitors in file order, triggers by id."""

    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    monitors: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_files(files: Mapping[str, Mapping[str, Any]]) -> OzConfig:
    """``{"networks": {filename: content}, "monitors": {...}, "triggers": {...}}`` -> OzConfig.

    A content is JSON text (or bytes) or the already parsed object. A file that is not valid
    JSON, or not shaped like its section, is skipped with a warning naming it.
    """
    config = OzConfig()
    unknown = sorted(set(files) - set(SECTIONS))
    if unknown:
        config.warnings.append(f"Ignored {', '.join(unknown)}: only networks, monitors and triggers are read")
    for section in SECTIONS:
        entries = files.get(section) or {}
        if not isinstance(entries, Mapping):
            raise OzConfigError(f"'{section}' must map file names to their content")
        for filename in sorted(entries):
            content = entries[filename]
            where = f"{section}/{filename}"
            if isinstance(content, (bytes, str)):
                try:
                    content = json.loads(content)
                except (ValueError, UnicodeDecodeError) as exc:
                    config.warnings.append(f"Skipped {where}: not valid JSON ({exc})")
                    continue
            if not isinstance(content, dict):
                config.warnings.append(f"Skipped {where}: expected a JSON object")
                continue
            _add_file(config, section, where, content)
    if not config.monitors:
        raise OzConfigError("No monitor found: an OpenZeppelin Monitor configuration has monitors/*.json files")
    return config


def _add_file(config: OzConfig, section: str, where: str, content: dict[str, Any]) -> None:
    if section == "networks":
        slug = content.get("slug")
        if not isinstance(slug, str) or not slug:
            config.warnings.append(f"Skipped {where}: a network needs a slug")
        elif slug in config.networks:
            config.warnings.append(f"Skipped {where}: network {slug} is defined twice")
        else:
            config.networks[slug] = content
    elif section == "monitors":
        config.monitors.append((where, content))
    else:
        for key, trigger in content.items():
            if key in config.triggers:
                config.warnings.append(f"Trigger {key} in {where} is defined twice; the first one is used")
            elif not isinstance(trigger, dict):
                config.warnings.append(f"Skipped trigger {key} in {where}: expected a JSON object")
            else:
                config.triggers[key] = trigger


def read_directory(path: str | Path) -> OzConfig:
    """Read ``<path>/networks``, ``<path>/monitors`` and ``<path>/triggers`` (``*.json`` in each)."""
    root = Path(path)
    if not root.is_dir():
        raise OzConfigError(f"{root} is not a directory")
    files: dict[str, dict[str, bytes]] = {}
    total = count = 0
    for section in SECTIONS:
        folder = root / section
        entries: dict[str, bytes] = {}
        for item in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            data = item.read_bytes()
            total += len(data)
            count += 1
            if len(data) > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES or count > MAX_FILES:
                raise OzConfigError(f"{item} is past the size limits ({MAX_FILES} files, "
                                    f"{MAX_FILE_BYTES // 2**20} MiB a file)")
            entries[item.name] = data
        files[section] = entries
    return read_files(files)


def read_zip(data: bytes) -> OzConfig:
    """A zip of the config directory (at its root or inside one folder) -> OzConfig."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise OzConfigError("The file is not a zip archive") from None
    files: dict[str, dict[str, bytes]] = {section: {} for section in SECTIONS}
    total = 0
    pattern = re.compile(r"^(?:[^/]+/)*?(networks|monitors|triggers)/([^/]+\.json)$")
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > MAX_FILES:
            raise OzConfigError(f"The archive holds more than {MAX_FILES} files")
        for info in infos:
            match = pattern.match(info.filename)
            if not match or "__MACOSX" in info.filename:
                continue
            # Sizes are checked on what is read, not on the header, which a zip bomb can lie in.
            with archive.open(info) as handle:
                content = handle.read(MAX_FILE_BYTES + 1)
            total += len(content)
            if len(content) > MAX_FILE_BYTES or total > MAX_TOTAL_BYTES:
                raise OzConfigError(f"{info.filename} is past the size limits ({MAX_FILE_BYTES // 2**20} MiB a file)")
            files[match.group(1)][match.group(2)] = content
    return read_files(files)


# -- OZ expressions -> Kwala conditions ------------------------------------------------------


class Untranslatable(Exception):
    """An OZ expression or template part with no exact Kwala equivalent."""


@dataclass(frozen=True)
class Operand:
    """Something an OZ expression can name: its Kwala expression and its ABI type."""

    path: str
    type: str


_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|>=|<=|>|<)|(?P<logic>&&|\|\|)|(?P<paren>[()])"
    r"|'(?P<sq>(?:\\.|[^'\\])*)'|\"(?P<dq>(?:\\.|[^\"\\])*)\"|(?P<word>[A-Za-z0-9_.\[\]\-]+))"
)
_WORD_OPS = {"contains", "starts_with", "ends_with"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if not match or match.end() == pos:
            raise Untranslatable(f"cannot read {expr[pos:pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup
        text = match.group(kind)
        if kind in ("sq", "dq"):
            out.append(("str", re.sub(r"\\(.)", r"\1", text)))
        elif kind == "logic":
            out.append(("and" if text == "&&" else "or", text))
        elif kind == "word" and text.lower() in ("and", "or"):
            out.append((text.lower(), text))
        elif kind == "word" and text.lower() in _WORD_OPS:
            out.append(("op", text.lower()))
        else:
            out.append((kind, text))
    return out


class _Parser:
    """OZ's grammar: conditions ``name op value`` joined by AND/OR (AND binds tighter), parentheses."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> str:
        token = self.peek()
        if token is None or token[0] != kind:
            found = repr(token[1]) if token else "the end"
            raise Untranslatable(f"expected {'a ' + kind if kind != 'paren' else 'a parenthesis'}, found {found}")
        self.pos += 1
        return token[1]

    def parse(self) -> tuple:
        tree = self.disjunction()
        if self.peek() is not None:
            raise Untranslatable(f"unexpected {self.peek()[1]!r}")
        return tree

    def disjunction(self) -> tuple:
        parts = [self.conjunction()]
        while self.peek() and self.peek()[0] == "or":
            self.pos += 1
            parts.append(self.conjunction())
        return ("or", parts) if len(parts) > 1 else parts[0]

    def conjunction(self) -> tuple:
        parts = [self.atom()]
        while self.peek() and self.peek()[0] == "and":
            self.pos += 1
            parts.append(self.atom())
        return ("and", parts) if len(parts) > 1 else parts[0]

    def atom(self) -> tuple:
        token = self.peek()
        if token == ("paren", "("):
            self.pos += 1
            inner = self.disjunction()
            if self.take("paren") != ")":
                raise Untranslatable("unbalanced parentheses")
            return inner
        name = self.take("word")
        op = self.take("op")
        value = self.peek()
        if value is None or value[0] not in ("word", "str"):
            raise Untranslatable(f"'{name} {op}' has no value to compare with")
        self.pos += 1
        return ("cmp", name, op, value)


def translate_expression(expr: str, operands: Mapping[str, Operand], positional: list[Operand] | None = None) -> str:
    """An OZ match expression -> an equivalent Kwala condition; Untranslatable when there is none.

    ``operands`` are the names the expression may use (event or function arguments, or
    transaction fields); ``positional`` the same arguments by index (``0 > 100``).
    """
    tree = _Parser(_tokens(expr)).parse()
    return _render(tree, operands, positional or [], top=True)


def _render(tree: tuple, operands: Mapping[str, Operand], positional: list[Operand], top: bool = False) -> str:
    if tree[0] in ("and", "or"):
        text = f" {tree[0]} ".join(_render(part, operands, positional) for part in tree[1])
        return text if top else f"({text})"
    _, name, op, (value_kind, value) = tree
    return _comparison(name, op, value_kind, value, operands, positional)


def _operand(name: str, operands: Mapping[str, Operand], positional: list[Operand]) -> Operand:
    match = re.fullmatch(r"([A-Za-z0-9_]+)((?:\[\d+\])*)", name)
    if not match:
        raise Untranslatable(f"'{name}': only plain names and [index] are translated, not keys of tuples or maps")
    base, indexes = match.groups()
    if base in operands:
        operand = operands[base]
    elif base.isdigit() and int(base) < len(positional):
        operand = positional[int(base)]
    else:
        known = ", ".join(operands) or "none"
        raise Untranslatable(f"'{base}' is not an argument or field here (known: {known})")
    for index in re.findall(r"\[(\d+)\]", indexes):
        element = re.fullmatch(r"(.+)\[\d*\]", operand.type)
        if not element:
            raise Untranslatable(f"'{name}': {operand.type} cannot be indexed")
        operand = Operand(f"{operand.path}[{index}]", element.group(1))
    return operand


def _comparison(name: str, op: str, value_kind: str, value: str, operands: Mapping[str, Operand],
                positional: list[Operand]) -> str:
    operand = _operand(name, operands, positional)
    type_str = operand.type
    if type_str.endswith("]"):
        if op != "contains":
            raise Untranslatable(f"'{name} {op}': lists are only translated with contains or [index]")
        return f'{json.dumps(value.lower())} in ({operand.path}|map("string")|map("lower")|list)'
    if type_str.startswith("("):
        raise Untranslatable(f"'{name}': tuple arguments are not translated")
    if type_str.startswith(("uint", "int")):
        if op not in ("==", "!=", ">", ">=", "<", "<="):
            raise Untranslatable(f"'{name} {op}': {type_str} compares with ==, !=, <, <=, >, >=")
        number = _integer(value, value_kind, name)
        return f"{operand.path} {op} {number}"
    if type_str == "address":
        if op not in ("==", "!="):
            raise Untranslatable(f"'{name} {op}': addresses compare with == and != only")
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
            raise Untranslatable(f"'{name} {op} {value}': {value!r} is not an address")
        # OZ compares addresses regardless of case; Kwala's are checksummed (to may be null).
        return f'(({operand.path} or "")|lower) {op} {json.dumps(value.lower())}'
    if type_str == "bool":
        if op not in ("==", "!=") or value.lower() not in ("true", "false"):
            raise Untranslatable(f"'{name} {op} {value}': booleans compare with == true/false")
        return f"{operand.path} {op} {value.lower()}"
    if type_str == "string" or type_str.startswith("bytes"):
        # OZ compares text (and hex) without regard to case.
        subject = f'(({operand.path} or "")|lower)'
        literal = json.dumps(value.lower())
        if op in ("==", "!="):
            return f"{subject} {op} {literal}"
        if op == "contains":
            return f"{literal} in {subject}"
        if op in ("starts_with", "ends_with"):
            return f"{subject}.{op.replace('_', '')}({literal})"
        raise Untranslatable(f"'{name} {op}': text compares with ==, !=, contains, starts_with, ends_with")
    raise Untranslatable(f"'{name}': {type_str} arguments are not translated")


def _integer(value: str, value_kind: str, name: str) -> int:
    text = value.strip()
    if value_kind == "word" and re.fullmatch(r"-?\d+", text):
        return int(text)
    if value_kind == "word" and re.fullmatch(r"-?\d+\.0+", text):
        return int(text.split(".")[0])
    raise Untranslatable(f"'{name}': {value!r} is not a whole number")


def _arg_path(root: str, name: str) -> str:
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) and name not in _JINJA_WORDS:
        return f"{root}.{name}"
    return f"{root}[{json.dumps(name)}]"


def _argument_operands(params: list[dict[str, Any]]) -> tuple[dict[str, Operand], list[Operand]]:
    named: dict[str, Operand] = {}
    positional: list[Operand] = []
    for index, param in enumerate(params):
        type_str = abi_lib.canonical_type(param)
        positional.append(Operand(f"trigger.args_list[{index}]", type_str))
        if param.get("name"):
            named[param["name"]] = Operand(_arg_path("trigger.args", param["name"]), type_str)
    return named, positional


# The transaction fields OZ evaluates, as chain.transaction names them.
TX_OPERANDS = {
    "value": Operand("trigger.value", "uint256"),
    "from": Operand("trigger.from", "address"),
    "to": Operand("trigger.to", "address"),
    "hash": Operand("trigger.hash", "string"),
    "gas_price": Operand("trigger.effective_gas_price", "uint256"),
    "nonce": Operand("trigger.nonce", "uint256"),
    "input": Operand("trigger.input", "string"),
    "gas_used": Operand("trigger.gas_used", "uint256"),
    "transaction_index": Operand("trigger.tx_index", "uint64"),
}
_TX_MISSING = {"max_fee_per_gas", "max_priority_fee_per_gas", "gas_limit"}


def _tx_expression(expr: str) -> str:
    for name in _TX_MISSING:
        if re.search(rf"\b{name}\b", expr):
            raise Untranslatable(f"'{name}' is not in what Kwala reads of a transaction")
    return translate_expression(expr, TX_OPERANDS)


# -- message templates -----------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateContext:
    """What an OZ ${variable} can mean in one flow."""

    kind: str  # "event", "function" or "transaction"
    monitor_name: str
    params: tuple[dict[str, Any], ...] = ()
    signature: str = ""


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_OLD_STYLE = (
    (re.compile(r"^monitor_name$"), lambda m: "monitor.name"),
    (re.compile(r"^transaction_(hash|from|to|value)$"), lambda m: f"transaction.{m.group(1)}"),
    (re.compile(r"^event_(\d+)_signature$"), lambda m: f"events.{m.group(1)}.signature"),
    (re.compile(r"^event_(\d+)_(.+)$"), lambda m: f"events.{m.group(1)}.args.{m.group(2)}"),
    (re.compile(r"^function_(\d+)_signature$"), lambda m: f"functions.{m.group(1)}.signature"),
    (re.compile(r"^function_(\d+)_(.+)$"), lambda m: f"functions.{m.group(1)}.args.{m.group(2)}"),
)
_TX_TEMPLATE_FIELDS = {"hash": "hash", "from": "from", "to": "to", "value": "value", "nonce": "nonce",
                       "input": "input", "gas_used": "gas_used", "gas_price": "effective_gas_price",
                       "transaction_index": "tx_index"}


def _print(expr: str) -> str:
    return "{{ " + expr + " }}"


def _literal(text: str) -> str:
    """Plain text inside a Kwala template: Jinja's own markers are written as a string expression."""
    if not text or not re.search(r"\{[{%#]", text):
        return text
    return "{{ " + json.dumps(text) + " }}"


def translate_template(text: str, ctx: TemplateContext) -> tuple[str, list[str]]:
    """An OZ message (``${events.0.args.value}``) -> a Kwala template, with a warning per variable
    that has no value in this flow (it is left out, as OZ leaves a variable of another context empty)."""
    out: list[str] = []
    warnings: list[str] = []
    pos = 0
    for match in _VARIABLE.finditer(text):
        out.append(_literal(text[pos:match.start()]))
        pos = match.end()
        replacement, problem = _variable(match.group(1).strip(), ctx)
        if problem:
            warnings.append(f"${{{match.group(1)}}}: {problem}")
        out.append(replacement)
    out.append(_literal(text[pos:]))
    return "".join(out), warnings


def _variable(name: str, ctx: TemplateContext) -> tuple[str, str | None]:
    for pattern, rewrite in _OLD_STYLE:
        match = pattern.match(name)
        if match:
            name = rewrite(match)
            break
    parts = name.split(".")
    if name == "monitor.name":
        return _literal(ctx.monitor_name), None
    if parts[0] == "transaction" and len(parts) == 2:
        if parts[1] == "hash":
            return ("{{ trigger.tx_hash }}" if ctx.kind == "event" else "{{ trigger.hash }}"), None
        if parts[1] in _TX_TEMPLATE_FIELDS and ctx.kind != "event":
            return _print(f"trigger.{_TX_TEMPLATE_FIELDS[parts[1]]}"), None
        if parts[1] in _TX_TEMPLATE_FIELDS:
            return "", "an event flow does not read the transaction's sender, recipient or value; left out"
        return "", "not a transaction field Kwala reads; left out"
    if parts[0] in ("events", "functions"):
        own = "events" if ctx.kind == "event" else "functions" if ctx.kind == "function" else None
        if parts[0] != own:
            return "", f"a {ctx.kind} flow has no matched {parts[0][:-1]}; left out (OZ leaves it empty too)"
        if len(parts) == 1:
            what = "event" if own == "events" else "function"
            return _print(f"trigger.{what}") + " " + _print("trigger.args"), None
        if parts[1] != "0":
            return "", f"the flow runs for one {parts[0][:-1]}, so only index 0 has a value; left out"
        if len(parts) == 2:
            return "{{ trigger.args }}", None
        if parts[2:] == ["signature"]:
            return _literal(ctx.signature), None
        if parts[2] == "args" and len(parts) == 3:
            return "{{ trigger.args }}", None
        if parts[2] == "args" and len(parts) == 4:
            named, positional = _argument_operands(list(ctx.params))
            if parts[3] in named:
                return _print(named[parts[3]].path), None
            if parts[3].isdigit() and int(parts[3]) < len(positional):
                return _print(positional[int(parts[3])].path), None
            return "", f"{ctx.signature} has no argument '{parts[3]}'; left out"
    return "", "not a variable Kwala knows; left out"


# -- planning: the pure translation ------------------------------------------------------------


@dataclass
class SecretNeed:
    """A team secret a graph names. ``value`` (a Plain secret) never appears in a repr or a log."""

    name: str
    trigger: str
    field: str
    source: str  # "plain", "environment" or "vault"
    reference: str = ""  # the environment variable or vault secret OZ read it from
    value: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        if self.source == "environment":
            return f"was the environment variable {self.reference}"
        if self.source == "vault":
            return f"was the HashiCorp Cloud Vault secret {self.reference}"
        return "a plain value in the file"


@dataclass
class PlannedFlow:
    name: str
    description: str
    graph: dict[str, Any]
    monitor: str
    network: str
    paused: bool = False
    hold: list[str] = field(default_factory=list)  # why the import must not publish it
    secrets: list[str] = field(default_factory=list)


@dataclass
class MissingNetwork:
    slug: str
    name: str
    chain_id: int | None
    monitors: list[str] = field(default_factory=list)


@dataclass
class Refusal:
    monitor: str
    file: str
    reasons: list[str]


@dataclass
class Plan:
    flows: list[PlannedFlow] = field(default_factory=list)
    secrets: dict[str, SecretNeed] = field(default_factory=dict)
    missing_networks: dict[str, MissingNetwork] = field(default_factory=dict)
    refused: list[Refusal] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Unit:
    """One flow's trigger before the network is known: its type, config, name and template context."""

    suffix: str
    trigger_type: str
    config: dict[str, Any]
    template: TemplateContext
    about: str


def plan_import(config: OzConfig, chains: Mapping[int, str]) -> Plan:
    """Translate ``config`` for a server whose enabled chains are ``chains`` ({chain id: slug})."""
    plan = Plan(warnings=list(config.warnings))
    if any(n.get("rpc_urls") for n in config.networks.values()):
        plan.warnings.append("The networks' rpc_urls, cron_schedule and block settings are not imported: "
                             "Kwala reads each chain through the endpoints its operator configured")
    used_names: set[str] = set()
    for filename, monitor in config.monitors:
        _plan_monitor(plan, config, filename, monitor, chains, used_names)
    plan.warnings = list(dict.fromkeys(plan.warnings))
    return plan


def _plan_monitor(plan: Plan, config: OzConfig, filename: str, monitor: dict[str, Any],
                  chains: Mapping[int, str], used_names: set[str]) -> None:
    name = monitor.get("name")
    if not isinstance(name, str) or not name.strip():
        plan.refused.append(Refusal("", filename, ["a monitor needs a name"]))
        return
    name = name.strip()
    warn = plan.warnings.append
    extra = sorted(set(monitor) - _MONITOR_KEYS)
    if extra:
        warn(f"Monitor {name}: ignored unknown field(s) {', '.join(extra)}")

    networks, reasons = _monitor_networks(plan, config, name, monitor, chains)
    if reasons:
        plan.refused.append(Refusal(name, filename, reasons))
        return
    units, reasons = _monitor_units(name, monitor)
    if reasons:
        plan.refused.append(Refusal(name, filename, reasons))
        return

    hold: list[str] = []
    scripts = monitor.get("trigger_conditions") or []
    scripts = scripts if isinstance(scripts, list) else [scripts]
    if scripts:
        paths = ", ".join(str(s.get("script_path", "?")) if isinstance(s, dict) else "?" for s in scripts)
        warn(f"Monitor {name}: its filter script(s) ({paths}) are not run by Kwala, so its flows would fire "
             "on more than the monitor did; they are imported unpublished: add the script's logic to the "
             "trigger's condition, then publish")
        hold.append(f"filter script(s) not translated: {paths}")

    listed = monitor.get("triggers") or []
    trigger_keys = [k for k in (listed if isinstance(listed, list) else [listed]) if isinstance(k, str)]
    for key in trigger_keys:
        if key not in config.triggers:
            warn(f"Monitor {name}: trigger {key} is not defined in triggers/; it is left out")
    known = [k for k in trigger_keys if k in config.triggers]
    if not known:
        warn(f"Monitor {name}: no trigger to run, so its flows have no action; they are imported unpublished")
        hold.append("no action")

    paused = monitor.get("paused") is True
    for slug, chain_id, confirmations in networks:
        for unit in units:
            flow_name = f"{name}: {unit.suffix}" + (f" ({slug})" if len(networks) > 1 else "")
            flow_name = _unique(flow_name[:120], used_names)
            nodes, secrets = _action_nodes(plan, known, config.triggers, unit.template)
            trigger_config = {**unit.config, "chain": chain_id, "confirmations": confirmations}
            graph = {
                "nodes": [
                    {"id": "trigger", "type": unit.trigger_type, "name": unit.suffix[:100],
                     "position": {"x": 0, "y": 0}, "config": trigger_config},
                    *nodes,
                ],
                "edges": [
                    {"id": f"e{i + 1}", "source": "trigger", "source_port": "out", "target": node["id"]}
                    for i, node in enumerate(nodes)
                ],
            }
            description = (f"Imported from OpenZeppelin Monitor: monitor “{name}” ({filename}) on network "
                           f"{slug}. {unit.about}")
            plan.flows.append(PlannedFlow(flow_name, description, graph, name, slug, paused, list(hold), secrets))


def _unique(name: str, used: set[str]) -> str:
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name[:112]} ({n})"
    used.add(candidate)
    return candidate


def _monitor_networks(plan: Plan, config: OzConfig, name: str, monitor: dict[str, Any],
                      chains: Mapping[int, str]) -> tuple[list[tuple[str, int, int]], list[str]]:
    """The monitor's networks that have a configured chain: (slug, chain id, confirmations)."""
    slugs = monitor.get("networks")
    if not isinstance(slugs, list) or not slugs:
        return [], ["it lists no networks"]
    found: list[tuple[str, int, int]] = []
    other_types: list[str] = []
    for slug in slugs:
        network = config.networks.get(slug) if isinstance(slug, str) else None
        if network is None:
            _missing(plan, str(slug), str(slug), None, name)
            plan.warnings.append(f"Monitor {name}: network {slug} has no file in networks/; listed as missing")
            continue
        network_type = str(network.get("network_type") or "EVM")
        if network_type.upper() != "EVM":
            other_types.append(f"{slug} ({network_type})")
            continue
        chain_id = network.get("chain_id")
        if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
            plan.warnings.append(f"Network {slug} has no valid chain_id; its monitors are not imported there")
            continue
        if chain_id not in chains:
            _missing(plan, slug, str(network.get("name") or slug), chain_id, name)
            continue
        confirmations = network.get("confirmation_blocks") or 0
        if not isinstance(confirmations, int) or confirmations < 0:
            confirmations = 0
        if confirmations > MAX_CONFIRMATIONS:
            plan.warnings.append(f"Network {slug}: confirmation_blocks {confirmations} is above Kwala's "
                                 f"{MAX_CONFIRMATIONS}; the flows wait {MAX_CONFIRMATIONS} blocks")
            confirmations = MAX_CONFIRMATIONS
        found.append((slug, chain_id, confirmations))
    if other_types and not found and len(other_types) == len(slugs):
        return [], [f"Kwala watches EVM chains only; this monitor is on {', '.join(other_types)}"]
    for other in other_types:
        plan.warnings.append(f"Monitor {name}: network {other} is not an EVM chain; not imported there")
    return found, []


def _missing(plan: Plan, slug: str, name: str, chain_id: int | None, monitor: str) -> None:
    entry = plan.missing_networks.setdefault(slug, MissingNetwork(slug, name, chain_id))
    if monitor not in entry.monitors:
        entry.monitors.append(monitor)


def _monitor_units(name: str, monitor: dict[str, Any]) -> tuple[list[_Unit], list[str]]:
    """The flows one monitor needs on any network, or the reasons it cannot be translated."""
    reasons: list[str] = []
    addresses: list[tuple[str, list[dict[str, Any]]]] = []
    entries = monitor.get("addresses") or []
    if not isinstance(entries, list):
        return [], ["addresses must be a list"]
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str) or not is_address(entry["address"]):
            reasons.append(f"addresses.{index}: not an EVM address")
            continue
        spec = entry.get("contract_spec", entry.get("abi"))
        try:
            abi = abi_lib.parse_abi_json(spec) if spec not in (None, "", []) else []
        except abi_lib.AbiError as exc:
            reasons.append(f"the contract_spec of {entry['address']} is not a usable ABI: {exc}")
            continue
        addresses.append((to_checksum_address(entry["address"]), abi))
    if not addresses and not reasons:
        reasons.append("it watches no address, so OpenZeppelin Monitor matches nothing")
    conditions = monitor.get("match_conditions") or {}
    if not isinstance(conditions, dict):
        reasons.append("match_conditions must be an object")
        conditions = {}
    events = [c for c in conditions.get("events") or [] if isinstance(c, dict)]
    functions = [c for c in conditions.get("functions") or [] if isinstance(c, dict)]
    transactions = [c for c in conditions.get("transactions") or [] if isinstance(c, dict)]
    if reasons:
        return [], reasons

    units: list[_Unit] = []
    for condition in events:
        unit = _event_unit(name, condition, addresses, transactions, reasons)
        if unit:
            units.append(unit)
    for condition in functions:
        unit = _function_unit(name, condition, addresses, transactions, reasons)
        if unit:
            units.append(unit)
    if not events and not functions:
        units.extend(_transaction_units(name, addresses, transactions, reasons))
    return ([], reasons) if reasons else (units, [])


def _fragment(addresses: list[tuple[str, list[dict[str, Any]]]], kind: str, signature: str
              ) -> tuple[dict[str, Any] | None, list[str]]:
    """The ABI fragment for an OZ signature and the addresses whose ABI declares it (OZ decodes
    with each address's own ABI, so an address without it never matches)."""
    wanted = signature.replace(" ", "")
    found: dict[str, Any] | None = None
    where: list[str] = []
    for address, abi in addresses:
        for fragment in abi:
            if fragment.get("type", "function") == kind and abi_lib.signature_of(fragment) == wanted:
                found = found or fragment
                if address not in where:
                    where.append(address)
                break
    return found, where


def _signature_text(fragment: dict[str, Any], kind: str) -> Any:
    """A readable Solidity signature for the editor, or the fragment itself when it has tuples."""
    params = fragment.get("inputs") or []
    if any(abi_lib.canonical_type(p).startswith("(") or not p.get("name") for p in params):
        return {k: fragment[k] for k in ("type", "name", "inputs", "outputs", "stateMutability", "anonymous")
                if k in fragment}
    inner = ", ".join(
        f"{p['type']}{' indexed' if kind == 'event' and p.get('indexed') else ''} {p['name']}" for p in params
    )
    return f"{fragment['name']}({inner})"


def _event_unit(name, condition, addresses, transactions, reasons) -> _Unit | None:
    signature = condition.get("signature")
    if not isinstance(signature, str):
        reasons.append("an event condition has no signature")
        return None
    fragment, where = _fragment(addresses, "event", signature)
    if fragment is None:
        reasons.append(f"event {signature}: no contract_spec of the monitor's addresses declares it, "
                       "so it cannot be decoded (OpenZeppelin Monitor would not match it either)")
        return None
    if fragment.get("anonymous"):
        reasons.append(f"event {signature} is anonymous; Kwala matches events by topic")
        return None
    gate = _event_transaction_gate(transactions)
    if gate is not True:
        reasons.append(f"event {signature}: {gate}")
        return None
    condition_text = _translated(condition.get("expression"), fragment, f"event {signature}", reasons)
    if condition_text is False:
        return None
    config = {"addresses": where, "event": _signature_text(fragment, "event"), "filters": []}
    if condition_text:
        config["condition"] = condition_text
    about = f"Matches {signature}" + (f" where {condition['expression']}" if condition.get("expression") else "")
    ctx = TemplateContext("event", name, tuple(fragment.get("inputs") or ()), abi_lib.signature_of(fragment))
    return _Unit(fragment["name"], "chain.event", config, ctx, about + ".")


def _translated(expr: Any, fragment: dict[str, Any], what: str, reasons: list[str]) -> str | None | bool:
    """The Kwala condition for an argument expression; None when there is none, False when refused."""
    if expr in (None, ""):
        return None
    if not isinstance(expr, str):
        reasons.append(f"{what}: the expression must be text")
        return False
    named, positional = _argument_operands(fragment.get("inputs") or [])
    try:
        return translate_expression(expr, named, positional)
    except Untranslatable as exc:
        reasons.append(f"{what}: cannot translate {expr!r}: {exc}")
        return False


def _status(condition: dict[str, Any]) -> str:
    status = str(condition.get("status") or "Any").lower()
    return {"success": "success", "failure": "failed", "failed": "failed"}.get(status, "any")


def _event_transaction_gate(transactions: list[dict[str, Any]]) -> bool | str:
    """OZ ANDs its transaction conditions (any of them) with the event: True when that always
    holds for a transaction that emitted an event, else why it cannot be translated."""
    if not transactions:
        return True
    expressions = []
    for condition in transactions:
        if _status(condition) == "failed":
            continue  # a reverted transaction emits no event
        if not condition.get("expression"):
            return True
        expressions.append(condition["expression"])
    if not expressions:
        return "its transaction conditions only accept failed transactions, which emit no events"
    return (f"the transaction condition {expressions[0]!r} reads the transaction, which an event flow "
            "does not see; use a function or transaction condition instead")


def _transaction_terms(transactions: list[dict[str, Any]], reasons: list[str]) -> tuple[str, str | None]:
    """OZ's transaction conditions (any one must hold) -> (chain.transaction status, condition)."""
    if not transactions:
        return "any", None
    terms: list[list[str]] = []
    statuses = set()
    for condition in transactions:
        status = _status(condition)
        statuses.add(status)
        expr = condition.get("expression")
        term = []
        if expr:
            try:
                term.append(_tx_expression(str(expr)))
            except Untranslatable as exc:
                reasons.append(f"transaction condition {expr!r}: {exc}")
                return "any", None
        terms.append([status, *term])
    if len(statuses) == 1:
        status = statuses.pop()
        if any(len(t) == 1 for t in terms):
            return status, None
        return status, " or ".join(f"({t[1]})" if len(terms) > 1 else t[1] for t in terms)
    # Mixed statuses: the status goes into the condition, term by term.
    if any(t == ["any"] for t in terms):
        return "any", None
    parts = []
    for status, *expr in terms:
        clause = [f'trigger.status == "{status}"'] if status != "any" else []
        clause += [f"({e})" for e in expr]
        if not clause:
            return "any", None
        parts.append("(" + " and ".join(clause) + ")")
    return "any", " or ".join(parts)


def _function_unit(name, condition, addresses, transactions, reasons) -> _Unit | None:
    signature = condition.get("signature")
    if not isinstance(signature, str):
        reasons.append("a function condition has no signature")
        return None
    fragment, where = _fragment(addresses, "function", signature)
    if fragment is None:
        reasons.append(f"function {signature}: no contract_spec of the monitor's addresses declares it, "
                       "so calls cannot be decoded (OpenZeppelin Monitor would not match them either)")
        return None
    argument_condition = _translated(condition.get("expression"), fragment, f"function {signature}", reasons)
    if argument_condition is False:
        return None
    status, tx_condition = _transaction_terms(transactions, reasons)
    parts = [c for c in (argument_condition, tx_condition) if c]
    config: dict[str, Any] = {"to": where, "from": [], "function": _signature_text(fragment, "function"),
                              "filters": [], "status": status}
    if parts:
        config["condition"] = " and ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
    about = f"Matches calls of {signature}" + (f" where {condition['expression']}" if condition.get("expression")
                                               else "")
    ctx = TemplateContext("function", name, tuple(fragment.get("inputs") or ()), abi_lib.signature_of(fragment))
    return _Unit(f"{fragment['name']}()", "chain.transaction", config, ctx, about + ".")


def _transaction_units(name, addresses, transactions, reasons) -> list[_Unit]:
    status, condition = _transaction_terms(transactions, reasons)
    if reasons:
        return []
    watched = [a for a, _ in addresses]
    # OZ matches a transaction sent to or by a watched address. chain.transaction ANDs `to` with
    # `from`, so: one flow for what is sent to them, one for what they send elsewhere (no double).
    not_to_watched = (f'((trigger.to or "")|lower) not in '
                      f"[{', '.join(json.dumps(a.lower()) for a in watched)}]")
    ctx = TemplateContext("transaction", name)
    units = []
    for suffix, config, about in (
        ("transactions to", {"to": watched, "from": []}, "Matches transactions sent to its addresses."),
        ("transactions from", {"to": [], "from": watched},
         "Matches transactions its addresses send to other addresses."),
    ):
        parts = [c for c in (condition, not_to_watched if suffix == "transactions from" else None) if c]
        config = {**config, "filters": [], "status": status}
        if parts:
            config["condition"] = " and ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
        units.append(_Unit(suffix, "chain.transaction", config, ctx, about))
    return units


# -- actions ----------------------------------------------------------------------------------


def _secret_value(raw: Any) -> tuple[str, str] | None:
    """An OZ SecretValue ({"type": "Plain"|"Environment"|"HashicorpCloudVault", "value": ...}, or a
    bare string) -> (source, value)."""
    if isinstance(raw, str) and raw:
        return "plain", raw
    if isinstance(raw, dict) and isinstance(raw.get("value"), str) and raw["value"]:
        kind = str(raw.get("type") or "").lower()
        source = {"plain": "plain", "environment": "environment", "hashicorpcloudvault": "vault"}.get(kind)
        return (source, raw["value"]) if source else None
    return None


def secret_name(trigger_key: str, suffix: str) -> str:
    """The team secret for one OZ trigger's field: ``evm_large_transfer_usdc_slack`` -> ``EVM_LARGE_TRANSFER_USDC_SLACK_URL``."""
    base = re.sub(r"[^A-Za-z0-9]+", "_", trigger_key).strip("_").upper() or "OZ_TRIGGER"
    if base[0].isdigit():
        base = f"OZ_{base}"
    return f"{base[:63 - len(suffix)]}_{suffix}"


def _need_secret(plan: Plan, key: str, field_name: str, suffix: str, raw: Any) -> str | None:
    parsed = _secret_value(raw)
    if parsed is None:
        return None
    source, value = parsed
    name = base = secret_name(key, suffix)
    n = 1
    while name in plan.secrets and plan.secrets[name].trigger != key:
        # Two trigger ids that differ only in punctuation must not share a secret.
        n += 1
        name = f"{base[:60]}_{n}"
    if name not in plan.secrets:
        plan.secrets[name] = SecretNeed(name, key, field_name, source,
                                        reference="" if source == "plain" else value,
                                        value=value if source == "plain" else None)
    return name


def _retry(config: dict[str, Any]) -> dict[str, int]:
    """OZ retries a notification 3 times by default (retry_policy.max_retries)."""
    policy = config.get("retry_policy") if isinstance(config.get("retry_policy"), dict) else {}
    retries = policy.get("max_retries", 3)
    retries = retries if isinstance(retries, int) and not isinstance(retries, bool) else 3
    initial_ms = policy.get("initial_backoff", 250)
    backoff = min(max(1, round(initial_ms / 1000)), 86400) if isinstance(initial_ms, (int, float)) else 1
    return {"max_attempts": max(1, min(retries + 1, 25)), "backoff_seconds": backoff}


def _action_nodes(plan: Plan, keys: list[str], triggers: dict[str, dict[str, Any]],
                  ctx: TemplateContext) -> tuple[list[dict[str, Any]], list[str]]:
    nodes: list[dict[str, Any]] = []
    secrets: list[str] = []
    used_ids: set[str] = {"trigger"}
    for key in keys:
        trigger = triggers[key]
        node = _action_node(plan, key, trigger, ctx, secrets)
        if node is None:
            continue
        node_id = re.sub(r"[^A-Za-z0-9_]", "_", key)[:60] or "action"
        if not re.match(r"[A-Za-z_]", node_id):
            node_id = f"a_{node_id}"[:60]
        candidate, n = node_id, 1
        while candidate in used_ids:
            n += 1
            candidate = f"{node_id}_{n}"
        used_ids.add(candidate)
        node["id"] = candidate
        node["position"] = {"x": 320, "y": 140 * len(nodes)}
        nodes.append(node)
    return nodes, secrets


def _action_node(plan: Plan, key: str, trigger: dict[str, Any], ctx: TemplateContext,
                 secrets: list[str]) -> dict[str, Any] | None:
    warn = plan.warnings.append
    kind = str(trigger.get("trigger_type") or "").lower()
    label = str(trigger.get("name") or key)[:100]
    config = trigger.get("config") if isinstance(trigger.get("config"), dict) else {}
    if kind == "script":
        warn(f"Trigger {key}: script triggers are not run by Kwala; it is left out (an HTTP request "
             "to a service that runs it can replace it)")
        return None
    if kind not in _TRIGGER_KEYS:
        warn(f"Trigger {key}: trigger_type {kind or '(none)'} is not supported; it is left out")
        return None
    extra = sorted(set(config) - _TRIGGER_KEYS[kind])
    if extra:
        warn(f"Trigger {key}: ignored unknown field(s) {', '.join(extra)}")
    message = config.get("message") if isinstance(config.get("message"), dict) else {}
    title, title_warnings = translate_template(str(message.get("title") or ""), ctx)
    body, body_warnings = translate_template(str(message.get("body") or ""), ctx)
    for problem in title_warnings + body_warnings:
        warn(f"Trigger {key} in {ctx.kind} flows of monitor {ctx.monitor_name}: {problem}")

    def needs(field_name: str, suffix: str, what: str) -> str | None:
        name = _need_secret(plan, key, field_name, suffix, config.get(field_name))
        if name is None:
            warn(f"Trigger {key}: no usable {what} ({field_name}); it is left out")
        elif name not in secrets:
            secrets.append(name)
        return name

    retry = _retry(config)
    if kind in ("slack", "discord"):
        secret = needs(f"{kind}_url", "URL", "webhook URL")
        if secret is None:
            return None
        text = "\n\n".join(p for p in (f"*{title}*" if title else "", body) if p) or label
        return {"type": f"notify.{kind}", "name": label,
                "config": {"webhook_secret": secret, "text" if kind == "slack" else "content": text, "retry": retry}}
    if kind == "telegram":
        secret = needs("token", "TOKEN", "bot token")
        if secret is None:
            return None
        if "disable_web_preview" in config:
            warn(f"Trigger {key}: disable_web_preview is not supported by Kwala's Telegram step; ignored")
        text = "\n\n".join(p for p in (title, body) if p) or label
        return {"type": "notify.telegram", "name": label,
                "config": {"bot_token_secret": secret, "chat_id": _literal(str(config.get("chat_id") or "")),
                           "text": text, "retry": retry}}
    if kind == "email":
        recipients = [r for r in config.get("recipients") or [] if isinstance(r, str)]
        if not recipients:
            warn(f"Trigger {key}: an email trigger without recipients; it is left out")
            return None
        unused = [f for f in ("host", "port", "username", "password", "sender") if f in config]
        if unused:
            warn(f"Trigger {key}: Kwala sends email through its own mail settings, so {', '.join(unused)} "
                 "are not used (no secret is made for them)")
        return {"type": "notify.email", "name": label,
                "config": {"to": recipients, "subject": title or label, "body": body or title or label,
                           "retry": retry}}
    # webhook
    raw_url = config.get("url")
    if isinstance(raw_url, str) and raw_url:
        url = _literal(raw_url)
    else:
        secret = needs("url", "URL", "URL")
        if secret is None:
            return None
        url = _print(f"secrets.{secret}")
    if config.get("secret"):
        warn(f"Trigger {key}: OZ's HMAC signature (X-Signature with the webhook secret) is not made; Kwala "
             "signs its requests with the flow's own signing secret (Standard Webhooks headers) instead")
    method = str(config.get("method") or "POST").upper()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        warn(f"Trigger {key}: method {method} is not supported; POST is used")
        method = "POST"
    headers = {str(k): _literal(str(v)) for k, v in (config.get("headers") or {}).items()} \
        if isinstance(config.get("headers"), dict) else {}
    if str(config.get("payload_mode") or "template").lower() == "raw":
        warn(f"Trigger {key}: payload_mode raw sends OZ's whole match object; Kwala sends the monitor's "
             "name and the trigger's data instead (another shape)")
        payload: Any = {"monitor": {"name": _literal(ctx.monitor_name)}, "trigger": "{{ trigger }}"}
    else:
        payload = {"title": title, "body": body}
    return {"type": "http.request", "name": label,
            "config": {"method": method, "url": url, "headers": headers,
                       "body": payload if method != "GET" else None, "retry": retry}}


# -- writing: flows and secrets for a team ----------------------------------------------------


@dataclass
class ImportedFlow:
    code: str
    name: str
    monitor: str
    network: str
    published: bool
    paused: bool
    not_published: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    flows: list[ImportedFlow] = field(default_factory=list)
    secrets_stored: list[str] = field(default_factory=list)
    secrets_to_fill: list[dict[str, str]] = field(default_factory=list)
    missing_networks: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "flows": [vars(f) for f in self.flows],
            "secrets_stored": self.secrets_stored,
            "secrets_to_fill": self.secrets_to_fill,
            "missing_networks": self.missing_networks,
            "refused": self.refused,
            "warnings": self.warnings,
        }


def import_oz_monitor(team, user, config: OzConfig, *, publish: bool = False, store_secrets: bool = True,
                      via: str = "app") -> ImportResult:
    """Create the flows of an OZ Monitor configuration in ``team``; returns what was done.

    Preconditions: the caller checked that ``user`` may create flows in the team (editor or
    more); ``store_secrets`` says whether they may also write team secrets (admin or more; the
    CLI may). Plain secret values are stored encrypted as team secrets (audited) unless a secret
    of that name exists, which keeps its value; the other secrets are listed to fill in. A flow
    whose name exists in the team already is skipped, so running the import again after adding
    a chain or a secret adds what is missing. Flows and secrets are written in one transaction;
    with ``publish`` each flow that compiles and has no reason to wait is then published.
    """
    from django.db import transaction

    from executor import interface
    from flows import actions
    from flows.models import Flow, Secret

    plan = plan_import(config, interface.enabled_chains())
    result = ImportResult(
        missing_networks=[vars(m) for m in plan.missing_networks.values()],
        refused=[vars(r) for r in plan.refused],
        warnings=list(plan.warnings),
    )
    for slug, missing in plan.missing_networks.items():
        chain = f"chain id {missing.chain_id}" if missing.chain_id else "no chain id"
        result.warnings.append(f"Network {slug} ({chain}) has no configured chain: its flows for "
                               f"{', '.join(missing.monitors)} are not created; add the chain and import again")
    needed = {name for flow in plan.flows for name in flow.secrets}
    with transaction.atomic():
        existing = set(Secret.objects.filter(team=team).values_list("name", flat=True))
        for name in sorted(needed):
            need = plan.secrets[name]
            if name in existing:
                continue
            if need.source == "plain" and store_secrets:
                _store_secret(team, user, name, need.value or "")
                result.secrets_stored.append(name)
            else:
                why = need.describe() if need.source != "plain" else "a plain value you may not store (admins only)"
                result.secrets_to_fill.append({"name": name, "trigger": need.trigger, "field": need.field,
                                               "source": need.source, "hint": why})
        to_fill = {s["name"] for s in result.secrets_to_fill}
        taken = set(Flow.objects.filter(team=team).values_list("name", flat=True))
        created: list[tuple[PlannedFlow, Flow]] = []
        for planned in plan.flows:
            if planned.name in taken:
                result.warnings.append(f"A flow named “{planned.name}” exists already; not imported again")
                continue
            flow = actions.do_create_flow(team, user, planned.name, planned.description, planned.graph)
            created.append((planned, flow))
            logger.info("OZ import: flow %s (%s) created in team %s", flow.code, planned.monitor, team.code)

    for planned, flow in created:
        reasons = list(planned.hold)
        missing_secrets = [s for s in planned.secrets if s in to_fill]
        if missing_secrets:
            reasons.append(f"fill in the secret(s) {', '.join(missing_secrets)}, then publish")
        published = False
        if publish and not reasons:
            try:
                actions.do_publish_version(flow, user, via=via)
                published = True
            except actions.CompileError as exc:
                reasons.extend(p.message for p in exc.problems)
        if planned.paused:
            actions.do_pause_flow(flow, user)
        result.flows.append(ImportedFlow(flow.code, flow.name, planned.monitor, planned.network, published,
                                         planned.paused, [] if published else reasons))
    logger.info("OZ import into team %s via %s: %d flow(s), %d published, %d monitor(s) refused (%s), "
                "%d network(s) missing, %d secret(s) to fill in, %d warning(s)", team.code, via, len(result.flows),
                sum(f.published for f in result.flows), len(result.refused),
                ", ".join(r["monitor"] or r["file"] for r in result.refused) or "none",
                len(result.missing_networks), len(result.secrets_to_fill), len(result.warnings))
    return result


def _store_secret(team, user, name: str, value: str) -> None:
    """A new team secret (encrypted, audited); call inside the import's transaction. Never logs the value."""
    from flows import audit
    from flows.models import Secret

    secret = Secret(team=team, name=name, created_by=user if user is not None and user.is_authenticated else None)
    secret.set_value(value)
    secret.save()
    audit.record(team, user, "secret.created", name, via="oz-monitor import")


def summary_lines(result: ImportResult) -> Iterable[str]:
    """The result as lines for people (the CLI and the import page say the same)."""
    for flow in result.flows:
        state = "published" if flow.published else "draft"
        if flow.paused:
            state += ", paused"
        why = f" — not published: {'; '.join(flow.not_published)}" if flow.not_published else ""
        yield f"flow {flow.code}: {flow.name} ({state}){why}"
    for name in result.secrets_stored:
        yield f"secret {name}: stored from the configuration"
    for need in result.secrets_to_fill:
        yield f"secret {need['name']}: to fill in ({need['hint']}; trigger {need['trigger']})"
    for missing in result.missing_networks:
        chain = f"chain id {missing['chain_id']}" if missing["chain_id"] else "no chain id"
        yield f"missing network {missing['slug']} ({chain}): {', '.join(missing['monitors'])}"
    for refusal in result.refused:
        yield f"refused monitor {refusal['monitor'] or refusal['file']}: {'; '.join(refusal['reasons'])}"
    for warning in result.warnings:
        yield f"warning: {warning}"
