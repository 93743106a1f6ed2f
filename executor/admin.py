"""The operators' admin for chains, listener cursors, events and runs."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from executor.listener_health import scrub_urls
from executor.models import Chain, ChainCursor, Event, ReplayJob, RpcEndpoint, Run, StepRun
from executor.paging import CappedPaginator
from flows.admin import OperatorOnlyAdmin, OwnTeamsFilter, ReadOnlyAdmin, TeamScopedAdmin


class RpcEndpointInline(admin.TabularInline):
    model = RpcEndpoint
    extra = 0
    fields = ["url", "kind", "priority", "enabled", "failures", "last_ok_at", "last_error"]
    readonly_fields = ["failures", "last_ok_at", "last_error"]


@admin.register(Chain)
class ChainAdmin(OperatorOnlyAdmin):
    list_display = ["name", "slug", "chain_id", "enabled", "default_confirmations", "head", "processed", "lag",
                    "held", "inconsistencies", "websocket", "last_error"]
    list_filter = ["enabled"]
    search_fields = ["name", "slug", "chain_id"]
    inlines = [RpcEndpointInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("cursor")

    def _cursor(self, obj):
        return getattr(obj, "cursor", None)

    @admin.display(description="Head")
    def head(self, obj):
        cursor = self._cursor(obj)
        return cursor.head_block if cursor else None

    @admin.display(description="Processed")
    def processed(self, obj):
        cursor = self._cursor(obj)
        return cursor.block_number if cursor else None

    @admin.display(description="Lag")
    def lag(self, obj):
        cursor = self._cursor(obj)
        return cursor.lag if cursor else None

    @admin.display(description="Held at")
    def held(self, obj):
        cursor = self._cursor(obj)
        return cursor.held_block if cursor and cursor.held_block is not None else "-"

    @admin.display(description="RPC inconsistencies")
    def inconsistencies(self, obj):
        cursor = self._cursor(obj)
        return cursor.inconsistencies if cursor else 0

    @admin.display(description="Websocket")
    def websocket(self, obj):
        cursor = self._cursor(obj)
        return (cursor.ws_state or "none") if cursor else "-"

    @admin.display(description="Last error")
    def last_error(self, obj):
        cursor = self._cursor(obj)
        return scrub_urls(cursor.last_error)[:80] if cursor and cursor.last_error else "-"


class CursorActionForm(ActionForm):
    block_number = forms.IntegerField(required=False, min_value=0, label="Block")


@admin.action(description="Reset the cursor to the block given (the listener resumes after it)")
def reset_cursor(modeladmin, request, queryset):
    raw = request.POST.get("block_number", "")
    try:
        block = int(raw)
        if block < 0:
            raise ValueError(raw)
    except ValueError:
        messages.error(request, "Give the block number to reset to.")
        return
    # Clearing the recent blocks makes the listener fetch the hash of the new
    # position instead of trusting the old window.
    updated = queryset.update(block_number=block, block_hash="", recent_blocks=[], halted=False, last_error="")
    messages.success(request, f"Reset {updated} cursor(s) to block {block}.")


@admin.register(ChainCursor)
class ChainCursorAdmin(OperatorOnlyAdmin):
    list_display = ["chain", "block_number", "head_block", "lag_blocks", "held_block", "inconsistencies", "ws_state",
                    "halted", "updated_at"]
    readonly_fields = ["recent_blocks", "head_block", "head_seen_at", "last_error", "last_error_at", "held_block",
                       "held_reason", "held_since", "inconsistencies", "last_inconsistency", "last_inconsistency_at",
                       "ws_state", "ws_changed_at", "updated_at"]
    action_form = CursorActionForm
    actions = [reset_cursor]

    @admin.display(description="Lag")
    def lag_blocks(self, obj):
        return obj.lag


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["chain", "block_number", "log_index", "address", "tx_hash", "retracted_at"]
    list_filter = ["chain"]
    paginator = CappedPaginator  # millions of rows: no count of them all
    show_full_result_count = False
    search_fields = ["tx_hash", "address", "block_hash"]


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    fields = ["step_id", "status", "attempt", "error", "started_at", "finished_at"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description="Retry the selected failed runs", permissions=["change"])
def retry_failed_runs(modeladmin, request, queryset):
    from executor.runs.manual import RunError, retry_run

    retried, refused = 0, []
    for run in queryset.order_by("pk"):
        try:
            retry_run(run, user=request.user)
        except RunError as exc:
            refused.append(f"{run.code}: {exc}")
            continue
        retried += 1
    if retried:
        messages.success(request, f"Retried {retried} run(s).")
    if refused:
        messages.warning(request, f"Not retried ({len(refused)}): " + "; ".join(refused[:10]))


@admin.register(Run)
class RunAdmin(TeamScopedAdmin):
    list_display = ["code", "flow", "status", "dry_run", "created_at", "finished_at"]
    # By period rather than date_hierarchy, whose year and month links are read from every run.
    list_filter = ["status", "dry_run", ("created_at", admin.DateFieldListFilter), "chain", ("team", OwnTeamsFilter)]
    search_fields = ["code", "flow__name", "flow__code", "event__tx_hash", "trigger_key", "block_hash"]
    paginator = CappedPaginator  # millions of rows: no count of them all
    show_full_result_count = False
    inlines = [StepRunInline]
    raw_id_fields = ["event", "version", "flow"]
    actions = [retry_failed_runs]


@admin.register(ReplayJob)
class ReplayJobAdmin(ReadOnlyAdmin):
    """Replays and backtests as the workers ran them (requested through the API or `manage.py replay`)."""

    list_display = ["code", "flow", "dry_run", "from_block", "to_block", "status", "matched", "created_at"]
    list_filter = ["status", "dry_run", ("team", OwnTeamsFilter)]
    search_fields = ["code", "flow__name", "flow__code"]
    raw_id_fields = ["flow", "version", "requested_by"]
