"""`manage.py sweep`: re-send lost work every few seconds (or once with --once)."""

from __future__ import annotations

import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from executor import retention, sweeper

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Re-queue steps whose lease expired and runs/steps stuck in QUEUED (lost messages)."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=2.0, help="Seconds between passes.")
        parser.add_argument("--grace", type=float, default=None,
                            help="Re-send QUEUED work older than this (default KWALA_SWEEP_GRACE_SECONDS).")
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")

    def handle(self, *args, interval: float, grace: float | None, once: bool, **options):
        if interval <= 0:
            self.stderr.write("--interval must be positive")
            return
        # Stop between passes on SIGTERM/Ctrl-C (manage.py dev, systemd), never inside one.
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("sweeper started", ending="\n")
        self.stdout.flush()
        next_prune = 0.0
        while not stop.is_set():
            if not once and time.monotonic() >= next_prune:
                # A slice of pruning between two sweeps while runs are due, so that neither waits long.
                try:
                    more = retention.prune_slice(settings.KWALA_RETENTION_SLICE_MS / 1000)
                except Exception:
                    logger.exception("pruning old runs failed; the next interval retries")
                    more = False
                if not more:
                    next_prune = time.monotonic() + settings.KWALA_RETENTION_INTERVAL_SECONDS
            try:
                counts = sweeper.sweep(grace)
            except Exception:
                if once:
                    raise
                # A database blip must not end the loop; the next pass retries.
                logger.exception("sweep failed")
                counts = {}
            if once:
                self.stdout.write(str(counts))
                return
            close_old_connections()
            stop.wait(interval)
        self.stdout.write("sweeper stopped")
