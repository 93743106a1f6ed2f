"""`manage.py rollup_runs`: count the runs of the last days into their rollups again (executor.rollups)."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand
from django.utils import timezone

from executor import rollups


class Command(BaseCommand):
    help = ("Count the runs created in the last DAYS days into the flows page's rollups again (run writes wait "
            "meanwhile). Hours whose runs retention has pruned would lose those: keep DAYS within every team's "
            "retention.")

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=7, help="Recount this many days back (default 7).")

    def handle(self, *args, days: int, **options):
        rows = rollups.rebuild(since=timezone.now() - timedelta(days=days))
        self.stdout.write(f"{rows} rollup row(s) written for the last {days} day(s)")
