"""Invoices: finance bills a purchase still awaiting payment, by Stripe or offline.

A purchase sold on the spot (or a recurring plan's cycle in invoice mode) waits for its money;
an invoice asks for it. A Stripe invoice is emailed by Stripe and paid on Stripe's page; an
offline invoice (our number, PD-000042) is emailed by us and paid at the desk or by transfer.
At most one draft/open invoice per purchase (a database constraint): a second could be paid twice.

A Stripe invoice is issued in three steps, so no Stripe call runs inside a transaction (like
payments.refunds): our Invoice row is written first (draft); then, outside any transaction,
payments.invoice_stripe creates and sends it in Stripe, each request keyed by our Invoice's pk;
then what Stripe answered is applied (`invoice_apply_stripe_state`, atomic). A failure leaves the
invoice draft with `error` set; Retry runs the Stripe step again and never makes a second one.
Stripe's later changes (paid, void, uncollectible) arrive as webhook events: payments.events
calls `invoice_stripe_changed`, which applies Stripe's current state, idempotently.

Lock order everywhere: the purchase, then the invoice, then the ledger's own (balances, grants).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Callable

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.emails import email_send
from core.models import BusinessSettings
from ledger.models import ClientBalance, CreditGrant, EntrySource, GrantState
from ledger.services import grant_void
from payments.exceptions import InvalidPayment, InvalidPurchaseState, PaymentError
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
)
from payments.money import to_minor
from payments.online import StripeMismatch
from payments.services import DESK_METHODS, payment_record, purchase_mark_paid

# Runs under the webhook event's lock and returns a note: payments.events.Apply, restated here
# so this module never imports payments.events (which imports this one).
Apply = Callable[[], str]

OPEN_STATES = (InvoiceStatus.DRAFT, InvoiceStatus.OPEN)
MAX_DAYS_UNTIL_DUE = 365


class InvalidInvoice(PaymentError):
    """An invoice change refused; the text says why and what to do instead."""


def invoice_label(invoice: Invoice) -> str:
    return invoice.number or f"#{invoice.pk}"


def days_until_due_for(invoice: Invoice) -> int:
    """The days the invoice was issued with (kept as its due date), for a Retry to send the same."""
    if invoice.due_at is None:
        return BusinessSettings.current().invoice_days_until_due
    return max(1, round((invoice.due_at - invoice.created_at) / timedelta(days=1)))


# --- What the invoice says ---------------------------------------------------------------


def _credits_text(line: dict) -> str:
    unit = line.get("validity_unit", "")
    amount = line.get("validity_amount")
    validity = f"valid {amount} {unit[:-1] if amount == 1 else unit}".strip()
    if line.get("unlimited"):
        return f"unlimited {line.get('session_type')} ({validity})"
    return f"{line.get('credits')} × {line.get('session_type')} ({validity})"


def invoice_lines(purchase: Purchase) -> list[dict]:
    """Our line items: the pack with the credits it gives, at the purchase's price.

    One line, because the price is the pack's, not per credit line; a list so a Stripe invoice
    and an offline one say the same thing. A recurring plan's cycle names its period.
    """
    snap = purchase.snapshot or {}
    credits = ", ".join(_credits_text(line) for line in snap.get("lines", []))
    description = f"{snap.get('name', 'Credit pack')}: {credits}"
    if purchase.period_start and purchase.period_end:
        start, end = timezone.localtime(purchase.period_start), timezone.localtime(purchase.period_end)
        cycle = f"cycle {purchase.cycle_number}, " if purchase.cycle_number else ""
        description += f" — {cycle}{start:%d %b %Y} to {end:%d %b %Y}"
    minor = to_minor(purchase.price, purchase.currency)
    return [{"description": description[:500], "amount": purchase.price, "currency": purchase.currency, "minor": minor}]


# --- Issuing ------------------------------------------------------------------------------


def _clean_days(days_until_due) -> int:
    if days_until_due is None:
        return BusinessSettings.current().invoice_days_until_due
    if isinstance(days_until_due, bool) or not isinstance(days_until_due, int) or not (
        1 <= days_until_due <= MAX_DAYS_UNTIL_DUE
    ):
        raise InvalidInvoice(f"Days until due must be a whole number from 1 to {MAX_DAYS_UNTIL_DUE} (got {days_until_due!r}).")
    return days_until_due


def _lock_purchase(purchase_id: int) -> Purchase:
    return Purchase.objects.select_for_update().select_related("client").get(pk=purchase_id)


@transaction.atomic
def _invoice_create(*, purchase: Purchase, kind: str, actor, days_until_due) -> Invoice:
    """Our Invoice row, after checking the purchase can be invoiced (under its lock)."""
    days = _clean_days(days_until_due)
    purchase = _lock_purchase(purchase.pk)
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidInvoice(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: only a purchase awaiting "
            "payment is invoiced."
        )
    if purchase.price <= 0:
        raise InvalidInvoice(f"Purchase #{purchase.pk} costs nothing: there is nothing to invoice.")
    current = purchase.invoices.filter(status__in=OPEN_STATES).first()
    if current is not None:
        raise InvalidInvoice(
            f"Purchase #{purchase.pk} already has an open invoice ({invoice_label(current)}): "
            "void it before issuing another."
        )
    now = timezone.now()
    invoice = Invoice(
        purchase=purchase, kind=kind, amount=purchase.price, currency=purchase.currency,
        status=InvoiceStatus.DRAFT if kind == InvoiceKind.STRIPE else InvoiceStatus.OPEN,
        due_at=now + timedelta(days=days), created_by=actor, created_at=now,
    )
    invoice._history_user = actor
    try:
        with transaction.atomic():
            invoice.save()
    except IntegrityError:
        # The constraint backs the check above (a purchase locked elsewhere without our order).
        raise InvalidInvoice(f"Purchase #{purchase.pk} already has an open invoice: void it before issuing another.")
    return invoice


def invoice_issue_stripe(*, purchase: Purchase, actor, days_until_due: int | None = None) -> Invoice:
    """Bill a pending purchase through Stripe: Stripe emails the client a page to pay it on.

    Returns the Invoice: open (with Stripe's number and page), or draft with `error` when Stripe
    failed (Retry: invoice_send_retry). Must not run inside a transaction.
    """
    from payments.invoice_stripe import invoice_send

    invoice = _invoice_create(purchase=purchase, kind=InvoiceKind.STRIPE, actor=actor, days_until_due=days_until_due)
    return invoice_send(invoice_id=invoice.pk)


def invoice_send_retry(*, invoice: Invoice, actor=None) -> Invoice:
    """Send a Stripe invoice that Stripe refused or never answered for, again (same keys)."""
    from payments.invoice_stripe import invoice_send

    invoice = Invoice.objects.get(pk=invoice.pk)
    if invoice.kind != InvoiceKind.STRIPE or invoice.status != InvoiceStatus.DRAFT:
        raise InvalidInvoice(
            f"Invoice {invoice_label(invoice)} is {invoice.get_status_display().lower()}: only a Stripe invoice "
            "that was not sent is sent again."
        )
    return invoice_send(invoice_id=invoice.pk)


@transaction.atomic
def invoice_issue_offline(*, purchase: Purchase, actor, days_until_due: int | None = None) -> Invoice:
    """Bill a pending purchase ourselves: number PD-000042, paid by cash, card terminal or transfer.

    The client is emailed the invoice (amount, number, due date, how to pay) after commit.
    """
    invoice = _invoice_create(purchase=purchase, kind=InvoiceKind.OFFLINE, actor=actor, days_until_due=days_until_due)
    invoice.number = f"PD-{invoice.pk:06d}"
    invoice.save(update_fields=["number"])
    purchase = invoice.purchase
    due = timezone.localtime(invoice.due_at)
    email_send(
        to=purchase.client.email, template="invoice_offline", client=purchase.client, related=purchase,
        dedupe_key=f"invoice:{invoice.pk}:issued",
        context={
            "number": invoice.number, "amount": f"{invoice.amount} {invoice.currency}",
            "due_date": f"{due.day} {due:%B %Y}", "lines": [line["description"] for line in invoice_lines(purchase)],
        },
    )
    return invoice


# --- Paid offline -------------------------------------------------------------------------


def _check_offline_payment(method: str, received_at: datetime | None) -> None:
    if method not in DESK_METHODS:
        raise InvalidPayment("Record cash, card-terminal or bank-transfer payments here.")
    if received_at is not None and received_at > timezone.now():
        raise InvalidPayment("A payment cannot be received in the future.")


def _check_payable(invoice: Invoice, purchase: Purchase) -> None:
    if invoice.status not in (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE):
        raise InvalidInvoice(
            f"Invoice {invoice_label(invoice)} is {invoice.get_status_display().lower()}: only an open invoice "
            "is marked paid."
        )
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidInvoice(
            f"Purchase #{purchase.pk} of invoice {invoice_label(invoice)} is "
            f"{purchase.get_status_display().lower()}: void the invoice instead."
        )


def invoice_mark_paid_offline(
    *, invoice: Invoice, method: str, reference: str = "", actor, received_at: datetime | None = None,
) -> Payment:
    """The client paid an invoice by cash, card terminal or transfer: record it, release the credits.

    A Stripe invoice paid this way is first marked "paid out of band" in Stripe (outside the
    transaction), so the client is no longer asked for it there. Should Stripe's invoice.paid for
    that land between the two steps, it records the payment as Stripe's (paid out of band) and
    this refuses as already paid: the money and credits are right, only the method reads "Stripe".
    """
    _check_offline_payment(method, received_at)
    invoice = Invoice.objects.select_related("purchase").get(pk=invoice.pk)
    _check_payable(invoice, invoice.purchase)
    if invoice.kind == InvoiceKind.STRIPE and invoice.stripe_invoice_id:
        from payments.invoice_stripe import stripe_mark_paid_out_of_band

        stripe_mark_paid_out_of_band(invoice)
    return _record_offline_payment(invoice.pk, method, reference, actor, received_at)


@transaction.atomic
def _record_offline_payment(invoice_id: int, method: str, reference: str, actor, received_at) -> Payment:
    purchase = _lock_purchase(Invoice.objects.values_list("purchase_id", flat=True).get(pk=invoice_id))
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    _check_payable(invoice, purchase)  # again, under the locks: a webhook may have paid it
    payment = payment_record(
        purchase=purchase, method=method, amount=invoice.amount, actor=actor, reference=reference,
        received_at=received_at,
    )
    invoice.status, invoice.paid_at, invoice.error = InvoiceStatus.PAID, payment.received_at, ""
    invoice._history_user = actor
    invoice.save(update_fields=["status", "paid_at", "error"])
    return payment


# --- Voiding ------------------------------------------------------------------------------


def invoice_void(*, invoice: Invoice, actor, reason: str) -> Invoice:
    """Void an unpaid invoice: its purchase is cancelled and its unused credits voided.

    A Stripe invoice is voided in Stripe first (outside the transaction), so the client can no
    longer pay it. A paid invoice is refused: refund the purchase instead. Voiding twice is a no-op.
    """
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInvoice("Give a reason for voiding the invoice: it is kept on the invoice and the voided credits.")
    invoice = Invoice.objects.get(pk=invoice.pk)
    if invoice.status == InvoiceStatus.PAID:
        raise InvalidInvoice(f"Invoice {invoice_label(invoice)} is paid, so it cannot be voided: refund the purchase instead.")
    if invoice.status == InvoiceStatus.VOID:
        return invoice
    if invoice.kind == InvoiceKind.STRIPE:
        from payments.invoice_stripe import stripe_void

        stripe_void(invoice)
    return _invoice_void_apply(invoice.pk, actor=actor, reason=reason)


@transaction.atomic
def _invoice_void_apply(invoice_id: int, *, actor, reason: str) -> Invoice:
    purchase = _lock_purchase(Invoice.objects.values_list("purchase_id", flat=True).get(pk=invoice_id))
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    _void_in_db(purchase, invoice, actor=actor, reason=reason)
    return invoice


def _void_in_db(purchase: Purchase, invoice: Invoice, *, actor, reason: str) -> str:
    """Invoice void, and a purchase still awaiting payment cancelled with its unused credits voided.

    Both rows must be locked by the caller. A purchase paid some other way meanwhile (at the desk)
    stays paid: only the invoice is voided. A booking already made with the purchase's held
    credit stays booked: that credit is used, so there is nothing left to void on it (its grant
    is closed, so a later cancellation's returned credit is voided again at once); whether the
    client still comes is for staff to decide on the booking itself.
    """
    if invoice.status == InvoiceStatus.VOID:
        return f"invoice {invoice_label(invoice)} already void"
    if invoice.status == InvoiceStatus.PAID:
        raise InvalidInvoice(f"Invoice {invoice_label(invoice)} is paid, so it cannot be voided: refund the purchase instead.")
    now = timezone.now()
    invoice.status, invoice.voided_at = InvoiceStatus.VOID, now
    invoice._history_user = actor
    invoice._change_reason = reason[:100]
    invoice.save(update_fields=["status", "voided_at"])
    if purchase.status != PurchaseStatus.PENDING:
        return f"invoice {invoice_label(invoice)} void; purchase #{purchase.pk} is {purchase.status}, left as it is"
    purchase.status = PurchaseStatus.CANCELLED
    purchase._history_user = actor
    purchase._change_reason = f"Invoice {invoice_label(invoice)} voided: {reason}"[:100]
    purchase.save(update_fields=["status"])
    voided = _void_purchase_credits(purchase, invoice, actor=actor, reason=reason)
    return f"invoice {invoice_label(invoice)} void, purchase #{purchase.pk} cancelled, {voided} unused credit(s) voided"


def _void_purchase_credits(purchase: Purchase, invoice: Invoice, *, actor, reason: str) -> int:
    grants = list(CreditGrant.objects.filter(purchase=purchase, state=GrantState.ACTIVE).order_by("pk"))
    if not grants:
        return 0
    # Ledger locking protocol: every balance involved, in key order, before any grant.
    list(
        ClientBalance.objects.select_for_update()
        .filter(client_id=purchase.client_id, session_type_id__in={g.session_type_id for g in grants})
        .order_by("pk").values_list("pk", flat=True)
    )
    note = f"Invoice {invoice_label(invoice)} voided, purchase #{purchase.pk} cancelled: {reason}"
    total = 0
    for grant in grants:
        entry = grant_void(
            grant=grant, actor=actor, note=note, source=EntrySource.PURCHASE,
            idempotency_key=f"invoice:{invoice.pk}:void:grant:{grant.pk}",
        )
        total -= entry.amount
    return total


# --- Stripe's side changed (webhook) --------------------------------------------------------


def is_subscription_invoice(stripe_invoice: dict) -> bool:
    parent = stripe_invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return bool(stripe_invoice.get("subscription")) or (
        parent.get("type") == "subscription_details" and bool(details.get("subscription"))
    )


def invoice_stripe_changed(stripe_invoice: dict) -> Apply | None:
    """An invoice.* event about one of our manual/cycle invoices: what to apply under the event lock.

    `stripe_invoice` is read from Stripe (with payments expanded) by payments.events, outside any
    transaction. None when the invoice is not ours (no invoice_id in its metadata) or belongs to
    a Stripe subscription (payments.subscriptions handles those).
    """
    if is_subscription_invoice(stripe_invoice):
        return None
    if "invoice_id" not in (stripe_invoice.get("metadata") or {}):
        return None
    return lambda: invoice_apply_stripe_state(stripe_invoice)


def _timestamp(value) -> datetime | None:
    return datetime.fromtimestamp(int(value), tz=dt_timezone.utc) if value else None


def _our_invoice_id(stripe_invoice: dict) -> int:
    raw = (stripe_invoice.get("metadata") or {}).get("invoice_id")
    if not str(raw or "").isdigit():
        raise StripeMismatch(
            f"Stripe invoice {stripe_invoice.get('id')} has no invoice id of ours in its metadata (got {raw!r})."
        )
    return int(raw)


@transaction.atomic
def invoice_apply_stripe_state(stripe_invoice: dict) -> str:
    """Bring our Invoice (and its purchase) in line with Stripe's invoice as it is now. Idempotent."""
    stripe_id, our_id = stripe_invoice.get("id"), _our_invoice_id(stripe_invoice)
    purchase_id = Invoice.objects.filter(pk=our_id).values_list("purchase_id", flat=True).first()
    if purchase_id is None:
        raise StripeMismatch(f"Stripe invoice {stripe_id} names invoice #{our_id}, which does not exist.")
    purchase = _lock_purchase(purchase_id)
    invoice = Invoice.objects.select_for_update().get(pk=our_id)
    named = str((stripe_invoice.get("metadata") or {}).get("purchase_id") or "")
    if invoice.kind != InvoiceKind.STRIPE or named != str(purchase.pk) or (
        invoice.stripe_invoice_id and invoice.stripe_invoice_id != stripe_id
    ):
        ours = "an offline invoice" if invoice.kind != InvoiceKind.STRIPE else f"Stripe invoice {invoice.stripe_invoice_id}"
        raise StripeMismatch(
            f"Stripe invoice {stripe_id} names our invoice #{our_id} (purchase #{named or '?'}), but that is "
            f"{ours} of purchase #{purchase.pk}: nothing was applied."
        )
    changed = _take_stripe_details(invoice, stripe_invoice)
    status = stripe_invoice.get("status")
    if status == "paid":
        note = _apply_paid(purchase, invoice, stripe_invoice)
    elif status == "void":
        note = _void_in_db(purchase, invoice, actor=None, reason="Voided in Stripe")
    elif status == "uncollectible" and invoice.status in OPEN_STATES:
        invoice.status = InvoiceStatus.UNCOLLECTIBLE
        changed.append("status")
        note = f"invoice {invoice_label(invoice)} marked uncollectible"
    elif status == "open" and invoice.status == InvoiceStatus.DRAFT:
        invoice.status, invoice.error = InvoiceStatus.OPEN, ""
        changed += ["status", "error"]
        note = f"invoice {invoice_label(invoice)} open"
    else:
        note = f"invoice {invoice_label(invoice)} is {invoice.status}; Stripe says {status}: nothing to change"
    if changed:
        invoice._history_user = None
        invoice.save(update_fields=sorted(set(changed)))
    return note


def _take_stripe_details(invoice: Invoice, stripe_invoice: dict) -> list[str]:
    """Stripe's id, number, page and due date on our row (set once Stripe has finalized it)."""
    changed = []
    values = {
        "stripe_invoice_id": stripe_invoice.get("id"),
        "number": stripe_invoice.get("number") or "",
        "hosted_invoice_url": stripe_invoice.get("hosted_invoice_url") or "",
        "due_at": _timestamp(stripe_invoice.get("due_date")),
    }
    for name, value in values.items():
        if value and getattr(invoice, name) != value and invoice.status in (*OPEN_STATES, InvoiceStatus.UNCOLLECTIBLE):
            setattr(invoice, name, value)
            changed.append(name)
    return changed


def payment_intent_of(stripe_invoice: dict) -> str | None:
    """The PaymentIntent that paid the invoice; None when it was marked paid out of band."""
    for row in ((stripe_invoice.get("payments") or {}).get("data") or []):
        if row.get("status") not in (None, "paid"):
            continue
        intent = (row.get("payment") or {}).get("payment_intent")
        if isinstance(intent, dict):  # expanded
            intent = intent.get("id")
        if intent:
            return intent
    return None


def _apply_paid(purchase: Purchase, invoice: Invoice, stripe_invoice: dict) -> str:
    stripe_id = stripe_invoice.get("id")
    expected = to_minor(invoice.amount, invoice.currency)
    paid, currency = stripe_invoice.get("amount_paid"), str(stripe_invoice.get("currency") or "")
    if paid != expected or currency.lower() != invoice.currency.lower():
        raise StripeMismatch(
            f"Stripe says invoice {stripe_id} was paid {paid} {currency.upper()} (minor units), but invoice "
            f"{invoice_label(invoice)} of purchase #{purchase.pk} is for {expected} {invoice.currency.upper()}: "
            "nothing was marked paid. Check the invoice in Stripe and refund or settle it by hand."
        )
    intent = payment_intent_of(stripe_invoice)
    if invoice.status == InvoiceStatus.PAID:
        if intent is None or intent == purchase.stripe_payment_intent_id:
            purchase_mark_paid(purchase=purchase, actor=None)  # credits are idempotent
            return f"invoice {invoice_label(invoice)} already paid"
        raise InvalidPurchaseState(
            f"Invoice {invoice_label(invoice)} was already paid ({_paid_how(purchase)}), and Stripe took a second "
            f"payment {intent} for it: refund that one in Stripe."
        )
    if invoice.status == InvoiceStatus.VOID:
        raise InvalidPurchaseState(
            f"Invoice {invoice_label(invoice)} was voided here, but Stripe says it was paid ({intent or 'out of band'}): "
            "refund it in Stripe, or sell the pack again."
        )
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidPurchaseState(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()} ({_paid_how(purchase)}), but "
            f"Stripe took payment {intent or stripe_id} for invoice {invoice_label(invoice)}: refund that one in Stripe."
        )
    paid_at = min(_timestamp((stripe_invoice.get("status_transitions") or {}).get("paid_at")) or timezone.now(),
                  timezone.now())
    payment = Payment(
        purchase=purchase, method=PaymentMethod.STRIPE, amount=invoice.amount, currency=invoice.currency,
        reference=intent or stripe_id, received_at=paid_at, recorded_by=None,
    )
    payment._history_user = None
    payment.save()
    if intent:
        purchase.stripe_payment_intent_id = intent
        purchase._history_user = None
        purchase.save(update_fields=["stripe_payment_intent_id"])
    purchase_mark_paid(purchase=purchase, actor=None, paid_at=paid_at)
    invoice.status, invoice.paid_at, invoice.error = InvoiceStatus.PAID, paid_at, ""
    invoice._history_user = None
    invoice.save(update_fields=["status", "paid_at", "error"])
    return f"invoice {invoice_label(invoice)} paid, purchase #{purchase.pk} paid"


def _paid_how(purchase: Purchase) -> str:
    payment = purchase.payments.first()
    return f"{payment.get_method_display().lower()} {payment.reference}".strip() if payment else "no payment recorded"

