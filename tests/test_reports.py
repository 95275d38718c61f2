"""Finance reports: each report's totals equal the ledger's / payments' rows, filters narrow them,
and the CSVs carry the columns and file names finance expects.

History is built through the real services (sales, desk payments, refunds, bookings,
adjustments) at chosen moments with time-machine, so each row lands in a known local day.
"""
from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db.models import Sum
from django.utils import timezone

from core.bookings import booking_create
from core.sessions import session_create
from ledger.expiry import credits_expire_due
from ledger.models import ClientBalance, LedgerEntry
from ledger.services import credits_adjust
from payments.models import Payment, Purchase, Refund, RefundStatus
from payments.refunds import refund_create
from payments.services import payment_record, purchase_create
from reports import balances, registry, revenue
from reports.filters import ReportFilters, as_of_moment
from reports.ledger_export import LEDGER_HEADER, ledger_entries, write_ledger_csv
from reports.registry import REPORTS, export_filename

LONDON = ZoneInfo("Europe/London")
MARCH = ReportFilters(start=date(2026, 3, 1), end=date(2026, 3, 31))


def at(month: int, day: int, hour: int = 12, minute: int = 0) -> datetime:
    return datetime.combine(date(2026, month, day), time(hour, minute), tzinfo=LONDON)


def pay(client, pack, method: str, when: datetime, actor, staff_member=None) -> Purchase:
    with time_machine.travel(when, tick=False):
        purchase = purchase_create(client=client, pack=pack, staff_member=staff_member, actor=actor)
        payment_record(purchase=purchase, method=method, amount=purchase.price, actor=actor)
    return purchase


@pytest.fixture
def history(db, client_a, client_b, massage, physio, coach, make_pack, staff_user):
    """February to April 2026: sales paid in cash and by card, a refund, a booking, an adjustment,
    an entry just before midnight on 31 March, and an unpaid sale from January."""
    ten = make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"))
    five = make_pack(
        [(physio, False, 5)], name="Five physio", price=Decimal("100.00"),
        staff_prices=[(coach, Decimal("120.00"))],
    )
    with time_machine.travel(at(1, 5), tick=False):
        owed = purchase_create(client=client_b, pack=ten, actor=staff_user)
    february = pay(client_a, ten, "cash", at(2, 10), staff_user)
    march_card = pay(client_b, five, "card_terminal", at(3, 5), staff_user, staff_member=coach)
    march_cash = pay(client_a, five, "cash", at(3, 31, 23, 30), staff_user)
    with time_machine.travel(at(3, 10), tick=False):
        refund = refund_create(purchase=march_card, amount=Decimal("24.00"), reason="missed week", actor=staff_user)
    with time_machine.travel(at(3, 14), tick=False):
        session = session_create(
            session_type=massage, staff_member=coach, starts_at=at(3, 15, 10), actor=staff_user,
            outside_hours_reason="reports test",
        )
        booking = booking_create(client=client_a, session=session, actor=staff_user)
    with time_machine.travel(at(3, 20), tick=False):
        credits_adjust(client=client_b, session_type=physio, amount=2, reason="goodwill", actor=staff_user)
    april = pay(client_b, ten, "bank_transfer", at(4, 2), staff_user)
    return {
        "ten": ten, "five": five, "owed": owed, "february": february, "march_card": march_card,
        "march_cash": march_cash, "april": april, "refund": refund, "booking": booking,
    }


def csv_text(header, rows) -> list[list[str]]:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return list(csv.reader(io.StringIO(out.getvalue())))


# --- 1. Purchases and revenue --------------------------------------------------------------


def test_revenue_totals_tie_to_the_payment_and_refund_rows(history):
    rows = revenue.revenue(MARCH)

    in_march = Payment.objects.filter(received_at__gte=MARCH.start_at, received_at__lt=MARCH.end_at)
    refunded = Refund.objects.filter(status=RefundStatus.SUCCEEDED, applied_at__gte=MARCH.start_at,
                                     applied_at__lt=MARCH.end_at)
    gross, refunds = in_march.aggregate(s=Sum("amount"))["s"], refunded.aggregate(s=Sum("amount"))["s"]
    assert (gross, refunds) == (Decimal("220.00"), Decimal("24.00"))  # 120 by card, 100 in cash; 24 back
    [total] = [r for r in rows if r.grouping == "total"]
    assert (total.currency, total.payments, total.gross, total.refunds, total.refunded, total.net) == (
        "GBP", 2, gross, 1, refunds, Decimal("196.00"),
    )
    # Each grouping splits the same money: its rows add up to the total.
    for grouping in revenue.GROUPINGS:
        part = [r for r in rows if r.grouping == grouping]
        assert sum(r.gross for r in part) == gross, grouping
        assert sum(r.refunded for r in part) == refunds, grouping
        assert sum(r.payments for r in part) == 2, grouping


