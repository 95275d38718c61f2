"""Processing stored Stripe events: re-read Stripe, then apply under the event's row lock.

The webhook view only verifies and stores (payments.webhooks); this module does the work, from
the dramatiq actor, the pending-events sweep, the management command and the admin's Retry.

Every handler is in two steps. First it reads the current state from Stripe, outside any
database transaction (an event's body is a snapshot from when it was sent, and events arrive
late, twice and out of order). Then, in one transaction, the event row is locked, re-checked
(someone else may have finished it meanwhile) and the state applied through payments.online.
Applying Stripe's *current* state rather than the event's makes the order irrelevant: a
completed event arriving after async_payment_succeeded finds the purchase paid and does nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import stripe
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from payments.exceptions import PaymentError
from payments.models import StripeEvent, StripeEventStatus
from payments.online import (
    PAID_STATES,
    StripeMismatch,
    purchase_cancel_unpaid,
    purchase_confirm_online,
    purchase_flag_dispute,
    session_purchase_id,
)
from payments.stripe_gateway import stripe_client

logger = logging.getLogger(__name__)

DONE = (StripeEventStatus.PROCESSED, StripeEventStatus.IGNORED)
# The sweep gives up on an event after this many attempts; the admin's Retry still works.
MAX_ATTEMPTS = 10
# The sweep leaves younger events to the actor enqueued by the webhook, so both rarely overlap
# (when they do, the row lock makes the second a no-op).
SWEEP_MIN_AGE_SECONDS = 60
SWEEP_BATCH = 200
# A PaymentIntent in these states after its session completed unpaid has failed for good.
INTENT_FAILED = ("requires_payment_method", "canceled")

# Runs under the event's lock; returns a note for the log ("purchase #5 paid"). A handler
# returns None instead when the object is not Packdesk's: the event is then ignored.
Apply = Callable[[], str]


class StripeEventFailed(Exception):
    """Processing an event failed; the event row says why (last_error) and it will be retried."""


def _object(payload: dict) -> dict:
    obj = (payload.get("data") or {}).get("object") or {}
    if not obj.get("id"):
        raise StripeMismatch("The event carries no data.object with an id, so there is nothing to act on.")
    return obj


def _plain(stripe_object) -> dict:
    return stripe_object.to_dict()


# --- Handlers: read Stripe (no transaction), return what to apply under the lock -------------


def _checkout_session_changed(payload: dict) -> Apply | None:
    """Any checkout.session.* event: bring the purchase in line with the session as it is now."""
    client = stripe_client()
    session = _plain(client.v1.checkout.sessions.retrieve(_object(payload)["id"]))
    from payments.subscription_stripe import plan_checkout_abandoned, subscription_checkout_completed

    if session.get("mode") == "subscription":
        return subscription_checkout_completed(session)
    if "purchase_id" not in (session.get("metadata") or {}):
        return None  # a session some other integration on the same Stripe account made
    intent = None
    if session.get("payment_status") not in PAID_STATES and session.get("payment_intent"):
        # Completed but unpaid: a delayed payment still processing, or one that failed.
        intent = _plain(client.v1.payment_intents.retrieve(session["payment_intent"]))

    def apply() -> str:
        purchase_id = session_purchase_id(session)
        if session.get("payment_status") in PAID_STATES:
            purchase_confirm_online(purchase_id=purchase_id, checkout_session=session)
            return f"purchase #{purchase_id} paid"
        if session.get("status") == "expired":
            purchase_cancel_unpaid(checkout_session=session, reason="Stripe Checkout Session expired")
            plan_checkout_abandoned(purchase_id=purchase_id)
            return f"purchase #{purchase_id} cancelled (checkout expired)"
        if intent is not None and intent.get("status") in INTENT_FAILED:
            purchase_cancel_unpaid(checkout_session=session, reason="Delayed payment failed in Stripe")
            plan_checkout_abandoned(purchase_id=purchase_id)
            return f"purchase #{purchase_id} cancelled (payment failed)"
        # Open, or paid by a delayed method not settled yet: its own event will follow.
        return f"purchase #{purchase_id} left pending ({session.get('status')}, {session.get('payment_status')})"

    return apply


def _charge_refunded(payload: dict) -> Apply:
    """A refund, from our admin or Stripe's dashboard: reflect every refund of the charge.

    refund_reflect_charge reads the charge's refunds from Stripe itself, so it runs here, before
    the event lock, and is idempotent (it records each Stripe refund once).
    """
    from payments.refunds import refund_reflect_charge

    charge_id = _object(payload)["id"]
    refund_reflect_charge(charge_id=charge_id)
    return lambda: f"refunds of charge {charge_id} reflected"


def _dispute_created(payload: dict) -> Apply:
    dispute = _object(payload)
    intent_id = dispute.get("payment_intent")
    if not intent_id and dispute.get("charge"):
        intent_id = _plain(stripe_client().v1.charges.retrieve(dispute["charge"])).get("payment_intent")
    if not intent_id:
        raise StripeMismatch(f"Dispute {dispute['id']} names no payment, so no purchase can be flagged.")

    def apply() -> str:
        purchase = purchase_flag_dispute(
            payment_intent_id=intent_id, dispute_id=dispute["id"], reason=dispute.get("reason") or "",
        )
        return f"purchase #{purchase.pk} flagged disputed"

    return apply


def invoice_subscription_id(invoice: dict) -> str | None:
    """The Stripe subscription an invoice bills, wherever this API version puts it."""
    parent = invoice.get("parent") or {}
    details = parent.get("subscription_details") or {}
    if parent.get("type") == "subscription_details" and details.get("subscription"):
        return details["subscription"]
    return invoice.get("subscription") or None


def _invoice_changed(payload: dict) -> Apply | None:
    """invoice.*: a recurring plan's cycle (Stripe subscription), or one of our own invoices
    (manual, late, or an invoice plan's cycle); anything else on the account is not ours."""
    from payments.invoices import invoice_stripe_changed
    from payments.subscription_stripe import subscription_invoice_changed

    invoice = _plain(stripe_client().v1.invoices.retrieve(
        _object(payload)["id"], params={"expand": ["payments"]},
    ))
    if invoice_subscription_id(invoice):
        return subscription_invoice_changed(invoice, payload.get("type", ""))
    if (invoice.get("metadata") or {}).get("invoice_id"):
        return invoice_stripe_changed(invoice)
    return None


def _subscription_changed(payload: dict) -> Apply | None:
    from payments.subscription_stripe import subscription_stripe_changed

    stripe_subscription = _plain(stripe_client().v1.subscriptions.retrieve(_object(payload)["id"]))
    return subscription_stripe_changed(stripe_subscription)


HANDLERS: dict[str, Callable[[dict], Apply | None]] = {
    "checkout.session.completed": _checkout_session_changed,
    "checkout.session.async_payment_succeeded": _checkout_session_changed,
    "checkout.session.async_payment_failed": _checkout_session_changed,
    "checkout.session.expired": _checkout_session_changed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
    "invoice.finalized": _invoice_changed,
    "invoice.paid": _invoice_changed,
    "invoice.payment_failed": _invoice_changed,
    "invoice.voided": _invoice_changed,
    "invoice.marked_uncollectible": _invoice_changed,
    "customer.subscription.updated": _subscription_changed,
    "customer.subscription.deleted": _subscription_changed,
    "customer.subscription.paused": _subscription_changed,
    "customer.subscription.resumed": _subscription_changed,
}


# --- Processing one event ----------------------------------------------------------------


def _error_text(exc: Exception) -> str:
    if isinstance(exc, PaymentError):
        return str(exc)
    if isinstance(exc, stripe.StripeError):
        return f"Stripe said: {exc.user_message or exc}"
    return f"{type(exc).__name__}: {exc}"


def _record_failure(event_pk: int, exc: Exception) -> None:
    with transaction.atomic():
        event = StripeEvent.objects.select_for_update().get(pk=event_pk)
        if event.status in DONE:
            return  # another run finished it while this one failed
        event.status = StripeEventStatus.FAILED
        event.attempts += 1
        event.last_error = _error_text(exc)
        event.save(update_fields=["status", "attempts", "last_error"])


def stripe_event_process(event_pk: int) -> StripeEvent:
    """Process one stored event once. Safe to call any number of times, concurrently too.

    Raises StripeEventFailed (after recording the error on the event) so a job can retry.
    """
    event = StripeEvent.objects.filter(pk=event_pk).first()
    if event is None:
        raise StripeEventFailed(f"No stored Stripe event #{event_pk}.")
    if event.status in DONE:
        return event
    handler = HANDLERS.get(event.type)
    try:
        apply = handler(event.payload) if handler else None
        with transaction.atomic():
            event = StripeEvent.objects.select_for_update().get(pk=event_pk)
            if event.status in DONE:
                return event
            note = apply() if apply else "not something Packdesk acts on"
            event.status = StripeEventStatus.PROCESSED if apply else StripeEventStatus.IGNORED
            event.attempts += 1
            event.last_error = ""
            event.processed_at = timezone.now()
            event.save(update_fields=["status", "attempts", "last_error", "processed_at"])
    except Exception as exc:  # every failure is recorded on the event, whatever raised it
        _record_failure(event_pk, exc)
        logger.warning("Stripe event %s (%s) failed: %s", event.event_id, event.type, _error_text(exc))
        raise StripeEventFailed(_error_text(exc)) from exc
    logger.info("Stripe event %s (%s): %s", event.event_id, event.type, note)
    return event


# --- The sweep: what the queue missed ---------------------------------------------------------


@dataclass
class SweepResult:
    processed: int = 0
    ignored: int = 0
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.processed} processed, {self.ignored} ignored, {len(self.failed)} failed"


def stripe_events_due(*, min_age_seconds: int = SWEEP_MIN_AGE_SECONDS):
    """Events the queue should have done by now: pending ones, and failed ones with tries left."""
    cutoff = timezone.now() - timedelta(seconds=min_age_seconds)
    return StripeEvent.objects.filter(
        Q(status=StripeEventStatus.PENDING) | Q(status=StripeEventStatus.FAILED, attempts__lt=MAX_ATTEMPTS),
        received_at__lte=cutoff,
    ).order_by("received_at", "pk")


def stripe_events_process_pending(
    *, min_age_seconds: int = SWEEP_MIN_AGE_SECONDS, limit: int = SWEEP_BATCH,
) -> SweepResult:
    """Process due events one by one (each in its own transactions); one failing stops nothing."""
    result = SweepResult()
    for pk in list(stripe_events_due(min_age_seconds=min_age_seconds).values_list("pk", flat=True)[:limit]):
        try:
            event = stripe_event_process(pk)
        except StripeEventFailed as exc:
            result.failed.append(f"#{pk}: {exc}")
            continue
        if event.status == StripeEventStatus.IGNORED:
            result.ignored += 1
        else:
            result.processed += 1
    return result
