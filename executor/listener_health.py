"""Per-chain listener health, shared by /readyz, the admin and the dashboard."""

from __future__ import annotations

import re

from django.conf import settings
from django.utils import timezone

from executor.models import Chain

# A chain whose head we have not seen for this long is stale.
STALE_AFTER_SECONDS = getattr(settings, "KWALA_CHAIN_STALE_SECONDS", 120)
MAX_LAG_BLOCKS = getattr(settings, "KWALA_CHAIN_MAX_LAG", 50)


_URL = re.compile(r"\b((?:https?|wss?)://)([^/\s@]+@)?([^/\s?#:]+)(:\d+)?[^\s,)]*", re.IGNORECASE)


def scrub_urls(text: str) -> str:
    """Keep only scheme://host of every URL: RPC URLs carry provider API keys in
    their path or query, and error text is shown beyond the operators."""
    return _URL.sub(lambda m: f"{m.group(1)}{m.group(3)}{m.group(4) or ''}/…", text)


def chain_health(*, detail: bool = True) -> dict:
    """{"ok": bool, "chains": {slug: {...}}}; a chain never seen yet is not an error."""
    now = timezone.now()
    chains = {}
    ok = True
    for chain in Chain.objects.filter(enabled=True).select_related("cursor"):
        cursor = getattr(chain, "cursor", None)
        if cursor is None or cursor.head_seen_at is None:
            chains[chain.slug] = {"ok": True, "state": "not started"}
            continue
        lag = cursor.lag
        stale = (now - cursor.head_seen_at).total_seconds() > STALE_AFTER_SECONDS
        chain_ok = not cursor.halted and not stale and (lag is None or lag <= MAX_LAG_BLOCKS)
        ok = ok and chain_ok
        chains[chain.slug] = {
            "ok": chain_ok,
            "head": cursor.head_block,
            "processed": cursor.block_number,
            "lag": lag,
            "halted": cursor.halted,
            "last_error": scrub_urls(cursor.last_error)[:300] if detail else bool(cursor.last_error),
        }
    return {"ok": ok, "chains": chains}
