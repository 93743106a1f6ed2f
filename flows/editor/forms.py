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

from flows.nodes import FieldSpec, NodeType

RETRY_ATTEMPTS = "__max_attempts"
RETRY_BACKOFF = "__backoff_seconds"
NAME_FIELD = "_name"
# List settings whose items are records (switch cases, transform fields, event filters)
# are edited as rows of inputs named "<field>-<row>-<item field>", with the row count in
# "<field>-count" (as Django formsets do). ROW_ACTION names an add/remove button.
ROW_COUNT = "-count"
ROW_ACTION = "_rows"
MAX_ROWS = 100

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


def has_rows(spec: FieldSpec) -> bool:
    return spec.kind == "list" and bool(spec.item_fields)


def row_field_name(list_name: str, index: int, item_name: str) -> str:
    return f"{list_name}-{index}-{item_name}"


def _item_text(spec: FieldSpec, value: Any) -> Any:
    """An item field's stored value as the text of its input (JSON values as JSON)."""
    if value is None:
        return ""
    if spec.kind == "json":
        return json.dumps(value)
    return value


def _parse_item(spec: FieldSpec, value: Any) -> Any:
    """An item field's input -> its config value; None when left empty.

    A JSON item (an event filter's value) that does not parse as JSON is kept as
    text, so an address or a name can be typed without quotes."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if spec.kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    if spec.kind in ("expression", "template"):
        return value
    return text


def _row_count(data: Any, name: str) -> int:
    try:
        count = int(data.get(name + ROW_COUNT, 0))
    except (TypeError, ValueError):
        count = 0
    return max(0, min(count, MAX_ROWS))


def edit_rows(data: Any, specs: dict[str, FieldSpec], action: str) -> Any:
    """POSTed form data with a row added ("add:<field>") or removed ("remove:<field>:<row>").

    Returns a mutable copy; an action naming no list field changes nothing."""
    data = data.copy()
    verb, _, rest = action.partition(":")
    name, _, index_text = rest.partition(":")
    spec = specs.get(name)
    if spec is None or not has_rows(spec):
        return data
    count = _row_count(data, name)
    if verb == "add" and count < MAX_ROWS:
        for item in spec.item_fields:
            if item.default is not None:
                data[row_field_name(name, count, item.name)] = _item_text(item, item.default)
        data[name + ROW_COUNT] = str(count + 1)
    elif verb == "remove" and index_text.isdigit() and int(index_text) < count:
        for row in range(int(index_text), count - 1):
            for item in spec.item_fields:
                data[row_field_name(name, row, item.name)] = data.get(row_field_name(name, row + 1, item.name), "")
        for item in spec.item_fields:
            data.pop(row_field_name(name, count - 1, item.name), None)
        data[name + ROW_COUNT] = str(count - 1)
    return data


def _item_form_field(spec: FieldSpec) -> forms.Field:
    common = {"label": spec.label, "required": False, "help_text": spec.help}
    if spec.kind == "choice":
        return forms.ChoiceField(choices=[(c, c) for c in spec.choices], **common)
    field = forms.CharField(strip=False, **common)
    field.widget.attrs.update({"spellcheck": "false", "autocomplete": "off"})
    return field


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
            choices=[("", "Choose a chain")] + [(cid, f"{name} ({cid})") for cid, name in chains],
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
            elif has_rows(spec):
                items = value if isinstance(value, list) else []
                initial[spec.name + ROW_COUNT] = len(items)
                for index, item in enumerate(items):
                    item = item if isinstance(item, dict) else {}
                    for sub in spec.item_fields:
                        initial[row_field_name(spec.name, index, sub.name)] = _item_text(
                            sub, item.get(sub.name, sub.default)
                        )
            else:
                initial[spec.name] = _as_text(spec, value)
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        self.fields[NAME_FIELD] = forms.CharField(label="Name", max_length=200, required=False)
        self.specs: dict[str, FieldSpec] = {}
        self.row_counts: dict[str, int] = {}
        for spec in node_type.fields:
            self.specs[spec.name] = spec
            if has_rows(spec):
                self._add_row_fields(spec)
            elif spec.kind == "retry":
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

    def _add_row_fields(self, spec: FieldSpec) -> None:
        count = _row_count(self.data, spec.name) if self.is_bound else self.initial.get(spec.name + ROW_COUNT, 0)
        self.row_counts[spec.name] = count
        self.fields[spec.name + ROW_COUNT] = forms.IntegerField(
            widget=forms.HiddenInput, required=False, min_value=0, max_value=MAX_ROWS
        )
        for index in range(count):
            for sub in spec.item_fields:
                field = _item_form_field(sub)
                field.widget.attrs["data-kind"] = sub.kind
                if sub.kind in EXPRESSION_KINDS:
                    field.widget.attrs["data-expression"] = "1"
                self.fields[row_field_name(spec.name, index, sub.name)] = field

    def _clean_rows(self, spec: FieldSpec, data: dict) -> list[dict]:
        """The rows as the list the config holds; rows left entirely empty are dropped."""
        items = []
        for index in range(self.row_counts[spec.name]):
            item = {}
            for sub in spec.item_fields:
                value = _parse_item(sub, data.get(row_field_name(spec.name, index, sub.name)))
                if value is not None:
                    item[sub.name] = value
            defaults = _defaults(spec)
            if any(value != defaults.get(key) for key, value in item.items()):
                items.append(item)
        return items

    def clean(self) -> dict:
        data = super().clean()
        for name, spec in self.specs.items():
            if has_rows(spec):
                data[name] = self._clean_rows(spec, data)
                continue
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
            if value is None or value == "" or (has_rows(spec) and not value and not spec.required):
                continue
            config[name] = value
        return config

    def node_name(self) -> str:
        return self.cleaned_data.get(NAME_FIELD, "").strip()

    def field_for_problem(self, path: str) -> str | None:
        """The form field a compiler problem path ("filters.0.value") belongs to.

        For a list edited as rows that is the input of the row's item field, or the
        list as a whole ("filters") for a problem with no row."""
        parts = path.split(".")
        head = parts[0]
        if head not in self.specs:
            return None
        spec = self.specs[head]
        if spec.kind == "retry":
            return head + RETRY_ATTEMPTS
        if has_rows(spec) and len(parts) >= 3:
            name = row_field_name(head, int(parts[1]) if parts[1].isdigit() else -1, parts[2])
            return name if name in self.fields else head
        return head

    def layout(self, problems: dict[str, list[str]]) -> list[dict[str, Any]]:
        """What the inspector shows, in declared order: single fields, and lists edited as rows.

        ``problems`` maps a form field name (see field_for_problem) to its messages."""

        def single(name: str) -> dict[str, Any]:
            return {"field": self[name], "problems": problems.get(name, [])}

        entries = [single(NAME_FIELD)]
        for name, spec in self.specs.items():
            if spec.kind == "retry":
                entries += [single(name + RETRY_ATTEMPTS), single(name + RETRY_BACKOFF)]
            elif has_rows(spec):
                rows = [
                    [single(row_field_name(name, index, sub.name)) for sub in spec.item_fields]
                    for index in range(self.row_counts[name])
                ]
                entries.append({
                    "kind": "rows",
                    "name": name,
                    "label": spec.label,
                    "help": spec.help,
                    "item_noun": _item_noun(spec.label),
                    "count_field": self[name + ROW_COUNT],
                    "rows": rows,
                    "problems": problems.get(name, []),
                })
            else:
                entries.append(single(name))
        return entries


def _defaults(spec: FieldSpec) -> dict[str, Any]:
    return {sub.name: sub.default for sub in spec.item_fields if sub.default is not None}


def _item_noun(label: str) -> str:
    """ "Argument filters" -> "argument filter", for the Add button. """
    noun = label.lower()
    return noun[:-1] if noun.endswith("s") else noun


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


