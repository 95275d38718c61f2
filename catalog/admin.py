"""Admin for what is sold: categories, session types (and add-ons), credit packs, intake forms."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count
from unfold.admin import StackedInline, TabularInline
from unfold.decorators import display

from catalog.forms import (
    CreditLineFormSet,
    CreditPackForm,
    SessionTypeForm,
    StaffPriceFormSet,
    _add_errors,
)
from catalog.models import (
    MAX_CREDIT_LINES,
    Category,
    CreditPack,
    IntakeForm,
    IntakeQuestion,
    PackCreditLine,
    PackStaffPrice,
    SessionType,
)
from catalog.validation import validate_add_on, validate_intake_question
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


class SessionTypeAddOnForm(SessionTypeForm):
    """The session type's rules (catalog.forms), and an add-on's (catalog.validation)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "currency" in self.fields:
            # Only an add-on's price needs it: left empty, the session type keeps its currency.
            self.fields["currency"].required = False

    def clean(self):
        cleaned = super().clean()
        if "currency" in self.fields:
            cleaned["currency"] = (cleaned.get("currency") or self.instance.currency or "").strip().upper()
        try:
            validate_add_on(
                self.instance, add_on_for=cleaned.get("add_on_for") or [], price=cleaned.get("price"),
                currency=cleaned.get("currency", ""), intake_form=cleaned.get("intake_form"),
            )
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned


@admin.register(SessionType)
class SessionTypeAdmin(HistoryExportAdmin):
    form = SessionTypeAddOnForm
    list_display = (
        "name", "category", "duration_minutes", "requires_credit", "cancellation_window_hours",
        "is_add_on", "archived",
    )
    list_filter = ("archived", "requires_credit", "category")
    list_select_related = ("category",)
    search_fields = ("name",)
    autocomplete_fields = ("category", "add_on_for", "intake_form")
    fieldsets = (
        (None, {"fields": (
            "name", "category", "duration_minutes", "requires_credit", "cancellation_window_hours", "archived",
        )}),
        ("Add-on", {
            "fields": ("add_on_for", "price", "currency", "intake_form"),
            "description": (
                "An add-on extends a booking of one of these session types, right after it with the same "
                "staff member. It is paid with its own credit, or sold at its price when the client has none."
            ),
        }),
    )

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(base_total=Count("add_on_for", distinct=True))

    @display(description="Add-on", boolean=True, ordering="base_total")
    def is_add_on(self, obj: SessionType) -> bool:
        return bool(obj.base_total)


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


# --- Intake forms: questions asked before an add-on (a health screening) -----------------------


class IntakeQuestionForm(forms.ModelForm):
    class Meta:
        model = IntakeQuestion
        fields = ("position", "text", "kind", "required", "blocks_on_yes", "block_reason")

    def clean(self):
        cleaned = super().clean()
        try:
            validate_intake_question(
                kind=cleaned.get("kind") or "", blocks_on_yes=bool(cleaned.get("blocks_on_yes")),
                block_reason=cleaned.get("block_reason") or "",
            )
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned


class IntakeQuestionInline(StackedInline):
    model = IntakeQuestion
    form = IntakeQuestionForm
    fields = (("position", "kind", "required"), "text", ("blocks_on_yes", "block_reason"))
    extra = 1
    ordering = ("position", "id")
    verbose_name = "question"
    verbose_name_plural = "questions (in order; a blocking “yes” stops the add-on with its reason)"


@admin.register(IntakeForm)
class IntakeFormAdmin(HistoryAdmin):
    inlines = (IntakeQuestionInline,)
    list_display = ("name", "question_count", "add_on_count")
    search_fields = ("name",)

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            question_total=Count("questions", distinct=True), add_on_total=Count("session_types", distinct=True),
        )

    @display(description="Questions", ordering="question_total")
    def question_count(self, obj: IntakeForm) -> int:
        return obj.question_total

    @display(description="Asked for add-ons", ordering="add_on_total")
    def add_on_count(self, obj: IntakeForm) -> int:
        return obj.add_on_total
