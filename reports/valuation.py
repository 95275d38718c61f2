"""What unused credits are worth: deferred revenue, its roll-forward, breakage and redemptions.

The rules (docs/reports.md says them in words, with a worked example):
- A purchased grant is worth its share of the purchase's price, shared by credits with
  largest-remainder rounding (a purchase with unlimited lines: equal shares first); a grant
  without a purchase is worth its opening_value, else nothing.
- A counted grant's remaining value at t is round-half-up(V × remaining(t) / quantity); each
  entry's value is the change it makes to that, so values telescope exactly.
- An unlimited grant is recognised evenly over its window.
- opening + sales − redemptions − breakage − refunds + adjustments = closing, exactly.

Every figure is one set-based query (reports.valuation_sql) in integer minor units; Python only
turns the few result rows into Decimals.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from payments.money import from_minor
from reports import valuation_sql as q
from reports.filters import ReportFilters

MEMBERSHIPS = "Memberships (time-based)"
NO_BOOKING = "No booking"
FETCH = 2000


@dataclass(frozen=True)
class DeferredRow:
    currency: str
    pack_name: str
    session_type: str
    credits: int
    value: Decimal


@dataclass(frozen=True)
class RollForward:
    currency: str
    opening: Decimal
    sales: Decimal
    redemptions: Decimal
    breakage: Decimal
    refunds: Decimal
    adjustments: Decimal
    closing: Decimal

    @property
    def difference(self) -> Decimal:
        """What the identity misses by (always 0: anything else is a bug)."""
        return (
            self.opening + self.sales - self.redemptions - self.breakage - self.refunds
            + self.adjustments - self.closing
        )

    @property
    def ties_out(self) -> bool:
        return self.difference == 0


@dataclass(frozen=True)
class BreakageRow:
    currency: str
    pack_name: str
    session_type: str
    credits: int
    value: Decimal


@dataclass(frozen=True)
class RedemptionRow:
    staff_member: str
    session_type: str
    currency: str
    sessions: int
    credits: int
    value: Decimal


def _money(minor, currency: str) -> Decimal:
    return from_minor(int(minor or 0), currency)


def _fetch(sql: str, params: dict) -> list[tuple]:
    # A transaction of its own (or the caller's), for the dialect's SET LOCAL.
    with transaction.atomic(), connection.cursor() as cursor:
        if prepare := q.dialect()["prepare"]:
            cursor.execute(prepare)
        cursor.execute(sql, params)
        return cursor.fetchall()


def _range(filters: ReportFilters | None) -> tuple[datetime, datetime]:
    """[start, end) of the filters' local days; open ends: from the beginning, up to now."""
    start = filters.start_at if filters and filters.start else q.EPOCH
    end = filters.end_at if filters and filters.end else timezone.now()
    return start, end


# --- Deferred revenue ----------------------------------------------------------------------


def _deferred_sql(at: datetime, filters: ReportFilters | None) -> tuple[str, dict]:
    d = q.dialect()
    base, params = q.base_ctes(filters, since="t")
    params.update(t=connection.ops.adapt_datetimefield_value(at), t_us=q.epoch_us(at))
    remaining = "gv.remaining - COALESCE(af.s, 0)"
    sql = base + f""",
af AS (
    SELECT e.grant_id, SUM(e.amount) AS s FROM ledger_ledgerentry e
    WHERE e.created_at >= %(t)s GROUP BY e.grant_id
)
SELECT gv.currency, gv.pack_name, gv.session_type,
       SUM(CASE WHEN gv.unlimited THEN 0 ELSE {remaining} END) AS credits,
       SUM(CASE WHEN gv.unlimited THEN COALESCE({q.unlimited_r(d, '%(t)s', '%(t_us)s')}, 0)
                ELSE COALESCE({q.counted_r(d, remaining)}, 0) END) AS value
FROM gv LEFT JOIN af ON af.grant_id = gv.id LEFT JOIN gu ON gu.id = gv.id
GROUP BY gv.currency, gv.pack_name, gv.session_type
ORDER BY gv.currency, gv.pack_name, gv.session_type"""
    return sql, params