def test_revenue_groups_by_pack_staff_member_and_payment_method(history):
    rows = {(r.grouping, r.name): (r.gross, r.refunded, r.net) for r in revenue.revenue(MARCH)}

    assert rows[("pack", "Five physio")] == (Decimal("220.00"), Decimal("24.00"), Decimal("196.00"))
    assert ("pack", "Ten massages") not in rows  # paid in February and April
    assert rows[("staff_member", "Coach Carter")] == (Decimal("120.00"), Decimal("24.00"), Decimal("96.00"))
    assert rows[("staff_member", revenue.NO_STAFF)] == (Decimal("100.00"), Decimal("0.00"), Decimal("100.00"))
    assert rows[("payment_method", "Card terminal")] == (Decimal("120.00"), Decimal("24.00"), Decimal("96.00"))
    assert rows[("payment_method", "Cash")] == (Decimal("100.00"), Decimal("0.00"), Decimal("100.00"))


def test_revenue_filters_narrow_to_the_pack_and_staff_member(history, coach, category):
    by_pack = revenue.revenue(ReportFilters(start=date(2026, 1, 1), end=date(2026, 4, 30), pack_id=history["ten"].pk))
    [total] = [r for r in by_pack if r.grouping == "total"]
    assert total.gross == Decimal("600.00") and total.payments == 2  # February and April

    by_staff = revenue.revenue(ReportFilters(start=MARCH.start, end=MARCH.end, staff_member_id=coach.pk))
    [total] = [r for r in by_staff if r.grouping == "total"]
    assert (total.gross, total.refunded) == (Decimal("120.00"), Decimal("24.00"))

    other = revenue.revenue(ReportFilters(start=MARCH.start, end=MARCH.end, category_id=category.pk + 999))
    assert other == []


def test_a_payment_late_on_the_last_day_counts_in_that_local_day(history):
    # 23:30 on 31 March, London summer time: 22:30 UTC, still March for the business.
    april = revenue.revenue(ReportFilters(start=date(2026, 4, 1), end=date(2026, 4, 30)))
    [total] = [r for r in april if r.grouping == "total"]
    assert total.gross == Decimal("300.00")


def test_revenue_csv_columns(history):
    lines = csv_text(revenue.HEADER, revenue.revenue_csv_rows(MARCH))
    assert lines[0] == ["grouping", "name", "currency", "payments", "gross", "refunds", "refunded", "net"]
    assert ["Total", "All", "GBP", "2", "220.00", "1", "24.00", "196.00"] in lines


# --- 2. The credit ledger --------------------------------------------------------------------


def ledger_csv(filters: ReportFilters, **kwargs) -> list[list[str]]:
    out = io.StringIO()
    count = write_ledger_csv(out, filters, **kwargs)
    lines = list(csv.reader(io.StringIO(out.getvalue())))
    assert count == len(lines) - 1
    return lines


def test_ledger_csv_holds_every_entry_of_the_period_with_its_details(history, client_a, staff_user):
    lines = ledger_csv(MARCH)

    entries = LedgerEntry.objects.filter(created_at__gte=MARCH.start_at, created_at__lt=MARCH.end_at)
    assert lines[0] == list(LEDGER_HEADER)
    assert [int(line[0]) for line in lines[1:]] == sorted(entries.values_list("pk", flat=True))
    assert sum(int(line[7]) for line in lines[1:]) == entries.aggregate(s=Sum("amount"))["s"]
    used = next(line for line in lines[1:] if line[6] == "used")
    entry = LedgerEntry.objects.get(kind="used")
    assert used == [
        str(entry.pk), "2026-03-14 12:00:00", str(client_a.pk), "Ada Lovelace", "ada@example.com",
        "Massage 60", "used", "-1", "9", "desk", "booking", str(entry.grant_id),
        str(history["february"].pk), str(history["booking"].pk), "", entry.note,
    ]
    voided = [line for line in lines[1:] if line[6] == "voided"]
    assert voided and all(line[14] == str(history["refund"].pk) for line in voided)


