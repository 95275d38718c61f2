"""Balances per client per session type as of a date, and outstanding payments with ageing.

Balances are summed from the ledger (not the cached ClientBalance rows), so they can be taken
at any past date: the sum of every entry created before the end of that local day, one GROUP BY
over the entries. Only non-zero balances are listed. Unlimited grants move no credits, so a
membership shows no balance here (deferred revenue values it).

Outstanding payments are payments.selectors.outstanding_purchases() (unpaid desk sales and plan
cycles), aged by how long each has been due, in local days, as of today: due since its open
invoice's due date, else its plan cycle's start, else the sale itself.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import (
    Case, CharField, Count, DateField, OuterRef, Q, QuerySet, Subquery, Sum, Value, When,
)
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from ledger.models import LedgerEntry
from payments.models import Invoice, InvoiceStatus, Purchase
from payments.selectors import outstanding_purchases
from reports.filters import ReportFilters

BALANCE_HEADER = ("client_id", "client", "email", "session_type", "balance")


def balances_as_of(at: datetime, filters: ReportFilters) -> QuerySet:
    """(client_id, client, email, session type, balance) tuples, non-zero only, by client name.

    Narrowed by session type and category; `at` is an exclusive moment (reports.filters.as_of_moment).
    """
    entries = LedgerEntry.objects.filter(created_at__lt=at)
    if filters.session_type_id:
        entries = entries.filter(session_type_id=filters.session_type_id)
    if filters.category_id:
        entries = entries.filter(session_type__category_id=filters.category_id)
    return (
        entries.order_by()
        .values("client_id", "session_type_id")
        .annotate(balance=Sum("amount"))
        .filter(~Q(balance=0))
        .order_by("client__name", "client_id", "session_type__name")
        .values_list("client_id", "client__name", "client__email", "session_type__name", "balance")
    )


def balance_totals(at: datetime, filters: ReportFilters) -> dict:
    """Rows, clients and credits of the balances report: one aggregate over the grouped query."""
    return balances_as_of(at, filters).aggregate(
        rows=Count("client_id"), clients=Count("client_id", distinct=True),
        credits=Coalesce(Sum("balance"), 0),
    )


# --- Outstanding payments and ageing ---------------------------------------------------------

NOT_DUE = "not yet due"
BUCKETS = ("0-30", "31-60", "61-90", "90+")
OUTSTANDING_HEADER = (
    "purchase_id", "created", "client", "email", "pack", "cycle", "staff_member", "due_date",
    "days_due", "ageing", "amount", "currency", "sessions_booked",
)


def _bucket(today: date) -> Case:
    """The ageing bucket from the due date, compared with cut-off dates (the same on every database)."""
    due = "due_date"
    return Case(
        When(**{f"{due}__gt": today}, then=Value(NOT_DUE)),
        When(**{f"{due}__gte": today - timedelta(days=30)}, then=Value(BUCKETS[0])),
        When(**{f"{due}__gte": today - timedelta(days=60)}, then=Value(BUCKETS[1])),
        When(**{f"{due}__gte": today - timedelta(days=90)}, then=Value(BUCKETS[2])),
        default=Value(BUCKETS[3]),
        output_field=CharField(),
    )


def _with_due_date(purchases: QuerySet[Purchase], today: date) -> QuerySet[Purchase]:
    open_invoice_due = (
        Invoice.objects.filter(purchase=OuterRef("pk"), status__in=(InvoiceStatus.DRAFT, InvoiceStatus.OPEN))
        .order_by("-created_at", "-pk").values("due_at")[:1]
    )
    due_since = Coalesce(Subquery(open_invoice_due), "period_start", "created_at")
    return purchases.annotate(
        due_date=TruncDate(due_since, tzinfo=timezone.get_current_timezone(), output_field=DateField()),
    ).annotate(ageing=_bucket(today))


def outstanding(filters: ReportFilters, today: date | None = None) -> QuerySet[Purchase]:
    """outstanding_purchases() with its due date and ageing bucket, narrowed by staff member
    (the purchase's), category and pack. Dates do not apply: it is what is owed now."""
    rows = outstanding_purchases()
    if filters.staff_member_id:
        rows = rows.filter(staff_member_id=filters.staff_member_id)
    if filters.category_id:
        rows = rows.filter(pack__category_id=filters.category_id)
    if filters.pack_id:
        rows = rows.filter(pack_id=filters.pack_id)
    return _with_due_date(rows.select_related("staff_member"), today or timezone.localdate())


@dataclass(frozen=True)
class AgeingRow:
    currency: str
    bucket: str
    purchases: int
    amount: Decimal


def ageing(filters: ReportFilters, today: date | None = None) -> list[AgeingRow]:
    """Per currency and bucket: how many purchases and how much (Σ price), one aggregate query."""
    today = today or timezone.localdate()
    owed = Purchase.objects.filter(pk__in=outstanding(filters, today).values("pk"))
    grouped = _with_due_date(owed, today).order_by().values("currency", "ageing").annotate(
        n=Count("pk"), total=Sum("price"),
    )
    order = {name: i for i, name in enumerate((NOT_DUE, *BUCKETS))}
    found = sorted(grouped, key=lambda r: (r["currency"], order[r["ageing"]]))
    return [AgeingRow(r["currency"], r["ageing"], r["n"], r["total"].quantize(Decimal("0.01"))) for r in found]


def outstanding_row(purchase: Purchase, today: date) -> tuple:
    created = timezone.localtime(purchase.created_at).date()
    return (
        purchase.pk, created.isoformat(), purchase.client.name, purchase.client.email,
        purchase.snapshot.get("name", purchase.pack.name), purchase.cycle_number or "",
        purchase.staff_member.display_name if purchase.staff_member_id else "",
        purchase.due_date.isoformat(), (today - purchase.due_date).days, purchase.ageing,
        purchase.price, purchase.currency, purchase.sessions_used,
    )


def outstanding_csv_rows(filters: ReportFilters, today: date | None = None) -> Iterator[tuple]:
    today = today or timezone.localdate()
    return (outstanding_row(p, today) for p in outstanding(filters, today).iterator(chunk_size=2000))
