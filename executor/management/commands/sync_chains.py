from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from executor.models import Chain, RpcEndpoint


def sync_chains(chains: list[dict]) -> list[Chain]:
    """Create or update Chain rows and their RPC endpoints from settings-style dicts.

    Endpoints listed are (re)prioritised in order; endpoints added in the admin
    and not listed here are left alone.
    """
    synced = []
    with transaction.atomic():
        for spec in chains:
            chain, _ = Chain.objects.update_or_create(
                chain_id=spec["chain_id"],
                defaults={
                    "slug": spec["slug"],
                    "name": spec["name"],
                    "default_confirmations": spec.get("confirmations", 0),
                    "supports_finalized": spec.get("finalized_tag", False),
                    "verify_with": spec.get("verify_with", 1),
                    "explorer_url": spec.get("explorer_url", ""),
                },
            )
            for kind, urls in ((RpcEndpoint.Kind.HTTP, spec["rpc_urls"]), (RpcEndpoint.Kind.WS, spec.get("ws_urls", []))):
                for priority, url in enumerate(urls):
                    RpcEndpoint.objects.update_or_create(
                        chain=chain, url=url, defaults={"kind": kind, "priority": priority, "enabled": True}
                    )
            synced.append(chain)
    return synced


class Command(BaseCommand):
    help = "Create or update the chains listed in KWALA_CHAINS (and their RPC endpoints)."

    def handle(self, *args, **options):
        for chain in sync_chains(settings.KWALA_CHAINS):
            self.stdout.write(f"{chain.slug}: chain id {chain.chain_id}, {chain.endpoints.count()} endpoint(s)")
