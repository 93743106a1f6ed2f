"""Follow the enabled chains and turn their blocks into runs (see executor/listener.py)."""

from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand, CommandError

from executor.listener import POLL_SECONDS, listen
from executor.models import Chain, ChainCursor


class Command(BaseCommand):
    help = "Listen to the enabled chains (or those named) and fire their flows' triggers, exactly once."

    def add_arguments(self, parser):
        parser.add_argument("--chain", action="append", default=[], metavar="SLUG",
                            help="Only this chain (repeatable). Default: every enabled chain.")
        parser.add_argument("--poll", type=float, default=POLL_SECONDS,
                            help=f"Seconds between polls when no websocket wakes us (default {POLL_SECONDS}).")
        parser.add_argument("--no-websocket", action="store_true", help="Poll only; do not subscribe to new heads.")

    def handle(self, *args, **options):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        chains = list(Chain.objects.filter(enabled=True).order_by("chain_id"))
        if options["chain"]:
            known = {c.slug: c for c in Chain.objects.all()}
            unknown = [s for s in options["chain"] if s not in known]
            if unknown:
                raise CommandError(
                    f"Unknown chain {', '.join(unknown)}. Configured: {', '.join(sorted(known)) or 'none'} "
                    "(run manage.py sync_chains after setting KWALA_CHAINS)."
                )
            chains = [known[s] for s in options["chain"]]
        if not chains:
            raise CommandError("No enabled chain to listen to: set KWALA_CHAINS and run manage.py sync_chains.")
        halted = [c.slug for c in chains if ChainCursor.objects.filter(chain=c, halted=True).exists()]
        if halted:
            for slug in halted:
                cursor = ChainCursor.objects.get(chain__slug=slug)
                self.stderr.write(f"chain {slug} is HALTED: {cursor.last_error}")
            chains = [c for c in chains if c.slug not in halted]
            if not chains:
                raise CommandError("Every chain asked for is halted; clear ChainCursor.halted after checking.")

        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        threads = listen(chains, stop, poll_seconds=options["poll"], use_websocket=not options["no_websocket"])
        self.stdout.write(f"listening to {', '.join(c.slug for c in chains)}", ending="\n")
        self.stdout.flush()
        chain_threads = [t for t in threads if t.name.startswith("chain-")]
        while not stop.is_set() and any(t.is_alive() for t in chain_threads):
            stop.wait(1)
        stop.set()
        for thread in chain_threads:
            thread.join(10)
        self.stdout.write("stopped")
