"""Recurring plans and Stripe: selling a plan online, Stripe's events about it, our changes pushed.

Selling (the public page): an auto-debit plan is a Stripe subscription started through Checkout
in mode "subscription"; an invoice plan sold online pays its first cycle through the ordinary
Checkout of that cycle's purchase (payments.checkout), and later cycles by emailed invoice
(payments.recurrence). The plan is written first (payments.subscriptions.subscription_create),
Stripe is called only after it commits, and a plan whose Checkout could not start is cancelled.

Stripe's events (payments.events re-reads the object from Stripe, then runs what these return
under the event's row lock): each function applies Stripe's *current* state and is idempotent,
so duplicates and any order of arrival give the same result.
- checkout completed: the plan learns its Stripe ids and status (trialing or active);
- invoice paid: the billing cycle it pays (found again by the Stripe invoice id on our Invoice
  row) is opened if needed and paid; its credits count from the cycle's start (seed 002), and
  nothing is issued while the plan waits for activation (the ledger's rule);
- invoice payment failed: the cycle waits unpaid, the plan is past due, client and staff are
  told once per invoice; the same invoice paid later pays that cycle then;
- subscription changed: status synced; a cancel in Stripe cancels ours. Never issues credits.

Our pauses, resumes and cancels are pushed to Stripe after commit by a job
(subscription_push_to_stripe), which reads Stripe first and skips what is already so.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import stripe
from django.conf import settings
from django.core import signing
from django.db import transaction
from django.utils import timezone

from catalog.models import RecurringCollection
from payments.checkout import (
    CheckoutRefused,
    check_online_price,
    checkout_buyer,
    checkout_session_create,
    checkout_unavailable,
    pack_on_sale,
    purchase_cancel_unstarted,
    purchase_store_session_id,
)
from payments.events import Apply, invoice_subscription_id
from payments.exceptions import PackNotForSale
from payments.models import (
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.money import to_minor
from payments.online import StripeMismatch
from payments.stripe_gateway import stripe_client
from payments.subscription_cycles import invoice_failed, invoice_paid, invoice_settled_otherwise
from payments.subscriptions import (
    LIVE,
    MAX_PAUSE_DAYS,
    subscription_cancel,
    subscription_create,
    subscription_pause,
)

logger = logging.getLogger(__name__)

PLAN_LINK_SALT = "packdesk.plan-started"
# Stripe's subscription statuses as ours; "incomplete" (first payment not through) stays pending.
STATUS_FROM_STRIPE = {
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
}
STRIPE_ENDED = ("canceled", "incomplete_expired")


def _save(plan: Subscription, reason: str, *fields: str) -> None:
    plan._history_user = None
    plan._change_reason = reason[:100]
    plan.save(update_fields=list(fields))


def _aware(timestamp) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), tz=dt_timezone.utc) if timestamp else None


# --- Selling on the public page ------------------------------------------------------------


def subscription_checkout_params(subscription: Subscription) -> dict:
    """Checkout in mode subscription for an auto-debit plan: price, interval and trial from the
    plan's snapshot (what was sold), never from the live pack or the browser."""
    recurring = subscription.snapshot["recurring"]
    metadata = {"subscription_id": str(subscription.pk)}
    subscription_data: dict = {"metadata": metadata}
    if recurring.get("free_trial_days"):
        subscription_data["trial_period_days"] = recurring["free_trial_days"]
    base = settings.PUBLIC_BASE_URL
    return {
        "mode": "subscription",
        "customer_email": subscription.client.email,
        "client_reference_id": f"plan-{subscription.pk}",
        "metadata": metadata,
        # Copied by Stripe onto the subscription and every invoice's subscription_details.
        "subscription_data": subscription_data,
        "line_items": [{
            "quantity": 1,
            "price_data": {
                "currency": subscription.currency.lower(),
                "unit_amount": to_minor(subscription.price, subscription.currency),
                "recurring": {
                    "interval": recurring["billing_interval"],
                    "interval_count": recurring.get("billing_interval_count") or 1,
                },
                "product_data": {"name": subscription.snapshot["name"]},
            },
        }],
        "success_url": f"{base}/packs/success/?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/packs/?checkout=cancelled",
    }


def subscription_checkout_session_create(subscription: Subscription):
    """The plan's Checkout Session; one per plan (the idempotency key), whoever asks again."""
    return stripe_client().v1.checkout.sessions.create(
        params=subscription_checkout_params(subscription),
        options={"idempotency_key": f"packdesk-plan-checkout-{subscription.pk}"},
    )


def plan_started_token(subscription: Subscription) -> str:
    """For the page shown after an invoice plan's free trial starts (no payment, no session)."""
    return signing.dumps(subscription.pk, salt=PLAN_LINK_SALT)


