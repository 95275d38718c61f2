"""Reconciliation: Stripe's balance transactions for a period against our purchases and refunds.

A run reads Stripe first, outside any transaction (the balance transactions of the period
widened by a day each side, so a charge made just before midnight still matches a payment we
recorded just after), then matches them with a few set-based queries, and writes every line in
one transaction at the end: a run either has all its lines or, when Stripe fails, none.

Lines are recorded only for balance transactions inside [period_start, period_end), plus our
own records Stripe lacks. A line's `mismatch` names what finance must look at; a blank one is
matched or informational (payouts, fees, disputes). `reconciliation_resolve` settles a mismatch:
issue the credits Stripe was paid for, void credits nobody paid for, or explain it with a note
(payments.reconciliation_resolve).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import stripe
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ledger.models import CreditGrant, EntrySource
from payments.exceptions import PaymentError
from payments.models import (
    MismatchKind,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationStatus,
    Refund,
    RefundStatus,
)
from payments.money import from_minor, to_minor
from payments.stripe_gateway import stripe_client

logger = logging.getLogger(__name__)

MATCH_MARGIN = timedelta(days=1)
PAGE_SIZE = 100
CHARGE_TYPES = ("charge", "payment")
REFUND_TYPES = ("refund", "payment_refund")
PAID = (PurchaseStatus.PAID, PurchaseStatus.REFUNDED)
CREDIT_SOURCES = (EntrySource.PURCHASE, EntrySource.RENEWAL)
# What our side learns about a payment intent Stripe's balance did not show in the window.
MISSING = "missing"


def _id(value) -> str | None:
    """Stripe gives a related object as its id, or as the object itself when expanded."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


def _at(timestamp) -> datetime | None:
    return datetime.fromtimestamp(int(timestamp), UTC) if timestamp is not None else None


def _is_dispute(bt: dict, source: dict) -> bool:
    # Stripe books a dispute as an "adjustment" whose source is the dispute (dp_/du_ ids).
    return (
        bt.get("type") == "dispute" or bt.get("reporting_category") in ("dispute", "dispute_reversal")
        or source.get("object") == "dispute" or str(source.get("id", "")).startswith(("dp_", "du_"))
    )


def _minor(amount, currency: str) -> int | None:
    try:
        return to_minor(amount, currency)
    except (ValueError, TypeError):
        return None


# --- Reading Stripe -------------------------------------------------------------------------


def _list_balance_transactions(start: datetime, end: datetime) -> list[dict]:
    params = {
        "created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())},
        "limit": PAGE_SIZE, "expand": ["data.source"],
    }
    listed = stripe_client().v1.balance_transactions.list(params=params).auto_paging_iter()
    return [bt.to_dict() for bt in listed]


def _intent_states(intent_ids: Iterable[str]) -> dict[str, str]:
    """Charge status of payment intents the window did not show: succeeded, failed, pending…
    or MISSING when Stripe has no such payment (a 404). One read each: only our odd ones."""
    client, states = stripe_client(), {}
    for intent_id in sorted(set(intent_ids)):
        try:
            intent = client.v1.payment_intents.retrieve(intent_id).to_dict()
        except stripe.InvalidRequestError as exc:
            if exc.http_status != 404:
                raise
            states[intent_id] = MISSING
            continue
        charge = intent.get("latest_charge")
        if charge and not isinstance(charge, dict):
            charge = client.v1.charges.retrieve(charge).to_dict()
        states[intent_id] = (charge or {}).get("status") or intent.get("status") or MISSING
    return states


def _fill_dispute_intents(bts: list[dict]) -> None:
    """A dispute may name only its charge (Stripe's own example does): read the charge's payment."""
    client = stripe_client()
    for bt in bts:
        source = bt.get("source")
        if isinstance(source, dict) and _is_dispute(bt, source) and not source.get("payment_intent"):
            charge = source.get("charge")
            if charge and not isinstance(charge, dict):
                charge = client.v1.charges.retrieve(charge).to_dict()
            source["payment_intent"] = _id((charge or {}).get("payment_intent"))


# --- Matching ------------------------------------------------------------------------------


@dataclass
class _Ours:
    """Our records for every Stripe id in the window, each loaded in one query."""

    by_intent: dict[str, Purchase]
    by_id: dict[int, Purchase]
    refunds_by_stripe_id: dict[str, Refund]
    refunds_by_id: dict[int, Refund]
    credited: set[int]  # purchases holding credits (not only a reservation)
    lines: list[ReconciliationLine] = field(default_factory=list)
    flagged: set[tuple[int, str]] = field(default_factory=set)  # (purchase, kind) already listed

    def add(self, line: ReconciliationLine) -> None:
        if line.mismatch and line.purchase_id:
            self.flagged.add((line.purchase_id, line.mismatch))
        self.lines.append(line)


