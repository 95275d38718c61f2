"""Recurring plans: the agreement (Subscription) and its billing cycles (one Purchase each).

Rules (seeds 001 and 002, issue 7):
- Each cycle is a Purchase carrying the plan's snapshot, paid on its own; its credits are
  issued when it is paid (ledger.services.credits_issue_for_purchase), counting their validity
  from the cycle's start, never the payment date. A failed payment issues nothing; the same
  cycle paid later issues then, still dated from the cycle's start.
- A plan sold "to activate later" takes payments without issuing; activating it issues every
  paid cycle in order, each dated from its own cycle (one already past expiry is issued and
  expired at once, both in the history).
- Minimum commitment: the client may cancel only after that many payments; staff may always
  cancel or pause. Pausing stops new cycles and moves the expiry of the credits already given
  by the length of the pause.
- The plan keeps the snapshot taken when it was sold: editing the pack never reaches it.

Stripe (auto-debit plans) is told about pauses and cancellations after commit, by a job that
pushes the plan's state (payments.subscription_stripe.subscription_push_to_stripe), so a
Stripe outage never blocks or half-applies a staff action.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from catalog.models import CreditPack
from catalog.services import pack_price_for, pack_snapshot
from core.models import Client, StaffMember
from ledger.models import CreditGrant
from ledger.pauses import grants_shift_expiry
from ledger.services import credits_issue_for_purchase
from payments.exceptions import PackNotForSale, PaymentError
from payments.models import (
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.services import check_restriction

logger = logging.getLogger(__name__)

# A pause is at most a year: longer is a cancellation.
MAX_PAUSE_DAYS = 365
LIVE = (SubscriptionStatus.TRIALING, SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)


class SubscriptionError(PaymentError):
    """A plan change refused; str() is shown to staff or the client as it is."""


class CommitmentNotMet(SubscriptionError):
    pass


def _save(subscription: Subscription, actor, reason: str, *fields: str) -> None:
    subscription._history_user = actor
    subscription._change_reason = reason[:100]
    subscription.save(update_fields=list(fields))


def _lock(subscription: Subscription) -> Subscription:
    return Subscription.objects.select_for_update().get(pk=subscription.pk)


def payments_made(subscription: Subscription) -> int:
    """Cycles paid so far (the count the minimum commitment is measured against)."""
    return subscription.cycles.filter(status__in=(PurchaseStatus.PAID, PurchaseStatus.REFUNDED)).count()


def payments_remaining(subscription: Subscription, made: int | None = None) -> int:
    made = payments_made(subscription) if made is None else made
    return max(subscription.minimum_commitment - made, 0)


def client_may_cancel(subscription: Subscription, made: int | None = None) -> bool:
    return subscription.status != SubscriptionStatus.CANCELLED and payments_remaining(subscription, made) == 0


def _push_to_stripe_on_commit(subscription: Subscription) -> None:
    if not subscription.stripe_subscription_id:
        return
    from config.dramatiq import enqueue_on_commit
    from payments.tasks import push_subscription_to_stripe

    enqueue_on_commit(push_subscription_to_stripe, subscription.pk)


# --- Selling ---------------------------------------------------------------------------------


@transaction.atomic
def subscription_create(
    *, client: Client, pack: CreditPack, actor, staff_member: StaffMember | None = None,
    activate: bool = True, now: datetime | None = None, channel: str = PurchaseChannel.DESK,
) -> Subscription:
    """A new plan for a recurring pack, priced and snapshotted from the database.

    An auto-debit plan waits for Stripe (its first invoice.paid opens and pays cycle 1). An
    invoice plan opens cycle 1 at once (after its free trial, if the pack has one), to be paid
    at the desk, online or by invoice.
    """
    now = now or timezone.now()
    pack = CreditPack.objects.select_related("category").get(pk=pack.pk)
    if not pack.is_recurring:
        raise PackNotForSale(f"{pack.name} is not a recurring pack: sell it as a one-off purchase.")
    if not pack.published:
        raise PackNotForSale(f"{pack.name} is not published, so it cannot be sold.")
    if not pack.credit_lines.exists():
        raise PackNotForSale(f"{pack.name} has no credit lines.")
    if staff_member is not None and not pack.all_staff:
        if not pack.staff_prices.filter(staff_member=staff_member).exists():
            raise PackNotForSale(f"{pack.name} is not sold with {staff_member}.")
    check_restriction(pack, client)
    snapshot = pack_snapshot(pack)
    recurring = snapshot["recurring"]
    trial_days = recurring.get("free_trial_days") or 0
    subscription = Subscription(
        client=client, pack=pack, staff_member=staff_member, collection=recurring["collection"],
        price=pack_price_for(pack, staff_member), currency=pack.currency, snapshot=snapshot,
        minimum_commitment=recurring.get("minimum_commitment") or 0,
        activated_at=now if activate else None, created_by=actor, created_at=now,
        trial_ends_at=now + timedelta(days=trial_days) if trial_days else None,
    )
    subscription._history_user = actor
    subscription.save()
    if subscription.collection == "invoice":
        if subscription.trial_ends_at:
            subscription.status = SubscriptionStatus.TRIALING
            _save(subscription, actor, "free trial started", "status")
        else:
            cycle_open(subscription=subscription, cycle_number=1, period_start=now, actor=actor, channel=channel)
            subscription.refresh_from_db()
    return subscription


def plan_cycle_paid(purchase: Purchase, actor) -> None:
    """A cycle was paid (payments.services.purchase_mark_paid, in its transaction): a plan
    awaiting its first payment, or behind on one, is running again."""
    subscription = _lock(purchase.subscription)
    if subscription.status not in (SubscriptionStatus.PENDING, SubscriptionStatus.PAST_DUE):
        return
    if subscription.cycles.filter(status=PurchaseStatus.PENDING, period_start__lte=timezone.now()).exclude(
        pk=purchase.pk
    ).exists():
        return  # another cycle that is due is still unpaid
    subscription.status = SubscriptionStatus.ACTIVE
    _save(subscription, actor, f"cycle {purchase.cycle_number} paid", "status")


def cycle_period_end(subscription: Subscription, period_start: datetime) -> datetime:
    """When a cycle's credits stop: the end of the local day of start + the pack's validity
    (for an invoice plan the cycle lasts as long as its pack; Stripe sets auto-debit periods)."""
    from catalog.validity import expiry_for

    snap = subscription.snapshot
    return expiry_for(period_start, snap["validity_amount"], snap["validity_unit"])


@transaction.atomic
def cycle_open(
    *, subscription: Subscription, cycle_number: int, period_start: datetime,
    period_end: datetime | None = None, actor=None, channel: str = PurchaseChannel.DESK,
    allow_cancelled: bool = False,
) -> Purchase:
    """The pending purchase of one billing cycle; the same cycle asked for twice is one purchase.

    `allow_cancelled`: Stripe charged a renewal before our cancellation reached it; that money
    must still land on a cycle (for finance to keep or refund)."""
    subscription = _lock(subscription)
    existing = subscription.cycles.filter(cycle_number=cycle_number).first()
    if existing is not None:
        return existing
    if subscription.status == SubscriptionStatus.CANCELLED and not allow_cancelled:
        raise SubscriptionError(f"{subscription} is cancelled: no new cycle is opened.")
    period_end = period_end or cycle_period_end(subscription, period_start)
    purchase = Purchase(
        client_id=subscription.client_id, pack_id=subscription.pack_id,
        staff_member_id=subscription.staff_member_id, price=subscription.price,
        currency=subscription.currency, snapshot=subscription.snapshot, created_by=actor,
        channel=channel, subscription=subscription, cycle_number=cycle_number,
        period_start=period_start, period_end=period_end,
    )
    purchase._history_user = actor
    purchase.save()
    fields = []
    if subscription.current_period_start is None or period_start >= subscription.current_period_start:
        subscription.current_period_start, subscription.current_period_end = period_start, period_end
        fields += ["current_period_start", "current_period_end"]
    if subscription.status == SubscriptionStatus.TRIALING and cycle_number == 1:
        subscription.status = SubscriptionStatus.PENDING  # the trial is over: awaiting the first payment
        fields.append("status")
    if fields:
        _save(subscription, actor, f"cycle {cycle_number} opened", *fields)
    return purchase


# --- Activation ------------------------------------------------------------------------------


@transaction.atomic
def subscription_activate(*, subscription: Subscription, actor) -> list[CreditGrant]:
    """Start issuing: every cycle paid so far gets its credits now, dated from its own cycle."""
    subscription = _lock(subscription)
    if subscription.status == SubscriptionStatus.CANCELLED:
        raise SubscriptionError(f"{subscription} is cancelled, so it cannot be activated.")
    if subscription.activated_at is not None:
        raise SubscriptionError(
            f"{subscription} was activated on {timezone.localtime(subscription.activated_at):%d %b %Y}."
        )
    subscription.activated_at = timezone.now()
    _save(subscription, actor, "activated", "activated_at")
    issued: list[CreditGrant] = []
    for cycle in subscription.cycles.filter(status=PurchaseStatus.PAID).order_by("cycle_number"):
        issued += credits_issue_for_purchase(purchase=cycle, actor=actor)
    return issued


# --- Pause, resume, cancel ---------------------------------------------------------------------


def _local_days(start: datetime, end: datetime) -> int:
    """Calendar days from one moment to another in the business's time zone."""
    return (timezone.localtime(end).date() - timezone.localtime(start).date()).days


