"""Invoice-mode recurring plans: when the next cycle opens, and billing it (seed 001, issue 7).

"Recurs when" (the plan's snapshot, never the live pack):
- pack_expires: the next cycle opens 2 days before the latest cycle's credits expire;
- no_credits_remain: the same, OR as soon as every credit of the latest cycle is used, 1 day
  after the end of the client's last session that used one (unlimited lines never run out).

"The latest cycle's credits expire" is the latest expiry of its grants that are not voided
(grant expiries move when a plan is paused, so a pause delays the next bill by as much); while
the cycle has no dated grants (unpaid, not activated yet, or valid from a first booking not
made yet) it is the cycle's period_end.

Which plans: invoice plans that are active or past_due, activated or not (a plan waiting for
activation still pays each cycle; seed 002). Not a pending plan (its first payment never came:
staff settle or cancel it), and never a plan whose latest cycle is still pending: a client does
not get a second bill while the first is unpaid. A later cycle voided by finance (cancelled
purchase) does not block: it is skipped and the next one opens on time. Paused and cancelled
plans get nothing; a pause whose date has passed is ended first (subscription_resume, any
collection), then the plan is looked at like any other. Trialing invoice plans open cycle 1
when the trial ends (its period starts then).

The new cycle's period starts where the old credits end (their expiry) when it opens for
expiry, or now when it opens because the credits are used up (or when the job runs after the
expiry, so a client is never billed for a gap they were not covered).

Billing: after the cycle commits, a Stripe invoice (payments.invoices.invoice_issue_stripe;
Stripe emails it; a refusal stays on the Invoice row for finance) and our own "payment due"
email, once per cycle (dedupe key). A crash between the two is caught up by the next run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.db import transaction
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform, KeyTransform
from django.db.models.functions import Coalesce
from django.utils import timezone

from catalog.models import RecurringCollection, RecursWhen
from core.models import BusinessSettings
from ledger.models import CreditGrant, EntryKind, GrantState, LedgerEntry
from payments.models import Invoice, Purchase, PurchaseStatus, Subscription, SubscriptionStatus
from payments.subscriptions import SubscriptionError, cycle_open, subscription_resume

logger = logging.getLogger(__name__)

BEFORE_EXPIRY = timedelta(days=2)
AFTER_LAST_SESSION = timedelta(days=1)
# Plans that recur. Pending (auto-debit waiting for Stripe), trialing, paused, cancelled do not.
RECURRING = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE)
# A job-opened cycle left without its bill by a crash is billed by the next run within this.
CATCH_UP = timedelta(days=7)

PAYMENTS_MADE = (PurchaseStatus.PAID, PurchaseStatus.REFUNDED)
REASON_EXPIRY = "expiry"
REASON_USED_UP = "used_up"


def _latest_cycle() -> QuerySet[Purchase]:
    return Purchase.objects.filter(subscription_id=OuterRef("pk")).order_by("-cycle_number")


def _cycle_grants() -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(purchase_id=OuterRef("latest_id"))


def _last_use() -> Subquery:
    """When the client last used a credit of the latest cycle: the end of that session (or the
    moment of use, for a credit used without a booking). A use later given back does not count."""
    returned = LedgerEntry.objects.filter(reverses_id=OuterRef("pk"), kind=EntryKind.RETURNED)
    uses = (
        LedgerEntry.objects.filter(grant__purchase_id=OuterRef("latest_id"), kind=EntryKind.USED)
        .exclude(Exists(returned))
        .annotate(at=Coalesce("booking__session__ends_at", "created_at"))
        .order_by(F("at").desc())
        .values("at")[:1]
    )
    return Subquery(uses, output_field=DateTimeField())


def with_latest_cycle(plans: QuerySet[Subscription]) -> QuerySet[Subscription]:
    """Annotate plans with their latest cycle, when its credits run out and the payments made.

    The latest cycle, its credits' expiry, whether any credit is left and the last session that
    used one are correlated subqueries: one SQL query however many plans (also the admin list's).
    """
    latest = _latest_cycle()
    expiry = (
        _cycle_grants().exclude(state=GrantState.VOIDED).filter(expires_at__isnull=False)
        .order_by(F("expires_at").desc()).values("expires_at")[:1]
    )
    credit_left = _cycle_grants().filter(state=GrantState.ACTIVE).filter(Q(unlimited=True) | Q(remaining__gt=0))
    # Payments made (what the minimum commitment counts, as payments.subscriptions.payments_made).
    paid = (
        Purchase.objects.filter(subscription_id=OuterRef("pk"), status__in=PAYMENTS_MADE)
        .values("subscription_id").annotate(n=Count("pk")).values("n")
    )
    return plans.annotate(
        made=Coalesce(Subquery(paid, output_field=IntegerField()), 0),
        recurs_when=KeyTextTransform("recurs_when", KeyTransform("recurring", "snapshot")),
        latest_id=Subquery(latest.values("pk")[:1]),
        latest_number=Subquery(latest.values("cycle_number")[:1]),
        latest_status=Subquery(latest.values("status")[:1]),
        latest_period_end=Subquery(latest.values("period_end")[:1]),
    ).annotate(
        credits_expire_at=Coalesce(Subquery(expiry, output_field=DateTimeField()), F("latest_period_end")),
        has_grants=Exists(_cycle_grants()),
        credit_left=Exists(credit_left),
        last_use_at=_last_use(),
    )


def plans_with_latest_cycle() -> QuerySet[Subscription]:
    """Live invoice plans whose latest cycle is settled (paid, refunded or voided), annotated."""
    live = Subscription.objects.filter(collection=RecurringCollection.INVOICE, status__in=RECURRING)
    return with_latest_cycle(live).filter(latest_id__isnull=False).exclude(latest_status=PurchaseStatus.PENDING)


def next_cycle_at(plan: Subscription) -> datetime | None:
    """When an annotated invoice plan's next cycle opens (given what is known now)."""
    if plan.latest_id is None or plan.latest_status == PurchaseStatus.PENDING:
        return None
    at = plan.credits_expire_at - BEFORE_EXPIRY
    if (
        plan.recurs_when == RecursWhen.NO_CREDITS_REMAIN and plan.has_grants and not plan.credit_left
        and plan.last_use_at is not None
    ):
        at = min(at, plan.last_use_at + AFTER_LAST_SESSION)
    return at


def subscription_cycles_due(now: datetime | None = None) -> QuerySet[Subscription]:
    """The plans whose next cycle should open now, each annotated with `due_reason`."""
    now = now or timezone.now()
    by_expiry = Q(credits_expire_at__lte=now + BEFORE_EXPIRY)
    # Used up: there were credits, none is left, and a day has passed since the last session.
    used_up = Q(
        recurs_when=RecursWhen.NO_CREDITS_REMAIN.value, has_grants=True, credit_left=False,
        last_use_at__lte=now - AFTER_LAST_SESSION,
    )
    return (
        plans_with_latest_cycle()
        .filter(by_expiry | used_up)
        .annotate(due_reason=Case(When(by_expiry, then=Value(REASON_EXPIRY)), default=Value(REASON_USED_UP)))
        .select_related("client")
        .order_by("pk")
    )


@dataclass
class RecurrenceResult:
    resumed: list[int] = field(default_factory=list)
    opened: list[int] = field(default_factory=list)  # purchase ids of the cycles opened
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.resumed)} plans resumed, {len(self.opened)} cycles opened, {len(self.skipped)} skipped"


