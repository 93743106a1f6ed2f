"""`manage.py createtoken USER [--team CODE] [--name NAME] [--expires-in-days N]`: an API token, shown once."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from flows.models import Membership
from flows.teams import TeamError, do_create_token


class Command(BaseCommand):
    help = ("Create a personal API token for USER in one of their teams and print it (once: only its hash "
            "is stored). Use it as `Authorization: Bearer <token>` on /api/v1/.")

    def add_arguments(self, parser):
        parser.add_argument("user", help="The username the token acts for.")
        parser.add_argument("--team", help="The team's code (`manage.py teams USER`); needed when USER is in several.")
        parser.add_argument("--name", default="command line", help="A name to tell the token apart (default: %(default)s).")
        parser.add_argument("--expires-in-days", type=int, default=None,
                            help="Days until the token stops working (default: it does not expire).")

    def handle(self, *args, user: str, team: str | None, name: str, expires_in_days: int | None, **options):
        account = get_user_model().objects.filter(username=user, is_active=True).first()
        if account is None:
            raise CommandError(f"No active user {user!r}.")
        memberships = Membership.objects.filter(user=account).select_related("team", "user")
        if team:
            memberships = memberships.filter(team__code=team)
        found = list(memberships)
        if not found:
            raise CommandError(f"{user} is not a member of team {team!r}." if team else f"{user} is in no team.")
        if len(found) > 1:
            codes = ", ".join(f"{m.team.code} ({m.team.name})" for m in found)
            raise CommandError(f"{user} is in several teams; choose one with --team: {codes}")
        try:
            token, plaintext = do_create_token(found[0], name, expires_in_days=expires_in_days)
        except TeamError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"Token {token.name!r} for {user} in team {found[0].team.code} ({found[0].team.name}); "
                          "it is shown only now:")
        self.stdout.write(plaintext)
