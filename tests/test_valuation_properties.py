"""The roll-forward ties out exactly on randomised histories made through the real services.

A hypothesis state machine sells packs (counted, unlimited, mixed, another currency, held for a
booking before payment), books, cancels, marks no-shows, refunds, expires, adjusts, imports
opening balances and voids, with the clock moved by time_machine. For random cut moments it
checks that each period's roll-forward ties out to the penny, that one period's closing is the
next one's opening and the deferred revenue at that moment, and that the deferred revenue equals
an independent Python reading of the valuation rules (docs/reports.md) over the same rows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test

from catalog.models import Category, SessionType
from catalog.services import pack_create
from catalog.validation import LineData, StaffPriceData
from core.bookings import booking_cancel, booking_create, booking_mark_no_show
from core.models import Booking, BookingStatus, Client, StaffMember
from core.sessions import session_create
from ledger.exceptions import InvalidAdjustment, InvalidVoid, NoCreditAvailable
from ledger.expiry import credits_expire_due
from ledger.imports import credits_import_opening
from ledger.models import ClientBalance, CreditGrant, EntryKind, GrantState, LedgerEntry
from ledger.services import credits_adjust, grant_void
from payments.exceptions import InvalidRefund
from payments.models import PaymentMethod, Purchase, PurchaseStatus
from payments.refunds import refund_create, refundable_amount
from payments.services import payment_record, purchase_create, purchase_mark_paid
from reports.filters import ReportFilters, as_of_moment
from reports.valuation import (
    breakage,
    deferred_revenue,
    deferred_revenue_total,
    redemptions_by_staff,
    roll_forward,
    roll_forward_between,
)
from reports.valuation_sql import epoch_us

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

LONDON = ZoneInfo("Europe/London")
START = datetime(2026, 3, 20, 9, 0, tzinfo=LONDON)  # a clock change falls inside the histories
CLIENTS = 3
GRID = timedelta(minutes=10)


# --- The rules again, read independently in Python (small histories only) --------------------


def rhu(a: int, b: int) -> int:
    return (2 * a + b) // (2 * b)


def purchase_values(purchase: Purchase, reserved: set[int]) -> dict[tuple[int, bool, bool], int]:
    """(session type, unlimited, reservation) → value in minor units, from the snapshot."""
    m = int(purchase.price * 100)
    lines = purchase.snapshot["lines"]
    counted = [(n, line) for n, line in enumerate(lines, 1) if not line["unlimited"]]
    unlimited = [line for line in lines if line["unlimited"]]
    c = sum(line["credits"] for _, line in counted)
    shares = len(unlimited) + (1 if c else 0)
    share = [m // shares + (1 if i < m % shares else 0) for i in range(shares)]
    out = {(line["session_type_id"], True, False): share[i + (1 if c else 0)] for i, line in enumerate(unlimited)}
    if not c:
        return out
    mc, pieces = share[0], []
    for n, line in counted:
        held = line["session_type_id"] in reserved
        if held:
            pieces.append(((line["session_type_id"], False, True), 1, 2 * n))
        if line["credits"] - held:
            pieces.append(((line["session_type_id"], False, False), line["credits"] - held, 2 * n + 1))
    floors = {key: mc * credits // c for key, credits, _ in pieces}
    left = mc - sum(floors.values())
    ranked = sorted(pieces, key=lambda p: (-(mc * p[1] % c), p[2]))
    for key, _, _ in ranked[:left]:
        floors[key] += 1
    return {**out, **floors}


def oracle_deferred(t: datetime) -> dict[str, Decimal]:
    entries = defaultdict(list)
    for e in LedgerEntry.objects.order_by("created_at", "id"):
        entries[e.grant_id].append(e)
    reserved = defaultdict(set)
    for g in CreditGrant.objects.filter(reservation=True):
        reserved[g.purchase_id].add(g.session_type_id)
    totals: dict[str, int] = defaultdict(int)
    for g in CreditGrant.objects.select_related("purchase"):
        if g.purchase is None:
            v = int((g.opening_value or 0) * 100)
            currency = g.opening_currency or "GBP"
        else:
            values = purchase_values(g.purchase, reserved[g.purchase_id])
            v = values.get((g.session_type_id, g.unlimited, g.reservation and not g.unlimited), 0)
            currency = g.purchase.currency
        before = [e for e in entries[g.pk] if e.created_at < t]
        if not g.unlimited:
            totals[currency] += rhu(v * sum(e.amount for e in before), g.quantity)
            continue
        if not before or any(e.kind in (EntryKind.VOIDED, EntryKind.EXPIRED) for e in before):
            continue
        uses = [e for e in entries[g.pk] if e.kind == EntryKind.USED]
        known = None
        if g.valid_from is not None:
            known = entries[g.pk][0] if g.valid_from_rule == "payment" or not uses else uses[0]
        if known is None or known.created_at >= t:
            totals[currency] += v
            continue
        s, e_ = epoch_us(g.valid_from), epoch_us(g.expires_at)
        left = min(max(e_ - epoch_us(t), 0), e_ - s)
        totals[currency] += rhu(v * left, e_ - s)
    return {c: Decimal(v) / 100 for c, v in totals.items() if v}


def nonzero(totals: dict) -> dict:
    return {c: v for c, v in totals.items() if v}


# --- The machine ------------------------------------------------------------------------------


class ValuationMachine(RuleBasedStateMachine):
    world: dict
    seen: Counter

    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self._travel = time_machine.travel(START, tick=False)
        self.clock = self._travel.start()
        self.starts: set[datetime] = set()
        self.keys = 0

    def teardown(self):
        try:
            now = timezone.now()
            span = (now - START) / 4
            self.check_periods([START - timedelta(days=1)] + [START + span * k for k in range(1, 4)]
                               + [now + timedelta(seconds=1), now + timedelta(days=40)])
        finally:
            self._travel.stop()
            transaction.set_rollback(True)
            self._atomic.__exit__(None, None, None)

    def event(self, name):
        self.seen[name] += 1

    @property
    def actor(self):
        return self.world["actor"]

    # --- helpers -----------------------------------------------------------------------------

    def session_for(self, session_type, days):
        start = timezone.now() + timedelta(days=days)
        start -= timedelta(minutes=start.minute % 10, seconds=start.second, microseconds=start.microsecond)
        start += GRID
        while start in self.starts:
            start += GRID
        self.starts.add(start)
        return session_create(
            session_type=session_type, staff_member=self.world["trainer"], starts_at=start,
            actor=self.actor, duration_minutes=5, outside_hours_reason="any hour",
        )

    def check_periods(self, cuts):
        cuts = sorted(set(cuts))
        closing = nonzero(deferred_revenue_total(cuts[0]))
        assert closing == oracle_deferred(cuts[0])
        for a, b in zip(cuts, cuts[1:]):
            rows = {r.currency: r for r in roll_forward_between(a, b)}
            for row in rows.values():
                assert row.ties_out, (a, b, row, row.difference)
            assert nonzero({c: r.opening for c, r in rows.items()}) == closing, (a, b)
            closing = nonzero({c: r.closing for c, r in rows.items()})
            assert closing == nonzero(deferred_revenue_total(b)) == oracle_deferred(b), (a, b)
        self.event("periods checked")

    # --- rules -------------------------------------------------------------------------------

    @rule(hours=st.sampled_from([1, 5, 24, 24 * 3, 24 * 8, 24 * 15, 24 * 25]))
    def advance(self, hours):
        self.clock.shift(timedelta(hours=hours))

    @rule(client=st.integers(0, CLIENTS - 1), pack=st.integers(0, 6),
          how=st.sampled_from(["cash", "cash", "mark_paid", "backdated"]), days_ago=st.integers(1, 40))
    def buy(self, client, pack, how, days_ago):
        pack = self.world["packs"][pack]
        staff = None if pack.all_staff else self.world["trainer"]
        purchase = purchase_create(client=self.world["clients"][client], pack=pack, actor=self.actor,
                                   staff_member=staff)
        if how == "mark_paid":
            purchase_mark_paid(purchase=purchase, actor=self.actor)
        else:
            received = timezone.now() - timedelta(days=days_ago) if how == "backdated" else None
            payment_record(purchase=purchase, method=PaymentMethod.CASH, amount=purchase.price,
                           actor=self.actor, received_at=received)
        self.event(f"buy {how}")

    @rule(data=st.data(), days=st.sampled_from([0, 0, 1, 2, 5, 12]), sell=st.sampled_from([None, None, 0, 1, 2, 5]))
    def book(self, data, days, sell):
        # Mostly where the client holds credits, so that uses are common; sometimes anywhere.
        held = sorted(set(CreditGrant.objects.filter(state=GrantState.ACTIVE).filter(
            Q(unlimited=True) | Q(remaining__gt=0)).values_list("client_id", "session_type_id")))
        ids = [c.pk for c in self.world["clients"]], [t.pk for t in self.world["types"]]
        held = [(ids[0].index(c), ids[1].index(t)) for c, t in held]
        anywhere = st.tuples(st.integers(0, CLIENTS - 1), st.integers(0, 1))
        client, type_ = data.draw(st.one_of(st.sampled_from(held), st.sampled_from(held), anywhere)
                                  if held else anywhere)
        session_type = self.world["types"][type_]
        pack = None if sell is None else self.world["packs"][sell]
        if pack is not None and session_type.pk not in {line.session_type_id for line in pack.credit_lines.all()}:
            pack = None
        session = self.session_for(session_type, days)
        try:
            booking = booking_create(client=self.world["clients"][client], session=session,
                                     actor=self.actor, sell_pack=pack)
        except NoCreditAvailable:
            self.event("book refused")
            return
        self.event("book on a held credit" if booking.purchase_id else "book")

    @precondition(lambda self: Purchase.objects.filter(status=PurchaseStatus.PENDING).exists())
    @rule()
    def pay_held(self):
        purchase = Purchase.objects.filter(status=PurchaseStatus.PENDING).order_by("pk").first()
        payment_record(purchase=purchase, method=PaymentMethod.CARD_TERMINAL, amount=purchase.price,
                       actor=self.actor)
        self.event("pay a held purchase")

    @rule(data=st.data(), override=st.sampled_from([None, None, "return", "forfeit"]), miss=st.booleans())
    def cancel_or_miss(self, data, override, miss):
        booked = list(Booking.objects.filter(status=BookingStatus.BOOKED).select_related("session").order_by("pk"))
        if not booked:
            return
        booking = data.draw(st.sampled_from(booked))
        reason = "desk decision" if override else ""
        if miss:
            # The client does not come: the desk marks it once the session has started.
            if booking.session.starts_at > timezone.now():
                self.clock.move_to(booking.session.starts_at + timedelta(minutes=30))
            booking_mark_no_show(booking=booking, actor=self.actor, override=override, reason=reason)
            self.event("no-show")
        else:
            booking_cancel(booking=booking, actor=self.actor, override=override, reason=reason)
            self.event("cancel")

    @rule(data=st.data(), part=st.sampled_from([1, 2, 3, 4]))
    def refund(self, data, part):
        paid = list(Purchase.objects.filter(status=PurchaseStatus.PAID, payments__isnull=False).order_by("pk"))
        if not paid:
            return
        purchase = data.draw(st.sampled_from(paid))
        cents = int(refundable_amount(purchase) * 100)
        amount = Decimal(max(1, cents // part if part < 4 else data.draw(st.integers(1, cents)))) / 100
        try:
            refund_create(purchase=purchase, amount=amount, reason="client asked", actor=self.actor)
        except InvalidRefund:
            self.event("refund refused")
            return
        self.event("refund")

    @rule(days=st.integers(0, 30))
    def expire(self, days):
        """The nightly sweep, some days on."""
        self.clock.shift(timedelta(days=days))
        if credits_expire_due():
            self.event("expire")

    @rule(data=st.data(), amount=st.integers(-3, 3).filter(bool))
    def adjust(self, data, amount):
        # Removals mostly where there are counted credits to remove.
        held = list(CreditGrant.objects.filter(state=GrantState.ACTIVE, remaining__gt=0)
                    .values_list("client", "session_type").order_by("client", "session_type").distinct())
        pairs = [(c.pk, t.pk) for c in self.world["clients"] for t in self.world["types"]]
        client, type_ = data.draw(st.sampled_from(held if held and amount < 0 else pairs))
        try:
            credits_adjust(client=Client.objects.get(pk=client), session_type=SessionType.objects.get(pk=type_),
                           amount=amount, reason="count", actor=self.actor)
        except InvalidAdjustment:
            return
        self.event("adjust up" if amount > 0 else "adjust down")

    @rule(client=st.integers(0, CLIENTS - 1), type_=st.integers(0, 1), credits=st.integers(1, 9),
          value=st.one_of(st.none(), st.integers(0, 20000)), currency=st.sampled_from(["GBP", "EUR"]))
    def import_opening(self, client, type_, credits, value, currency):
        self.keys += 1
        credits_import_opening(
            client=self.world["clients"][client], session_type=self.world["types"][type_], credits=credits,
            expires_at=None, value=None if value is None else Decimal(value) / 100, currency=currency,
            actor=self.actor, key=f"import:{self.keys}",
        )
        self.event("import")

    @rule(data=st.data())
    def void(self, data):
        active = list(CreditGrant.objects.filter(state=GrantState.ACTIVE).filter(
            Q(unlimited=True) | Q(remaining__gt=0)).order_by("pk"))
        if not active:
            return
        memberships = [g for g in active if g.unlimited]
        grant = data.draw(st.sampled_from(memberships if memberships and data.draw(st.booleans()) else active))
        quantity = data.draw(st.one_of(st.none(), st.integers(1, max(1, grant.remaining))))
        try:
            grant_void(grant=grant, actor=self.actor, note="invoice voided", quantity=quantity, source="adjustment")
        except InvalidVoid:
            return
        self.event("void unlimited" if grant.unlimited else "void")

    @rule(data=st.data())
    def check(self, data):
        now = timezone.now()
        offsets = data.draw(st.lists(st.integers(-24 * 60, int((now - START).total_seconds() // 60) + 24 * 60 * 30),
                                     min_size=2, max_size=4))
        self.check_periods([START + timedelta(minutes=m) for m in offsets])
        # Local-day ranges, as finance asks for them, with one random filter.
        first, last = sorted(timezone.localdate(START + timedelta(minutes=m)) for m in offsets[:2])
        f = data.draw(st.sampled_from(self.world["filters"]))
        filters = ReportFilters(start=first, end=last, **f)
        rows = roll_forward(filters)
        assert all(r.ties_out for r in rows), rows
        assert nonzero({r.currency: r.closing for r in rows}) == nonzero(
            deferred_revenue_total(as_of_moment(last), filters))
        self.check_ledger_totals(ReportFilters(start=first, end=last))

    def check_ledger_totals(self, filters):
        in_range = LedgerEntry.objects.filter(created_at__gte=filters.start_at, created_at__lt=filters.end_at)

        def total(*kinds):
            return in_range.filter(kind__in=kinds).aggregate(s=Sum("amount"))["s"] or 0

        assert sum(r.credits for r in breakage(filters)) == -total(EntryKind.EXPIRED)
        assert sum(r.credits for r in redemptions_by_staff(filters)) == -total(EntryKind.USED, EntryKind.RETURNED)
        now = timezone.now() + timedelta(seconds=1)
        assert sum(r.credits for r in deferred_revenue(now)) == (
            ClientBalance.objects.aggregate(s=Sum("balance"))["s"] or 0)
        self.event("ledger totals checked")


@pytest.fixture
def world(db, category, admin_user):
    classes = Category.objects.create(name="Classes")
    pt = SessionType.objects.create(name="PT", category=category, duration_minutes=60)
    yoga = SessionType.objects.create(name="Yoga", category=classes, duration_minutes=60)
    User = get_user_model()
    trainer = StaffMember.objects.create(user=User.objects.create_user("trainer"), display_name="Trainer")
    trainer.session_types.set([pt, yoga])

    def pack(name, lines, price, *, days=30, valid_from="payment", **fields):
        return pack_create(
            actor=admin_user, lines=lines, name=name, category=category, price=Decimal(price),
            currency=fields.pop("currency", "GBP"), published=True, validity_amount=days,
            validity_unit="days", valid_from=valid_from, **fields,
        )

    packs = [
        pack("Mix", [LineData(pt, credits=2), LineData(yoga, credits=2, validity_amount=10, validity_unit="days")], "49.00"),
        pack("Three PT", [LineData(pt, credits=3)], "100.00", days=14),
        pack("Yoga month", [LineData(yoga, unlimited=True)], "60.00", days=20),
        pack("Yoga from first booking", [LineData(yoga, unlimited=True)], "45.50", days=10, valid_from="booking"),
        pack("Combo", [LineData(yoga, unlimited=True), LineData(pt, credits=5)], "99.99"),
        pack("Five PT in euros", [LineData(pt, credits=5)], "77.77", currency="EUR", all_staff=False,
             staff_prices=[StaffPriceData(trainer, Decimal("80.01"))]),
        pack("PT from first session", [LineData(pt, credits=4)], "33.00", days=7, valid_from="first_session"),
    ]
    return {
        "clients": [Client.objects.create(name=f"Client {n}", email=f"v{n}@example.com") for n in range(CLIENTS)],
        "types": [pt, yoga], "trainer": trainer, "packs": packs, "actor": admin_user,
        "filters": [{}, {"session_type_id": pt.pk}, {"session_type_id": yoga.pk}, {"pack_id": packs[4].pk},
                    {"pack_id": packs[5].pk}, {"staff_member_id": trainer.pk}, {"category_id": classes.pk}],
    }


def test_the_roll_forward_ties_out_on_random_histories(world):
    ValuationMachine.world = world
    ValuationMachine.seen = Counter()
    run_state_machine_as_test(
        ValuationMachine,
        settings=settings(
            max_examples=25, stateful_step_count=40, deadline=None, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    seen = ValuationMachine.seen
    print(dict(sorted(seen.items())))
    for outcome in ("buy cash", "buy backdated", "book", "book on a held credit", "cancel", "no-show",
                    "refund", "expire", "adjust down", "import", "void", "void unlimited", "periods checked",
                    "ledger totals checked"):
        assert seen[outcome] > 0, f"never happened: {outcome}"
