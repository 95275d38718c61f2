"""Admin lists of the email log and the staff notifications: read-only, written by core.emails
and the jobs. Registered from the bottom of core.admin (the module autodiscovery imports)."""
from __future__ import annotations

from django.contrib import admin
from unfold.admin import ModelAdmin
from unfold.decorators import display

from core.admin_base import ReadOnlyAdminMixin, local_start
from core.models import EmailLog, EmailStatus, StaffNotification


@admin.register(EmailLog)
class EmailLogAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("when", "recipient", "template", "nudge_kind", "about", "state", "client")
    list_filter = ("status", "template", "nudge_kind", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("client",)
    search_fields = ("recipient", "subject", "client__name", "dedupe_key")
    # Counting the whole log twice per page is the costliest part of this list.
    show_full_result_count = False
    fields = (
        "recipient", "subject", "template", "nudge_kind", "client", "related_type", "related_id",
        "dedupe_key", "status", "reason", "error", "created_at", "sent_at",
    )

    @display(description="Created", ordering="created_at")
    def when(self, obj: EmailLog) -> str:
        return local_start(obj.created_at)

    @display(description="About")
    def about(self, obj: EmailLog) -> str:
        return f"{obj.related_type} {obj.related_id}" if obj.related_type else "—"

    @display(
        description="Status", ordering="status",
        label={EmailStatus.SENT: "success", EmailStatus.FAILED: "danger", EmailStatus.SKIPPED: "warning",
               EmailStatus.QUEUED: "info"},
    )
    def state(self, obj: EmailLog) -> str:
        return obj.status


class ReadFilter(admin.SimpleListFilter):
    title = "read"
    parameter_name = "read"

    def lookups(self, request, model_admin):
        return (("no", "Unread"), ("yes", "Read"))

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(read_at__isnull=self.value() == "no")
        return queryset


@admin.register(StaffNotification)
class StaffNotificationAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("when", "staff_member", "text", "about", "read_at")
    list_filter = (ReadFilter, "staff_member", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("staff_member",)
    search_fields = ("text", "staff_member__display_name")
    show_full_result_count = False

    @display(description="Created", ordering="created_at")
    def when(self, obj: StaffNotification) -> str:
        return local_start(obj.created_at)

    @display(description="About")
    def about(self, obj: StaffNotification) -> str:
        return f"{obj.related_type} {obj.related_id}" if obj.related_type else "—"
