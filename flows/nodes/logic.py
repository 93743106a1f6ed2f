"""Logic node types: branch, reshape, wait, gather, stop."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flows.nodes.base import FieldSpec, NodeType, Problems, ValidationContext

_PORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class Condition(NodeType):
    key = "condition"
    inline = True
    category = "logic"
    label = "Condition"
    description = "Continues on `true` or `false` depending on an expression."
    fields = (FieldSpec("expression", "Condition", "expression", required=True),)
    static_output_ports = ("true", "false")

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"result": {"type": "bool", "description": "Value of the condition"}}


class Switch(NodeType):
    key = "switch"
    inline = True
    category = "logic"
    label = "Switch"
    description = "Takes the port of the first case whose expression is true, else `default`."
    fields = (
        FieldSpec(
            "cases", "Cases", "list", required=True,
            item_fields=(
                FieldSpec("name", "Case name", "text", required=True),
                FieldSpec("expression", "Expression", "expression", required=True),
            ),
        ),
    )
    static_output_ports = ("default",)
    ports_from = ("cases", "name")  # a port per case, then `default`

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        problems: Problems = []
        seen: set[str] = set()
        for index, case in enumerate(config["cases"]):
            name = case["name"]
            if not _PORT_NAME.match(name):
                problems.append((f"cases.{index}.name", f"Case name '{name}' must be letters, digits and _"))
            elif name == "default":
                problems.append((f"cases.{index}.name", "'default' is taken by the fallback port"))
            elif name in seen:
                problems.append((f"cases.{index}.name", f"Case '{name}' is listed twice"))
            seen.add(name)
        return problems

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"case": {"type": "string", "description": "Name of the case taken, or default"}}


class Transform(NodeType):
    key = "transform"
    inline = True
    category = "logic"
    label = "Set fields"
    description = "Computes named values from expressions for later steps."
    fields = (
        FieldSpec(
            "fields", "Fields", "list", required=True,
            item_fields=(
                FieldSpec("name", "Name", "text", required=True),
                FieldSpec("expression", "Expression", "expression", required=True),
            ),
        ),
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        problems: Problems = []
        seen: set[str] = set()
        for index, item in enumerate(config["fields"]):
            if not _PORT_NAME.match(item["name"]):
                problems.append((f"fields.{index}.name", f"Field name '{item['name']}' must be letters, digits and _"))
            elif item["name"] in seen:
                problems.append((f"fields.{index}.name", f"Field '{item['name']}' is set twice"))
            seen.add(item["name"])
        return problems

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        items = config.get("fields")
        if not isinstance(items, list):
            return {}
        return {
            item["name"]: {"type": "any", "description": str(item.get("expression", ""))}
            for item in items
            if isinstance(item, dict) and isinstance(item.get("name"), str)
        }


class Delay(NodeType):
    key = "delay"
    category = "logic"
    label = "Wait"
    description = "Waits before continuing."
    fields = (
        FieldSpec("duration", "Wait for", "duration", required=True, min=1, max=30 * 86400,
                  help="Seconds, or 30s, 5m, 1h, 2d"),
    )

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"waited_seconds": {"type": "int", "description": "How long the run waited"}}


class Join(NodeType):
    key = "join"
    inline = True
    category = "logic"
    label = "Join"
    description = "Waits for every incoming branch, then continues once with their outputs."
    join = "all"

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"<step id>": {"type": "object", "description": "Output of each branch that ran"}}


class Stop(NodeType):
    key = "stop"
    inline = True
    category = "logic"
    label = "Stop"
    description = "Ends the run here, as a success or as a failure with a message."
    fields = (
        FieldSpec("fail", "Mark the run as failed", "bool", default=False),
        FieldSpec("message", "Message", "template"),
    )
    static_output_ports = ()