def _cycle_ids(subscription: Subscription) -> list[int]:
    return list(subscription.cycles.values_list("pk", flat=True))


@transaction.atomic
def subscription_pause(*, subscription: Subscription, until: datetime, actor, reason: str) -> Subscription:
    """Staff pause a plan until a date: no cycles meanwhile, and the credits already given
    keep their days (their expiry moves by the pause's calendar days)."""
    subscription = _lock(subscription)
    now = timezone.now()
    if not reason.strip():
        raise SubscriptionError("Give a reason for pausing the plan.")
    if subscription.status not in LIVE:
        raise SubscriptionError(
            f"{subscription} is {subscription.get_status_display().lower()}: only a running plan can be paused."
        )
    if until <= now:
        raise SubscriptionError("Pause until a date in the future.")
    if until - now > timedelta(days=MAX_PAUSE_DAYS):
        raise SubscriptionError(f"A pause lasts at most {MAX_PAUSE_DAYS} days; cancel the plan instead.")
    subscription.status = SubscriptionStatus.PAUSED
    subscription.paused_at, subscription.paused_until = now, until
    _save(subscription, actor, f"paused: {reason}", "status", "paused_at", "paused_until")
    grants_shift_expiry(
        purchase_ids=_cycle_ids(subscription), days=_local_days(now, until), actor=actor,
        note=f"Plan #{subscription.pk} paused until {timezone.localtime(until):%d %b %Y}",
        key=f"plan:{subscription.pk}:pause:{now.isoformat()}",
    )
    _push_to_stripe_on_commit(subscription)
    return subscription


