"""Online purchases change state here, from what Stripe says (read by payments.events first).

Each function takes the Stripe object already read from Stripe's API (a plain dict), so no
Stripe call ever runs inside these transactions. Each locks the purchase, re-checks it against
Stripe's object, and is idempotent: the same Stripe state applied twice changes nothing twice.
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from payments.exceptions import InvalidPurchaseState, PaymentError
from payments.models import Payment, PaymentMethod, Purchase, PurchaseStatus
from payments.money import to_minor
from payments.services import purchase_mark_paid

logger = logging.getLogger(__name__)

# The Checkout Session states in which Stripe has the money (a free session has nothing to pay).
PAID_STATES = ("paid", "no_payment_required")


class StripeMismatch(PaymentError):
    """Stripe's object does not match our purchase: nothing is applied until someone looks."""


def session_purchase_id(checkout_session: dict) -> int:
    raw = (checkout_session.get("metadata") or {}).get("purchase_id")
    if not str(raw or "").isdigit():
        raise StripeMismatch(
            f"Checkout Session {checkout_session.get('id')} has no purchase id in its metadata "
            f"(got {raw!r}), so it is not one of ours."
        )
    return int(raw)


def _lock_purchase_of_session(checkout_session: dict) -> Purchase:
    """The purchase named by the session's metadata, locked, and only if it owns that session.

    Both must agree: the metadata alone could name any purchase, the session id alone could be
    one we never stored (a crash between creating the session and saving its id).
    """
    purchase_id = session_purchase_id(checkout_session)
    purchase = Purchase.objects.select_for_update().filter(pk=purchase_id).first()
    if purchase is None:
        raise StripeMismatch(
            f"Checkout Session {checkout_session.get('id')} names purchase #{purchase_id}, "
            "which does not exist."
        )
    if purchase.stripe_checkout_session_id != checkout_session.get("id"):
        raise StripeMismatch(
            f"Checkout Session {checkout_session.get('id')} names purchase #{purchase.pk}, but that "
            f"purchase belongs to Checkout Session {purchase.stripe_checkout_session_id or '(none)'}."
        )
    return purchase


def _check_amount(purchase: Purchase, checkout_session: dict) -> None:
    expected = to_minor(purchase.price, purchase.currency)
    amount, currency = checkout_session.get("amount_total"), str(checkout_session.get("currency") or "")
    if amount != expected or currency.lower() != purchase.currency.lower():
        raise StripeMismatch(
            f"Stripe took {amount} {currency.upper()} (minor units) on Checkout Session "
            f"{checkout_session.get('id')}, but purchase #{purchase.pk} costs {expected} "
            f"{purchase.currency.upper()}: nothing was marked paid. Check the session in Stripe "
            "and refund or settle it by hand."
        )


@transaction.atomic
def purchase_confirm_online(*, purchase_id: int, checkout_session: dict) -> Purchase:
    """Stripe has the money for this purchase's Checkout Session: record it and issue credits.

    Paid already with the same PaymentIntent (a duplicate or late event): nothing more happens.
    """
    if str(purchase_id) != str(session_purchase_id(checkout_session)):
        raise StripeMismatch(
            f"Checkout Session {checkout_session.get('id')} is not the session of purchase #{purchase_id}."
        )
    purchase = _lock_purchase_of_session(checkout_session)
    if checkout_session.get("payment_status") not in PAID_STATES:
        raise InvalidPurchaseState(
            f"Checkout Session {checkout_session.get('id')} is not paid yet "
            f"({checkout_session.get('payment_status')}): purchase #{purchase.pk} stays pending."
        )
    _check_amount(purchase, checkout_session)
    intent_id = checkout_session.get("payment_intent") or None
    if purchase.status == PurchaseStatus.PAID:
        if purchase.stripe_payment_intent_id == intent_id:
            # Order-independence: whichever event came first did the work; credits are idempotent.
            return purchase_mark_paid(purchase=purchase, actor=None)
        raise InvalidPurchaseState(
            f"Purchase #{purchase.pk} was already paid ({_paid_how(purchase)}), and Stripe took a "
            f"second payment {intent_id}: refund that one in Stripe."
        )
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidPurchaseState(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}, but Stripe took its "
            f"payment {intent_id}: refund it in Stripe or sell the pack again at the desk."
        )
    now = timezone.now()
    payment = Payment(
        purchase=purchase, method=PaymentMethod.STRIPE, amount=purchase.price, currency=purchase.currency,
        reference=intent_id or checkout_session["id"], received_at=now, recorded_by=None,
    )
    payment._history_user = None
    payment.save()
    purchase.stripe_payment_intent_id = intent_id
    purchase._history_user = None
    purchase.save(update_fields=["stripe_payment_intent_id"])
    return purchase_mark_paid(purchase=purchase, actor=None, paid_at=now)


def _paid_how(purchase: Purchase) -> str:
    payment = purchase.payments.first()
    return f"{payment.get_method_display().lower()} {payment.reference}".strip() if payment else "no payment row"


@transaction.atomic
def purchase_cancel_unpaid(*, checkout_session: dict, reason: str) -> Purchase:
    """The client never paid (the session expired, or a delayed payment failed): cancel it.

    Only a pending purchase is cancelled; one paid meanwhile (at the desk) is left alone.
    """
    if checkout_session.get("payment_status") in PAID_STATES:
        raise InvalidPurchaseState(
            f"Checkout Session {checkout_session.get('id')} is paid, so its purchase is not cancelled."
        )
    purchase = _lock_purchase_of_session(checkout_session)
    if purchase.status != PurchaseStatus.PENDING:
        logger.info("purchase #%s is %s; not cancelled for %s", purchase.pk, purchase.status, reason)
        return purchase
    purchase.status = PurchaseStatus.CANCELLED
    purchase._history_user = None
    purchase._change_reason = reason[:100]
    purchase.save(update_fields=["status"])
    return purchase


@transaction.atomic
def purchase_flag_dispute(*, payment_intent_id: str, dispute_id: str, reason: str = "") -> Purchase:
    """The client disputed the card payment: flag the purchase so staff see it (idempotent)."""
    purchase = Purchase.objects.select_for_update().filter(stripe_payment_intent_id=payment_intent_id).first()
    if purchase is None:
        raise StripeMismatch(
            f"Dispute {dispute_id} is about payment {payment_intent_id}, which no purchase was paid with "
            "(yet: it is retried once the payment's own event is processed)."
        )
    if not purchase.disputed:
        purchase.disputed = True
        purchase._history_user = None
        purchase._change_reason = f"Stripe dispute {dispute_id} {reason}".strip()[:100]
        purchase.save(update_fields=["disputed"])
    return purchase