def plan_from_token(token: str) -> Subscription | None:
    try:
        pk = signing.loads(token, salt=PLAN_LINK_SALT)
    except signing.BadSignature:
        return None
    return Subscription.objects.select_related("client").filter(pk=pk).first() if isinstance(pk, int) else None


@transaction.atomic
def _plan_for_checkout(*, pack_id, name: str, email: str, staff_member_id) -> Subscription:
    pack = pack_on_sale(pack_id, recurring=True)
    client, staff_member = checkout_buyer(pack, name=name, email=email, staff_member_id=staff_member_id)
    try:
        plan = subscription_create(
            client=client, pack=pack, staff_member=staff_member, actor=None, channel=PurchaseChannel.ONLINE,
        )
    except PackNotForSale as exc:
        raise CheckoutRefused(str(exc)) from exc
    # Raising here rolls back the plan, its first cycle and a client created just for it.
    check_online_price(pack, plan.price, plan.currency)
    return plan


@transaction.atomic
def _cancel_unstarted_plan(plan: Subscription, reason: str) -> None:
    plan = Subscription.objects.select_for_update().get(pk=plan.pk)
    if plan.stripe_checkout_session_id or plan.stripe_subscription_id:
        return
    if plan.status in (SubscriptionStatus.PENDING, SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING):
        subscription_cancel(subscription=plan, actor=None, reason=reason)


@transaction.atomic
def subscription_store_session_id(plan: Subscription, session_id: str) -> Subscription:
    """Remember the plan's Checkout Session (the success page and the events find the plan by it)."""
    plan = Subscription.objects.select_for_update().get(pk=plan.pk)
    if plan.stripe_checkout_session_id != session_id:
        plan.stripe_checkout_session_id = session_id
        _save(plan, "Checkout started", "stripe_checkout_session_id")
    return plan



@transaction.atomic
def plan_checkout_abandoned(*, purchase_id: int) -> str | None:
    """An invoice plan sold online whose first cycle's Checkout ended unpaid (expired, or its
    delayed payment failed): nothing was ever paid, so the plan is cancelled too, else the
    recurrence job would bill its next cycle. Call after the cycle was cancelled; idempotent."""
    cycle = Purchase.objects.filter(
        pk=purchase_id, subscription__isnull=False, cycle_number=1, channel=PurchaseChannel.ONLINE,
        status=PurchaseStatus.CANCELLED,
    ).first()
    if cycle is None:
        return None
    plan = Subscription.objects.select_for_update().get(pk=cycle.subscription_id)
    paid = plan.cycles.filter(status__in=(PurchaseStatus.PAID, PurchaseStatus.REFUNDED)).exists()
    if plan.status == SubscriptionStatus.CANCELLED or paid:
        return None
    subscription_cancel(subscription=plan, actor=None, reason="first payment not made online (checkout ended)")
    return f"plan #{plan.pk} cancelled (its first payment was never made)"


def _checkout_failed(plan: Subscription, cycle: Purchase | None, exc: Exception):
    logger.exception("Stripe refused the Checkout Session of plan #%s", plan.pk)
    reason = f"Stripe Checkout could not start: {exc.__class__.__name__}"
    if cycle is not None:
        purchase_cancel_unstarted(cycle, reason)
    _cancel_unstarted_plan(plan, reason)
    return checkout_unavailable()


def subscription_checkout_start(
    *, pack_id, name: str, email: str, staff_member_id=None,
) -> tuple[Subscription, str]:
    """A new plan for a recurring pack sold online, and where to send the buyer.

    Auto-debit: Stripe Checkout in mode subscription. Invoice: the Checkout of the first
    cycle's purchase, or (a free trial: nothing to pay yet) our page saying the trial started.
    Raises CheckoutRefused (nothing written) or CheckoutUnavailable (the plan is cancelled).
    """
    plan = _plan_for_checkout(pack_id=pack_id, name=name, email=email, staff_member_id=staff_member_id)
    if plan.collection == RecurringCollection.AUTO_DEBIT:
        try:
            session = subscription_checkout_session_create(plan)
        except stripe.StripeError as exc:
            raise _checkout_failed(plan, None, exc) from exc
        return subscription_store_session_id(plan, session.id), session.url
    cycle = plan.cycles.filter(cycle_number=1).first()
    if cycle is None:  # free trial: cycle 1 opens, and is invoiced, when it ends
        return plan, f"{settings.PUBLIC_BASE_URL}/packs/success/?plan={plan_started_token(plan)}"
    try:
        session = checkout_session_create(cycle)
    except stripe.StripeError as exc:
        raise _checkout_failed(plan, cycle, exc) from exc
    purchase_store_session_id(cycle, session.id)
    return plan, session.url


# --- Finding the plan an object of Stripe's belongs to -------------------------------------


