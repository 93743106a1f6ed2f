"""The templates gallery: ready-made flows, one YAML file each in this directory.

A template has a title, description, category, the inputs a user fills in
(name, label, kind, default) and a graph in which ``${name}`` stands for an
input. A string that is exactly ``${name}`` becomes the typed value (a chain id
stays a number); inside longer text the value is written in as text.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from eth_utils import is_address, to_checksum_address

__all__ = ["INPUT_KINDS", "Template", "TemplateError", "TemplateInput", "get_template", "instantiate", "templates"]

GALLERY_DIR = Path(__file__).resolve().parent
INPUT_KINDS = ("address", "chain", "secret", "signer", "text", "int", "email", "url")
_PLACEHOLDER = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")
_WHOLE = re.compile(r"^\$\{([a-z_][a-z0-9_]*)\}$")
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class TemplateError(Exception):
    """Bad input values: `errors` maps input name to a message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True)
class TemplateInput:
    name: str
    label: str
    kind: str
    default: Any = None
    help: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "kind": self.kind, "default": self.default, "help": self.help}


@dataclass(frozen=True)
class Template:
    slug: str
    title: str
    description: str
    category: str
    inputs: tuple[TemplateInput, ...]
    graph: dict[str, Any] = field(repr=False)

    def node_types(self) -> list[str]:
        return [node["type"] for node in self.graph["nodes"]]

    @property
    def needs(self) -> list[str]:
        """What a team must have to use it: chains, secrets, a signer key (for the gallery's cards)."""
        count = {kind: sum(1 for i in self.inputs if i.kind == kind) for kind in ("chain", "secret", "signer")}
        words = {"chain": ("a chain", "{} chains"), "secret": ("a secret", "{} secrets"),
                 "signer": ("a signer key", "{} signer keys")}
        return [(one if n == 1 else many.format(n)) for kind, (one, many) in words.items() if (n := count[kind])]

    def matches(self, query: str) -> bool:
        haystack = " ".join([self.title, self.description, self.category, *self.node_types()]).lower()
        return all(word in haystack for word in query.lower().split())


def _load(path: Path) -> Template:
    data = yaml.safe_load(path.read_text())
    inputs = []
    for item in data.get("inputs", []):
        if item["kind"] not in INPUT_KINDS:
            raise ValueError(f"{path.name}: input {item['name']} has unknown kind {item['kind']!r}")
        inputs.append(TemplateInput(item["name"], item["label"], item["kind"], item.get("default"), item.get("help", "")))
    names = {i.name for i in inputs}
    used = set(_PLACEHOLDER.findall(yaml.safe_dump(data["graph"])))
    if used - names:
        raise ValueError(f"{path.name}: placeholders without an input: {sorted(used - names)}")
    return Template(
        slug=path.stem.replace("_", "-"),
        title=data["title"],
        description=" ".join(str(data["description"]).split()),
        category=data["category"],
        inputs=tuple(inputs),
        graph=data["graph"],
    )


@cache
def _all() -> dict[str, Template]:
    loaded = [_load(path) for path in sorted(GALLERY_DIR.glob("*.yaml"))]
    return {t.slug: t for t in sorted(loaded, key=lambda t: (t.category, t.title))}


def templates(query: str = "", category: str = "") -> list[Template]:
    """The gallery, optionally searched (every word must match) and filtered by category."""
    return [
        t for t in _all().values()
        if (not category or t.category == category) and (not query or t.matches(query))
    ]


def categories() -> list[str]:
    return sorted({t.category for t in _all().values()})


def get_template(slug: str) -> Template | None:
    return _all().get(slug)


def clean_inputs(template: Template, raw: dict[str, Any], *, chains: dict[int, str] | None = None) -> dict[str, Any]:
    """Typed input values from user input (strings from a form, or JSON); raises TemplateError."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for spec in template.inputs:
        value = raw.get(spec.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            value = spec.default
        if value is None or value == "":
            errors[spec.name] = f"{spec.label} is required."
            continue
        if isinstance(value, str):
            value = value.strip()
        try:
            values[spec.name] = _clean(spec, value, chains)
        except ValueError as exc:
            errors[spec.name] = str(exc)
    if errors:
        raise TemplateError(errors)
    return values


def _clean(spec: TemplateInput, value: Any, chains: dict[int, str] | None) -> Any:
    if spec.kind in ("int", "chain"):
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or number < 0:
            raise ValueError(f"{spec.label} must be a whole number.")
        if spec.kind == "chain" and chains is not None and number not in chains:
            raise ValueError(f"Chain {number} is not configured on this server.")
        return number
    if not isinstance(value, str):
        raise ValueError(f"{spec.label} must be text.")
    if spec.kind == "address":
        if not is_address(value):
            raise ValueError(f"{spec.label} must be a 0x address (40 hex digits).")
        return to_checksum_address(value)
    if spec.kind == "secret":
        if not _SECRET_NAME.match(value):
            raise ValueError(f"{spec.label} must be a secret name (letters, digits and _).")
        return value
    if spec.kind == "signer":
        if not _SECRET_NAME.match(value):
            raise ValueError(f"{spec.label} must be a signer key name (letters, digits and _).")
        return value
    if spec.kind == "email":
        if not _EMAIL.match(value):
            raise ValueError(f"{spec.label} must be an email address.")
        return value
    if spec.kind == "url":
        if not value.startswith(("http://", "https://")) or any(c.isspace() for c in value):
            raise ValueError(f"{spec.label} must start with http:// or https://.")
        return value.rstrip("/") if spec.name.endswith("base_url") or spec.name == "kwala_url" else value
    if "{{" in value or "{%" in value:
        # Inputs are data, not code: they must not smuggle expressions into the graph.
        raise ValueError(f"{spec.label} cannot contain {{{{ or {{%.")
    if len(value) > 500:
        raise ValueError(f"{spec.label} is too long (500 characters at most).")
    return value


def _substitute(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(item, values) for key, item in node.items()}
    if isinstance(node, list):
        return [_substitute(item, values) for item in node]
    if isinstance(node, str):
        whole = _WHOLE.match(node)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
    return node


def instantiate(template: Template, values: dict[str, Any]) -> dict[str, Any]:
    """The template's graph with every placeholder replaced by its (already cleaned) value."""
    return _substitute(copy.deepcopy(template.graph), values)