def _metadata_pk(obj: dict, key: str) -> int | None:
    raw = str((obj.get("metadata") or {}).get(key) or "")
    return int(raw) if raw.isdigit() else None


def _load_ours(sources: list[dict]) -> _Ours:
    intents = {i for s in sources for i in [_id(s.get("payment_intent"))] if i}
    purchase_ids = {pk for s in sources for pk in [_metadata_pk(s, "purchase_id")] if pk}
    refund_ids = {pk for s in sources for pk in [_metadata_pk(s, "refund_id")] if pk}
    stripe_ids = {s["id"] for s in sources if s.get("id")}
    purchases = Purchase.objects.select_related("subscription").filter(
        Q(stripe_payment_intent_id__in=intents) | Q(pk__in=purchase_ids)
    )
    purchases = {p.pk: p for p in purchases}
    refunds = Refund.objects.filter(Q(stripe_refund_id__in=stripe_ids) | Q(pk__in=refund_ids))
    refunds = {r.pk: r for r in refunds}
    missing = {r.purchase_id for r in refunds.values()} - purchases.keys()
    purchases.update({p.pk: p for p in Purchase.objects.select_related("subscription").filter(pk__in=missing)})
    for refund in refunds.values():
        refund.purchase = purchases[refund.purchase_id]
    return _Ours(
        by_intent={p.stripe_payment_intent_id: p for p in purchases.values() if p.stripe_payment_intent_id},
        by_id=purchases,
        refunds_by_stripe_id={r.stripe_refund_id: r for r in refunds.values() if r.stripe_refund_id},
        refunds_by_id=refunds,
        credited=_credited(purchases.keys()),
    )


def _credited(purchase_ids: Iterable[int]) -> set[int]:
    grants = CreditGrant.objects.filter(purchase_id__in=list(purchase_ids), reservation=False)
    return set(grants.values_list("purchase_id", flat=True).distinct())


def _waits_for_activation(purchase: Purchase) -> bool:
    return purchase.subscription_id is not None and purchase.subscription.activated_at is None


def _differs(purchase_minor: int | None, purchase_currency: str, amount, currency: str) -> bool:
    return amount != purchase_minor or str(currency or "").lower() != purchase_currency.lower()


def _match_charge(line: ReconciliationLine, charge: dict, ours: _Ours) -> None:
    intent = _id(charge.get("payment_intent"))
    amount = charge.get("amount", line.amount)
    currency = charge.get("currency") or line.currency
    status = charge.get("status") or "succeeded"
    purchase = ours.by_intent.get(intent) if intent else None
    by_metadata = purchase is None
    if by_metadata:
        purchase = ours.by_id.get(_metadata_pk(charge, "purchase_id"))
    if purchase is None:
        if status == "succeeded":
            line.mismatch = MismatchKind.PAID_NO_CREDITS
            line.detail = f"Stripe took {from_minor(amount, currency)} {currency.upper()}: no purchase of ours."
        else:
            line.detail = f"Charge is {status}: no money was taken, and it is no purchase of ours."
        return
    line.purchase, line.our_amount, line.our_currency = purchase, purchase.price, purchase.currency
    credited = purchase.pk in ours.credited
    state = purchase.get_status_display().lower()
    if status != "succeeded":
        if credited:
            line.mismatch = MismatchKind.CREDITS_NO_PAYMENT
            line.detail = f"Stripe's charge is {status}, but purchase #{purchase.pk} holds credits."
        else:
            line.detail = f"Charge is {status}: no money taken; purchase #{purchase.pk} is {state}."
    elif _differs(_minor(purchase.price, purchase.currency), purchase.currency, amount, currency):
        line.mismatch = MismatchKind.AMOUNT_DIFFERS
        line.detail = (
            f"Stripe took {from_minor(amount, currency)} {currency.upper()}, purchase #{purchase.pk} "
            f"costs {purchase.price} {purchase.currency} ({state})."
        )
    elif by_metadata:
        line.mismatch = MismatchKind.PAID_NO_CREDITS
        line.detail = (
            f"Stripe took this payment for purchase #{purchase.pk}, which is {state} here"
            + (" and already paid otherwise: refund it in Stripe." if purchase.status in PAID else ".")
        )
    elif purchase.status not in PAID:
        line.mismatch = MismatchKind.PAID_NO_CREDITS
        line.detail = f"Stripe has the money, but purchase #{purchase.pk} is {state}."
    elif not credited and not _waits_for_activation(purchase):
        line.mismatch = MismatchKind.PAID_NO_CREDITS
        line.detail = f"Purchase #{purchase.pk} is paid, but no credits were issued for it."
    elif not credited:
        line.detail = f"Purchase #{purchase.pk}: its plan is not activated yet, so its credits wait."


