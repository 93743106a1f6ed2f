"""Per-chain listener health, shared by /readyz, the admin and the dashboard."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from executor.chain import scrub_urls
from executor.models import Chain

__all__ = ["chain_health", "scrub_urls"]

# A chain whose head we have not seen for this long is stale.
STALE_AFTER_SECONDS = getattr(settings, "KWALA_CHAIN_STALE_SECONDS", 120)
MAX_LAG_BLOCKS = getattr(settings, "KWALA_CHAIN_MAX_LAG", 50)
# A block held this long unverified (executor.blockcheck) makes the chain not ready
# (settings.KWALA_CHAIN_HELD_SECONDS, read at each check).
HELD_UNHEALTHY_SECONDS = 20
# /readyz says whether a node answered inconsistently within this window.
INCONSISTENCY_WINDOW_SECONDS = 600


def chain_health(*, detail: bool = True) -> dict:
    """{"ok": bool, "chains": {slug: {...}}}; a chain never seen yet is not an error.

    A chain is not ok when its listener is halted, has not read a head for
    STALE_AFTER_SECONDS, lags over MAX_LAG_BLOCKS, or has held a block it cannot
    verify for over HELD_UNHEALTHY_SECONDS. Everything but a halt clears with its cause.
    """
    now = timezone.now()
    chains = {}
    ok = True
    for chain in Chain.objects.filter(enabled=True).select_related("cursor"):
        cursor = getattr(chain, "cursor", None)
        if cursor is None or cursor.head_seen_at is None:
            chains[chain.slug] = {"ok": True, "state": "not started"}
            continue
        lag = cursor.lag
        head_seen = (now - cursor.head_seen_at).total_seconds()
        held_for = (now - cursor.held_since).total_seconds() if cursor.held_since else None
        problems = []
        if cursor.halted:
            problems.append("halted")
        if head_seen > STALE_AFTER_SECONDS:
            problems.append(f"no head read for {head_seen:.0f} s")
        if lag is not None and lag > MAX_LAG_BLOCKS:
            problems.append(f"{lag} blocks behind")
        if held_for is not None and held_for > getattr(settings, "KWALA_CHAIN_HELD_SECONDS", HELD_UNHEALTHY_SECONDS):
            problems.append(f"held at block {cursor.held_block} for {held_for:.0f} s: cannot verify its logs")
        chain_ok = not problems
        ok = ok and chain_ok
        newest = cursor.recent_blocks[-1] if cursor.recent_blocks else None
        recent_inconsistency = (
            cursor.last_inconsistency_at is not None
            and (now - cursor.last_inconsistency_at).total_seconds() <= INCONSISTENCY_WINDOW_SECONDS
        )
        chains[chain.slug] = {
            "ok": chain_ok,
            "problems": problems,
            "head": cursor.head_block,
            "processed": cursor.block_number,
            "lag": lag,
            "head_seen_seconds_ago": round(head_seen, 1),
            "processed_block_age_seconds": round(now.timestamp() - newest[3], 1) if newest else None,
            "held_block": cursor.held_block,
            "held_seconds": round(held_for, 1) if held_for is not None else None,
            "inconsistencies": cursor.inconsistencies,
            "inconsistency_recent": recent_inconsistency,
            "websocket": cursor.ws_state or "none",
            "halted": cursor.halted,
            "last_error": scrub_urls(cursor.last_error)[:300] if detail else bool(cursor.last_error),
        }
        if detail:
            chains[chain.slug]["held_reason"] = scrub_urls(cursor.held_reason)[:300]
            chains[chain.slug]["last_inconsistency"] = scrub_urls(cursor.last_inconsistency)[:300]
    return {"ok": ok, "chains": chains}