def _resume_due(now: datetime, result: RecurrenceResult) -> None:
    for pk in Subscription.objects.filter(status=SubscriptionStatus.PAUSED, paused_until__lte=now).values_list(
        "pk", flat=True
    ):
        try:
            subscription_resume(subscription=Subscription(pk=pk), actor=None, now=now)
        except SubscriptionError as exc:  # resumed meanwhile by staff or Stripe
            result.skipped.append(f"plan #{pk}: {exc}")
        else:
            result.resumed.append(pk)


def _open(subscription: Subscription, *, cycle_number: int, period_start: datetime, after: int) -> Purchase | None:
    """Open one cycle under the plan's lock, if nothing changed since it was found due."""
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        if locked.status not in (*RECURRING, SubscriptionStatus.TRIALING):
            return None
        if locked.cycles.filter(cycle_number__gt=after).exists():
            return None  # another run (or Stripe) got there first
        purchase = cycle_open(
            subscription=locked, cycle_number=cycle_number, period_start=period_start, actor=None,
        )
        transaction.on_commit(partial(cycle_bill, purchase.pk))
    return purchase


def subscription_cycles_open_due(now: datetime | None = None) -> RecurrenceResult:
    """Resume pauses that ended, open every due cycle (each in its own transaction) and bill it.

    Idempotent: a plan whose new cycle is open is pending, so it is not due again.
    """
    now = now or timezone.now()
    result = RecurrenceResult()
    _resume_due(now, result)
    trials = Subscription.objects.filter(
        collection=RecurringCollection.INVOICE, status=SubscriptionStatus.TRIALING, trial_ends_at__lte=now,
    ).exclude(Exists(Purchase.objects.filter(subscription_id=OuterRef("pk"))))
    for plan in trials.order_by("pk"):
        purchase = _safely(result, plan, lambda p=plan: _open(
            p, cycle_number=1, period_start=p.trial_ends_at, after=0,
        ))
        if purchase is not None:
            result.opened.append(purchase.pk)
    for plan in subscription_cycles_due(now):
        if plan.due_reason == REASON_EXPIRY:
            start = max(plan.credits_expire_at, now)
        else:
            start = now
        purchase = _safely(result, plan, lambda p=plan, s=start: _open(
            p, cycle_number=p.latest_number + 1, period_start=s, after=p.latest_number,
        ))
        if purchase is not None:
            result.opened.append(purchase.pk)
    _catch_up_bills(now)
    return result