def test_ledger_dates_are_local_and_the_range_ends_with_its_last_local_day(history):
    lines = ledger_csv(MARCH)
    late = [line for line in lines[1:] if line[1].startswith("2026-03-31 23:30")]
    assert late, "the 23:30 sale on 31 March is in March, written in local time"
    assert not any(line[1].startswith("2026-04") for line in lines[1:])


def test_ledger_filters_narrow_by_session_type_pack_and_staff(history, massage, physio, coach):
    def kinds(**narrow):
        lines = ledger_csv(ReportFilters(start=MARCH.start, end=MARCH.end, **narrow))
        return {(line[5], line[6]) for line in lines[1:]}

    assert kinds(session_type_id=physio.pk) == {("Physio", "issued"), ("Physio", "voided"), ("Physio", "adjusted")}
    assert {k for _, k in kinds(pack_id=history["five"].pk)} == {"issued", "voided"}  # not the goodwill grant
    assert kinds(staff_member_id=coach.pk) == {("Massage 60", "used")}
    assert ledger_entries(ReportFilters(session_type_id=massage.pk)).count() == LedgerEntry.objects.filter(
        session_type=massage).count()


# --- 3. Balances ------------------------------------------------------------------------------


def test_balances_today_equal_the_cached_balances(history):
    rows = list(balances.balances_as_of(as_of_moment(date(2026, 12, 31)), ReportFilters()))
    cached = {(b.client_id, b.session_type.name): b.balance for b in ClientBalance.objects.exclude(balance=0)}
    assert {(r[0], r[3]): r[4] for r in rows} == cached
    assert all(r[2].endswith("@example.com") for r in rows)


def test_balances_as_of_a_past_day_sum_the_entries_before_its_end(history, client_a, client_b, physio):
    rows = list(balances.balances_as_of(as_of_moment(date(2026, 3, 31)), ReportFilters()))
    assert rows == [
        (client_a.pk, "Ada Lovelace", "ada@example.com", "Massage 60", 9),
        (client_a.pk, "Ada Lovelace", "ada@example.com", "Physio", 5),  # bought 23:30 on 31 March
        (client_b.pk, "Grace Hopper", "grace@example.com", "Physio", 6),  # 5 - 1 voided + 2
    ]
    totals = balances.balance_totals(as_of_moment(date(2026, 3, 31)), ReportFilters())
    entries = LedgerEntry.objects.filter(created_at__lt=as_of_moment(date(2026, 3, 31)))
    assert totals == {"rows": 3, "clients": 2, "credits": entries.aggregate(s=Sum("amount"))["s"]}

    february = list(balances.balances_as_of(as_of_moment(date(2026, 2, 28)), ReportFilters(session_type_id=physio.pk)))
    assert february == []


def test_balances_list_only_non_zero_rows(client_a, massage, staff_user):
    credits_adjust(client=client_a, session_type=massage, amount=2, reason="gift", actor=staff_user)
    credits_adjust(client=client_a, session_type=massage, amount=-2, reason="taken back", actor=staff_user)
    assert list(balances.balances_as_of(as_of_moment(timezone.localdate()), ReportFilters())) == []


# --- 4-6. Valuation reports, as the admin and the CSV present them ------------------------------


def test_deferred_revenue_and_roll_forward_rows(history):
    deferred = registry.REPORTS["deferred"]
    rows = list(deferred.rows(ReportFilters(end=date(2026, 3, 31))))
    by_pack = {(r[1], r[2]): (r[3], r[4]) for r in rows}
    # Ten massages for 300, one used: 9 × 30; five physio: 100 (cash, all unused) + 120 × 4/5 by card.
    assert by_pack[("Ten massages", "Massage 60")] == (9, Decimal("270.00"))
    assert by_pack[("Five physio", "Physio")] == (9, Decimal("196.00"))
    preview = deferred.preview(ReportFilters(end=date(2026, 3, 31)))
    assert preview.summary == [("GBP", sum(r[4] for r in rows))]

    roll = registry.REPORTS["roll_forward"]
    [line] = roll.rows(MARCH)
    currency, opening, sales, redemptions, breakage, refunds, adjustments, closing, difference, ties = line
    assert (currency, opening, closing) == ("GBP", Decimal("300.00"), sum(r[4] for r in rows))
    assert (sales, redemptions, refunds, difference, ties) == (
        Decimal("220.00"), Decimal("30.00"), Decimal("24.00"), Decimal("0"), "yes",
    )
    assert roll.preview(MARCH).ties_out is True


