"""`manage.py teams [USER]`: the teams, with the codes the CLI and the API ask for."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from flows.models import Membership, Team


class Command(BaseCommand):
    help = "List teams with their codes, members and roles (only USER's teams when given)."

    def add_arguments(self, parser):
        parser.add_argument("user", nargs="?", help="A username: list only that user's teams, with their role.")

    def handle(self, *args, user: str | None = None, **options):
        if user:
            account = get_user_model().objects.filter(username=user).first()
            if account is None:
                raise CommandError(f"No user {user!r}.")
            memberships = Membership.objects.filter(user=account).select_related("team").order_by("team__name")
            if not memberships:
                self.stdout.write(f"{user} is in no team.")
            for membership in memberships:
                self.stdout.write(f"{membership.team.code}  {membership.team.name}  ({membership.role.lower()})")
            return
        teams = Team.objects.order_by("name")
        if not teams:
            self.stdout.write("No teams yet: sign up in the browser, or `manage.py dev` creates a demo team.")
        for team in teams:
            members = ", ".join(f"{m.user.username} ({m.role.lower()})"
                                for m in team.memberships.select_related("user").order_by("user__username"))
            self.stdout.write(f"{team.code}  {team.name}  {members}")
