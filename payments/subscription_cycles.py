"""An auto-debit plan's billing cycles, from Stripe's invoices (payments.subscription_stripe).

Each function runs under the webhook event's lock, inside its transaction, with the plan
already locked, and applies the invoice as Stripe holds it now. A cycle is found again by its
Stripe invoice (our Invoice row, kind "stripe", unique stripe_invoice_id), so the same invoice
paid, failed, paid again or delivered twice always lands on the same cycle purchase:
- paid: the cycle is paid (a Payment with Stripe's PaymentIntent) and its credits issued by
  the ledger, dated from the cycle's start even when the money came late (seed 002);
- failed: the cycle waits unpaid, the plan is past due; client and staff are told once per
  invoice. Nothing is issued.

Lock order, as everywhere in payments: plan, purchase, invoice, then the ledger's own rows.
"""
from __future__ import annotations

import logging
from datetime import datetime
from datetime import timezone as dt_timezone

from django.db.models import Max
from django.utils import timezone

from core.emails import email_send
from core.models import StaffMember, StaffNotification
from core.roles import FINANCE, MANAGER
from ledger.models import CreditGrant
from payments.exceptions import InvalidPurchaseState
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.money import from_minor, to_minor
from payments.online import StripeMismatch
from payments.services import purchase_mark_paid
from payments.subscriptions import LIVE, cycle_open

logger = logging.getLogger(__name__)


def _aware(timestamp) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), tz=dt_timezone.utc) if timestamp else None


def _period(invoice: dict) -> tuple[datetime, datetime]:
    """The billing period the invoice pays: its subscription line's, else the invoice's own."""
    lines = (invoice.get("lines") or {}).get("data") or []
    period = next((line["period"] for line in lines if (line.get("period") or {}).get("start")), None)
    if period is None:
        period = {"start": invoice.get("period_start"), "end": invoice.get("period_end")}
    start, end = _aware(period.get("start")), _aware(period.get("end"))
    if start is None or end is None or end <= start:
        raise StripeMismatch(f"Stripe invoice {invoice.get('id')} carries no billing period, so no cycle is opened.")
    return start, end


def _payment_intent(invoice: dict) -> str | None:
    payments = ((invoice.get("payments") or {}).get("data")) or []
    for row in payments:
        intent = (row.get("payment") or {}).get("payment_intent")
        if intent:
            return intent if isinstance(intent, str) else intent.get("id")
    return invoice.get("payment_intent") or None


def _row_of(invoice: dict, plan: Subscription) -> Invoice | None:
    row = Invoice.objects.select_related("purchase").filter(stripe_invoice_id=invoice["id"]).first()
    if row is not None and row.purchase.subscription_id != plan.pk:
        raise StripeMismatch(
            f"Stripe invoice {invoice['id']} bills plan #{plan.pk}, but our invoice {row.number or row.pk} "
            f"belongs to purchase #{row.purchase_id}: nothing was applied."
        )
    return row


def _open_cycle(plan: Subscription, invoice: dict) -> tuple[Purchase, Invoice]:
    """The next cycle for this Stripe invoice, and our Invoice row that finds it again."""
    start, end = _period(invoice)
    number = (plan.cycles.aggregate(n=Max("cycle_number"))["n"] or 0) + 1
    cycle = cycle_open(
        subscription=plan, cycle_number=number, period_start=start, period_end=end,
        actor=None, channel=PurchaseChannel.ONLINE, allow_cancelled=True,
    )
    plan.refresh_from_db()  # cycle_open moved its period
    row = Invoice(
        purchase=cycle, kind=InvoiceKind.STRIPE, stripe_invoice_id=invoice["id"],
        amount=from_minor(invoice.get("amount_due") or 0, invoice.get("currency") or plan.currency),
        currency=(invoice.get("currency") or plan.currency).upper(), status=InvoiceStatus.OPEN,
    )
    return cycle, row


