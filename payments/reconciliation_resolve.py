"""Settling a reconciliation mismatch (payments.reconciliation lists them).

Three actions, each atomic, idempotent (the same action twice does it once) and refused with a
clear message when it does not fit the line's kind: "issue_credits" for money Stripe took with
no credits issued, "void" for credits nobody paid for, "explain" (with a note) for anything.
What Stripe says now is read first, outside the transaction; the line, then the purchase, then
(through the ledger) the balances and grants are locked in that order.
"""
from __future__ import annotations

import stripe
from django.db import transaction
from django.utils import timezone

from ledger.models import ClientBalance, CreditGrant, EntrySource, GrantState
from ledger.services import credits_issue_for_purchase, grant_void
from payments.exceptions import PaymentError
from payments.models import (
    MismatchKind,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    ReconciliationLine,
    Resolution,
)
from payments.reconciliation import _at, _differs, _id, _intent_states, _minor
from payments.services import purchase_mark_paid
from payments.stripe_gateway import stripe_client


class InvalidResolution(PaymentError):
    pass


ISSUE_CREDITS, VOID, EXPLAIN = "issue_credits", "void", "explain"
FITS = {ISSUE_CREDITS: (MismatchKind.PAID_NO_CREDITS,), VOID: (MismatchKind.CREDITS_NO_PAYMENT,)}


def _check_fits(line: ReconciliationLine, action: str, note: str) -> None:
    if action not in (ISSUE_CREDITS, VOID, EXPLAIN):
        raise InvalidResolution(f"Unknown action {action!r}: issue credits, void or explain.")
    if not line.mismatch:
        raise InvalidResolution(f"Line #{line.pk} is matched or informational: there is nothing to resolve.")
    kind = MismatchKind(line.mismatch).label.lower()
    if action in FITS and line.mismatch not in FITS[action]:
        raise InvalidResolution(
            f"Line #{line.pk} is “{kind}”: “{action.replace('_', ' ')}” does not fit it. "
            + ("Void its credits or explain it." if line.mismatch == MismatchKind.CREDITS_NO_PAYMENT else
               "Issue credits or explain it." if line.mismatch == MismatchKind.PAID_NO_CREDITS else
               "Explain it, with a note.")
        )
    if action in FITS and line.purchase_id is None:
        raise InvalidResolution(f"Line #{line.pk} is no purchase of ours: refund it in Stripe, then explain it.")
    if action == EXPLAIN and not note.strip():
        raise InvalidResolution("Say why this line is fine (or what was done about it): the note is required.")


def _done_already(line: ReconciliationLine, action: str) -> bool:
    if line.resolution == Resolution.OPEN:
        return False
    if (line.resolution == Resolution.EXPLAINED) == (action == EXPLAIN):
        return True
    raise InvalidResolution(
        f"Line #{line.pk} was already {line.get_resolution_display().lower()} "
        f"on {timezone.localtime(line.resolved_at):%d %b %Y %H:%M}."
    )


def _read_charge(line: ReconciliationLine) -> dict | None:
    """What Stripe says now about the line's payment (read before any lock is taken)."""
    client = stripe_client()
    if line.mismatch == MismatchKind.PAID_NO_CREDITS and line.source_id:
        return client.v1.charges.retrieve(line.source_id).to_dict()
    intent = line.purchase.stripe_payment_intent_id if line.purchase_id else None
    if line.mismatch == MismatchKind.CREDITS_NO_PAYMENT and intent:
        states = _intent_states([intent])
        return {"status": states[intent], "payment_intent": intent}
    return None