def test_breakage_and_redemption_rows(history, client_a, massage, staff_user):
    redemptions = registry.REPORTS["redemptions"]
    rows = list(redemptions.rows(MARCH))
    assert ("Coach Carter", "Massage 60", "GBP", 1, 1, Decimal("30.00")) in rows
    assert redemptions.preview(MARCH).summary == [("GBP", 1, 1, Decimal("30.00"))]

    with time_machine.travel(at(3, 1), tick=False):
        credits_adjust(client=client_a, session_type=massage, amount=1, reason="trial", actor=staff_user,
                       expires_at=at(3, 2))
    credits_expire_due(now=at(3, 3))
    [row] = registry.REPORTS["breakage"].rows(MARCH)
    assert (row[0], row[2], row[3], row[4]) == ("GBP", "Massage 60", 1, Decimal("0.00"))  # a goodwill credit is worth nothing


# --- 7. Outstanding payments and ageing ---------------------------------------------------------


def test_outstanding_payments_are_aged_by_days_due(history, client_a, staff_user):
    with time_machine.travel(at(6, 20), tick=False):
        recent = purchase_create(client=client_a, pack=history["five"], actor=staff_user)
    today = date(2026, 7, 1)

    rows = {p.pk: p for p in balances.outstanding(ReportFilters(), today)}
    assert rows[history["owed"].pk].ageing == "90+" and rows[recent.pk].ageing == "0-30"
    assert balances.outstanding_row(rows[recent.pk], today)[7:10] == ("2026-06-20", 11, "0-30")

    ageing = balances.ageing(ReportFilters(), today)
    assert [(a.bucket, a.purchases, a.amount) for a in ageing] == [
        ("0-30", 1, Decimal("100.00")), ("90+", 1, Decimal("300.00")),
    ]
    owed = Purchase.objects.filter(status="pending").aggregate(s=Sum("price"))["s"]
    assert sum(a.amount for a in ageing) == owed

    by_pack = balances.ageing(ReportFilters(pack_id=history["ten"].pk), today)
    assert [(a.bucket, a.amount) for a in by_pack] == [("90+", Decimal("300.00"))]


@pytest.mark.parametrize(("days", "bucket"), [(0, "0-30"), (30, "0-30"), (31, "31-60"), (60, "31-60"),
                                              (61, "61-90"), (90, "61-90"), (91, "90+"), (-1, "not yet due")])
def test_ageing_bucket_edges(history, days, bucket):
    due = history["owed"].created_at.astimezone(LONDON).date()
    [row] = [p for p in balances.outstanding(ReportFilters(), due + timedelta(days=days)) if p.pk == history["owed"].pk]
    assert row.ageing == bucket


# --- CSV names and columns -------------------------------------------------------------------


def test_csv_filenames_say_what_and_when():
    generated = datetime(2026, 11, 21, 10, 30, tzinfo=LONDON)
    assert export_filename("breakage", MARCH, generated) == (
        "packdesk_breakage_2026-03-01_2026-03-31_generated_20261121T1030.csv"
    )
    assert export_filename("balances", ReportFilters(end=date(2026, 3, 31)), generated) == (
        "packdesk_balances_asof_2026-03-31_generated_20261121T1030.csv"
    )
    assert export_filename("ledger", ReportFilters(), generated) == "packdesk_ledger_all-time_generated_20261121T1030.csv"


def test_every_report_writes_its_header_and_rows_of_that_width(history):
    for kind, report in REPORTS.items():
        filters = ReportFilters(start=MARCH.start, end=MARCH.end)
        rows = list(report.rows(filters))
        assert rows or kind == "breakage", kind  # nothing expired in this history
        assert all(len(row) == len(report.header) for row in rows), kind
