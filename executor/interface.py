"""What flows/ may use of executor/: the one way in.

`executor` imports `flows` (what runs is what a team built); `flows` reaches back only for
these, and only through this module, so the arrow between the apps stays readable. It
imports only executor modules that never import flows' writes (flows.actions, flows.teams), so
it may be used from anywhere in flows without a cycle. (The runs API endpoints that the MCP
door calls are reached through the project's API, kwala_site.api, not from here.)

- the chains flows are checked against (`enabled_chains`, `chain_names`, `chain_slugs`) and
  their health (`chain_health`);
- a flow's run figures for the flows page (`flow_figures`, `last_runs`, `Figures`);
- a trigger's samples for the editor's Test tab (`trigger_samples`, `SampleError`);
- closing a removed member's sockets (`revoke_sockets`) and a signer's spending
  (`spending_today`, `limit_summary`) for the team pages.
"""

from __future__ import annotations

from executor.listener_health import chain_health
from executor.live import revoke_sockets
from executor.models import Chain
from executor.rollups import Figures, flow_figures, last_runs
from executor.samples import SampleError, trigger_samples
from executor.steps.spending import limit_summary, spending_today


def enabled_chains() -> dict[int, str]:
    """The chains flows may use, {chain id: slug}, in chain-id order."""
    return dict(Chain.objects.filter(enabled=True).order_by("chain_id").values_list("chain_id", "slug"))


def chain_names() -> dict[int, str]:
    """The enabled chains as people see them, {chain id: name}, in chain-id order (every form's choices)."""
    return dict(Chain.objects.filter(enabled=True).order_by("chain_id").values_list("chain_id", "name"))


def chain_slugs() -> dict[int, str]:
    """Every configured chain, enabled or not, {chain id: slug}."""
    return dict(Chain.objects.values_list("chain_id", "slug"))


__all__ = [
    "Figures",
    "SampleError",
    "chain_health",
    "chain_names",
    "chain_slugs",
    "enabled_chains",
    "flow_figures",
    "last_runs",
    "limit_summary",
    "revoke_sockets",
    "spending_today",
    "trigger_samples",
]
