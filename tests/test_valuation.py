"""Deferred revenue, roll-forward, breakage and redemptions: hand-computed examples of each
valuation rule (docs/reports.md), and each report's totals against the ledger's own sums.

Histories are made through the real services with the clock moved by time_machine.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db.models import Sum

from catalog.models import Category, SessionType
from catalog.validation import LineData
from core.bookings import booking_cancel, booking_create, booking_mark_no_show
from core.models import StaffMember
from core.sessions import session_create
from ledger.expiry import credits_expire_due
from ledger.imports import credits_import_opening
from ledger.models import ClientBalance, CreditGrant, EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.models import PaymentMethod, PurchaseStatus
from payments.refunds import refund_create
from payments.services import payment_record, purchase_create
from reports.filters import ReportFilters
from reports.valuation import (
    MEMBERSHIPS,
    BreakageRow,
    DeferredRow,
    RedemptionRow,
    breakage,
    deferred_revenue,
    deferred_revenue_total,
    entry_values,
    redemptions_by_staff,
    roll_forward,
    roll_forward_between,
)

pytestmark = pytest.mark.django_db

LONDON = ZoneInfo("Europe/London")
START = datetime(2026, 1, 5, 9, 0, tzinfo=LONDON)
D = Decimal
ALL_2026 = ReportFilters(start=date(2026, 1, 1), end=date(2026, 12, 31))


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def pt(category):
    return SessionType.objects.create(name="PT", category=category, duration_minutes=60)


@pytest.fixture
def yoga(db):
    wellbeing = Category.objects.create(name="Classes")
    return SessionType.objects.create(name="Yoga", category=wellbeing, duration_minutes=60)


@pytest.fixture
def trainer(django_user_model, pt, yoga):
    member = StaffMember.objects.create(
        user=django_user_model.objects.create_user("sam"), display_name="Sam Trainer"
    )
    member.session_types.set([pt, yoga])
    return member


@pytest.fixture
def desk(staff_user, trainer):
    """The front desk: sells (paid in cash), books, cancels; each session at its own hour."""
    slots = {"n": 0}

    class Desk:
        @staticmethod
        def sell(client, pack, *, received_at=None, staff_member=None):
            purchase = purchase_create(client=client, pack=pack, actor=staff_user, staff_member=staff_member)
            payment_record(
                purchase=purchase, method=PaymentMethod.CASH, amount=purchase.price,
                actor=staff_user, received_at=received_at,
            )
            purchase.refresh_from_db()
            return purchase

        @staticmethod
        def book(client, session_type, *, days=3, sell_pack=None, staff_member=trainer):
            slots["n"] += 1
            session = session_create(
                session_type=session_type, staff_member=staff_member, actor=staff_user,
                # Sessions never overlap: each starts 90 minutes after the previous one's slot.
                starts_at=datetime.now(LONDON) + timedelta(days=days, minutes=90 * slots["n"]),
                outside_hours_reason="Tests run at any hour",
            )
            return booking_create(client=client, session=session, actor=staff_user, sell_pack=sell_pack)

    return Desk


def only(rows):
    assert len(rows) == 1, rows
    return rows[0]


def gbp(filters_or_range, **kw):
    if isinstance(filters_or_range, ReportFilters):
        return only(roll_forward(filters_or_range))
    return only(roll_forward_between(*filters_or_range, **kw))


def values_by_kind(filters=ALL_2026):
    kinds = dict(LedgerEntry.objects.values_list("id", "kind"))
    out = {}
    for entry_id, value, _currency in entry_values(filters):
        out.setdefault(kinds[entry_id], []).append(value)
    return out


# --- The worked example of docs/reports.md --------------------------------------------------


def test_a_49_pound_pack_of_two_pt_and_two_yoga_used_expired_and_refunded(
    clock, make_pack, desk, client_a, pt, yoga, trainer, staff_user,
):
    pack = make_pack(
        [LineData(pt, credits=2), LineData(yoga, credits=2, validity_amount=1, validity_unit="months")],
        name="Starter mix", price=D("49.00"),
    )
    purchase = desk.sell(client_a, pack)
    clock.shift(timedelta(hours=1))
    # Each grant is worth half the price (2 credits of 4): £24.50, so £12.25 a credit.
    assert deferred_revenue(START + timedelta(minutes=1)) == [
        DeferredRow("GBP", "Starter mix", "PT", 2, D("24.50")),
        DeferredRow("GBP", "Starter mix", "Yoga", 2, D("24.50")),
    ]
    clock.shift(timedelta(days=2))
    desk.book(client_a, pt)  # 7 January
    clock.shift(timedelta(days=1))
    desk.book(client_a, yoga)  # 8 January
    assert deferred_revenue_total(datetime.now(LONDON) + timedelta(seconds=1)) == {"GBP": D("24.50")}

    # The yoga line lasts a month: its last credit expires unused at the end of 5 February.
    clock.move_to(datetime(2026, 2, 6, 10, 0, tzinfo=LONDON))
    assert credits_expire_due() == 1
    # Refunding £12.25 voids round-half-up(2 × 12.25 / 49) = 1 PT credit (the yoga line has none left).
    clock.shift(timedelta(days=4))
    refund_create(purchase=purchase, amount=D("12.25"), reason="moving away", actor=staff_user)
    assert deferred_revenue(datetime.now(LONDON) + timedelta(seconds=1)) == []

    january = gbp(ReportFilters(start=date(2026, 1, 1), end=date(2026, 1, 31)))
    assert (january.opening, january.sales, january.redemptions, january.closing) == (
        D("0.00"), D("49.00"), D("24.50"), D("24.50"),
    )
    february = gbp(ReportFilters(start=date(2026, 2, 1), end=date(2026, 2, 28)))
    assert (february.opening, february.breakage, february.refunds, february.closing) == (
        D("24.50"), D("12.25"), D("12.25"), D("0.00"),
    )
    whole = gbp(ALL_2026)
    assert whole == whole.__class__(
        currency="GBP", opening=D("0.00"), sales=D("49.00"), redemptions=D("24.50"),
        breakage=D("12.25"), refunds=D("12.25"), adjustments=D("0.00"), closing=D("0.00"),
    )
    assert january.ties_out and february.ties_out and whole.ties_out
    assert breakage(ALL_2026) == [BreakageRow("GBP", "Starter mix", "Yoga", 1, D("12.25"))]
    assert redemptions_by_staff(ALL_2026) == [
        RedemptionRow("Sam Trainer", "PT", "GBP", 1, 1, D("12.25")),
        RedemptionRow("Sam Trainer", "Yoga", "GBP", 1, 1, D("12.25")),
    ]


# --- One rule each --------------------------------------------------------------------------


def test_three_credits_for_100_release_values_that_sum_to_the_price(clock, make_pack, desk, client_a, pt):
    pack = make_pack([LineData(pt, credits=3)], price=D("100.00"))
    desk.sell(client_a, pack)
    seen = []
    for _ in range(3):
        clock.shift(timedelta(hours=2))
        desk.book(client_a, pt)
        seen.append(deferred_revenue_total(datetime.now(LONDON) + timedelta(seconds=1)).get("GBP"))
    # R = round-half-up(10000 × remaining / 3): 10000, 6667, 3333, 0.
    assert seen == [D("66.67"), D("33.33"), None]
    used = values_by_kind()[EntryKind.USED]
    assert used == [-3333, -3334, -3333] and sum(used) == -10000


def test_a_refund_of_40_voids_2_of_5_credits_and_their_value(clock, make_pack, desk, client_a, pt, staff_user):
    pack = make_pack([LineData(pt, credits=5)], price=D("100.00"))
    purchase = desk.sell(client_a, pack)
    clock.shift(timedelta(days=1))
    refund_create(purchase=purchase, amount=D("40.00"), reason="partial", actor=staff_user)
    assert LedgerEntry.objects.get(kind=EntryKind.VOIDED).amount == -2
    assert values_by_kind()[EntryKind.VOIDED] == [-4000]
    row = gbp(ALL_2026)
    assert (row.sales, row.refunds, row.closing, row.ties_out) == (D("100.00"), D("40.00"), D("60.00"), True)


def test_credits_issued_already_expired_are_a_sale_and_breakage_at_once(clock, make_pack, desk, client_a, pt):
    pack = make_pack([LineData(pt, credits=10)], price=D("120.00"), validity_amount=1, validity_unit="months")
    clock.move_to(START + timedelta(days=70))
    desk.sell(client_a, pack, received_at=START)  # paid in early January, recorded in March
    kinds = list(LedgerEntry.objects.order_by("id").values_list("kind", flat=True))
    assert kinds == [EntryKind.ISSUED, EntryKind.EXPIRED]
    row = gbp(ALL_2026)
    assert (row.sales, row.breakage, row.closing) == (D("120.00"), D("120.00"), D("0.00"))
    assert breakage(ALL_2026) == [BreakageRow("GBP", pack.name, "PT", 10, D("120.00"))]


def test_an_unlimited_month_is_half_recognised_halfway_through(clock, make_pack, desk, client_a, yoga, trainer):
    pack = make_pack([LineData(yoga, unlimited=True)], name="Yoga month", price=D("60.00"),
                     validity_amount=1, validity_unit="months")
    desk.sell(client_a, pack)
    grant = CreditGrant.objects.get()
    middle = grant.valid_from + (grant.expires_at - grant.valid_from) / 2
    assert deferred_revenue(middle) == [DeferredRow("GBP", "Yoga month", "Yoga", 0, D("30.00"))]
    first_half = gbp((START, middle))
    assert (first_half.sales, first_half.redemptions, first_half.closing) == (D("60.00"), D("30.00"), D("30.00"))
    # A class on the membership moves no credit and no money: the time does.
    clock.shift(timedelta(days=2))
    desk.book(client_a, yoga)
    clock.move_to(grant.expires_at + timedelta(hours=3))
    credits_expire_due()
    assert deferred_revenue_total(datetime.now(LONDON)) == {}
    whole = gbp(ALL_2026)
    assert (whole.redemptions, whole.breakage, whole.closing) == (D("60.00"), D("0.00"), D("0.00"))
    assert redemptions_by_staff(ALL_2026) == [
        RedemptionRow("Sam Trainer", "Yoga", "GBP", 1, 0, D("0.00")),
        RedemptionRow(MEMBERSHIPS, "Yoga", "GBP", 0, 0, D("60.00")),
    ]


def test_a_membership_paid_late_recognises_the_elapsed_time_at_once(clock, make_pack, desk, client_a, yoga):
    pack = make_pack([LineData(yoga, unlimited=True)], price=D("60.00"), validity_amount=30, validity_unit="days")
    clock.shift(timedelta(days=10))
    desk.sell(client_a, pack, received_at=START)  # its window started 10 days ago
    now = datetime.now(LONDON)
    grant = CreditGrant.objects.get()
    left = D(6000) * D((grant.expires_at - now) / timedelta(microseconds=1)) / D(
        (grant.expires_at - grant.valid_from) / timedelta(microseconds=1))
    row = gbp((START, now + timedelta(seconds=1)))
    assert row.sales == D("60.00")
    assert row.closing == (left.quantize(D(1)) / 100).quantize(D("0.01"))
    assert row.redemptions == D("60.00") - row.closing and row.ties_out


def test_a_membership_valid_from_first_booking_waits_for_it(clock, make_pack, desk, client_a, yoga):
    pack = make_pack([LineData(yoga, unlimited=True)], price=D("60.00"), validity_amount=30,
                     validity_unit="days", valid_from="booking")
    desk.sell(client_a, pack)
    clock.shift(timedelta(days=20))
    assert deferred_revenue_total(datetime.now(LONDON)) == {"GBP": D("60.00")}
    desk.book(client_a, yoga)
    grant = CreditGrant.objects.get()
    assert deferred_revenue_total(grant.valid_from + (grant.expires_at - grant.valid_from) / 2) == {"GBP": D("30.00")}


def test_an_opening_balance_is_worth_its_opening_value(clock, client_a, pt, desk, staff_user):
    credits_import_opening(
        client=client_a, session_type=pt, credits=10, expires_at=None, value=D("150.00"),
        currency="GBP", actor=staff_user, key="import:test:1",
    )
    clock.shift(timedelta(hours=1))
    desk.book(client_a, pt)
    assert deferred_revenue(datetime.now(LONDON) + timedelta(seconds=1)) == [
        DeferredRow("GBP", "Opening balance", "PT", 9, D("135.00"))
    ]
    row = gbp(ALL_2026)
    # Brought in from the previous system: an adjustment, not a sale of this period.
    assert (row.sales, row.adjustments, row.redemptions, row.closing) == (
        D("0.00"), D("150.00"), D("15.00"), D("135.00"),
    )


def test_a_goodwill_adjustment_is_worth_nothing_and_a_removal_takes_value(
    clock, make_pack, desk, client_a, client_b, pt, staff_user,
):
    credits_adjust(client=client_a, session_type=pt, amount=3, reason="goodwill", actor=staff_user)
    assert deferred_revenue(datetime.now(LONDON) + timedelta(seconds=1)) == [
        DeferredRow("GBP", "Adjustment", "PT", 3, D("0.00"))
    ]
    desk.sell(client_b, make_pack([LineData(pt, credits=5)], name="Five PT", price=D("100.00")))
    clock.shift(timedelta(hours=1))
    credits_adjust(client=client_b, session_type=pt, amount=-2, reason="miscounted", actor=staff_user)
    row = gbp(ALL_2026)
    assert (row.sales, row.adjustments, row.closing, row.ties_out) == (D("100.00"), D("-40.00"), D("60.00"), True)


def test_a_credit_held_for_a_booking_before_payment_is_its_share_of_the_price(
    clock, make_pack, desk, client_a, pt, staff_user,
):
    pack = make_pack([LineData(pt, credits=10)], name="Ten PT", price=D("100.00"))
    booking = desk.book(client_a, pt, sell_pack=pack)
    assert booking.purchase.status == PurchaseStatus.PENDING
    held = CreditGrant.objects.get(reservation=True)
    assert held.quantity == 1
    before = gbp((START, datetime.now(LONDON) + timedelta(seconds=1)))
    assert (before.sales, before.redemptions, before.closing) == (D("10.00"), D("10.00"), D("0.00"))
    clock.shift(timedelta(hours=1))
    payment_record(purchase=booking.purchase, method=PaymentMethod.CASH, amount=D("100.00"), actor=staff_user)
    assert deferred_revenue(datetime.now(LONDON) + timedelta(seconds=1)) == [
        DeferredRow("GBP", "Ten PT", "PT", 9, D("90.00"))
    ]
    assert gbp(ALL_2026).sales == D("100.00")


# --- Every report against the ledger ----------------------------------------------------------


def test_each_report_ties_to_the_ledger_and_filters_partition_it(
    clock, make_pack, desk, client_a, client_b, pt, yoga, trainer, staff_user, jo, massage,
):
    mix = make_pack([LineData(pt, credits=3), LineData(yoga, credits=4, validity_amount=10,
                    validity_unit="days")], name="Mix", price=D("77.77"))
    solo = make_pack([LineData(pt, credits=7)], name="Solo", price=D("99.99"), all_staff=False,
                     staff_prices=[(trainer, D("105.00"))])
    first = desk.sell(client_a, mix)
    desk.sell(client_b, solo, staff_member=trainer)
    clock.shift(timedelta(hours=2))
    kept = desk.book(client_a, pt)
    cancelled = desk.book(client_a, yoga, days=5)
    late = desk.book(client_b, pt, days=1)
    missed = desk.book(client_b, pt)
    booking_cancel(booking=cancelled, actor=staff_user)  # in time: the credit comes back
    clock.shift(timedelta(days=1, hours=12))
    booking_cancel(booking=late, actor=staff_user)  # late: the credit stays used
    clock.shift(timedelta(days=3))
    booking_mark_no_show(booking=missed, actor=staff_user)
    clock.move_to(datetime(2026, 1, 20, 9, tzinfo=LONDON))
    credits_expire_due()
    refund_create(purchase=first, amount=D("20.00"), reason="goodwill", actor=staff_user)
    credits_adjust(client=client_b, session_type=pt, amount=-1, reason="count", actor=staff_user)
    assert kept.pk and LedgerEntry.objects.filter(kind=EntryKind.FORFEITED).count() == 2

    def ledger(kind):
        return LedgerEntry.objects.filter(kind=kind).aggregate(s=Sum("amount"))["s"] or 0

    assert sum(r.credits for r in breakage(ALL_2026)) == -ledger(EntryKind.EXPIRED) > 0
    staff_rows = redemptions_by_staff(ALL_2026)
    assert sum(r.credits for r in staff_rows) == -(ledger(EntryKind.USED) + ledger(EntryKind.RETURNED)) == 3
    assert [(r.staff_member, r.session_type, r.sessions) for r in staff_rows] == [("Sam Trainer", "PT", 3)]
    now = datetime.now(LONDON) + timedelta(seconds=1)
    rows = deferred_revenue(now)
    assert sum(r.credits for r in rows) == ClientBalance.objects.aggregate(s=Sum("balance"))["s"]
    whole = gbp(ALL_2026)
    assert whole.ties_out and whole.closing == deferred_revenue_total(now)["GBP"]
    assert whole.redemptions == sum(r.value for r in staff_rows)
    assert whole.breakage == sum(r.value for r in breakage(ALL_2026))
    # Entry values telescope: what the entries moved is the change in deferred revenue.
    assert sum(v for _, v, _ in entry_values(ALL_2026)) == int(whole.closing * 100)

    # Each filter narrows the grants counted; the parts still tie out and add up to the whole.
    by_type = [gbp(ReportFilters(start=ALL_2026.start, end=ALL_2026.end, session_type_id=t.pk)) for t in (pt, yoga)]
    by_pack = [gbp(ReportFilters(start=ALL_2026.start, end=ALL_2026.end, pack_id=p.pk)) for p in (mix, solo)]
    for parts in (by_type, by_pack):
        assert all(p.ties_out for p in parts)
        for field in ("opening", "sales", "redemptions", "breakage", "refunds", "adjustments", "closing"):
            assert sum(getattr(p, field) for p in parts) == getattr(whole, field), field
    sold_by_trainer = gbp(ReportFilters(start=ALL_2026.start, end=ALL_2026.end, staff_member_id=trainer.pk))
    assert sold_by_trainer.sales == D("105.00") and sold_by_trainer.ties_out
    assert roll_forward(ReportFilters(start=ALL_2026.start, end=ALL_2026.end, staff_member_id=jo.pk)) == []
    classes = Category.objects.get(name="Classes")
    assert gbp(ReportFilters(start=ALL_2026.start, end=ALL_2026.end, category_id=classes.pk)) == by_type[1]
    assert redemptions_by_staff(ReportFilters(staff_member_id=jo.pk)) == []


def test_the_roll_forward_needs_both_dates():
    with pytest.raises(ValueError, match="start and an end"):
        roll_forward(ReportFilters(start=date(2026, 1, 1)))
