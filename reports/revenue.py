"""Purchases and revenue: money received and refunded in a period, per pack, per staff member,
per payment method, each per currency.

Gross is the Payment rows received in the period; refunds are the Refund rows that succeeded
(were applied: `applied_at`) in it; net = gross - refunds. Every figure is a SUM over those rows
in one aggregate query per grouping, so each ties to the rows (tests/test_reports.py). A refund
counts in the period it was made, whenever the payment was: so a period's net can be negative.

Filters that apply: dates, staff member (the purchase's priced staff member), category and pack
(the purchase's). Session type does not: a payment buys a whole pack, not a session type.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, QuerySet, Sum

from payments.models import Payment, PaymentMethod, Refund, RefundStatus
from reports.filters import ReportFilters

ZERO = Decimal("0.00")
GROUPINGS = {  # grouping → (the purchase/payment field grouped by, its name field)
    "pack": ("purchase__pack_id", "purchase__pack__name"),
    "staff_member": ("purchase__staff_member_id", "purchase__staff_member__display_name"),
    "payment_method": ("method", "method"),
}
GROUPING_LABELS = {"pack": "Pack", "staff_member": "Staff member", "payment_method": "Payment method", "total": "Total"}
NO_STAFF = "(no staff member)"
HEADER = ("grouping", "name", "currency", "payments", "gross", "refunds", "refunded", "net")
METHOD_LABELS = dict(PaymentMethod.choices)


@dataclass(frozen=True)
class RevenueRow:
    grouping: str
    name: str
    currency: str
    payments: int
    gross: Decimal
    refunds: int
    refunded: Decimal

    @property
    def net(self) -> Decimal:
        return self.gross - self.refunded

    def as_csv(self) -> tuple:
        return (
            GROUPING_LABELS[self.grouping], self.name, self.currency, self.payments, self.gross,
            self.refunds, self.refunded, self.net,
        )


def _narrow(rows: QuerySet, filters: ReportFilters) -> QuerySet:
    if filters.staff_member_id:
        rows = rows.filter(purchase__staff_member_id=filters.staff_member_id)
    if filters.category_id:
        rows = rows.filter(purchase__pack__category_id=filters.category_id)
    if filters.pack_id:
        rows = rows.filter(purchase__pack_id=filters.pack_id)
    return rows


def payments_in(filters: ReportFilters) -> QuerySet[Payment]:
    rows = Payment.objects.all()
    if filters.start_at:
        rows = rows.filter(received_at__gte=filters.start_at)
    if filters.end_at:
        rows = rows.filter(received_at__lt=filters.end_at)
    return _narrow(rows, filters)


def refunds_in(filters: ReportFilters) -> QuerySet[Refund]:
    rows = Refund.objects.filter(status=RefundStatus.SUCCEEDED)
    if filters.start_at:
        rows = rows.filter(applied_at__gte=filters.start_at)
    if filters.end_at:
        rows = rows.filter(applied_at__lt=filters.end_at)
    return _narrow(rows, filters)


def _sums(rows: QuerySet, *keys: str) -> dict[tuple, tuple[int, Decimal]]:
    grouped = rows.order_by().values(*keys).annotate(n=Count("pk"), total=Sum("amount"))
    # quantize: SQLite (the demo) sums decimals without their two places.
    return {tuple(row[k] for k in keys): (row["n"], (row["total"] or ZERO).quantize(ZERO)) for row in grouped}


def _name(grouping: str, key, name) -> str:
    if grouping == "payment_method":
        return METHOD_LABELS.get(key, key)
    if grouping == "staff_member" and key is None:
        return NO_STAFF
    return name


def revenue(filters: ReportFilters) -> list[RevenueRow]:
    """The totals per currency, then each grouping's rows (two aggregate queries per grouping)."""
    payments, refunds = payments_in(filters), refunds_in(filters)
    out: list[RevenueRow] = []
    for grouping, keys in (("total", ()), *GROUPINGS.items()):
        keys = tuple(dict.fromkeys(keys))  # payment_method groups by one field
        paid, refunded = _sums(payments, *keys, "currency"), _sums(refunds, *keys, "currency")
        rows = []
        for group in paid.keys() | refunded.keys():
            n_paid, gross = paid.get(group, (0, ZERO))
            n_refunds, refund_total = refunded.get(group, (0, ZERO))
            key, name = (group[0], group[-2]) if keys else (None, "All")
            rows.append(RevenueRow(
                grouping=grouping, name=_name(grouping, key, name), currency=group[-1],
                payments=n_paid, gross=gross, refunds=n_refunds, refunded=refund_total,
            ))
        out.extend(sorted(rows, key=lambda r: (r.currency, r.name.lower())))
    return out


def revenue_csv_rows(filters: ReportFilters) -> Iterator[tuple]:
    return (row.as_csv() for row in revenue(filters))
