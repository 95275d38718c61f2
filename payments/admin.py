"""Admin for money: sell a pack, record an in-person payment, refund (payments.admin_refunds),
the payments and outstanding lists.

Every payment path goes through payments.services.payment_record, so each paid purchase has its
Payment row (method, amount, reference, who took it).
"""
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
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from import_export import fields, resources
from unfold.admin import ModelAdmin
from unfold.decorators import action, display

from core.admin import HistoryAdmin, HistoryExportAdmin, ReadOnlyAdminMixin, error_text, local_start
from core.admin_base import next_url
from ledger.exceptions import LedgerError
from payments.admin_invoices import IssueInvoiceMixin
from payments.admin_refunds import refund_view
from payments.exceptions import PaymentError
from payments.forms import RecordPaymentForm, SellPackForm
from payments.models import OutstandingPurchase, Payment, Purchase, PurchaseStatus
from payments.selectors import outstanding_purchases
from payments.services import payment_record, purchase_create

SELL_FIELDS = ("client", "pack", "staff_member")
DETAIL_FIELDS = (
    "client", "pack", "staff_member", "status", "price", "currency", "created_by", "created_at",
    "paid_at", "refunded_amount", "plan_cycle", "invoice_list", "pack_as_bought", "snapshot_json",
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
class PurchaseAdmin(IssueInvoiceMixin, HistoryExportAdmin):
    resource_classes = [PurchaseResource]
    list_display = (
        "id", "client", "pack_name", "status", "price", "currency", "created_at", "paid_at",
    )
    list_filter = ("status", "currency", "pack")
    list_select_related = ("client",)
    search_fields = ("client__name", "client__email", "pack__name")
    autocomplete_fields = SELL_FIELDS
    actions_row = ["record_payment", "issue_invoice", "refund"]
    actions_detail = ["record_payment", "issue_invoice", "refund"]
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

    def has_record_payment_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("payments.add_payment")

    def has_refund_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("payments.add_refund")

    def get_actions_detail(self, request, object_id):
        # A purchase waiting for its money offers "Record payment" and "Issue invoice"; a paid one, "Refund".
        status = Purchase.objects.filter(pk=_pk(object_id)).values_list("status", flat=True).first()
        wanted = {
            PurchaseStatus.PENDING.value: {"record_payment", "issue_invoice"},
            PurchaseStatus.PAID.value: {"refund"},
        }.get(status, set())
        return [a for a in super().get_actions_detail(request, object_id) if a.method.__name__ in wanted]

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

    @display(description="Recurring plan")
    def plan_cycle(self, obj: Purchase):
        if obj.subscription_id is None:
            return "—"
        url = reverse("admin:payments_subscription_change", args=[obj.subscription_id])
        return format_html(
            '<a href="{}">Plan #{}</a>, cycle {}: {} – {}', url, obj.subscription_id, obj.cycle_number,
            f"{timezone.localtime(obj.period_start):%d %b %Y}", f"{timezone.localtime(obj.period_end):%d %b %Y}",
        )

    @display(description="Invoices")
    def invoice_list(self, obj: Purchase):
        rows = [
            (reverse("admin:payments_invoice_change", args=[i.pk]), i.number or f"#{i.pk}",
             i.get_kind_display(), i.get_status_display())
            for i in obj.invoices.order_by("created_at", "pk")
        ]
        if not rows:
            return "—"
        return format_html_join(", ", '<a href="{}">{}</a> ({}, {})', rows)

    @display(description="Snapshot (as stored)")
    def snapshot_json(self, obj: Purchase):
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2, sort_keys=True))

    # --- Selling ----------------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """Sell a pack: the price and snapshot come from the database, through the service."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {"client": request.GET["client"]} if request.GET.get("client", "").isdigit() else {}
        form = SellPackForm(request.POST or None, admin_site=self.admin_site, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                purchase = purchase_create(
                    client=form.cleaned_data["client"], pack=form.cleaned_data["pack"],
                    staff_member=form.cleaned_data.get("staff_member"), actor=request.user,
                )
            except (PaymentError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(
                    request, f"Purchase #{purchase.pk} created: {purchase.price} {purchase.currency}, "
                    "pending payment. Record the payment now, or later from the outstanding payments.",
                )
                if self.has_record_payment_permission(request):
                    return redirect(reverse("admin:payments_purchase_record_payment", args=[purchase.pk]))
                return redirect(reverse("admin:payments_purchase_change", args=[purchase.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Sell a credit pack",
            "intro": (
                "The price and the credits come from the pack as it is now; the purchase keeps a copy, "
                "so later edits to the pack never change it. Credits are issued when the payment is recorded."
            ),
            "submit_label": "Create purchase",
            "cancel_url": reverse("admin:payments_purchase_changelist"),
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    # --- Recording a payment ----------------------------------------------------------------

    @action(description="Record payment", url_path="record-payment", icon="payments", permissions=["record_payment"])
    def record_payment(self, request, object_id):
        return record_payment_view(
            self, request, object_id, back=reverse("admin:payments_purchase_change", args=[_pk(object_id)]),
        )

    @action(description="Refund", url_path="refund", icon="undo", permissions=["refund"])
    def refund(self, request, object_id):
        return refund_view(self, request, object_id)


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such purchase.")
    return int(object_id)


def record_payment_view(model_admin, request, object_id, *, back: str):
    """Money taken at the desk for one purchase: method, amount (its price) and a reference."""
    purchase = Purchase.objects.select_related("client").filter(pk=_pk(object_id)).first()
    if purchase is None:
        raise Http404("No such purchase.")
    back = next_url(request, back)
    if purchase.status != PurchaseStatus.PENDING:
        messages.error(request, f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: nothing to record.")
        return redirect(back)
    form = RecordPaymentForm(request.POST or None, initial={"amount": purchase.price})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            payment = payment_record(
                purchase=purchase, method=data["method"], amount=data["amount"],
                reference=data["reference"], actor=request.user,
            )
        except (PaymentError, LedgerError, ValidationError) as exc:
            form.add_error(None, error_text(exc))
        else:
            messages.success(
                request, f"{payment.get_method_display()} payment of {payment.amount} {payment.currency} recorded "
                f"for purchase #{purchase.pk}: {purchase.client.name}'s credits are issued.",
            )
            return redirect(back)
    bookings = purchase.bookings.select_related("session__session_type", "session__staff_member").order_by(
        "session__starts_at"
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Record payment: purchase #{purchase.pk}",
        "submit_label": "Record payment",
        "cancel_url": back,
        "next": back,
        "opts": model_admin.model._meta,
        "purchase": purchase,
        "bookings": bookings,
        "form": form,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "admin/payments/purchase/record_payment.html", context)


# --- Payments -----------------------------------------------------------------------------


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdminMixin, HistoryAdmin):
    """Money received: written only by payment_record (and Stripe later), read here."""

    list_display = ("received", "client", "purchase_link", "method", "amount_paid", "reference", "recorded_by")
    # A date filter rather than date_hierarchy: the hierarchy scans every payment for its dates.
    list_filter = ("method", ("received_at", admin.DateFieldListFilter))
    list_select_related = ("purchase__client", "recorded_by")
    search_fields = ("purchase__client__name", "purchase__client__email", "reference")
    show_full_result_count = False

    @display(description="Received", ordering="received_at")
    def received(self, obj: Payment) -> str:
        return local_start(obj.received_at)

    @display(description="Client", ordering="purchase__client__name")
    def client(self, obj: Payment) -> str:
        return obj.purchase.client.name

    @display(description="Amount", ordering="amount")
    def amount_paid(self, obj: Payment) -> str:
        return f"{obj.amount} {obj.currency}"

    @display(description="Purchase")
    def purchase_link(self, obj: Payment):
        url = reverse("admin:payments_purchase_change", args=[obj.purchase_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.purchase_id, obj.purchase.snapshot.get("name", ""))


# --- Outstanding payments -----------------------------------------------------------------


class FirstSessionFilter(admin.SimpleListFilter):
    title = "first session"
    parameter_name = "first_session"

    def lookups(self, request, model_admin):
        return (("started", "Already started"), ("ahead", "Still ahead"), ("none", "No session booked"))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "started":
            return queryset.filter(first_session_at__lte=now)
        if self.value() == "ahead":
            return queryset.filter(first_session_at__gt=now)
        if self.value() == "none":
            return queryset.filter(first_session_at__isnull=True)
        return queryset


@admin.register(OutstandingPurchase)
class OutstandingPurchaseAdmin(IssueInvoiceMixin, ModelAdmin):
    """Desk sales still unpaid, oldest first: finance chases them (the selector defines the list)."""

    list_display = (
        "client_name", "pack_name", "amount", "due_since", "plan", "sessions_used", "first_session", "state",
        "pay",
    )
    list_display_links = None
    list_filter = (FirstSessionFilter,)
    search_fields = ("client__name", "client__email")
    actions_row = ["record_payment", "issue_invoice"]

    def get_queryset(self, request):
        return outstanding_purchases().annotate(snapshot_name=KeyTextTransform("name", "snapshot"))

    def get_list_display(self, request):
        shown = super().get_list_display(request)
        return shown if self.has_record_payment_permission(request) else tuple(c for c in shown if c != "pay")

    # A window on purchases: nothing is added, edited or deleted from here.
    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_record_payment_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("payments.add_payment")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        # The purchase's own page is the detail; this list is only a window on it.
        return redirect(reverse("admin:payments_purchase_change", args=[_pk(object_id)]))

    @display(description="Client", ordering="client__name")
    def client_name(self, obj: Purchase):
        url = reverse("admin:core_client_change", args=[obj.client_id])
        return format_html('<a href="{}">{}</a>', url, obj.client.name)

    @display(description="Pack", ordering="snapshot_name")
    def pack_name(self, obj: Purchase):
        url = reverse("admin:payments_purchase_change", args=[obj.pk])
        return format_html('<a href="{}">#{} {}</a>', url, obj.pk, obj.snapshot_name or "")

    @display(description="Amount", ordering="price")
    def amount(self, obj: Purchase) -> str:
        return f"{obj.price} {obj.currency}"

    @display(description="Due since", ordering="created_at")
    def due_since(self, obj: Purchase) -> str:
        return local_start(obj.created_at)

    @display(description="Plan")
    def plan(self, obj: Purchase) -> str:
        if obj.subscription_id is None:
            return "—"
        plan = obj.subscription
        text = f"Cycle {obj.cycle_number}; {obj.plan_payments_made} paid"
        if plan.minimum_commitment:
            text += f" of {plan.minimum_commitment} committed"
        return text

    @display(description="Sessions used", ordering="sessions_used")
    def sessions_used(self, obj: Purchase) -> int:
        return obj.sessions_used

    @display(description="First session", ordering="first_session_at")
    def first_session(self, obj: Purchase) -> str:
        return local_start(obj.first_session_at) if obj.first_session_at else "—"

    @display(description="Status", label={"started": "danger", "ahead": "info", "none": ""})
    def state(self, obj: Purchase):
        if obj.first_session_at is None:
            return "none", "No session booked"
        if obj.first_session_at <= timezone.now():
            return "started", "Session already started"
        return "ahead", "Before first session"

    @display(description="")
    def pay(self, obj: Purchase):
        # The list's one job, so it is a visible link, not only in the row's menu.
        url = reverse("admin:payments_outstandingpurchase_record_payment", args=[obj.pk])
        return format_html('<a class="font-medium text-primary-600 whitespace-nowrap" href="{}">Record payment</a>', url)

    @action(description="Record payment", url_path="record-payment", icon="payments", permissions=["record_payment"])
    def record_payment(self, request, object_id):
        return record_payment_view(
            self, request, object_id, back=reverse("admin:payments_outstandingpurchase_changelist"),
        )


from payments import admin_events  # noqa: E402,F401
from payments import admin_reconciliation  # noqa: E402,F401
from payments import admin_subscriptions  # noqa: E402,F401
