"""Admin for invoices: the read-only list, and confirm pages that only call payments.invoices.

"Issue invoice" is reached from a purchase's page and from the outstanding payments list
(IssueInvoiceMixin on those admins, or the link from `issue_invoice_link`); it lives here, at
admin:payments_invoice_issue, so both share one page. Mark paid, Void and Retry send are the
invoice's own actions. Every refusal is the service's own text, shown as an error.
Registered from payments.admin.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from unfold.decorators import action, display
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminRadioSelectWidget,
    UnfoldAdminTextInputWidget,
)

from core.admin import HistoryAdmin, ReadOnlyAdminMixin, error_text, local_start
from core.admin_base import next_url
from core.models import BusinessSettings
from ledger.exceptions import LedgerError
from ledger.models import CreditGrant, GrantState
from payments.exceptions import PaymentError
from payments.invoices import (
    MAX_DAYS_UNTIL_DUE,
    invoice_issue_offline,
    invoice_issue_stripe,
    invoice_label,
    invoice_lines,
    invoice_mark_paid_offline,
    invoice_send_retry,
    invoice_void,
)
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    OutstandingPurchase,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
)
from payments.services import DESK_METHODS

ISSUE_PERMISSION = "payments.add_invoice"
CHANGE_PERMISSION = "payments.change_invoice"
STATUS_LABELS = {
    InvoiceStatus.DRAFT: "warning", InvoiceStatus.OPEN: "info", InvoiceStatus.PAID: "success",
    InvoiceStatus.VOID: "", InvoiceStatus.UNCOLLECTIBLE: "danger",
}
PAYABLE = (InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
VOIDABLE = (InvoiceStatus.DRAFT.value, InvoiceStatus.OPEN.value, InvoiceStatus.UNCOLLECTIBLE.value)
FORM_PAGE = "payments/admin/invoice_form.html"


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such object.")
    return int(object_id)


# --- Forms ----------------------------------------------------------------------------------


class IssueInvoiceForm(forms.Form):
    kind = forms.ChoiceField(
        choices=InvoiceKind.choices, initial=InvoiceKind.STRIPE, widget=UnfoldAdminRadioSelectWidget(),
        help_text="Stripe emails the invoice with a page to pay it by card; an offline invoice is emailed by us "
        "and paid at the desk or by bank transfer.",
    )
    days_until_due = forms.IntegerField(
        min_value=1, max_value=MAX_DAYS_UNTIL_DUE, widget=UnfoldAdminIntegerFieldWidget(),
        help_text="The client has this many days to pay.",
    )


class MarkPaidForm(forms.Form):
    method = forms.ChoiceField(
        choices=[(m.value, m.label) for m in DESK_METHODS], initial=PaymentMethod.BANK_TRANSFER,
        widget=UnfoldAdminRadioSelectWidget(),
    )
    reference = forms.CharField(
        required=False, max_length=200, widget=UnfoldAdminTextInputWidget(),
        help_text="Receipt number, card-terminal slip or bank-transfer reference.",
    )


class VoidForm(forms.Form):
    reason = forms.CharField(
        max_length=300, widget=UnfoldAdminTextInputWidget(),
        help_text="Kept on the invoice, the cancelled purchase and the voided credits' ledger entries.",
    )


# --- Issuing (from a purchase or the outstanding list) ----------------------------------------


def issue_invoice_url(purchase_id: int, *, back: str = "") -> str:
    url = reverse("admin:payments_invoice_issue", args=[purchase_id])
    return f"{url}?{urlencode({'next': back})}" if back else url


def issue_invoice_link(purchase: Purchase, *, back: str = ""):
    """A visible "Issue invoice" link for a list column (the outstanding payments list)."""
    return format_html(
        '<a class="font-medium text-primary-600 whitespace-nowrap" href="{}">Issue invoice</a>',
        issue_invoice_url(purchase.pk, back=back),
    )


def _page(model_admin, request, *, title: str, intro: str, submit: str, back: str, form, **extra):
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title, "intro": intro, "submit_label": submit, "cancel_url": back, "next": back,
        "opts": Invoice._meta, "form": form, "media": model_admin.media + form.media, **extra,
    }
    return TemplateResponse(request, FORM_PAGE, context)


def invoice_issue_view(model_admin, request, purchase_id):
    """Confirm an invoice for a purchase awaiting payment: Stripe or offline, and when it is due."""
    if not request.user.has_perm(ISSUE_PERMISSION):
        raise PermissionDenied
    purchase = Purchase.objects.select_related("client").filter(pk=_pk(purchase_id)).first()
    if purchase is None:
        raise Http404("No such purchase.")
    back = next_url(request, reverse("admin:payments_purchase_change", args=[purchase.pk]))
    current = purchase.invoices.filter(status__in=(InvoiceStatus.DRAFT, InvoiceStatus.OPEN)).first()
    if purchase.status != PurchaseStatus.PENDING or current is not None:
        why = (
            f"Purchase #{purchase.pk} already has an open invoice ({invoice_label(current)}): void it before issuing another."
            if current else f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: only a purchase "
            "awaiting payment is invoiced."
        )
        messages.error(request, why)
        return redirect(back)
    initial = {"kind": InvoiceKind.STRIPE, "days_until_due": BusinessSettings.current().invoice_days_until_due}
    form = IssueInvoiceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        issue = invoice_issue_stripe if data["kind"] == InvoiceKind.STRIPE else invoice_issue_offline
        try:
            invoice = issue(purchase=purchase, actor=request.user, days_until_due=data["days_until_due"])
        except (PaymentError, LedgerError, ValidationError) as exc:
            form.add_error(None, error_text(exc))
        else:
            _issued_message(request, invoice)
            return redirect(back)
    bookings = purchase.bookings.select_related("session__session_type", "session__staff_member").order_by(
        "session__starts_at"
    )
    return _page(
        model_admin, request, title=f"Issue an invoice: purchase #{purchase.pk}",
        intro=f"{purchase.client.name} ({purchase.client.email}) is billed {purchase.price} {purchase.currency}. "
        "The pack's credits are released when the invoice is paid.",
        submit="Issue invoice", back=back, form=form, purchase=purchase, lines=invoice_lines(purchase),
        bookings=bookings,
    )


def _issued_message(request, invoice: Invoice) -> None:
    due = local_start(invoice.due_at)
    client = invoice.purchase.client
    if invoice.status == InvoiceStatus.DRAFT:
        messages.warning(request, f"Invoice #{invoice.pk} is saved but not sent: {invoice.error} "
                                  "Use Retry send on the invoice.")
    elif invoice.kind == InvoiceKind.STRIPE:
        messages.success(request, f"Stripe invoice {invoice_label(invoice)} sent to {client.email}: "
                                  f"{invoice.amount} {invoice.currency}, due {due}.")
    else:
        messages.success(request, f"Invoice {invoice_label(invoice)} emailed to {client.email}: "
                                  f"{invoice.amount} {invoice.currency}, due {due}.")


class IssueInvoiceMixin:
    """Adds "Issue invoice" to PurchaseAdmin / OutstandingPurchaseAdmin (list "issue_invoice" in
    their actions_row / actions_detail). It opens admin:payments_invoice_issue, then comes back."""

    def has_issue_invoice_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(ISSUE_PERMISSION)

    @action(description="Issue invoice", url_path="issue-invoice", icon="receipt_long", permissions=["issue_invoice"])
    def issue_invoice(self, request, object_id):
        if self.model is OutstandingPurchase:
            back = reverse("admin:payments_outstandingpurchase_changelist")
        else:
            back = reverse("admin:payments_purchase_change", args=[_pk(object_id)])
        return redirect(issue_invoice_url(_pk(object_id), back=next_url(request, back)))


# --- The invoices -----------------------------------------------------------------------------


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdminMixin, HistoryAdmin):
    """Invoices: written only by payments.invoices (and Stripe's events), read and acted on here."""

    list_display = (
        "invoice_number", "client", "purchase_link", "kind", "amount_due", "state", "due", "paid", "voided",
        "stripe_page", "error",
    )
    list_filter = ("status", "kind")
    list_select_related = ("purchase__client",)
    search_fields = ("number", "purchase__client__name", "purchase__client__email", "stripe_invoice_id")
    ordering = ("-created_at", "-id")
    fields = (
        "number", "kind", "status", "purchase", "amount", "currency", "due_at", "stripe_invoice_id",
        "hosted_invoice_url", "error", "created_by", "created_at", "paid_at", "voided_at",
    )
    readonly_fields = fields
    actions_row = ["mark_paid", "void", "retry_send"]
    actions_detail = ["mark_paid", "void", "retry_send"]
    show_full_result_count = False

    def get_urls(self):
        issue = path(
            "issue/<path:purchase_id>/",
            self.admin_site.admin_view(lambda request, purchase_id: invoice_issue_view(self, request, purchase_id)),
            name="payments_invoice_issue",
        )
        return [issue, *super().get_urls()]

    def has_mark_paid_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(CHANGE_PERMISSION)

    def has_void_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(CHANGE_PERMISSION)

    def has_retry_send_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(CHANGE_PERMISSION)

    def get_actions_detail(self, request, object_id):
        # Only what the invoice's status allows: an open one is paid or voided, a draft retried.
        invoice = Invoice.objects.filter(pk=_pk(object_id)).values("status", "kind").first() or {}
        wanted = set()
        if invoice.get("status") in PAYABLE:
            wanted.add("mark_paid")
        if invoice.get("status") in VOIDABLE:
            wanted.add("void")
        if invoice.get("status") == InvoiceStatus.DRAFT and invoice.get("kind") == InvoiceKind.STRIPE:
            wanted.add("retry_send")
        return [a for a in super().get_actions_detail(request, object_id) if a.method.__name__ in wanted]

    @display(description="Number", ordering="number")
    def invoice_number(self, obj: Invoice) -> str:
        return invoice_label(obj)

    @display(description="Client", ordering="purchase__client__name")
    def client(self, obj: Invoice) -> str:
        return obj.purchase.client.name

    @display(description="Purchase")
    def purchase_link(self, obj: Invoice):
        url = reverse("admin:payments_purchase_change", args=[obj.purchase_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.purchase_id, obj.purchase.snapshot.get("name", ""))

    @display(description="Amount", ordering="amount")
    def amount_due(self, obj: Invoice) -> str:
        return f"{obj.amount} {obj.currency}"

    @display(description="Status", ordering="status", label={str(s): c for s, c in STATUS_LABELS.items()})
    def state(self, obj: Invoice):
        return obj.status, obj.get_status_display()

    @display(description="Due", ordering="due_at")
    def due(self, obj: Invoice) -> str:
        return local_start(obj.due_at)

    @display(description="Paid", ordering="paid_at")
    def paid(self, obj: Invoice) -> str:
        return local_start(obj.paid_at)

    @display(description="Voided", ordering="voided_at")
    def voided(self, obj: Invoice) -> str:
        return local_start(obj.voided_at)

    @display(description="Stripe page")
    def stripe_page(self, obj: Invoice):
        if not obj.hosted_invoice_url:
            return "—"
        return format_html('<a href="{}" target="_blank" rel="noopener">Open</a>', obj.hosted_invoice_url)

    # --- Actions ----------------------------------------------------------------------------

    def _invoice(self, object_id) -> Invoice:
        invoice = Invoice.objects.select_related("purchase__client").filter(pk=_pk(object_id)).first()
        if invoice is None:
            raise Http404("No such invoice.")
        return invoice

    def _back(self, request) -> str:
        return next_url(request, reverse("admin:payments_invoice_changelist"))

    @action(description="Mark paid", url_path="mark-paid", icon="payments", permissions=["mark_paid"])
    def mark_paid(self, request, object_id):
        """The client paid by cash, card terminal or transfer: record it and release the credits."""
        invoice, back = self._invoice(object_id), self._back(request)
        form = MarkPaidForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                payment = invoice_mark_paid_offline(
                    invoice=invoice, method=form.cleaned_data["method"], reference=form.cleaned_data["reference"],
                    actor=request.user,
                )
            except (PaymentError, LedgerError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(
                    request, f"Invoice {invoice_label(invoice)} paid: {payment.get_method_display().lower()} "
                    f"{payment.amount} {payment.currency} recorded, {invoice.purchase.client.name}'s credits are issued.",
                )
                return redirect(back)
        intro = f"{invoice.purchase.client.name} paid {invoice.amount} {invoice.currency}."
        if invoice.kind == InvoiceKind.STRIPE:
            intro += " Stripe is told the invoice was paid outside Stripe, so the client is no longer asked for it."
        return _page(self, request, title=f"Mark invoice {invoice_label(invoice)} paid", intro=intro,
                     submit="Record payment", back=back, form=form, invoice=invoice)

    @action(description="Void", url_path="void", icon="block", permissions=["void"])
    def void(self, request, object_id):
        """Void an unpaid invoice: its purchase is cancelled and its unused credits voided."""
        invoice, back = self._invoice(object_id), self._back(request)
        form = VoidForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                invoice = invoice_void(invoice=invoice, actor=request.user, reason=form.cleaned_data["reason"])
            except (PaymentError, LedgerError, ValidationError) as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"Invoice {invoice_label(invoice)} voided; purchase #{invoice.purchase_id} "
                                          f"is {invoice.purchase.get_status_display().lower()}.")
                return redirect(back)
        purchase = invoice.purchase
        grants = CreditGrant.objects.filter(purchase=purchase, state=GrantState.ACTIVE).select_related("session_type")
        bookings = purchase.bookings.select_related("session__session_type").order_by("session__starts_at")
        return _page(
            self, request, title=f"Void invoice {invoice_label(invoice)}",
            intro="The client can no longer pay it" + (" in Stripe" if invoice.kind == InvoiceKind.STRIPE else "")
            + f". Purchase #{purchase.pk} is cancelled and its unused credits voided.",
            submit="Void invoice", back=back, form=form, invoice=invoice, grants=grants, bookings=bookings,
        )

    @action(description="Retry send", url_path="retry-send", icon="sync", permissions=["retry_send"])
    def retry_send(self, request, object_id):
        """A Stripe invoice Stripe refused or never answered for: the same keyed requests again."""
        invoice, back = self._invoice(object_id), self._back(request)
        form = forms.Form(request.POST or None)
        if request.method == "POST":
            try:
                invoice = invoice_send_retry(invoice=invoice, actor=request.user)
            except (PaymentError, LedgerError) as exc:
                messages.error(request, error_text(exc))
            else:
                _issued_message(request, invoice)
            return redirect(back)
        return _page(
            self, request, title=f"Send invoice {invoice_label(invoice)} to Stripe again",
            intro=(invoice.error or "Not sent yet.") + " Sending again never makes a second Stripe invoice.",
            submit="Send again", back=back, form=form, invoice=invoice,
        )
