from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from executor.models import WorkerProbe
from executor.tasks import answer_probe


class Command(BaseCommand):
    help = "Send a probe through the broker and wait for a Dramatiq worker to answer it."

    def add_arguments(self, parser):
        parser.add_argument("--timeout", type=float, default=10.0)

    def handle(self, *args, timeout: float, **options):
        probe = WorkerProbe.objects.create()
        answer_probe.send(probe.pk)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe.refresh_from_db()
            if probe.answered_at:
                took = (probe.answered_at - probe.created_at).total_seconds() * 1000
                self.stdout.write(f"worker answered in {took:.0f} ms")
                return
            time.sleep(0.05)
        raise CommandError(f"no worker answered within {timeout:g} s: is `manage.py rundramatiq` running?")