def _copy_invoice(row: Invoice, invoice: dict) -> None:
    status = invoice.get("status")
    row.status = status if status in InvoiceStatus.values else row.status
    row.number = invoice.get("number") or row.number
    row.hosted_invoice_url = invoice.get("hosted_invoice_url") or row.hosted_invoice_url
    row.due_at = _aware(invoice.get("due_date")) or row.due_at
    transitions = invoice.get("status_transitions") or {}
    if row.status == InvoiceStatus.PAID and row.paid_at is None:
        row.paid_at = _aware(transitions.get("paid_at")) or timezone.now()
    if row.status == InvoiceStatus.VOID and row.voided_at is None:
        row.voided_at = _aware(transitions.get("voided_at")) or timezone.now()
    row._history_user = None
    row.save()


def _locked(cycle: Purchase, row: Invoice) -> tuple[Purchase, Invoice]:
    cycle = Purchase.objects.select_for_update().get(pk=cycle.pk)
    if row.pk is not None:
        row = Invoice.objects.select_for_update().get(pk=row.pk)
    return cycle, row


def _check_amount(plan: Subscription, invoice: dict) -> None:
    expected = to_minor(plan.price, plan.currency)
    amount, currency = invoice.get("amount_paid"), str(invoice.get("currency") or "")
    if amount != expected or currency.lower() != plan.currency.lower():
        raise StripeMismatch(
            f"Stripe took {amount} {currency.upper()} (minor units) on invoice {invoice.get('id')}, but "
            f"plan #{plan.pk} costs {expected} {plan.currency.upper()} a cycle: no cycle was paid. "
            "Check the subscription in Stripe and refund or settle it by hand."
        )


def invoice_paid(plan: Subscription, invoice: dict) -> str:
    """Stripe has a cycle's money: pay that cycle (credits, unless the plan awaits activation)."""
    if not invoice.get("amount_paid"):
        return f"plan #{plan.pk}: invoice {invoice['id']} paid nothing (free trial): no cycle, no credits"
    _check_amount(plan, invoice)
    row = _row_of(invoice, plan)
    cycle, row = (row.purchase, row) if row is not None else _open_cycle(plan, invoice)
    cycle, row = _locked(cycle, row)
    _copy_invoice(row, invoice)
    intent = _payment_intent(invoice)
    label = f"cycle {cycle.cycle_number} of plan #{plan.pk} (purchase #{cycle.pk})"
    if cycle.status == PurchaseStatus.PENDING:
        now = timezone.now()
        payment = Payment(
            purchase=cycle, method=PaymentMethod.STRIPE, amount=cycle.price, currency=cycle.currency,
            reference=intent or invoice["id"], received_at=now, recorded_by=None,
        )
        payment._history_user = None
        payment.save()
        cycle.stripe_payment_intent_id = intent
        cycle._history_user = None
        cycle.save(update_fields=["stripe_payment_intent_id"])
        purchase_mark_paid(purchase=cycle, actor=None, paid_at=now)
    elif cycle.status in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED) and cycle.stripe_payment_intent_id == intent:
        if cycle.status == PurchaseStatus.PAID:
            purchase_mark_paid(purchase=cycle, actor=None)  # a duplicate: credits are issued once
        return f"{label} was already paid"
    else:
        raise InvalidPurchaseState(
            f"{label.capitalize()} is {cycle.get_status_display().lower()}, but Stripe took {intent} "
            f"for invoice {row.number or invoice['id']}: refund it in Stripe, or settle it by hand."
        )
    if plan.status == SubscriptionStatus.PAST_DUE:
        plan.status = SubscriptionStatus.ACTIVE
        plan._history_user = None
        plan._change_reason = f"cycle {cycle.cycle_number} paid"
        plan.save(update_fields=["status"])
    return f"{label} paid"


