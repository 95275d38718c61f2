"""Admin for refunds: the confirmation page behind PurchaseAdmin's "Refund" action, and the
read-only list of refunds. Both only call payments.refunds and show its refusals."""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.db.models import Sum
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from unfold.decorators import action, display
from unfold.widgets import UnfoldAdminDecimalFieldWidget, UnfoldAdminTextInputWidget

from core.admin import HistoryAdmin, ReadOnlyAdminMixin, error_text, local_start
from core.admin_base import next_url
from ledger.exceptions import LedgerError
from payments.exceptions import PaymentError
from payments.models import PaymentMethod, Purchase, PurchaseStatus, Refund, RefundStatus
from payments.refunds import refund_create, refund_method, refund_preview, refund_retry, refundable_amount


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such object.")
    return int(object_id)


class RefundForm(forms.Form):
    amount = forms.DecimalField(
        max_digits=10, decimal_places=2, widget=UnfoldAdminDecimalFieldWidget(),
        help_text="Up to what is left to refund. Unused credits are voided in proportion.",
    )
    reason = forms.CharField(
        max_length=300, widget=UnfoldAdminTextInputWidget(),
        help_text="Kept with the refund and on the voided credits' ledger entries.",
    )


def refund_view(model_admin, request, object_id):
    """Confirm a refund: amount (default: all that is left), reason, and the credits it voids."""
    purchase = Purchase.objects.select_related("client").filter(pk=_pk(object_id)).first()
    if purchase is None:
        raise Http404("No such purchase.")
    back = next_url(request, reverse("admin:payments_purchase_change", args=[purchase.pk]))
    try:
        if purchase.status != PurchaseStatus.PAID:
            raise PaymentError(f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: nothing to refund.")
        method = refund_method(purchase)
    except PaymentError as exc:
        messages.error(request, error_text(exc))
        return redirect(back)
    remainder = refundable_amount(purchase)
    form = RefundForm(request.POST or None, initial={"amount": remainder})
    if request.method == "POST" and form.is_valid():
        try:
            refund = refund_create(
                purchase=purchase, amount=form.cleaned_data["amount"], reason=form.cleaned_data["reason"],
                actor=request.user,
            )
        except (PaymentError, LedgerError, ValidationError) as exc:
            form.add_error(None, error_text(exc))
        else:
            if refund.status == RefundStatus.FAILED:
                form.add_error(None, refund.error)
            elif refund.status == RefundStatus.PENDING:
                messages.warning(request, refund.error)
                return redirect(back)
            else:
                voided = -(refund.ledger_entries.aggregate(total=Sum("amount"))["total"] or 0)
                messages.success(
                    request, f"Refunded {refund.amount} {refund.currency} of purchase #{purchase.pk} "
                    f"({refund.get_method_display()}): {voided} unused credit{'s' if voided != 1 else ''} voided.",
                )
                return redirect(back)
    # Preview the amount typed when it can be refunded, else all that is left.
    amount = form.cleaned_data.get("amount") if form.is_bound and hasattr(form, "cleaned_data") else None
    amount = amount if amount is not None and 0 < amount <= remainder else remainder
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Refund purchase #{purchase.pk}",
        "intro": (
            "The money goes back through Stripe, to the card the client paid with."
            if method == PaymentMethod.STRIPE else
            f"Paid by {PaymentMethod(method).label.lower()}: hand the money back the same way; this records it."
        ),
        "submit_label": "Refund",
        "cancel_url": back,
        "next": back,
        "opts": model_admin.model._meta,
        "purchase": purchase,
        "remainder": remainder,
        "preview_amount": amount,
        "lines": refund_preview(purchase, amount),
        "refunds": purchase.refunds.order_by("created_at", "pk"),
        "form": form,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "admin/payments/purchase/refund.html", context)


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdminMixin, HistoryAdmin):
    """Money given back: written only by payments.refunds, read here."""

    list_display = (
        "created", "client", "purchase_link", "amount_refunded", "method", "status", "credits_voided",
        "reason", "error", "created_by",
    )
    list_filter = ("status", "method", ("created_at", admin.DateFieldListFilter))
    list_select_related = ("purchase__client", "created_by")
    search_fields = ("purchase__client__name", "purchase__client__email", "stripe_refund_id", "reason")
    actions_row = ["send_again"]
    show_full_result_count = False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(voided=Sum("ledger_entries__amount"))

    def has_send_again_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("payments.add_refund")

    @display(description="Created", ordering="created_at")
    def created(self, obj: Refund) -> str:
        return local_start(obj.created_at)

    @display(description="Client", ordering="purchase__client__name")
    def client(self, obj: Refund) -> str:
        return obj.purchase.client.name

    @display(description="Amount", ordering="amount")
    def amount_refunded(self, obj: Refund) -> str:
        return f"{obj.amount} {obj.currency}"

    @display(description="Credits voided")
    def credits_voided(self, obj: Refund) -> int:
        return -(obj.voided or 0)

    @display(description="Purchase")
    def purchase_link(self, obj: Refund):
        url = reverse("admin:payments_purchase_change", args=[obj.purchase_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.purchase_id, obj.purchase.snapshot.get("name", ""))

    @action(description="Send to Stripe again", url_path="send-again", icon="sync", permissions=["send_again"])
    def send_again(self, request, object_id):
        """A Stripe refund left pending (Stripe did not answer): the same idempotent request again."""
        try:
            refund = refund_retry(refund_id=_pk(object_id))
        except Refund.DoesNotExist:
            raise Http404("No such refund.")
        except (PaymentError, LedgerError) as exc:
            messages.error(request, error_text(exc))
        else:
            level = {RefundStatus.SUCCEEDED.value: messages.SUCCESS, RefundStatus.FAILED.value: messages.ERROR}.get(
                refund.status, messages.WARNING
            )
            text = refund.error or f"Refund #{refund.pk}: {refund.get_status_display().lower()}."
            messages.add_message(request, level, text)
        return redirect(reverse("admin:payments_refund_changelist"))
