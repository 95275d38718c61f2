"""Admin for what is sold: categories, session types and credit packs."""
from __future__ import annotations

from django.contrib import admin
from django.db.models import Count
from unfold.admin import TabularInline
from unfold.decorators import display

from catalog.forms import CreditLineFormSet, CreditPackForm, SessionTypeForm, StaffPriceFormSet
from catalog.models import (
    MAX_CREDIT_LINES,
    Category,
    CreditPack,
    PackCreditLine,
    PackStaffPrice,
    SessionType,
)
from core.admin import HistoryAdmin, HistoryExportAdmin, ReadOnlyAdminMixin


@admin.register(Category)
class CategoryAdmin(HistoryAdmin):
    list_display = ("name", "position", "pack_count")
    search_fields = ("name",)
    ordering = ("position", "name")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(pack_total=Count("packs", distinct=True))

    @display(description="Packs", ordering="pack_total")
    def pack_count(self, obj: Category) -> int:
        return obj.pack_total


@admin.register(SessionType)
class SessionTypeAdmin(HistoryExportAdmin):
    form = SessionTypeForm
    list_display = (
        "name", "category", "duration_minutes", "requires_credit", "cancellation_window_hours",
        "archived",
    )
    list_filter = ("archived", "requires_credit", "category")
    list_select_related = ("category",)
    search_fields = ("name",)
    autocomplete_fields = ("category",)


class PackCreditLineInline(TabularInline):
    model = PackCreditLine
    formset = CreditLineFormSet
    fields = ("session_type", "credits", "unlimited", "validity_amount", "validity_unit")
    autocomplete_fields = ("session_type",)
    extra = 1
    max_num = MAX_CREDIT_LINES
    verbose_name = "credit line"
    verbose_name_plural = "credit lines (up to 5 session types)"


class PackStaffPriceInline(TabularInline):
    model = PackStaffPrice
    formset = StaffPriceFormSet
    fields = ("staff_member", "price")
    autocomplete_fields = ("staff_member",)
    extra = 0
    verbose_name = "staff member"
    verbose_name_plural = "staff (and their own price, if any)"


@admin.register(CreditPack)
class CreditPackAdmin(HistoryExportAdmin):
    form = CreditPackForm
    inlines = (PackCreditLineInline, PackStaffPriceInline)
    list_display = (
        "name", "category", "price", "currency", "line_count", "published", "sell_online",
        "is_recurring",
    )
    list_filter = ("published", "sell_online", "is_recurring", "restrict_to", "category")
    list_select_related = ("category",)
    search_fields = ("name", "description")
    autocomplete_fields = ("category",)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "category", "price", "currency")}),
        ("Selling", {"fields": ("published", "sell_online", "restrict_to", "all_staff")}),
        ("Validity", {"fields": ("validity_amount", "validity_unit", "valid_from")}),
        ("Recurring", {"fields": (
            "is_recurring", "recurring_collection", "billing_interval", "billing_interval_count", "recurs_when",
            "minimum_commitment", "free_trial_days",
        )}),
        ("Record", {"fields": ("created_at", "updated_at")}),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(line_total=Count("credit_lines", distinct=True))

    @display(description="Session types", ordering="line_total")
    def line_count(self, obj: CreditPack) -> int:
        return obj.line_total


# Lines and staff prices are edited on their pack's page only, where the pack's rules run;
# their own pages exist to show them and their history.


@admin.register(PackCreditLine)
class PackCreditLineAdmin(ReadOnlyAdminMixin, HistoryAdmin):
    list_display = ("pack", "session_type", "credits", "unlimited", "validity_amount", "validity_unit")
    list_filter = ("unlimited", "session_type")
    list_select_related = ("pack", "session_type")
    search_fields = ("pack__name", "session_type__name")


@admin.register(PackStaffPrice)
class PackStaffPriceAdmin(ReadOnlyAdminMixin, HistoryAdmin):
    list_display = ("pack", "staff_member", "price")
    list_select_related = ("pack", "staff_member")
    search_fields = ("pack__name", "staff_member__display_name")