def _match_refund(line: ReconciliationLine, stripe_refund: dict, ours: _Ours) -> None:
    refund = ours.refunds_by_stripe_id.get(stripe_refund.get("id"))
    if refund is None:
        candidate = ours.refunds_by_id.get(_metadata_pk(stripe_refund, "refund_id"))
        if candidate is not None and candidate.stripe_refund_id in (None, stripe_refund.get("id")):
            refund = candidate
    amount = stripe_refund.get("amount", -(line.amount or 0))
    currency = stripe_refund.get("currency") or line.currency
    if stripe_refund.get("status") in ("failed", "canceled"):
        line.detail = f"Stripe's refund is {stripe_refund['status']}: no money went back."
    intent = _id(stripe_refund.get("payment_intent"))
    line.purchase = refund.purchase if refund else ours.by_intent.get(intent)
    if refund is None:
        if not line.detail:
            line.mismatch = MismatchKind.REFUND_MISSING
            about = f"purchase #{line.purchase.pk}" if line.purchase else f"payment {intent or '(unknown)'}"
            line.detail = f"Stripe refunded {from_minor(amount, currency)} {currency.upper()} of {about}; no refund of ours."
        return
    line.refund, line.our_amount, line.our_currency = refund, -refund.amount, refund.currency
    if line.detail:
        return
    if refund.applied_at is None or refund.status != RefundStatus.SUCCEEDED:
        line.mismatch = MismatchKind.REFUND_MISSING
        line.detail = f"Refund #{refund.pk} is {refund.get_status_display().lower()} here: not applied to the credits."
    elif _differs(_minor(refund.amount, refund.currency), refund.currency, amount, currency):
        line.mismatch = MismatchKind.AMOUNT_DIFFERS
        line.detail = (
            f"Stripe refunded {from_minor(amount, currency)} {currency.upper()}, refund #{refund.pk} "
            f"is {refund.amount} {refund.currency}."
        )


def _match_dispute(line: ReconciliationLine, dispute: dict, ours: _Ours) -> None:
    purchase = ours.by_intent.get(_id(dispute.get("payment_intent")))
    line.purchase = purchase
    reason = f" ({dispute['reason']})" if dispute.get("reason") else ""
    if purchase is None:
        line.detail = f"Dispute{reason} on charge {_id(dispute.get('charge')) or '?'}: no purchase of ours."
    elif not purchase.disputed:
        line.detail = f"Dispute{reason}: purchase #{purchase.pk} is not flagged disputed here."
    else:
        line.detail = f"Dispute{reason} on purchase #{purchase.pk} (flagged)."


def _stripe_line(bt: dict) -> ReconciliationLine:
    return ReconciliationLine(
        balance_transaction_id=bt["id"], type=str(bt.get("type") or "")[:40],
        source_id=_id(bt.get("source")) or "", occurred_at=_at(bt.get("created")),
        amount=bt.get("amount"), fee=bt.get("fee"), net=bt.get("net"),
        currency=str(bt.get("currency") or "").upper(),
    )


def _match_stripe(bts: list[dict], ours: _Ours, start: datetime, end: datetime) -> None:
    for bt in bts:
        created = _at(bt.get("created"))
        if created is None or not start <= created < end:
            continue
        line, source = _stripe_line(bt), bt.get("source") if isinstance(bt.get("source"), dict) else {}
        if bt.get("type") in CHARGE_TYPES:
            _match_charge(line, source, ours)
        elif bt.get("type") in REFUND_TYPES:
            _match_refund(line, source, ours)
        elif _is_dispute(bt, source):
            _match_dispute(line, source, ours)
        else:
            line.detail = str(bt.get("description") or bt.get("reporting_category") or "")[:500]
        ours.add(line)


