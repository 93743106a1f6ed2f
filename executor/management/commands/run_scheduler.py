"""Fire schedule triggers (see executor/scheduler.py); run one or several."""

from __future__ import annotations

import logging
import signal
import threading

from django.core.management.base import BaseCommand
from django.db import connection

from executor.scheduler import tick

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Create the runs of schedule triggers as they come due (safe to run several at once)."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=1.0, help="Seconds between checks (default 1).")

    def handle(self, *args, **options):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.stdout.write("scheduler running")
        self.stdout.flush()
        while not stop.is_set():
            try:
                created = tick()
                if created:
                    logger.info("scheduled %d run(s)", len(created))
            except Exception:
                logger.exception("scheduler tick failed")
                connection.close()
            stop.wait(options["interval"])
        self.stdout.write("stopped")