def _plan_id(stripe_subscription_id: str | None, metadata: dict, what: str) -> int | None:
    """Our plan's pk: by the Stripe subscription id we stored, else by the metadata we set
    (an event that overtook checkout.session.completed). None: not one of ours."""
    if stripe_subscription_id:
        pk = Subscription.objects.filter(stripe_subscription_id=stripe_subscription_id).values_list(
            "pk", flat=True).first()
        if pk is not None:
            return pk
    raw = (metadata or {}).get("subscription_id")
    if raw is None:
        return None
    if not str(raw).isdigit():
        raise StripeMismatch(f"{what} names plan {raw!r} in its metadata, which is not a plan id.")
    return int(raw)


def _lock_plan(pk: int, what: str) -> Subscription:
    plan = Subscription.objects.select_for_update().select_related("client").filter(pk=pk).first()
    if plan is None:
        raise StripeMismatch(f"{what} names plan #{pk}, which does not exist.")
    return plan


def _store_ids(plan: Subscription, *, subscription_id: str | None, customer_id: str | None,
               session_id: str | None = None) -> None:
    """Remember Stripe's ids on the plan; an id already set to another value is a mismatch."""
    fields = []
    for field, value in (("stripe_subscription_id", subscription_id), ("stripe_customer_id", customer_id),
                         ("stripe_checkout_session_id", session_id)):
        if not value:
            continue
        current = getattr(plan, field)
        if current and current != value:
            raise StripeMismatch(
                f"Stripe says {field.replace('_', ' ')} {value} for plan #{plan.pk}, which has {current}: "
                "nothing was applied. Check the plan and the subscription in Stripe."
            )
        if not current:
            if field != "stripe_customer_id" and Subscription.objects.filter(**{field: value}).exists():
                raise StripeMismatch(f"Stripe's {value} already belongs to another plan than #{plan.pk}.")
            setattr(plan, field, value)
            fields.append(field)
    if fields:
        _save(plan, "Stripe ids recorded", *fields)


# --- Stripe's subscription state -----------------------------------------------------------


def _sync_status(plan: Subscription, stripe_sub: dict) -> str:
    """Bring the plan's status in line with the Stripe subscription's. Never issues credits.

    Ours wins where we act first: a plan paused, resumed or cancelled here is pushed to Stripe
    by a job, so a Stripe state that has not caught up yet is not copied back.
    """
    status = stripe_sub.get("status")
    if plan.status == SubscriptionStatus.CANCELLED:
        return f"plan #{plan.pk} is cancelled here"
    if status in STRIPE_ENDED:
        subscription_cancel(subscription=plan, actor=None, reason="cancelled in Stripe")
        return f"plan #{plan.pk} cancelled (cancelled in Stripe)"
    pause = stripe_sub.get("pause_collection") or None
    if pause or status == "paused":
        if plan.status not in LIVE:
            return f"plan #{plan.pk} paused in Stripe; ours is {plan.status}"
        now = timezone.now()
        until = _aware((pause or {}).get("resumes_at")) or now + timedelta(days=MAX_PAUSE_DAYS)
        until = min(max(until, now + timedelta(minutes=1)), now + timedelta(days=MAX_PAUSE_DAYS))
        subscription_pause(subscription=plan, until=until, actor=None, reason="paused in Stripe")
        return f"plan #{plan.pk} paused (paused in Stripe)"
    if plan.status == SubscriptionStatus.PAUSED:
        return f"plan #{plan.pk} stays paused here (Stripe is told by the push job)"
    target = STATUS_FROM_STRIPE.get(status)
    fields = []
    if target is not None and plan.status != target:
        plan.status = target
        fields.append("status")
    trial_end = _aware(stripe_sub.get("trial_end"))
    if target == SubscriptionStatus.TRIALING and trial_end and plan.trial_ends_at != trial_end:
        plan.trial_ends_at = trial_end
        fields.append("trial_ends_at")
    if fields:
        _save(plan, f"Stripe: {status}", *fields)
    return f"plan #{plan.pk} {plan.status} (Stripe: {status})"


def subscription_checkout_completed(session: dict) -> Apply | None:
    """A plan's Checkout Session changed: completed (ids and status stored) or expired (the
    pending plan is cancelled). Reads the Stripe subscription before returning."""
    metadata = session.get("metadata") or {}
    if "subscription_id" not in metadata:
        return None  # a subscription Checkout of some other integration on the account
    what = f"Checkout Session {session.get('id')}"
    pk = _plan_id(None, metadata, what)
    stripe_sub = None
    if session.get("status") == "complete" and session.get("subscription"):
        stripe_sub = stripe_client().v1.subscriptions.retrieve(session["subscription"]).to_dict()

    def apply() -> str:
        plan = _lock_plan(pk, what)
        if session.get("status") == "expired":
            if plan.stripe_checkout_session_id not in (None, session.get("id")):
                raise StripeMismatch(f"{what} is not the Checkout of plan #{plan.pk}.")
            if plan.status == SubscriptionStatus.PENDING and not plan.stripe_subscription_id:
                subscription_cancel(subscription=plan, actor=None, reason="Stripe Checkout Session expired")
                return f"plan #{plan.pk} cancelled (checkout expired)"
            return f"plan #{plan.pk} is {plan.status}; checkout expired"
        if stripe_sub is None:
            return f"plan #{plan.pk} left {plan.status} (checkout {session.get('status')})"
        _store_ids(plan, subscription_id=stripe_sub["id"], customer_id=session.get("customer")
                   or stripe_sub.get("customer"), session_id=session.get("id"))
        return _sync_status(plan, stripe_sub)

    return apply