def _issue_credits(line: ReconciliationLine, purchase: Purchase, charge: dict | None, actor) -> str:
    if purchase.status == PurchaseStatus.PENDING:
        if not charge or charge.get("status") != "succeeded":
            raise InvalidResolution(f"Stripe's charge {line.source_id} is not succeeded: nothing to record.")
        intent = _id(charge.get("payment_intent"))
        if _differs(_minor(purchase.price, purchase.currency), purchase.currency, charge.get("amount"), charge.get("currency")):
            raise InvalidResolution(f"Stripe's charge is not purchase #{purchase.pk}'s price: explain this line instead.")
        if not intent or Purchase.objects.filter(stripe_payment_intent_id=intent).exclude(pk=purchase.pk).exists():
            raise InvalidResolution(f"Stripe payment {intent} belongs to another purchase (or none): explain this line.")
        if Payment.objects.filter(purchase=purchase).exists():
            raise InvalidResolution(f"Purchase #{purchase.pk} already has a payment recorded: explain this line.")
        paid_at = _at(charge.get("created")) or timezone.now()
        payment = Payment(
            purchase=purchase, method=PaymentMethod.STRIPE, amount=purchase.price, currency=purchase.currency,
            reference=intent, received_at=paid_at, recorded_by=actor,
        )
        payment._history_user = actor
        payment.save()
        purchase.stripe_payment_intent_id = intent
        purchase._history_user, purchase._change_reason = actor, f"Reconciliation line #{line.pk}"
        purchase.save(update_fields=["stripe_payment_intent_id"])
        purchase_mark_paid(purchase=purchase, actor=actor, paid_at=paid_at)
        return f"Stripe payment {intent} recorded; purchase #{purchase.pk} paid and its credits issued."
    if purchase.status != PurchaseStatus.PAID:
        raise InvalidResolution(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: refund the payment in Stripe, "
            "then explain this line."
        )
    if charge is not None and _id(charge.get("payment_intent")) != purchase.stripe_payment_intent_id:
        raise InvalidResolution(f"Purchase #{purchase.pk} was paid otherwise: refund this payment in Stripe and explain.")
    if not credits_issue_for_purchase(purchase=purchase, actor=actor):
        raise InvalidResolution(f"Purchase #{purchase.pk}'s plan is not activated: its credits wait for activation.")
    return f"Credits of purchase #{purchase.pk} issued."


def _void(line: ReconciliationLine, purchase: Purchase, charge: dict | None, actor, note: str) -> str:
    if charge and charge.get("status") == "succeeded":
        raise InvalidResolution(f"Stripe's payment for purchase #{purchase.pk} has settled since: explain this line.")
    if purchase.refunded_amount:
        raise InvalidResolution(f"Purchase #{purchase.pk} has refunds: explain this line instead.")
    grants = list(CreditGrant.objects.filter(purchase=purchase, state=GrantState.ACTIVE).order_by("pk"))
    # Ledger locking protocol: every balance involved, in key order, before any grant.
    list(ClientBalance.objects.select_for_update().filter(
        client_id=purchase.client_id, session_type_id__in=[g.session_type_id for g in grants],
    ).order_by("pk").values_list("pk", flat=True))
    text = f"Reconciliation line #{line.pk}: purchase #{purchase.pk} was never paid" + (f" ({note})" if note else "")
    for grant in grants:
        grant_void(
            grant=grant, actor=actor, note=text, source=EntrySource.ADJUSTMENT,
            idempotency_key=f"reconciliation:{line.pk}:grant:{grant.pk}",
        )
    if purchase.status != PurchaseStatus.CANCELLED:
        purchase.status = PurchaseStatus.CANCELLED
        purchase._history_user, purchase._change_reason = actor, f"Reconciliation line #{line.pk}: never paid"
        purchase.save(update_fields=["status"])
    return f"Purchase #{purchase.pk} cancelled and {len(grants)} credit grant(s) voided."


def reconciliation_resolve(*, line: ReconciliationLine, action: str, actor, note: str = "") -> ReconciliationLine:
    """Settle one mismatch: issue_credits (paid_no_credits), void (credits_no_payment) or explain.

    Idempotent: the same action twice does it once. Stripe is read first, outside the transaction.
    """
    note = (note or "").strip()
    line = ReconciliationLine.objects.select_related("purchase").get(pk=line.pk)
    _check_fits(line, action, note)
    if _done_already(line, action):
        return line
    try:
        charge = _read_charge(line) if action in FITS else None
    except stripe.StripeError as exc:
        raise InvalidResolution(f"Stripe did not answer ({exc.user_message or exc}): nothing was changed; try again.")
    with transaction.atomic():
        line = ReconciliationLine.objects.select_for_update().get(pk=line.pk)
        if _done_already(line, action):
            return line
        outcome = ""
        if action in FITS:
            purchase = Purchase.objects.select_for_update().get(pk=line.purchase_id)
            outcome = (_issue_credits(line, purchase, charge, actor) if action == ISSUE_CREDITS
                       else _void(line, purchase, charge, actor, note))
        line.resolution = Resolution.EXPLAINED if action == EXPLAIN else Resolution.RESOLVED
        line.resolution_note = " ".join(part for part in (outcome, note) if part)
        line.resolved_by, line.resolved_at = actor, timezone.now()
        line._history_user = actor
        line.save(update_fields=["resolution", "resolution_note", "resolved_by", "resolved_at"])
    return line

