"""The node catalogue: one explicit registry, no auto-discovery."""

from __future__ import annotations

from flows.nodes.base import FieldSpec, NodeType, TriggerType, ValidationContext
from flows.nodes.logic import Condition, Delay, Join, Stop, Switch, Transform
from flows.nodes.side_effects import (
    ContractRead,
    ContractWrite,
    HttpRequest,
    NotifyDiscord,
    NotifyEmail,
    NotifySlack,
    NotifyTelegram,
)
from flows.nodes.triggers import (
    ChainBlock,
    ChainEvent,
    ChainState,
    ChainTransaction,
    Manual,
    Schedule,
    Webhook,
)

__all__ = ["NODE_TYPES", "FieldSpec", "NodeType", "TriggerType", "ValidationContext", "catalogue"]

NODE_TYPES: dict[str, NodeType] = {
    node_type.key: node_type
    for node_type in (
        ChainEvent(),
        ChainBlock(),
        ChainState(),
        ChainTransaction(),
        Schedule(),
        Webhook(),
        Manual(),
        Condition(),
        Switch(),
        Transform(),
        Delay(),
        Join(),
        Stop(),
        HttpRequest(),
        NotifySlack(),
        NotifyDiscord(),
        NotifyTelegram(),
        NotifyEmail(),
        ContractRead(),
        ContractWrite(),
    )
}


def catalogue() -> list[dict]:
    """Every node type as JSON for the editor palette."""
    return [node_type.describe() for node_type in NODE_TYPES.values()]
