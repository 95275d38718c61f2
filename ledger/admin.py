"""Admin for credits: read-only views of grants, entries and balances.

Credits change only through ledger.services (the client page's "Adjust credits", purchases,
bookings), so none of these pages can add, edit or delete a row.
"""
from __future__ import annotations

from django.contrib import admin
from import_export import fields, resources
from unfold.admin import ModelAdmin
from unfold.decorators import display

from core.admin import ExportAdmin, ReadOnlyAdminMixin
from core.admin_imports import OpeningBalanceImportAdmin
from ledger.models import ClientBalance, CreditGrant, LedgerEntry


class LedgerEntryResource(resources.ModelResource):
    client_name = fields.Field(attribute="client__name", column_name="client_name")
    client_email = fields.Field(attribute="client__email", column_name="client_email")
    session_type_name = fields.Field(attribute="session_type__name", column_name="session_type")
    actor_username = fields.Field(attribute="actor__username", column_name="actor")

    class Meta:
        model = LedgerEntry
        fields = (
            "id", "created_at", "client", "client_name", "client_email", "session_type_name",
            "kind", "amount", "balance_after", "actor_username", "source", "purchase", "grant",
            "note",
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, ExportAdmin):
    resource_classes = [LedgerEntryResource]
    list_display = (
        "created_at", "client", "session_type", "kind", "amount", "balance_after", "by",
        "source", "note",
    )
    list_filter = ("kind", "source", "session_type")
    list_select_related = ("client", "session_type", "actor")
    search_fields = ("client__name", "client__email", "note")
    # Counting the whole ledger twice per page is the costliest part of this list.
    show_full_result_count = False

    @display(description="By", ordering="actor__username")
    def by(self, obj: LedgerEntry) -> str:
        return str(obj.actor) if obj.actor_id else "system"


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdminMixin, OpeningBalanceImportAdmin):
    list_display = (
        "id", "client", "session_type", "source", "quantity", "remaining", "unlimited", "state",
        "valid_from", "expires_at",
    )
    list_filter = ("state", "source", "unlimited", "session_type")
    list_select_related = ("client", "session_type")
    search_fields = ("client__name", "client__email")
    show_full_result_count = False


@admin.register(ClientBalance)
class ClientBalanceAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("client", "session_type", "balance", "updated_at")
    list_filter = ("session_type",)
    list_select_related = ("client", "session_type")
    search_fields = ("client__name", "client__email")