def _safely(result: RecurrenceResult, plan: Subscription, open_cycle) -> Purchase | None:
    # One plan's refusal must not stop the others' cycles.
    try:
        return open_cycle()
    except SubscriptionError as exc:
        result.skipped.append(f"plan #{plan.pk}: {exc}")
        logger.warning("recurring plan #%s: no cycle opened: %s", plan.pk, exc)
        return None


def _catch_up_bills(now: datetime) -> None:
    """Job-opened cycles (created_by empty) still pending with no invoice at all: the bill was
    lost between the commit and the invoice (a crash). Bill them now."""
    unbilled = Purchase.objects.filter(
        subscription__collection=RecurringCollection.INVOICE, status=PurchaseStatus.PENDING,
        created_by__isnull=True, created_at__gte=now - CATCH_UP, created_at__lt=now - timedelta(minutes=10),
        stripe_checkout_session_id__isnull=True,  # being paid through Checkout: never bill it twice
    ).exclude(subscription__status=SubscriptionStatus.CANCELLED).exclude(
        Exists(Invoice.objects.filter(purchase_id=OuterRef("pk")))
    )
    for pk in unbilled.values_list("pk", flat=True):
        cycle_bill(pk)


# --- Billing a cycle ------------------------------------------------------------------------


def cycle_bill(purchase_id: int) -> Invoice | None:
    """The bill for a cycle the job opened: a Stripe invoice (Stripe emails it) and our email.

    Never inside a transaction (it calls Stripe). A Stripe refusal is kept on the Invoice row
    for finance; the client is still told payment is due (they can pay at the desk).
    """
    from payments.exceptions import PaymentError
    from payments.invoices import invoice_issue_stripe

    purchase = Purchase.objects.select_related("client", "subscription").filter(pk=purchase_id).first()
    if purchase is None or purchase.status != PurchaseStatus.PENDING:
        return None
    invoice = None
    try:
        invoice = invoice_issue_stripe(purchase=purchase, actor=None)
    except PaymentError as exc:
        logger.warning("cycle purchase #%s: no Stripe invoice: %s", purchase.pk, exc)
    invoice = invoice or purchase.invoices.order_by("-created_at", "-pk").first()
    payment_due_email(purchase, invoice)
    return invoice


def payment_due_email(purchase: Purchase, invoice: Invoice | None) -> None:
    """Tell the client their next cycle is ready to pay; once per cycle purchase."""
    from core.emails import email_send

    client = purchase.client
    if not client.email:
        return
    due_at = invoice.due_at if invoice is not None and invoice.due_at else (
        timezone.now() + timedelta(days=BusinessSettings.current().invoice_days_until_due)
    )
    email_send(
        to=client.email, template="plan_payment_due", client=client, related=purchase,
        dedupe_key=f"plan-payment-due:{purchase.pk}",
        context={
            "pack_name": purchase.snapshot.get("name", ""),
            "amount": purchase.price, "currency": purchase.currency,
            "cycle_number": purchase.cycle_number,
            "period_start": purchase.period_start, "period_end": purchase.period_end,
            "due_at": due_at,
            "invoice_number": invoice.number if invoice is not None else "",
            "invoice_url": invoice.hosted_invoice_url if invoice is not None else "",
        },
    )
