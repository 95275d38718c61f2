"""Admin for purchases: sell a pack, record an in-person payment, read the snapshot."""
from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models.fields.json import KeyTextTransform
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from import_export import fields, resources
from unfold.decorators import action, display

from core.admin import HistoryExportAdmin, error_text
from ledger.exceptions import LedgerError
from payments.exceptions import PaymentError
from payments.models import Purchase, PurchaseStatus
from payments.services import purchase_create, purchase_mark_paid

SELL_FIELDS = ("client", "pack", "staff_member")
DETAIL_FIELDS = (
    "client", "pack", "staff_member", "status", "price", "currency", "created_by", "created_at",
    "paid_at", "pack_as_bought", "snapshot_json",
)


class PurchaseResource(resources.ModelResource):
    client_email = fields.Field(attribute="client__email", column_name="client_email")
    pack_name = fields.Field(column_name="pack_name")

    class Meta:
        model = Purchase
        fields = (
            "id", "created_at", "paid_at", "status", "client", "client_email", "pack", "pack_name",
            "staff_member", "price", "currency",
        )

    def dehydrate_pack_name(self, purchase: Purchase) -> str:
        return purchase.snapshot.get("name", "")


def _describe_line(line: dict) -> str:
    amount = "unlimited" if line.get("unlimited") else f"{line.get('credits')} ×"
    return (
        f"{amount} {line.get('session_type')}, valid {line.get('validity_amount')} "
        f"{line.get('validity_unit')}"
    )


@admin.register(Purchase)
class PurchaseAdmin(HistoryExportAdmin):
    resource_classes = [PurchaseResource]
    list_display = (
        "id", "client", "pack_name", "status", "price", "currency", "created_at", "paid_at",
    )
    list_filter = ("status", "currency", "pack")
    list_select_related = ("client",)
    search_fields = ("client__name", "client__email", "pack__name")
    autocomplete_fields = SELL_FIELDS
    actions = ["mark_paid_cash"]
    actions_detail = ["mark_paid_one"]
    show_full_result_count = False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            snapshot_name=KeyTextTransform("name", "snapshot")
        )

    def get_fields(self, request, obj=None):
        return SELL_FIELDS if obj is None else DETAIL_FIELDS

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else DETAIL_FIELDS

    # A purchase is a money record: its status moves only through the actions below (services),
    # so its page is read-only and it is never deleted.
    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_mark_paid_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("payments.change_purchase")

    @display(description="Pack", ordering="snapshot_name")
    def pack_name(self, obj: Purchase) -> str:
        return obj.snapshot_name or ""

    @display(description="Pack as bought")
    def pack_as_bought(self, obj: Purchase):
        snap = obj.snapshot or {}
        lines = format_html_join("", "<li>{}</li>", ((_describe_line(l),) for l in snap.get("lines", [])))
        return format_html(
            "<p>{} — {} {}, validity counted from {}</p><ul>{}</ul>",
            snap.get("name", ""), snap.get("price", ""), snap.get("currency", ""),
            snap.get("valid_from", ""), lines,
        )

    @display(description="Snapshot (as stored)")
    def snapshot_json(self, obj: Purchase):
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2, sort_keys=True))

    # --- Selling ----------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """Sell a pack: the price and snapshot come from the database, through the service."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form_class = self.get_form(request, None, change=False, fields=SELL_FIELDS)
        form = form_class(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                purchase = purchase_create(
                    client=form.cleaned_data["client"], pack=form.cleaned_data["pack"],
                    staff_member=form.cleaned_data.get("staff_member"), actor=request.user,
                )
            except (PaymentError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
                messages.error(request, error_text(exc))
            else:
                messages.success(
                    request, f"Purchase #{purchase.pk} created, pending payment: "
                    "use “Mark paid (cash)” when the client pays.",
                )
                return redirect(reverse("admin:payments_purchase_change", args=[purchase.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Sell a credit pack",
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/payments/purchase/sell.html", context)

    # --- Recording a payment ----------------------------------------------------------------

    def _mark_paid(self, request, queryset) -> None:
        paid = 0
        for purchase in queryset.select_related(None).order_by("pk"):
            if purchase.status == PurchaseStatus.PAID:
                messages.info(request, f"Purchase #{purchase.pk} was already paid.")
                continue
            try:
                purchase_mark_paid(purchase=purchase, actor=request.user)
            except (PaymentError, LedgerError, ValidationError) as exc:
                messages.error(request, f"Purchase #{purchase.pk}: {error_text(exc)}")
            else:
                paid += 1
        if paid:
            messages.success(request, f"{paid} purchase(s) marked paid; their credits are issued.")

    def _confirm(self, request, queryset, *, changelist_action: str | None):
        context = {
            **self.admin_site.each_context(request),
            "title": "Mark paid (cash)?",
            "opts": self.model._meta,
            "purchases": queryset.select_related("client").order_by("pk"),
            "changelist_action": changelist_action,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/payments/purchase/mark_paid_confirmation.html", context)

    @admin.action(description="Mark paid (cash)", permissions=["mark_paid"])
    def mark_paid_cash(self, request, queryset):
        if request.POST.get("confirmed") != "yes":
            return self._confirm(request, queryset, changelist_action="mark_paid_cash")
        self._mark_paid(request, queryset)
        return None

    @action(description="Mark paid (cash)", url_path="mark-paid", permissions=["mark_paid"], icon="payments")
    def mark_paid_one(self, request, object_id):
        object_id = unquote(object_id)
        queryset = self.get_queryset(request).filter(pk=object_id if object_id.isdigit() else None)
        if not queryset.exists():
            raise Http404("No such purchase.")
        if request.method != "POST" or request.POST.get("confirmed") != "yes":
            return self._confirm(request, queryset, changelist_action=None)
        self._mark_paid(request, queryset)
        return redirect(reverse("admin:payments_purchase_change", args=[object_id]))
