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
