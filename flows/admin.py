"""The operators' admin for team data.

Superusers (the operators) see and change everything. Other staff see only the
rows of the teams they belong to, read-only: every change to team data goes
through the app, where roles are checked (an admin form cannot make anyone an
owner, share a flow or delete a key behind the team's back).
"""

import json

from django.contrib import admin, messages
from django.utils.html import format_html

from flows.models import (
    ApiToken,
    AuditEvent,
    Flow,
    FlowShare,
    FlowVersion,
    Invitation,
    Membership,
    PublicLink,
    Secret,
    SignerKey,
    Team,
)


class OwnTeamsFilter(admin.RelatedFieldListFilter):
    """A team filter that lists only the teams the viewing staff member belongs to
    (superusers: every team), so team-scoped staff never see other teams' names."""

    def field_choices(self, field, request, model_admin):
        teams = Team.objects.all() if request.user.is_superuser else Team.objects.filter(memberships__user=request.user)
        return [(team.pk, str(team)) for team in teams.distinct().order_by("name")]


class SuperuserWritesAdmin(admin.ModelAdmin):
    """Only superusers add, change or delete here."""

    def has_add_permission(self, request, *args):
        return request.user.is_superuser and super().has_add_permission(request, *args)

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)


class OperatorOnlyAdmin(SuperuserWritesAdmin):
    """Shared infrastructure (chains, their RPC endpoints and cursors): every team's signed
    transactions go through it and endpoint URLs hold provider keys, so only superusers see
    or change it."""

    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser


class TeamScopedAdmin(SuperuserWritesAdmin):
    """Superusers: everything. Other staff: their own teams' rows, read-only."""

    team_path = "team"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        lookup = f"{self.team_path}__memberships__user" if self.team_path else "memberships__user"
        return queryset.filter(**{lookup: request.user}).distinct()


class ReadOnlyAdmin(TeamScopedAdmin):
    """Nobody edits these here, superusers included."""

    def has_add_permission(self, request, *args):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]

    def has_add_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


@admin.register(Team)
class TeamAdmin(TeamScopedAdmin):
    team_path = ""
    list_display = ["name", "code", "webhook_rate_per_minute", "runs_per_minute", "flow_runs_per_minute",
                    "condition_ms_per_block", "run_retention_days", "failed_run_retention_days", "created_at"]
    search_fields = ["name", "code"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(TeamScopedAdmin):
    list_display = ["user", "team", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__username", "team__name"]


class FlowVersionInline(admin.TabularInline):
    model = FlowVersion
    extra = 0
    fields = ["number", "status", "created_at", "published_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description="Pause the selected flows (their triggers stop firing)")
def pause_flows(modeladmin, request, queryset):
    from flows.actions import do_pause_flow

    count = sum(do_pause_flow(flow, request.user) for flow in queryset.select_related("team"))
    messages.success(request, f"Paused {count} flow(s).")


@admin.action(description="Resume the selected flows")
def resume_flows(modeladmin, request, queryset):
    from flows.actions import do_resume_flow

    count = sum(do_resume_flow(flow, request.user) for flow in queryset.select_related("team"))
    messages.success(request, f"Resumed {count} flow(s).")


@admin.register(Flow)
class FlowAdmin(TeamScopedAdmin):
    list_display = ["name", "team", "code", "paused", "updated_at"]
    search_fields = ["name", "code"]
    list_filter = [("team", OwnTeamsFilter), "paused"]
    # Pausing goes through the action (it tells the listeners); the signing secret is never shown.
    fields = ["team", "name", "description", "code", "paused", "revision", "created_by", "created_at", "updated_at"]
    readonly_fields = ["team", "code", "paused", "revision", "created_by", "created_at", "updated_at"]
    inlines = [FlowVersionInline]
    actions = [pause_flows, resume_flows]


@admin.register(FlowVersion)
class FlowVersionAdmin(ReadOnlyAdmin):
    team_path = "flow__team"
    list_display = ["flow", "number", "status", "created_at", "published_at"]
    list_filter = ["status"]
    search_fields = ["flow__name", "flow__code"]
    fields = ["flow", "number", "status", "created_by", "published_at", "pretty_graph", "pretty_dag"]
    readonly_fields = fields

    @admin.display(description="Graph")
    def pretty_graph(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.graph, indent=2, sort_keys=True))

    @admin.display(description="Compiled DAG")
    def pretty_dag(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.dag, indent=2, sort_keys=True))


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log has no update or delete path, here either."""

    list_display = ["created_at", "team", "actor_name", "action", "target"]
    list_filter = ["action", ("team", OwnTeamsFilter)]
    search_fields = ["actor_name", "target", "action"]
    date_hierarchy = "created_at"

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Secret)
class SecretAdmin(ReadOnlyAdmin):
    """Names only: the encrypted value is never loaded into a form or shown."""

    list_display = ["name", "team", "updated_at"]
    search_fields = ["name", "team__name"]
    fields = ["team", "name", "created_by", "created_at", "updated_at"]
    readonly_fields = fields


@admin.register(SignerKey)
class SignerKeyAdmin(ReadOnlyAdmin):
    list_display = ["name", "address", "team", "created_at"]
    search_fields = ["name", "address", "team__name"]
    fields = ["team", "name", "address", "code", "created_by", "created_at"]
    readonly_fields = fields


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdmin):
    list_display = ["name", "prefix", "user", "team", "created_at", "last_used_at", "revoked_at"]
    fields = ["name", "prefix", "user", "team", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    search_fields = ["prefix", "name", "user__username"]


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin):
    list_display = ["email", "team", "role", "expires_at", "accepted_at", "revoked_at"]
    fields = ["code", "team", "email", "role", "invited_by", "expires_at", "accepted_at", "accepted_by"]
    readonly_fields = fields


@admin.register(FlowShare)
class FlowShareAdmin(ReadOnlyAdmin):
    team_path = "flow__team"
    list_display = ["flow", "team", "created_at"]


@admin.register(PublicLink)
class PublicLinkAdmin(ReadOnlyAdmin):
    team_path = "flow__team"
    list_display = ["flow", "created_at", "revoked_at"]
    fields = ["flow", "created_by", "created_at", "revoked_at"]
    readonly_fields = fields
