"""`manage.py prune_history`: delete finished runs past their team's retention now (the sweeper does it between sweeps)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from executor import retention


class Command(BaseCommand):
    help = "Delete finished runs older than their team's retention (failed runs are kept longer), in small batches."

    def add_arguments(self, parser):
        parser.add_argument("--max-batches", type=int, default=None,
                            help="Stop after this many batches of 500 (default: when nothing is due).")

    def handle(self, *args, max_batches: int | None, **options):
        deleted = retention.prune(max_batches=max_batches)
        if max_batches is None and deleted:
            retention.prune()  # finds nothing due now, and so deletes unused chain events and old rollup hours
        self.stdout.write(f"{deleted} run(s) deleted")
