import json

from django.contrib import admin
from django.utils.html import format_html

from flows.models import Flow, FlowVersion, Membership, Team


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "created_at"]
    search_fields = ["name", "code"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
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


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "code", "paused", "updated_at"]
    search_fields = ["name", "code"]
    list_filter = ["team"]
    inlines = [FlowVersionInline]


@admin.register(FlowVersion)
class FlowVersionAdmin(admin.ModelAdmin):
    list_display = ["flow", "number", "status", "created_at", "published_at"]
    list_filter = ["status"]
    search_fields = ["flow__name", "flow__code"]
    readonly_fields = ["pretty_graph", "pretty_dag"]
    exclude = ["graph", "dag"]

    @admin.display(description="Graph")
    def pretty_graph(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.graph, indent=2, sort_keys=True))

    @admin.display(description="Compiled DAG")
    def pretty_dag(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.dag, indent=2, sort_keys=True))


# -- operator views of team data ---------------------------------------------------------------
# Staff who are not superusers see only the objects of teams they belong to.

from django.contrib import messages  # noqa: E402

from flows.models import ApiToken, AuditEvent, FlowShare, Invitation, PublicLink, Secret, SignerKey  # noqa: E402


class TeamScopedAdmin(admin.ModelAdmin):
    """Superusers see everything; other staff see the rows of their own teams only."""

    team_path = "team"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.team_path}__memberships__user": request.user}).distinct()


def scope_team_admin(model_admin_class, team_path: str):
    """Give an already-registered ModelAdmin the team scoping (for the admins above this section)."""
    original = model_admin_class.get_queryset

    def get_queryset(self, request):
        queryset = original(self, request)
        if request.user.is_superuser:
            return queryset
        lookup = f"{team_path}__memberships__user" if team_path else "memberships__user"
        return queryset.filter(**{lookup: request.user}).distinct()

    model_admin_class.get_queryset = get_queryset


scope_team_admin(TeamAdmin, "")
scope_team_admin(MembershipAdmin, "team")
scope_team_admin(FlowAdmin, "team")
scope_team_admin(FlowVersionAdmin, "flow__team")
FlowVersionAdmin.readonly_fields = ["flow", "number", "status", "created_by", "published_at", "pretty_graph", "pretty_dag"]


@admin.action(description="Pause the selected flows (their triggers stop firing)")
def pause_flows(modeladmin, request, queryset):
    from flows.actions import pause_flow

    count = sum(pause_flow(flow, request.user) for flow in queryset.select_related("team"))
    messages.success(request, f"Paused {count} flow(s).")


@admin.action(description="Resume the selected flows")
def resume_flows(modeladmin, request, queryset):
    from flows.actions import resume_flow

    count = sum(resume_flow(flow, request.user) for flow in queryset.select_related("team"))
    messages.success(request, f"Resumed {count} flow(s).")


FlowAdmin.actions = [pause_flows, resume_flows]


@admin.register(AuditEvent)
class AuditEventAdmin(TeamScopedAdmin):
    """Read-only: the audit log has no update or delete path, here either."""

    list_display = ["created_at", "team", "actor_name", "action", "target"]
    list_filter = ["action", "team"]
    search_fields = ["actor_name", "target", "action"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Secret)
class SecretAdmin(TeamScopedAdmin):
    """Names only: the encrypted value is never loaded into a form or shown."""

    list_display = ["name", "team", "updated_at"]
    search_fields = ["name", "team__name"]
    fields = ["team", "name", "created_by", "created_at", "updated_at"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(SignerKey)
class SignerKeyAdmin(TeamScopedAdmin):
    list_display = ["name", "address", "team", "created_at"]
    search_fields = ["name", "address", "team__name"]
    fields = ["team", "name", "address", "code", "created_by", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(TeamScopedAdmin):
    list_display = ["name", "prefix", "user", "team", "created_at", "last_used_at", "revoked_at"]
    fields = ["name", "prefix", "user", "team", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    search_fields = ["prefix", "name", "user__username"]

    def has_add_permission(self, request):
        return False


@admin.register(Invitation)
class InvitationAdmin(TeamScopedAdmin):
    list_display = ["email", "team", "role", "expires_at", "accepted_at", "revoked_at"]
    readonly_fields = ["code", "team", "email", "role", "invited_by", "expires_at", "accepted_at", "accepted_by"]
    exclude = []


@admin.register(FlowShare)
class FlowShareAdmin(TeamScopedAdmin):
    team_path = "flow__team"
    list_display = ["flow", "team", "created_at"]


@admin.register(PublicLink)
class PublicLinkAdmin(TeamScopedAdmin):
    team_path = "flow__team"
    list_display = ["flow", "created_at", "revoked_at"]
    readonly_fields = ["token", "flow", "created_by"]