def _ours_line(kind: str, detail: str, *, at, purchase=None, refund=None, amount=None, currency="", source=""):
    return ReconciliationLine(
        type="ours", source_id=source or "", occurred_at=at, purchase=purchase, refund=refund,
        our_amount=amount, our_currency=currency, mismatch=kind, detail=detail,
    )


def _match_ours(bts: list[dict], ours: _Ours, start: datetime, end: datetime) -> None:
    """Our Stripe payments, refunds and credits of the period that Stripe's balance lacks."""
    charge_states = {
        _id(bt["source"].get("payment_intent")): bt["source"].get("status") or "succeeded"
        for bt in bts if bt.get("type") in CHARGE_TYPES and isinstance(bt.get("source"), dict)
    }
    seen_refunds = {_id(bt.get("source")) for bt in bts if bt.get("type") in REFUND_TYPES}
    payments = list(
        Payment.objects.select_related("purchase").filter(
            method=PaymentMethod.STRIPE, received_at__gte=start, received_at__lt=end, amount__gt=0,
        ).order_by("received_at", "pk")
    )
    credited = list(
        Purchase.objects.filter(
            pk__in=CreditGrant.objects.filter(
                reservation=False, source__in=CREDIT_SOURCES, created_at__gte=start, created_at__lt=end,
            ).values("purchase_id"),
            price__gt=0,
        ).exclude(status=PurchaseStatus.CANCELLED).prefetch_related("payments").order_by("pk")
    )
    intent_of = {p.purchase_id: p.purchase.stripe_payment_intent_id or p.reference for p in payments}
    for purchase in credited:
        payment = next(iter(purchase.payments.all()), None)
        if payment is not None and payment.method == PaymentMethod.STRIPE:
            intent_of[purchase.pk] = purchase.stripe_payment_intent_id or payment.reference
    unseen = {i for i in intent_of.values() if i and i not in charge_states}
    states = {**charge_states, **_intent_states(unseen)}

    def add(kind, purchase, detail, at, amount, currency, source=""):
        if (purchase.pk, kind) not in ours.flagged:
            ours.add(_ours_line(kind, detail, at=at, purchase=purchase, amount=amount, currency=currency, source=source))

    for payment in payments:
        intent = intent_of[payment.purchase_id]
        if not intent or states.get(intent) == MISSING:
            add(MismatchKind.NOT_IN_STRIPE, payment.purchase,
                f"Our Stripe payment {intent or '(no reference)'} of purchase #{payment.purchase_id} is not in Stripe.",
                payment.received_at, payment.amount, payment.currency, intent)
    for refund in Refund.objects.select_related("purchase").filter(
        method=PaymentMethod.STRIPE, status=RefundStatus.SUCCEEDED, created_at__gte=start, created_at__lt=end,
    ).order_by("created_at", "pk"):
        if refund.stripe_refund_id not in seen_refunds:
            ours.add(_ours_line(
                MismatchKind.NOT_IN_STRIPE, f"Our refund #{refund.pk} ({refund.stripe_refund_id or 'no Stripe id'}) "
                "is not in Stripe's balance.", at=refund.created_at, purchase=refund.purchase, refund=refund,
                amount=-refund.amount, currency=refund.currency, source=refund.stripe_refund_id,
            ))
    for purchase in credited:
        payment, intent = next(iter(purchase.payments.all()), None), intent_of.get(purchase.pk)
        if payment is None:
            detail = f"Purchase #{purchase.pk} holds credits but has no payment recorded."
        elif intent and states.get(intent) not in (None, MISSING, "succeeded"):
            detail = f"Purchase #{purchase.pk} holds credits, but its Stripe payment {intent} is {states[intent]}."
        else:
            continue
        add(MismatchKind.CREDITS_NO_PAYMENT, purchase, detail, purchase.paid_at or purchase.created_at,
            purchase.price, purchase.currency, intent or "")


# --- The run -------------------------------------------------------------------------------


def _finish(run: ReconciliationRun, **fields) -> ReconciliationRun:
    fields["finished_at"] = timezone.now()
    ReconciliationRun.objects.filter(pk=run.pk).update(**fields)
    run.refresh_from_db()
    return run


