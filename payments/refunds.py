"""Refunds: money given back for a purchase, and its unused credits voided in proportion.

A Stripe refund runs in three steps so that no Stripe call happens inside a transaction:
  1. `refund_create` writes a pending Refund (atomic; this row's id is Stripe's idempotency key);
  2. outside any transaction, Stripe is asked to refund (`refund_send`);
  3. `refund_apply` (atomic) records the money and voids the credits, once.
A crash between 2 and 3 is healed by `refund_reflect_charge`, which Stripe's charge.refunded
webhook calls: it finds our refund by its metadata and applies it. A refund made in Stripe's
dashboard arrives the same way and becomes a Refund here. Money paid at the desk (cash, card
terminal, bank transfer) is refunded as a recorded refund, applied at once.

The voiding rule (docs/ledger.md, "Refunds"): for each credit line of the purchase, the credits
voided by all its refunds together are round-half-up(line quantity × refunded / price), never
more than are unused; used credits stay used. Unlimited lines are voided only by a full refund.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

import stripe
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from ledger.models import ClientBalance, CreditGrant, EntryKind, EntrySource, GrantState, LedgerEntry
from ledger.services import grant_void
from payments.exceptions import InvalidRefund, RefundNotReflected
from payments.models import (
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from payments.money import from_minor, to_minor
from payments.stripe_gateway import stripe_client

DASHBOARD_REASON = "Refunded in Stripe"
# Stripe refund states in which the money is not (or no longer) going back to the client.
STRIPE_NOT_REFUNDED = ("failed", "canceled")


# --- How many credits a refund voids -------------------------------------------------------


@dataclass
class LineVoid:
    """One credit line of a purchase (its grants of one session type) and what a refund voids."""

    session_type: str
    unlimited: bool
    bought: int  # counted credits bought (0 for an unlimited line)
    unused: int
    already_voided: int  # by earlier refunds of this purchase
    to_void: int = 0
    grants: list[tuple[CreditGrant, int | None]] = field(default_factory=list)  # None: the whole grant


def _target(bought: int, refunded: Decimal, price: Decimal) -> int:
    if refunded >= price:
        return bought
    return int((Decimal(bought) * refunded / price).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def void_plan(purchase: Purchase, refunded_total: Decimal) -> list[LineVoid]:
    """Per credit line, the credits still to void once `refunded_total` has been refunded in all.

    Reads the grants' current remaining credits: act on it only with their balances locked.
    """
    grants = list(
        CreditGrant.objects.filter(purchase=purchase, source=EntrySource.PURCHASE)
        .select_related("session_type")
        # Soonest-expiring first, as redemption and adjustments take them.
        .order_by(F("expires_at").asc(nulls_last=True), "pk")
    )
    voided = dict(
        LedgerEntry.objects.filter(grant__in=grants, kind=EntryKind.VOIDED, refund__isnull=False)
        .values_list("grant").annotate(total=Sum("amount"))
    )
    lines = purchase.snapshot.get("lines", [])
    unlimited_lines = {line["session_type_id"] for line in lines if line.get("unlimited")}
    by_line: dict[int, list[CreditGrant]] = defaultdict(list)
    for grant in grants:
        by_line[grant.session_type_id].append(grant)
    full = refunded_total >= purchase.price
    plan = []
    for session_type_id, line_grants in by_line.items():
        active = [g for g in line_grants if g.state == GrantState.ACTIVE]
        # An unlimited line may also hold a one-credit reservation: it goes with the line.
        unlimited = session_type_id in unlimited_lines or any(g.unlimited for g in line_grants)
        line = LineVoid(
            session_type=str(line_grants[0].session_type), unlimited=unlimited,
            bought=0 if unlimited else sum(g.quantity or 0 for g in line_grants),
            unused=sum(g.remaining for g in active),
            already_voided=-sum(voided.get(g.pk, 0) for g in line_grants),
        )
        if unlimited:
            if full:
                line.grants = [(g, None) for g in active]
                line.to_void = line.unused
        else:
            target = _target(line.bought, refunded_total, purchase.price)
            line.to_void = max(0, min(target - line.already_voided, line.unused))
            left = line.to_void
            for grant in active:
                take = min(grant.remaining, left)
                if take:
                    line.grants.append((grant, take))
                    left -= take
        plan.append(line)
    return plan


def refund_preview(purchase: Purchase, amount: Decimal) -> list[LineVoid]:
    """What refunding `amount` more would void, for the confirmation page (nothing is written)."""
    return void_plan(purchase, purchase.refunded_amount + max(amount, Decimal("0")))


# --- Validating and opening a refund --------------------------------------------------------


def refund_in_flight(purchase: Purchase) -> Decimal:
    """Money of Stripe refunds asked for but not applied yet: not refundable a second time."""
    pending = purchase.refunds.filter(status=RefundStatus.PENDING, applied_at__isnull=True)
    return pending.aggregate(total=Sum("amount"))["total"] or Decimal("0")


def refundable_amount(purchase: Purchase) -> Decimal:
    return purchase.price - purchase.refunded_amount - refund_in_flight(purchase)


def refund_method(purchase: Purchase) -> str:
    payment = Payment.objects.filter(purchase=purchase).first()
    if payment is None and purchase.stripe_payment_intent_id:
        return PaymentMethod.STRIPE
    if payment is None:
        raise InvalidRefund(f"No payment is recorded for purchase #{purchase.pk}, so there is nothing to refund.")
    if payment.method == PaymentMethod.STRIPE and not purchase.stripe_payment_intent_id:
        raise InvalidRefund(
            f"Purchase #{purchase.pk} was paid through Stripe but its payment is not known here yet: "
            "wait for Stripe's confirmation, or refund it in Stripe's dashboard."
        )
    return payment.method


def _clean_amount(purchase: Purchase, amount) -> Decimal:
    if not isinstance(amount, Decimal):
        try:
            amount = Decimal(str(amount))
        except (InvalidOperation, ValueError):
            raise InvalidRefund(f"{amount!r} is not an amount of money.")
    if not amount.is_finite() or amount <= 0:
        raise InvalidRefund("The refund must be more than 0.")
    try:
        to_minor(amount, purchase.currency)
    except ValueError:
        raise InvalidRefund(f"{amount} has more decimals than {purchase.currency} allows.")
    return amount


@transaction.atomic
def _refund_open(*, purchase: Purchase, amount, reason: str, actor) -> Refund:
    """Step 1: check and write the refund. A recorded (desk) refund is applied in the same transaction."""
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidRefund("Give a reason for the refund: it is kept with the refund and the voided credits.")
    amount = _clean_amount(purchase, amount)
    if purchase.status == PurchaseStatus.REFUNDED:
        raise InvalidRefund(f"Purchase #{purchase.pk} is already fully refunded.")
    if purchase.status != PurchaseStatus.PAID:
        raise InvalidRefund(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: only a paid purchase is refunded."
        )
    method = refund_method(purchase)
    if method == PaymentMethod.STRIPE and purchase.disputed:
        raise InvalidRefund(
            f"The client disputed the payment of purchase #{purchase.pk}: it is settled through the dispute in "
            "Stripe, not refunded."
        )
    in_flight = refund_in_flight(purchase)
    remainder = purchase.price - purchase.refunded_amount - in_flight
    if amount > remainder:
        detail = f"{purchase.refunded_amount} {purchase.currency} already refunded"
        if in_flight:
            detail += f", {in_flight} {purchase.currency} being refunded"
        raise InvalidRefund(
            f"You can refund at most {remainder} {purchase.currency} of purchase #{purchase.pk} "
            f"(price {purchase.price} {purchase.currency}, {detail})."
        )
    refund = Refund(
        purchase=purchase, amount=amount, currency=purchase.currency, method=method,
        status=RefundStatus.PENDING, reason=reason, created_by=actor,
    )
    refund._history_user = actor
    refund.save()
    if method != PaymentMethod.STRIPE:
        # Money handed back at the desk: nothing to ask anyone, so it is applied now.
        return refund_apply(refund_id=refund.pk)
    return refund


def refund_create(*, purchase: Purchase, amount: Decimal, reason: str, actor) -> Refund:
    """Refund `amount` of a paid purchase and void its unused credits in proportion.

    Returns the Refund: succeeded (applied), failed (Stripe refused: `error` says why, nothing
    voided) or, when Stripe's answer never came, pending with `error` set until Stripe reports it.
    Must not run inside a transaction: it calls Stripe between its two transactions.
    """
    refund = _refund_open(purchase=purchase, amount=amount, reason=reason, actor=actor)
    if refund.method != PaymentMethod.STRIPE:
        return refund
    return refund_send(refund_id=refund.pk)


# --- Asking Stripe ------------------------------------------------------------------------


@transaction.atomic
def _refund_set_error(refund_id: int, text: str, *, failed: bool) -> Refund:
    refund = Refund.objects.select_for_update().get(pk=refund_id)
    # A webhook may have applied it meanwhile: an applied refund is never marked failed.
    if refund.applied_at is None and refund.status == RefundStatus.PENDING:
        refund.error = text
        if failed:
            refund.status = RefundStatus.FAILED
        refund.save(update_fields=["error", "status"])
    return refund


def refund_send(*, refund_id: int) -> Refund:
    """Step 2: ask Stripe to refund a pending Refund (idempotent by the refund's id), then apply."""
    refund = Refund.objects.select_related("purchase").get(pk=refund_id)
    if not _awaits_stripe(refund):
        return refund
    purchase = refund.purchase
    try:
        stripe_refund = stripe_client().v1.refunds.create(
            params={
                "payment_intent": purchase.stripe_payment_intent_id,
                "amount": to_minor(refund.amount, refund.currency),
                "metadata": {"refund_id": str(refund.pk), "purchase_id": str(purchase.pk)},
            },
            options={"idempotency_key": f"packdesk-refund-{refund.pk}"},
        )
    except (stripe.APIConnectionError, stripe.APIError) as exc:
        # Stripe may or may not have refunded: keep it pending. Its charge.refunded webhook applies
        # it if it happened; "Send to Stripe again" repeats the same idempotent request.
        return _refund_set_error(
            refund.pk, f"Stripe did not answer ({_stripe_text(exc)}). The refund stays pending until Stripe "
            "confirms it; send it again if it does not.", failed=False,
        )
    except stripe.StripeError as exc:
        return _refund_set_error(refund.pk, f"Stripe refused the refund: {_stripe_text(exc)}", failed=True)
    answer = stripe_refund.to_dict()
    if answer.get("status") in STRIPE_NOT_REFUNDED:
        reason = answer.get("failure_reason") or answer["status"]
        return _refund_set_error(refund.pk, f"Stripe could not refund the payment: {reason}.", failed=True)
    return refund_apply(refund_id=refund.pk, stripe_refund_id=answer["id"])


def refund_retry(*, refund_id: int) -> Refund:
    """Send a refund still pending (Stripe did not answer, or a crash) to Stripe again.

    Stripe keeps idempotency keys for a day only, so first look for a refund Stripe already made
    for it (by our metadata) and apply that instead of asking twice.
    """
    refund = Refund.objects.select_related("purchase").get(pk=refund_id)
    if not _awaits_stripe(refund):
        raise InvalidRefund(f"Refund #{refund.pk} is {refund.get_status_display().lower()}: nothing to send.")
    params = {"payment_intent": refund.purchase.stripe_payment_intent_id, "limit": 100}
    for found in stripe_client().v1.refunds.list(params=params).auto_paging_iter():
        found = found.to_dict()
        if (found.get("metadata") or {}).get("refund_id") == str(refund.pk):
            if found.get("status") in STRIPE_NOT_REFUNDED:
                text = f"Stripe could not refund the payment: {found['status']}."
                return _refund_set_error(refund.pk, text, failed=True)
            return refund_apply(refund_id=refund.pk, stripe_refund_id=found["id"])
    return refund_send(refund_id=refund.pk)


def _awaits_stripe(refund: Refund) -> bool:
    return (
        refund.method == PaymentMethod.STRIPE and refund.status == RefundStatus.PENDING
        and refund.applied_at is None
    )


def _stripe_text(exc: stripe.StripeError) -> str:
    return exc.user_message or str(exc) or exc.__class__.__name__


# --- Applying: the money and the credits ----------------------------------------------------


@transaction.atomic
def refund_apply(*, refund_id: int, stripe_refund_id: str | None = None) -> Refund:
    """Step 3: record the refunded money on the purchase and void its credits. Once per refund."""
    purchase_id = Refund.objects.values_list("purchase_id", flat=True).get(pk=refund_id)
    # Lock order: purchase, refund, then (through the ledger) balances and grants.
    purchase = Purchase.objects.select_for_update().get(pk=purchase_id)
    refund = Refund.objects.select_for_update().get(pk=refund_id)
    if refund.applied_at is not None:
        return refund
    if purchase.status not in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        raise InvalidRefund(f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: it cannot be refunded.")
    total = purchase.refunded_amount + refund.amount
    if total > purchase.price:
        raise InvalidRefund(
            f"Refund #{refund.pk} of {refund.amount} {refund.currency} would take purchase #{purchase.pk} past its "
            f"price ({purchase.refunded_amount} of {purchase.price} {purchase.currency} already refunded): "
            "check it against Stripe."
        )
    now = timezone.now()
    refund.status, refund.applied_at, refund.error = RefundStatus.SUCCEEDED, now, ""
    if stripe_refund_id:
        refund.stripe_refund_id = stripe_refund_id
    refund._history_user = refund.created_by
    refund.save(update_fields=["status", "applied_at", "error", "stripe_refund_id"])
    purchase.refunded_amount = total
    if total == purchase.price:
        purchase.status = PurchaseStatus.REFUNDED
    purchase._history_user = refund.created_by
    purchase.save(update_fields=["refunded_amount", "status"])

    # Ledger locking protocol: every balance involved, in key order, before any grant.
    session_types = CreditGrant.objects.filter(purchase=purchase).values("session_type_id")
    list(
        ClientBalance.objects.select_for_update()
        .filter(client_id=purchase.client_id, session_type_id__in=session_types)
        .order_by("pk").values_list("pk", flat=True)
    )
    note = f"Refund #{refund.pk} of purchase #{purchase.pk}: {refund.amount} {refund.currency}"
    if refund.reason:
        note += f" ({refund.reason})"
    for line in void_plan(purchase, total):
        for grant, quantity in line.grants:
            grant_void(
                grant=grant, actor=refund.created_by, note=note, quantity=quantity,
                source=EntrySource.REFUND, refund_id=refund.pk,
                idempotency_key=f"refund:{refund.pk}:grant:{grant.pk}",
            )
    return refund


# --- Stripe's charge.refunded ---------------------------------------------------------------


def refund_reflect_charge(*, charge_id: str) -> list[Refund]:
    """Bring every refund Stripe holds for a charge into Packdesk; returns those applied now.

    Re-reads the charge and its refunds from Stripe (the event may be old or out of order).
    Idempotent: a refund already applied here is skipped, so the same event twice voids once.
    """
    client = stripe_client()
    charge = client.v1.charges.retrieve(charge_id).to_dict()
    intent_id = charge.get("payment_intent")
    if isinstance(intent_id, dict):  # expanded
        intent_id = intent_id.get("id")
    purchase = Purchase.objects.filter(stripe_payment_intent_id=intent_id).first() if intent_id else None
    if purchase is None:
        raise RefundNotReflected(
            f"No purchase is known for Stripe charge {charge_id} (payment {intent_id}) yet: "
            "its payment may not be confirmed here yet."
        )
    listed = client.v1.refunds.list(params={"charge": charge_id, "limit": 100}).auto_paging_iter()
    applied = []
    # Oldest first, so refunds get ids (and voids) in the order Stripe made them.
    stripe_refunds = sorted((r.to_dict() for r in listed), key=lambda r: (r.get("created") or 0, r["id"]))
    for stripe_refund in stripe_refunds:
        refund = _reflect_one(purchase, stripe_refund)
        if refund is not None:
            applied.append(refund)
    return applied


@transaction.atomic
def _reflect_one(purchase: Purchase, stripe_refund: dict) -> Refund | None:
    stripe_id, status = stripe_refund["id"], stripe_refund.get("status")
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    # Checked under the purchase lock: the same event processed twice at once reflects once.
    refund = Refund.objects.filter(stripe_refund_id=stripe_id).first()
    ours = (stripe_refund.get("metadata") or {}).get("refund_id")
    if refund is None and ours and ours.isdigit():
        refund = Refund.objects.filter(pk=int(ours), purchase=purchase, stripe_refund_id__isnull=True).first()
    if status in STRIPE_NOT_REFUNDED:
        if refund is not None and refund.applied_at is None:
            _refund_set_error(refund.pk, f"Stripe could not refund the payment: {status}.", failed=True)
        return None
    if refund is not None:
        if refund.applied_at is not None:
            return None
        return refund_apply(refund_id=refund.pk, stripe_refund_id=stripe_id)
    if purchase.status not in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        raise RefundNotReflected(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: its refund in Stripe is reflected "
            "once the payment is confirmed here."
        )
    currency = (stripe_refund.get("currency") or "").upper()
    if currency != purchase.currency.upper():
        raise InvalidRefund(
            f"Stripe refund {stripe_id} is in {currency}, purchase #{purchase.pk} in "
            f"{purchase.currency}: check it against Stripe."
        )
    # Made in Stripe's dashboard: it becomes a refund here, by nobody in Packdesk.
    refund = Refund.objects.create(
        purchase=purchase, amount=from_minor(stripe_refund["amount"], purchase.currency),
        currency=purchase.currency, method=PaymentMethod.STRIPE, status=RefundStatus.PENDING,
        reason=DASHBOARD_REASON, created_by=None,
    )
    return refund_apply(refund_id=refund.pk, stripe_refund_id=stripe_id)
