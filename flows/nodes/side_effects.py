"""Node types with side effects (the "action" category): everything that reaches outside Kwala."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flows import abi as abi_lib
from flows.nodes.base import (
    RETRY_FIELD,
    FieldSpec,
    NodeType,
    Problems,
    ValidationContext,
    is_int,
)

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class Action(NodeType):
    category = "action"
    static_output_ports = ("out", "error")
    side_effect = True


class _WebhookNotify(Action):
    text_field = "text"

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        if bool(config["webhook_url"]) == bool(config["webhook_secret"]):
            return [("webhook_url", "Give either a webhook URL or a secret that holds it, not both")]
        return []

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"status_code": {"type": "int", "description": "HTTP status of the webhook call"}}


class HttpRequest(Action):
    key = "http.request"

    def lease_seconds_extra(self, config):
        return float(config.get("timeout") or 0)  # the step's own timeout
    label = "HTTP request"
    description = "Calls an HTTP endpoint."
    fields = (
        FieldSpec("method", "Method", "choice", default="POST", choices=HTTP_METHODS),
        FieldSpec("url", "URL", "url", required=True),
        FieldSpec("headers", "Headers", "headers", default={}),
        FieldSpec("body", "Body", "template_value", help="JSON; text leaves are templates."),
        FieldSpec("timeout", "Timeout", "duration", default=10, min=1, max=60),
        FieldSpec("expected_status", "Expected status codes", "int_list", default=[], min=100, max=599,
                  help="Empty means any 2xx."),
        FieldSpec("max_response_bytes", "Max response size", "int", default=1_000_000, min=0,
                  max=10_000_000),
        RETRY_FIELD,
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        if config["method"] == "GET" and config["body"] not in (None, "", {}):
            return [("body", "A GET request cannot have a body")]
        return []

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "status_code": {"type": "int", "description": "HTTP status"},
            "headers": {"type": "object", "description": "Response headers"},
            "body": {"type": "any", "description": "Parsed JSON body, or text"},
        }


class NotifySlack(_WebhookNotify):
    key = "notify.slack"
    lease_extra_seconds = 30
    label = "Slack message"
    description = "Posts a message to a Slack incoming webhook."
    fields = (
        FieldSpec("webhook_url", "Webhook URL", "url"),
        FieldSpec("webhook_secret", "Webhook URL secret", "secret_ref"),
        FieldSpec("text", "Message", "template", required=True),
        RETRY_FIELD,
    )


class NotifyDiscord(_WebhookNotify):
    key = "notify.discord"
    lease_extra_seconds = 30
    label = "Discord message"
    description = "Posts a message to a Discord webhook."
    fields = (
        FieldSpec("webhook_url", "Webhook URL", "url"),
        FieldSpec("webhook_secret", "Webhook URL secret", "secret_ref"),
        FieldSpec("content", "Message", "template", required=True),
        RETRY_FIELD,
    )


class NotifyTelegram(Action):
    key = "notify.telegram"
    lease_extra_seconds = 30
    label = "Telegram message"
    description = "Sends a message from a Telegram bot."
    fields = (
        FieldSpec("bot_token_secret", "Bot token secret", "secret_ref", required=True),
        FieldSpec("chat_id", "Chat id", "template", required=True),
        FieldSpec("text", "Message", "template", required=True),
        RETRY_FIELD,
    )

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"message_id": {"type": "int", "description": "Telegram message id"}}


class NotifyEmail(Action):
    key = "notify.email"
    lease_extra_seconds = 120
    label = "Email"
    description = "Sends an email."
    fields = (
        FieldSpec("to", "To", "emails", required=True),
        FieldSpec("subject", "Subject", "template", required=True),
        FieldSpec("body", "Body", "template", required=True),
        RETRY_FIELD,
    )

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {"message_id": {"type": "string", "description": "Message-ID of the sent email"}}


def _check_call_args(config: Mapping[str, Any]) -> Problems:
    function = abi_lib.resolve_function(config["function"])
    args = config["args"]
    if not isinstance(args, list):
        return [("args", "Arguments must be a list, one per function parameter")]
    if len(args) != len(function["inputs"]):
        return [
            (
                "args",
                f"{function['name']} takes {len(function['inputs'])} arguments, got {len(args)}",
            )
        ]
    return []


def _normalize_call(config: dict[str, Any]) -> dict[str, Any]:
    function = abi_lib.resolve_function(config["function"])
    config["function_abi"] = function
    config["selector"] = abi_lib.function_selector(function)
    return config


def _function_shape(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    try:
        function = abi_lib.resolve_function(config.get("function"))
    except abi_lib.AbiError:
        return {}
    return {
        (p.get("name") or str(i)): {"type": abi_lib.canonical_type(p), "description": "Return value"}
        for i, p in enumerate(function["outputs"])
    }


class ContractRead(Action):
    key = "contract.read"
    lease_extra_seconds = 60
    label = "Read contract"
    description = "Calls a view function and returns its result."
    side_effect = False
    fields = (
        FieldSpec("chain", "Chain", "chain", required=True),
        FieldSpec("address", "Contract address", "address", required=True),
        FieldSpec("function", "Function", "abi_function", required=True),
        FieldSpec("args", "Arguments", "template_value", default=[],
                  help="One per parameter; {{ expr }} keeps numbers exact."),
        RETRY_FIELD,
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        return _check_call_args(config)

    def normalize(self, config: Mapping[str, Any]) -> dict[str, Any]:
        out = super().normalize(config)
        return _normalize_call(out) if not self._broken(out) else out

    @staticmethod
    def _broken(config: Mapping[str, Any]) -> bool:
        try:
            abi_lib.resolve_function(config["function"])
        except abi_lib.AbiError:
            return True
        return False

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "result": {"type": "any", "description": "Return value (a list when it returns several)"},
            "outputs": {"type": "object", "description": "Return values by name", "fields": _function_shape(config)},
        }


class ContractWrite(ContractRead):
    key = "contract.write"
    lease_extra_seconds = 120
    label = "Write contract"
    description = "Sends a transaction that calls a contract function."
    side_effect = True
    fields = (
        FieldSpec("chain", "Chain", "chain", required=True),
        FieldSpec("address", "Contract address", "address", required=True),
        FieldSpec("function", "Function", "abi_function", required=True),
        FieldSpec("args", "Arguments", "template_value", default=[]),
        FieldSpec("signer", "Signer key", "signer", required=True,
                  help="The name of the team's signer key that signs the transaction."),
        FieldSpec("value_wei", "Value (wei)", "template_value", default=0),
        FieldSpec("gas_limit", "Gas limit", "int", min=21_000, max=30_000_000),
        FieldSpec("confirmations", "Confirmations", "int", default=1, min=0, max=100),
        RETRY_FIELD,
    )

    def check(self, config: Mapping[str, Any], ctx: ValidationContext) -> Problems:
        problems = _check_call_args(config)
        value = config["value_wei"]
        function = abi_lib.resolve_function(config["function"])
        if is_int(value):
            if value < 0:
                problems.append(("value_wei", "Value cannot be negative"))
            elif value > 0 and function["stateMutability"] != "payable":
                problems.append(("value_wei", f"{function['name']} is not payable, so it cannot receive value"))
        elif not isinstance(value, str):
            problems.append(("value_wei", "Value must be a whole number of wei or a {{ expression }}"))
        if function["stateMutability"] in ("view", "pure"):
            problems.append(("function", f"{function['name']} is {function['stateMutability']}; use Read contract"))
        return problems

    def output_shape(self, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        return {
            "tx_hash": {"type": "bytes32", "description": "Transaction hash"},
            "block_number": {"type": "int", "description": "Block it was mined in"},
            "gas_used": {"type": "int", "description": "Gas used"},
            "status": {"type": "int", "description": "1 if it succeeded"},
        }
