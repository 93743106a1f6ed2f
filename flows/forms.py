"""Forms for the editor: a node's settings form is generated from its FieldSpecs.

The form only parses what a person typed into the JSON a node config holds
(numbers, lists, mappings); whether the config makes sense is the node type's
own ``validate``, the same check the compiler runs, so the inspector and the
problems list never disagree.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms

from flows.nodes import NODE_TYPES, FieldSpec, NodeType

RETRY_ATTEMPTS = "__max_attempts"
RETRY_BACKOFF = "__backoff_seconds"
NAME_FIELD = "_name"

# Kinds that hold an expression or template: the inspector offers the data picker on these.
EXPRESSION_KINDS = frozenset({"expression", "template", "url", "template_value", "headers", "emails"})
LONG_TEXT_KINDS = frozenset({"template", "json", "template_value", "list", "abi_event", "abi_function"})


class NewFlowForm(forms.Form):
    name = forms.CharField(max_length=120, label="Flow name")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        if not name:
            raise forms.ValidationError("Give the flow a name.")
        return name


class ImportForm(forms.Form):
    FORMATS = (("yaml", "Kwala flow YAML (exported from here)"), ("kwala", "Kwala workflow YAML"))
    format = forms.ChoiceField(choices=FORMATS, initial="yaml")
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false"}), label="YAML")
    revision = forms.IntegerField(widget=forms.HiddenInput)


def _as_text(spec: FieldSpec, value: Any) -> Any:
    """A stored config value as the text a person edits."""
    if value is None:
        return ""
    kind = spec.kind
    if kind in ("addresses",):
        return "\n".join(value) if isinstance(value, list) else str(value)
    if kind in ("int_list", "emails"):
        return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if kind == "headers":
        if isinstance(value, dict):
            return "\n".join(f"{k}: {v}" for k, v in value.items())
        return str(value)
    if kind in ("json", "list") or (kind == "template_value" and not isinstance(value, str)):
        return json.dumps(value, indent=2)
    if kind in ("abi_event", "abi_function") and not isinstance(value, str):
        return json.dumps(value)
    return value


def _form_field(spec: FieldSpec, chains: list[tuple[int, str]], secret_names: list[str]) -> forms.Field:
    common = {"label": spec.label, "required": False, "help_text": spec.help}
    kind = spec.kind
    if kind == "int":
        return forms.IntegerField(min_value=spec.min, max_value=spec.max, **common)
    if kind == "bool":
        return forms.BooleanField(**common)
    if kind == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
    if kind == "chain":
        return forms.TypedChoiceField(
            choices=[("", "Choose a chain")] + [(cid, f"{slug} ({cid})") for cid, slug in chains],
            coerce=int,
            empty_value=None,
            **common,
        )
    if kind == "secret_ref":
        return forms.ChoiceField(choices=[("", "None")] + [(n, n) for n in secret_names], **common)
    if kind in LONG_TEXT_KINDS or kind in ("addresses", "headers"):
        rows = 2 if kind in ("abi_event", "abi_function") else 4
        return forms.CharField(
            widget=forms.Textarea(attrs={"rows": rows, "spellcheck": "false"}), strip=False, **common
        )
    return forms.CharField(**common)


class NodeForm(forms.Form):
    """The inspector form of one node; ``config()`` is the parsed config after is_valid()."""

    def __init__(
        self,
        node_type: NodeType,
        node: dict,
        *args: Any,
        chains: list[tuple[int, str]] = (),
        secret_names: list[str] = (),
        **kwargs: Any,
    ) -> None:
        self.node_type = node_type
        config = node.get("config") or {}
        initial = {NAME_FIELD: node.get("name") or ""}
        for spec in node_type.fields:
            value = config.get(spec.name, spec.default)
            if spec.kind == "retry":
                value = value or {}
                initial[spec.name + RETRY_ATTEMPTS] = value.get("max_attempts", 1)
                initial[spec.name + RETRY_BACKOFF] = value.get("backoff_seconds", 10)
            else:
                initial[spec.name] = _as_text(spec, value)
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        self.fields[NAME_FIELD] = forms.CharField(label="Name", max_length=200, required=False)
        self.specs: dict[str, FieldSpec] = {}
        for spec in node_type.fields:
            self.specs[spec.name] = spec
            if spec.kind == "retry":
                self.fields[spec.name + RETRY_ATTEMPTS] = forms.IntegerField(
                    label="Attempts", min_value=1, max_value=25, required=False, help_text=spec.help
                )
                self.fields[spec.name + RETRY_BACKOFF] = forms.IntegerField(
                    label="Seconds between attempts", min_value=0, max_value=86400, required=False
                )
            else:
                self.fields[spec.name] = _form_field(spec, list(chains), list(secret_names))
                self.fields[spec.name].widget.attrs["data-kind"] = spec.kind
                if spec.kind in EXPRESSION_KINDS:
                    self.fields[spec.name].widget.attrs["data-expression"] = "1"

    def clean(self) -> dict:
        data = super().clean()
        for name, spec in self.specs.items():
            if spec.kind == "retry" or name not in data:
                continue
            try:
                data[name] = _parse(spec, data[name])
            except ValueError as exc:
                self.add_error(name, str(exc))
        return data

    def config(self) -> dict:
        config: dict[str, Any] = {}
        for name, spec in self.specs.items():
            if spec.kind == "retry":
                attempts = self.cleaned_data.get(name + RETRY_ATTEMPTS)
                backoff = self.cleaned_data.get(name + RETRY_BACKOFF)
                config[name] = {
                    "max_attempts": 1 if attempts is None else attempts,
                    "backoff_seconds": 10 if backoff is None else backoff,
                }
                continue
            value = self.cleaned_data.get(name)
            if value is None or value == "":
                continue
            config[name] = value
        return config

    def node_name(self) -> str:
        return self.cleaned_data.get(NAME_FIELD, "").strip()

    def field_for_problem(self, path: str) -> str | None:
        """The form field a compiler problem path ("filters.0.value") belongs to."""
        head = path.split(".", 1)[0]
        if head in self.specs:
            return head + RETRY_ATTEMPTS if self.specs[head].kind == "retry" else head
        return None


def _parse(spec: FieldSpec, value: Any) -> Any:
    """Text from the form -> the JSON value the config holds. Raises ValueError."""
    kind = spec.kind
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
    else:
        return value
    if kind == "addresses":
        return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    if kind == "emails":
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind == "int_list":
        try:
            return [int(item) for item in text.replace(" ", "").split(",") if item]
        except ValueError:
            raise ValueError("Write whole numbers separated by commas, e.g. 200, 201") from None
    if kind == "headers":
        headers = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, rest = line.partition(":")
            if not sep:
                raise ValueError(f"Line {number}: write each header as Name: value")
            headers[name.strip()] = rest.strip()
        return headers
    if kind in ("json", "list"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"This is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if kind == "template_value":
        # JSON when it parses (objects, lists, numbers), otherwise a template string.
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    if kind in ("abi_event", "abi_function") and text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"This ABI fragment is not valid JSON: {exc.msg}") from None
    if kind == "duration" and text.isdigit():
        return int(text)
    if kind in ("template", "expression"):
        return value
    return text


def node_type_for(node: dict) -> NodeType | None:
    return NODE_TYPES.get(node.get("type", ""))