def reconciliation_run(*, period_start: datetime, period_end: datetime, actor=None) -> ReconciliationRun:
    """Reconcile Stripe with Packdesk for [period_start, period_end). Never inside a transaction:
    it calls Stripe. A Stripe error leaves the run failed, with its text and no lines."""
    if timezone.is_naive(period_start) or timezone.is_naive(period_end):
        raise ValueError("The reconciliation period needs time-zone-aware datetimes.")
    if period_end <= period_start:
        raise PaymentError("The period must end after it starts.")
    run = ReconciliationRun.objects.create(period_start=period_start, period_end=period_end, created_by=actor)
    try:
        bts = _list_balance_transactions(period_start - MATCH_MARGIN, period_end + MATCH_MARGIN)
        _fill_dispute_intents(bts)
        ours = _load_ours([bt["source"] for bt in bts if isinstance(bt.get("source"), dict)])
        _match_stripe(bts, ours, period_start, period_end)
        _match_ours(bts, ours, period_start, period_end)
    except stripe.StripeError as exc:
        logger.warning("reconciliation run #%s failed: %s", run.pk, exc)
        return _finish(run, status=ReconciliationStatus.FAILED, error=f"Stripe failed: {exc.user_message or exc}")
    except Exception as exc:
        _finish(run, status=ReconciliationStatus.FAILED, error=f"{exc.__class__.__name__}: {exc}")
        raise
    with transaction.atomic():
        for line in ours.lines:
            line.run = run
        ReconciliationLine.objects.bulk_create(ours.lines, batch_size=500)
        return _finish(
            run, status=ReconciliationStatus.DONE, error="",
            transactions=sum(1 for line in ours.lines if line.balance_transaction_id),
            mismatches=sum(1 for line in ours.lines if line.mismatch),
        )


def period_of_days(first: date, last: date) -> tuple[datetime, datetime]:
    """Local days first..last (both included) as [start, end): a day is 23 or 25 hours across DST."""
    start = timezone.make_aware(datetime.combine(first, time.min))
    return start, timezone.make_aware(datetime.combine(last + timedelta(days=1), time.min))


def previous_local_day() -> tuple[datetime, datetime]:
    """Yesterday in the business's time zone."""
    yesterday = timezone.localdate() - timedelta(days=1)
    return period_of_days(yesterday, yesterday)


def reconciliation_run_daily() -> ReconciliationRun:
    """The scheduler's run of yesterday; once it has succeeded, sending the job again does nothing."""
    start, end = previous_local_day()
    done = ReconciliationRun.objects.filter(
        period_start=start, period_end=end, status=ReconciliationStatus.DONE, created_by__isnull=True,
    ).first()
    return done or reconciliation_run(period_start=start, period_end=end, actor=None)

# --- The CSV export ------------------------------------------------------------------------

CSV_COLUMNS = (
    "line", "occurred_at", "type", "balance_transaction", "source", "currency", "stripe_amount",
    "stripe_fee", "stripe_net", "purchase", "refund", "our_amount", "our_currency", "mismatch",
    "detail", "resolution", "resolution_note", "resolved_by", "resolved_at",
)


def reconciliation_csv_rows(run: ReconciliationRun) -> Iterator[list]:
    """The run's lines in decimal major units, then a totals row per currency (streamed)."""
    yield list(CSV_COLUMNS)
    totals: dict[str, list] = defaultdict(lambda: [Decimal(0), Decimal(0), Decimal(0), Decimal(0), 0])
    lines = run.lines.select_related("resolved_by").order_by("occurred_at", "pk")
    for line in lines.iterator(chunk_size=1000):
        stripe_figures = [from_minor(v, line.currency) if v is not None else None for v in (line.amount, line.fee, line.net)]
        if line.balance_transaction_id:
            total = totals[line.currency]
            total[4] += 1
            for i, value in enumerate(stripe_figures):
                total[i] += value or 0
        if line.our_amount is not None:
            totals[line.our_currency][3] += line.our_amount
        local = timezone.localtime
        yield [
            line.pk, local(line.occurred_at).isoformat() if line.occurred_at else "", line.type,
            line.balance_transaction_id, line.source_id, line.currency, *("" if v is None else v for v in stripe_figures),
            line.purchase_id or "", line.refund_id or "", "" if line.our_amount is None else line.our_amount,
            line.our_currency, MismatchKind(line.mismatch).label if line.mismatch else "", line.detail,
            line.get_resolution_display() if line.mismatch else "", line.resolution_note,
            line.resolved_by.get_username() if line.resolved_by else "",
            local(line.resolved_at).isoformat() if line.resolved_at else "",
        ]
    for currency in sorted(totals):
        amount, fee, net, ours, count = totals[currency]
        yield ["TOTAL", "", "", f"{count} balance transactions", "", currency, amount, fee, net, "", "", ours,
               currency, "", "", "", "", "", ""]