def deferred_revenue(at: datetime, filters: ReportFilters | None = None) -> list[DeferredRow]:
    """The value of unused credits at moment `at` (entries before it count), per currency, pack
    and session type. The filters' dates are ignored: use reports.filters.as_of_moment(day)."""
    rows = _fetch(*_deferred_sql(at, filters))
    return [
        DeferredRow(currency, pack or "", session_type, int(credits or 0), _money(value, currency))
        for currency, pack, session_type, credits, value in rows
        if credits or value
    ]


def deferred_revenue_total(at: datetime, filters: ReportFilters | None = None) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for row in deferred_revenue(at, filters):
        totals[row.currency] = totals.get(row.currency, Decimal(0)) + row.value
    return totals


# --- Roll-forward ---------------------------------------------------------------------------


def _entries_sql(filters: ReportFilters | None, start: datetime, end: datetime, *,
                 staff_on_purchase: bool = True) -> tuple[str, dict, dict]:
    d = q.dialect()
    base, params = q.base_ctes(filters, since="t1", staff_on_purchase=staff_on_purchase)
    params.update(q.range_params(start, end))
    return base + q.entry_ctes(d), params, d


def roll_forward_between(
    start_at: datetime, end_at: datetime, filters: ReportFilters | None = None,
) -> list[RollForward]:
    """The roll-forward for the moments [start_at, end_at), one row per currency."""
    if end_at < start_at:
        raise ValueError("The end of the period is before its start.")
    sql, params, d = _entries_sql(filters, start_at, end_at)
    opening = "gv.remaining - COALESCE(ga.after1, 0)"
    closing = "gv.remaining - COALESCE(ga.after2, 0)"
    sql += f""",
gr AS (
    SELECT gv.currency,
           CASE WHEN gv.unlimited THEN COALESCE({q.unlimited_r(d, '%(t1)s', '%(t1_us)s')}, 0)
                ELSE COALESCE({q.counted_r(d, opening)}, 0) END AS opening,
           CASE WHEN gv.unlimited THEN COALESCE({q.unlimited_r(d, '%(t2)s', '%(t2_us)s')}, 0)
                ELSE COALESCE({q.counted_r(d, closing)}, 0) END AS closing,
           CASE WHEN gv.unlimited THEN COALESCE({q.recognised(d)}, 0) ELSE 0 END AS recognised
    FROM gv LEFT JOIN ga ON ga.grant_id = gv.id LEFT JOIN gu ON gu.id = gv.id
)
SELECT currency, SUM(opening), SUM(closing), SUM(recognised), SUM(sales), SUM(redeemed),
       SUM(expired), SUM(voided), SUM(adjusted)
FROM (
    SELECT currency, opening, closing, recognised, 0 AS sales, 0 AS redeemed, 0 AS expired,
           0 AS voided, 0 AS adjusted
    FROM gr
    UNION ALL
    SELECT gv.currency, 0, 0, 0,
           CASE WHEN ev.kind = 'issued' AND ev.source <> 'import' THEN ev.value ELSE 0 END,
           CASE WHEN ev.kind IN ('used', 'returned') THEN ev.value ELSE 0 END,
           CASE WHEN ev.kind = 'expired' THEN ev.value ELSE 0 END,
           CASE WHEN ev.kind = 'voided' THEN ev.value ELSE 0 END,
           CASE WHEN ev.kind = 'adjusted' OR (ev.kind = 'issued' AND ev.source = 'import')
                THEN ev.value ELSE 0 END
    FROM ev JOIN gv ON gv.id = ev.grant_id
) x
GROUP BY currency ORDER BY currency"""
    result = []
    for currency, op, cl, rec, sales, redeemed, expired, voided, adjusted in _fetch(sql, params):
        m = lambda minor: _money(minor, currency)  # noqa: E731
        result.append(RollForward(
            currency=currency, opening=m(op), sales=m(sales),
            redemptions=m(-int(redeemed or 0) + int(rec or 0)), breakage=m(-int(expired or 0)),
            refunds=m(-int(voided or 0)), adjustments=m(adjusted), closing=m(cl),
        ))
    return result


def roll_forward(filters: ReportFilters) -> list[RollForward]:
    """opening + sales − redemptions − breakage − refunds + adjustments = closing, per currency,
    for the filters' local days (start and end are required)."""
    if not (filters.start and filters.end):
        raise ValueError("The roll-forward needs a start and an end date.")
    return roll_forward_between(filters.start_at, filters.end_at, filters)


