"""`manage.py mcp --token TOKEN`: the MCP server on stdio, acting with a personal API token."""

from __future__ import annotations

import os

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from flows.mcp.tools import build_server
from flows.teams import membership_for_token


class Command(BaseCommand):
    help = ("Serve the MCP tools (flows, versions, runs, chains, templates) on stdin/stdout for an AI "
            "assistant, acting as the API token's user in its team. Point the assistant's MCP client at "
            "this command; over HTTP the same tools answer at /mcp.")

    def add_arguments(self, parser):
        parser.add_argument("--token", default=None,
                            help="A personal API token (Account → API tokens, or manage.py createtoken); "
                                 "default: the KWALA_API_TOKEN environment variable.")

    def handle(self, *args, token: str | None, **options):
        token = token or os.environ.get("KWALA_API_TOKEN", "")
        if not token:
            raise CommandError("Give a token: --token TOKEN or KWALA_API_TOKEN.")
        found = membership_for_token(token)
        if found is None:
            raise CommandError("That token is not valid: unknown, revoked, expired, or its user left the team.")
        _, membership = found
        # stdout is the protocol's: say who is serving on stderr.
        self.stderr.write(f"MCP server on stdio for {membership.user.get_username()} in team "
                          f"{membership.team.code} ({membership.team.name}, {membership.role.lower()})")
        connections.close_all()  # the tools use connections of their own threads
        build_server(token).run("stdio")
