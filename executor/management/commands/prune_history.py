"""`manage.py prune_history`: delete finished runs past their team's retention now (the sweeper does it every interval)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from executor import retention


class Command(BaseCommand):
    help = "Delete finished runs older than their team's retention (failed runs are kept longer), in small batches."

    def add_arguments(self, parser):
        parser.add_argument("--max-batches", type=int, default=1000, help="Stop after this many batches of 500.")

    def handle(self, *args, max_batches: int, **options):
        deleted = retention.prune(max_batches=max_batches)
        self.stdout.write(f"{deleted} run(s) deleted")
