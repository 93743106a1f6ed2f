"""`manage.py flows export|import|import-oz-monitor`: flows as code from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from executor.interface import chain_slugs
from flows import actions, ozmonitor
from flows.flowyaml import DEFAULT_SIGNER, FlowYamlError, export_yaml, import_yaml, translate_kwala_yaml
from flows.models import Flow, Team


class Command(BaseCommand):
    help = "Export a flow to YAML, or import a flow (or a Kwala workflow) from YAML."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="Write a flow's current graph as YAML.")
        export.add_argument("flow", help="The flow's code.")
        export.add_argument("-o", "--output", help="File to write (default: standard output).")
        export.add_argument("--version", type=int, help="Export this version number instead of the current graph.")

        imp = sub.add_parser("import", help="Create a flow (or a new draft of one) from YAML.")
        imp.add_argument("file", help="A YAML file, or - for standard input.")
        imp.add_argument("--team", help="The team's code (required when creating a flow).")
        imp.add_argument("--flow", help="Save as the new draft of this flow instead of creating one.")
        imp.add_argument("--kwala", action="store_true", help="The file is a Kwala workflow YAML.")
        imp.add_argument("--publish", action="store_true", help="Publish the imported draft at once.")
        imp.add_argument("--signer", default=DEFAULT_SIGNER,
                         help=f"With --kwala: the team's signer key for contract calls (default {DEFAULT_SIGNER}).")

        oz = sub.add_parser("import-oz-monitor",
                            help="Create flows from an OpenZeppelin Monitor configuration directory.")
        oz.add_argument("dir", help="The directory holding networks/, monitors/ and triggers/.")
        oz.add_argument("--team", required=True, help="The team's code.")
        oz.add_argument("--publish", action="store_true",
                        help="Publish each flow that compiles and has nothing left to fill in or review.")

    def handle(self, *args, action: str, **options):
        if action == "export":
            self.export(options)
        elif action == "import-oz-monitor":
            self.import_oz_monitor(options)
        else:
            self.import_(options)

    def export(self, options) -> None:
        flow = Flow.objects.filter(code=options["flow"]).first()
        if flow is None:
            raise CommandError(f"No flow with code {options['flow']!r}.")
        if options["version"] is not None:
            version = flow.versions.filter(number=options["version"]).first()
            if version is None:
                raise CommandError(f"Flow {flow.code} has no version {options['version']}.")
            graph = version.graph
        else:
            graph = actions.current_graph(flow)[1]
        text = export_yaml({"name": flow.name, "description": flow.description}, graph)
        if options["output"]:
            try:
                Path(options["output"]).write_text(text)
            except OSError as exc:
                raise CommandError(f"Cannot write {options['output']}: {exc.strerror}.") from None
            self.stderr.write(f"wrote {options['output']}")
        else:
            self.stdout.write(text, ending="")

    def import_(self, options) -> None:
        try:
            text = sys.stdin.read() if options["file"] == "-" else Path(options["file"]).read_text()
        except OSError as exc:
            raise CommandError(f"Cannot read {options['file']}: {exc.strerror}.") from None
        try:
            if options["kwala"]:
                chains = chain_slugs()
                kwala = translate_kwala_yaml(text, chains=chains, signer=options["signer"])
                meta, graph = kwala.meta, kwala.graph
                # What does not map is imported without it: say so before anything is saved.
                for warning in kwala.warnings:
                    self.stderr.write(f"warning: {options['file']}: {warning}")
            else:
                meta, graph = import_yaml(text)
        except FlowYamlError as exc:
            for warning in exc.warnings:
                self.stderr.write(f"warning: {options['file']}: {warning}")
            raise CommandError(f"{options['file']}: {exc}") from None

        if options["flow"]:
            flow = Flow.objects.filter(code=options["flow"]).first()
            if flow is None:
                raise CommandError(f"No flow with code {options['flow']!r}.")
            try:
                actions.do_save_draft(flow, None, graph, revision=flow.revision)
            except actions.InvalidGraph as exc:
                raise CommandError(_problems_text("The graph is malformed", exc)) from None
        else:
            if not options["team"]:
                raise CommandError("--team is required when creating a flow (or give --flow to update one).")
            team = Team.objects.filter(code=options["team"]).first()
            if team is None:
                raise CommandError(f"No team with code {options['team']!r}.")
            try:
                flow = actions.do_create_flow(
                    team, None, meta.get("name") or "Imported flow", meta.get("description") or "", graph
                )
            except actions.InvalidGraph as exc:
                raise CommandError(_problems_text("The graph is malformed", exc)) from None
        self.stdout.write(f"flow {flow.code}: draft saved")
        if options["publish"]:
            try:
                version = actions.do_publish_version(flow, None, via="cli")
            except actions.CompileError as exc:
                raise CommandError(_problems_text("The draft was saved but does not compile", exc)) from None
            self.stdout.write(f"flow {flow.code}: version {version.number} published")

    def import_oz_monitor(self, options) -> None:
        team = Team.objects.filter(code=options["team"]).first()
        if team is None:
            raise CommandError(f"No team with code {options['team']!r}.")
        try:
            config = ozmonitor.read_directory(options["dir"])
        except (ozmonitor.OzConfigError, OSError) as exc:
            raise CommandError(f"{options['dir']}: {exc}") from None
        result = ozmonitor.import_oz_monitor(team, None, config, publish=options["publish"], via="cli")
        for line in ozmonitor.summary_lines(result):
            self.stdout.write(line)


def _problems_text(headline: str, exc: actions.CompileError) -> str:
    lines = "\n".join(f"  {p.node_id or '-'} {p.field or ''}: {p.message}" for p in exc.problems)
    return f"{headline}:\n{lines}"