def invoice_failed(plan: Subscription, invoice: dict) -> str:
    """A cycle's payment failed: the cycle waits unpaid, the plan is past due, people are told."""
    row = _row_of(invoice, plan)
    if row is None and plan.status == SubscriptionStatus.CANCELLED:
        return f"plan #{plan.pk} is cancelled: failed invoice {invoice['id']} took no money, nothing recorded"
    cycle, row = (row.purchase, row) if row is not None else _open_cycle(plan, invoice)
    cycle, row = _locked(cycle, row)
    label = f"cycle {cycle.cycle_number} of plan #{plan.pk}"
    if cycle.status != PurchaseStatus.PENDING or row.status == InvoiceStatus.PAID:
        return f"{label} is {cycle.status}; the failure of invoice {invoice['id']} is past"
    _copy_invoice(row, invoice)
    if plan.status in LIVE and plan.status != SubscriptionStatus.PAST_DUE:
        plan.status = SubscriptionStatus.PAST_DUE
        plan._history_user = None
        plan._change_reason = f"payment of cycle {cycle.cycle_number} failed"
        plan.save(update_fields=["status"])
    if plan.status != SubscriptionStatus.CANCELLED:
        _notify_payment_failed(plan, cycle, row)
    return f"{label}: payment failed, left unpaid"


def invoice_settled_otherwise(plan: Subscription, invoice: dict) -> str:
    """Voided or marked uncollectible in Stripe: our invoice row says so. A voided cycle is not
    going to be paid, so it is cancelled (it never had credits); an uncollectible one stays
    in the outstanding list for finance."""
    row = _row_of(invoice, plan)
    if row is None:
        return f"plan #{plan.pk}: invoice {invoice['id']} is {invoice.get('status')}, no cycle of ours"
    cycle, row = _locked(row.purchase, row)
    _copy_invoice(row, invoice)
    if (row.status == InvoiceStatus.VOID and cycle.status == PurchaseStatus.PENDING
            and not CreditGrant.objects.filter(purchase=cycle).exists()):
        cycle.status = PurchaseStatus.CANCELLED
        cycle._history_user = None
        cycle._change_reason = f"Stripe invoice {row.number or invoice['id']} voided"
        cycle.save(update_fields=["status"])
    return f"cycle {cycle.cycle_number} of plan #{plan.pk}: invoice {row.status}"


# --- Telling people about a failed payment ---------------------------------------------------


def _staff_to_tell(plan: Subscription) -> list[StaffMember]:
    """The plan's staff member; with none, every active manager and finance person."""
    if plan.staff_member_id and plan.staff_member.active:
        return [plan.staff_member]
    return list(
        StaffMember.objects.filter(
            active=True, user__is_active=True, user__groups__name__in=[MANAGER, FINANCE],
        ).distinct().order_by("pk")
    )


def _notify_payment_failed(plan: Subscription, cycle: Purchase, row: Invoice) -> None:
    """Once per Stripe invoice (the dedupe keys), however many times the failure is seen."""
    client = plan.client
    pack_name = plan.snapshot.get("name", "")
    key = f"plan:{plan.pk}:payment_failed:{row.stripe_invoice_id}"
    if client.email:
        email_send(
            to=client.email, template="plan_payment_failed", client=client, related=cycle,
            dedupe_key=key,
            context={"pack_name": pack_name, "amount": f"{cycle.price} {cycle.currency}",
                     "pay_url": row.hosted_invoice_url, "period_start": cycle.period_start},
        )
    text = (
        f"{client.name}'s payment of {cycle.price} {cycle.currency} for {pack_name} (plan #{plan.pk}, "
        f"cycle {cycle.cycle_number}) failed in Stripe; no credits were issued for it. Stripe retries it."
    )
    for staff in _staff_to_tell(plan):
        StaffNotification.objects.get_or_create(
            dedupe_key=f"{key}:staff:{staff.pk}",
            defaults={"staff_member": staff, "text": text[:500], "related_type": "purchase",
                      "related_id": cycle.pk},
        )
