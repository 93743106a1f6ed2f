"""`manage.py resume_chain SLUG`: let a halted chain's listener carry on after an operator checked it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from executor.chain import ChainClient, ChainError
from executor.listener import get_cursor, resume_chain
from executor.models import Chain


class Command(BaseCommand):
    help = (
        "Clear 'halted' on a chain stopped by a reorg deeper than the kept window. Check the RPC "
        "endpoints first. Without --from-block it resumes only if the node again has one of the kept "
        "blocks; with it, the listener carries on after that block and retracts stored events of "
        "blocks the node no longer has."
    )

    def add_arguments(self, parser):
        parser.add_argument("slug", help="The chain's slug (see sync_chains / the admin).")
        parser.add_argument("--from-block", type=int, default=None, metavar="N",
                            help="The last block you trust; processing starts at N+1.")

    def handle(self, *args, slug: str, from_block: int | None, **options):
        chain = Chain.objects.filter(slug=slug).first()
        if chain is None:
            known = ", ".join(Chain.objects.order_by("slug").values_list("slug", flat=True)) or "none"
            raise CommandError(f"No chain {slug!r} (configured: {known}).")
        cursor = get_cursor(chain)
        if cursor.halted:
            self.stdout.write(f"{chain.slug} halted: {cursor.last_error}")
        try:
            message = resume_chain(chain, ChainClient.for_chain(chain), from_block=from_block)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except ChainError as exc:
            raise CommandError(f"Could not reach {chain.slug}'s RPC endpoints to check it: {exc.message}") from None
        self.stdout.write(message)
        self.stdout.write("A running listener picks this up within seconds; no restart needed.")