@transaction.atomic
def subscription_resume(*, subscription: Subscription, actor, now: datetime | None = None) -> Subscription:
    """End a pause (early, by staff, or when its date comes: the recurrence job calls this).

    Resumed early, the credits give back the days of pause not taken."""
    subscription = _lock(subscription)
    now = now or timezone.now()
    if subscription.status != SubscriptionStatus.PAUSED:
        raise SubscriptionError(f"{subscription} is not paused.")
    unused = _local_days(now, subscription.paused_until)
    if unused > 0:
        grants_shift_expiry(
            purchase_ids=_cycle_ids(subscription), days=-unused, actor=actor,
            note=f"Plan #{subscription.pk} resumed early",
            key=f"plan:{subscription.pk}:resume:{subscription.paused_at.isoformat()}",
        )
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.paused_at = subscription.paused_until = None
    _save(subscription, actor, "resumed", "status", "paused_at", "paused_until")
    _push_to_stripe_on_commit(subscription)
    return subscription


@transaction.atomic
def subscription_cancel(
    *, subscription: Subscription, actor, reason: str, by_client: bool = False,
) -> Subscription:
    """Stop the plan: no more cycles. Credits already issued stay until they expire.

    A client may cancel only once the minimum commitment is paid; staff may always cancel.
    Unpaid cycles stay in the outstanding list for finance to collect or void.
    """
    subscription = _lock(subscription)
    if subscription.status == SubscriptionStatus.CANCELLED:
        return subscription
    if not reason.strip():
        raise SubscriptionError("Give a reason for cancelling the plan.")
    if by_client:
        made = payments_made(subscription)
        remaining = payments_remaining(subscription, made)
        if remaining:
            raise CommitmentNotMet(
                f"This plan has a minimum of {subscription.minimum_commitment} payments: "
                f"{made} made, {remaining} to go. Please contact us to cancel or pause it."
            )
    if subscription.status == SubscriptionStatus.PAUSED:
        subscription.paused_at = subscription.paused_until = None
    subscription.status = SubscriptionStatus.CANCELLED
    subscription.cancelled_at = timezone.now()
    subscription.cancel_reason = reason.strip()[:300]
    who = "client" if by_client else "staff"
    _save(subscription, actor, f"cancelled by {who}", "status", "cancelled_at", "cancel_reason",
          "paused_at", "paused_until")
    _push_to_stripe_on_commit(subscription)
    return subscription

