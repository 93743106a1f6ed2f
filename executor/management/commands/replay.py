"""Replay a flow's event trigger over past blocks (or backtest it with --dry-run)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from executor.models import Chain
from executor.replay import ReplayError, replay_blocks
from flows.actions import live_version
from flows.models import Flow


class Command(BaseCommand):
    help = "Create runs of FLOW_CODE's live version for matching logs in blocks A..B."

    def add_arguments(self, parser):
        parser.add_argument("flow_code")
        parser.add_argument("--from", dest="from_block", type=int, required=True, metavar="A")
        parser.add_argument("--to", dest="to_block", type=int, required=True, metavar="B")
        parser.add_argument("--dry-run", action="store_true",
                            help="Backtest: runs are marked dry_run, keyed apart from live runs, and not started.")

    def handle(self, *args, **options):
        flow = Flow.objects.filter(code=options["flow_code"]).first()
        if flow is None:
            raise CommandError(f"No flow has the code {options['flow_code']!r}.")
        version = live_version(flow)
        if version is None:
            raise CommandError(f"Flow {flow.code} ({flow.name}) has no published version to replay.")
        chain_id = (version.dag or {}).get("trigger", {}).get("chain_id")
        chain = Chain.objects.filter(chain_id=chain_id).first() if chain_id else None
        if chain is None:
            raise CommandError(f"Flow {flow.code} is not triggered by a configured chain.")
        try:
            result = replay_blocks(version, chain, options["from_block"], options["to_block"], options["dry_run"])
        except ReplayError as exc:
            raise CommandError(str(exc)) from None
        kind = "dry run(s)" if options["dry_run"] else "run(s)"
        read = "transaction(s)" if version.dag["trigger"]["type"] == "chain.transaction" else "log(s)"
        self.stdout.write(
            f"{result.logs_seen} {read} in blocks {options['from_block']}..{options['to_block']}, "
            f"{result.matched} matched, {len(result.run_ids)} new {kind}."
        )