def subscription_stripe_changed(stripe_subscription: dict) -> Apply | None:
    """customer.subscription.*: sync the plan's status with Stripe's (never issues credits)."""
    what = f"Stripe subscription {stripe_subscription.get('id')}"
    pk = _plan_id(stripe_subscription.get("id"), stripe_subscription.get("metadata") or {}, what)
    if pk is None:
        return None

    def apply() -> str:
        plan = _lock_plan(pk, what)
        _store_ids(plan, subscription_id=stripe_subscription["id"], customer_id=stripe_subscription.get("customer"))
        return _sync_status(plan, stripe_subscription)

    return apply


# --- Stripe's invoices: the billing cycles ---------------------------------------------------


def subscription_invoice_changed(invoice: dict, event_type: str) -> Apply | None:
    """invoice.*: pay (or mark failed) the billing cycle this Stripe invoice bills
    (payments.subscription_cycles does the work under the event's lock)."""
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    stripe_sub_id = invoice_subscription_id(invoice)
    what = f"Stripe invoice {invoice.get('id')}"
    pk = _plan_id(stripe_sub_id, details.get("metadata") or {}, what)
    if pk is None:
        return None

    def apply() -> str:
        plan = _lock_plan(pk, what)
        _store_ids(plan, subscription_id=stripe_sub_id, customer_id=invoice.get("customer"))
        status = invoice.get("status")
        if status == "paid":
            return invoice_paid(plan, invoice)
        # Only Stripe's word that an attempt failed: an open invoice may also be a bank debit
        # still processing. Paid since (events out of order) was handled above.
        if status == "open" and event_type == "invoice.payment_failed":
            return invoice_failed(plan, invoice)
        if status in ("void", "uncollectible"):
            return invoice_settled_otherwise(plan, invoice)
        return f"plan #{plan.pk}: invoice {invoice.get('id')} is {status}, nothing to do yet"

    return apply


# --- Our changes pushed to Stripe (the push_subscription_to_stripe job) -----------------------


def _state_key(plan: Subscription) -> str:
    """One idempotency key per change of the plan's state: its latest history record."""
    latest = plan.history.order_by("-history_id").values_list("history_id", flat=True).first()
    return f"packdesk-plan-{plan.pk}-state-{latest or 0}"


def subscription_push_to_stripe(subscription_id: int) -> str:
    """Make the Stripe subscription match our plan: paused (collection voided until the pause
    ends), running (pause cleared) or cancelled. Reads Stripe first and skips what is already
    so; runs outside any transaction (a job). Returns what it did, for the job's log."""
    plan = Subscription.objects.filter(pk=subscription_id).first()
    if plan is None or not plan.stripe_subscription_id:
        return "no Stripe subscription to update"
    client = stripe_client()
    sub_id = plan.stripe_subscription_id
    stripe_sub = client.v1.subscriptions.retrieve(sub_id).to_dict()
    if stripe_sub.get("status") in STRIPE_ENDED:
        return f"{sub_id} is already cancelled in Stripe"
    options = {"idempotency_key": _state_key(plan)}
    pause = stripe_sub.get("pause_collection") or None
    if plan.status == SubscriptionStatus.CANCELLED:
        client.v1.subscriptions.cancel(sub_id)
        return f"{sub_id} cancelled in Stripe"
    if plan.status == SubscriptionStatus.PAUSED:
        resumes_at = int(plan.paused_until.timestamp())
        if pause and pause.get("behavior") == "void" and pause.get("resumes_at") == resumes_at:
            return f"{sub_id} is already paused in Stripe"
        client.v1.subscriptions.update(
            sub_id, params={"pause_collection": {"behavior": "void", "resumes_at": resumes_at}}, options=options,
        )
        return f"{sub_id} paused in Stripe until {plan.paused_until:%Y-%m-%d}"
    if plan.status in LIVE and pause:
        client.v1.subscriptions.update(sub_id, params={"pause_collection": ""}, options=options)
        return f"{sub_id} resumed in Stripe"
    return f"{sub_id} already matches plan #{plan.pk} ({plan.status})"