# --- Breakage, redemptions, entry values -------------------------------------------------------


def breakage(filters: ReportFilters) -> list[BreakageRow]:
    """Credits that expired unused in the range, and the value that went with them."""
    start, end = _range(filters)
    sql, params, _ = _entries_sql(filters, start, end)
    sql += """
SELECT gv.currency, gv.pack_name, gv.session_type, -SUM(ev.amount), -SUM(ev.value)
FROM ev JOIN gv ON gv.id = ev.grant_id
WHERE ev.kind = 'expired'
GROUP BY gv.currency, gv.pack_name, gv.session_type
ORDER BY gv.currency, gv.pack_name, gv.session_type"""
    return [
        BreakageRow(currency, pack or "", session_type, int(credits or 0), _money(value, currency))
        for currency, pack, session_type, credits, value in _fetch(sql, params)
        if credits or value
    ]


def redemptions_by_staff(filters: ReportFilters) -> list[RedemptionRow]:
    """Per staff member (of the booked session) and session type: sessions delivered and the
    revenue they released, net of credits returned in the range. Memberships release their value
    with time, not per session: one "Memberships (time-based)" row per session type (left out
    when filtering by staff member, since time belongs to nobody)."""
    start, end = _range(filters)
    sql, params, d = _entries_sql(filters, start, end, staff_on_purchase=False)
    staff = ""
    if filters.staff_member_id is not None:
        staff = "AND s.staff_member_id = %(f_session_staff)s"
        params["f_session_staff"] = filters.staff_member_id
    params.update(memberships=MEMBERSHIPS, no_booking=NO_BOOKING)
    memberships = "" if staff else f"""
    UNION ALL
    SELECT 1, NULL, %(memberships)s, gv.session_type, gv.currency, 0, 0, SUM({q.recognised(d)})
    FROM gv JOIN gu ON gu.id = gv.id
    GROUP BY gv.session_type, gv.currency"""
    sql += f"""
SELECT * FROM (
    SELECT 0 AS part, sm.id AS staff_id, COALESCE(sm.display_name, %(no_booking)s) AS staff_member,
           gv.session_type, gv.currency,
           SUM(CASE WHEN ev.kind = 'used' AND NOT EXISTS (
                   SELECT 1 FROM ledger_ledgerentry r
                   WHERE r.reverses_id = ev.id AND r.kind = 'returned' AND r.created_at < %(t2)s)
               THEN 1 ELSE 0 END) AS sessions,
           -SUM(ev.amount) AS credits, -SUM(ev.value) AS value
    FROM ev JOIN gv ON gv.id = ev.grant_id
    LEFT JOIN core_booking b ON b.id = ev.booking_id
    LEFT JOIN core_session s ON s.id = b.session_id
    LEFT JOIN core_staffmember sm ON sm.id = s.staff_member_id
    WHERE ev.kind IN ('used', 'returned') {staff}
    GROUP BY sm.id, sm.display_name, gv.session_type, gv.currency{memberships}
) x
ORDER BY part, staff_member, staff_id, session_type, currency"""
    return [
        RedemptionRow(name, session_type, currency, int(sessions or 0), int(credits or 0),
                      _money(value, currency))
        for _part, _id, name, session_type, currency, sessions, credits, value in _fetch(sql, params)
        if sessions or credits or value
    ]


def entry_values(filters: ReportFilters | None = None) -> Iterator[tuple[int, int, str]]:
    """(entry id, value in minor units, currency) for every entry in the range, streamed.

    Unlimited grants' time recognition is not an entry, so it is not here."""
    start, end = _range(filters)
    sql, params, _ = _entries_sql(filters, start, end)
    sql += "\nSELECT ev.id, ev.value, gv.currency FROM ev JOIN gv ON gv.id = ev.grant_id ORDER BY ev.id"
    # A server-side cursor on PostgreSQL: memory stays bounded however many entries there are.
    with transaction.atomic():
        if prepare := q.dialect()["prepare"]:
            with connection.cursor() as plain:
                plain.execute(prepare)
        with connection.chunked_cursor() as cursor:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(FETCH):
                for entry_id, value, currency in rows:
                    yield entry_id, int(value or 0), currency

