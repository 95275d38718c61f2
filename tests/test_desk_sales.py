"""Selling at the desk: recording in-person payments, and packs sold on the spot to book a client.

An on-the-spot sale is a pending purchase whose one reserved credit holds the booking; the rest
of its credits are issued when the payment is recorded. Until then it is an outstanding payment.
"Restrict to" (new joiners, active members) is checked here too, when a pack is sold.
"""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.models import SessionType
from catalog.services import pack_update
from catalog.validation import LineData
from core.bookings import booking_cancel, booking_create, booking_mark_no_show
from core.exceptions import InvalidBookingChange
from core.models import Booking, BookingStatus, BusinessSettings
from ledger.exceptions import NoCreditAvailable
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, LedgerEntry
from payments.exceptions import InvalidPayment, InvalidPurchaseState, PackNotForSale
from payments.models import Payment, PaymentMethod, Purchase, PurchaseStatus
from payments.selectors import outstanding_purchases
from payments.services import payment_record, purchase_create

pytestmark = pytest.mark.django_db


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


@pytest.fixture(autouse=True)
def ledger_balances_after_each_scenario(db):
    """Refusals included: whatever a test did or was refused, the ledger still proves itself."""
    yield
    assert_ledger_ok()


def from_now(**delta):
    return timezone.now() + timedelta(**delta)


@pytest.fixture
def ten_pack(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"))


@pytest.fixture
def sell_on_the_spot(staff_user):
    def do(client, session, pack):
        return booking_create(client=client, session=session, actor=staff_user, sell_pack=pack)

    return do


def nothing_written():
    return not (
        Purchase.objects.exists() or Booking.objects.exists() or LedgerEntry.objects.exists()
        or CreditGrant.objects.exists() or Payment.objects.exists()
    )


# --- Recording a payment at the desk ------------------------------------------------------------


@pytest.fixture
def pending(client_a, ten_pack, staff_user):
    return purchase_create(client=client_a, pack=ten_pack, actor=staff_user)


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        (
            {"amount": Decimal("299.99")}, InvalidPayment,
            "The amount must be the purchase's price, 300.00 GBP (got 299.99).",
        ),
        ({"amount": 300.0}, InvalidPayment, "The amount must be the purchase's price, 300.00 GBP (got 300.0)."),
        ({"method": "stripe"}, InvalidPayment, "Record cash, card-terminal or bank-transfer payments here."),
        ({"method": "cheque"}, InvalidPayment, "Record cash, card-terminal or bank-transfer payments here."),
        (
            {"received_at": "future"}, InvalidPayment, "A payment cannot be received in the future.",
        ),
    ],
)
def test_payment_record_refuses_with_text_and_writes_nothing(pending, staff_user, kwargs, error, text):
    args = {"method": PaymentMethod.CASH, "amount": Decimal("300.00")} | kwargs
    if args.get("received_at") == "future":
        args["received_at"] = from_now(minutes=5)
    with pytest.raises(error) as refused:
        payment_record(purchase=pending, actor=staff_user, **args)
    assert str(refused.value) == text
    pending.refresh_from_db()
    assert (pending.status, pending.paid_at) == (PurchaseStatus.PENDING, None)
    assert not Payment.objects.exists()
    assert not CreditGrant.objects.exists()
    assert not LedgerEntry.objects.exists()


def test_payment_record_refuses_an_already_paid_purchase(pending, client_a, massage, staff_user):
    payment_record(purchase=pending, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
    with pytest.raises(InvalidPurchaseState) as refused:
        payment_record(purchase=pending, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
    assert str(refused.value) == f"Purchase #{pending.pk} is paid: nothing to record."
    assert Payment.objects.count() == 1
    assert balance(client_a, massage) == 10
    assert_ledger_ok()


def test_payment_record_pays_and_issues_credits_from_the_snapshot(
    pending, ten_pack, client_a, massage, staff_user
):
    # The pack changes after the sale: the client still gets what they bought.
    pack_update(pack=ten_pack, actor=staff_user, lines=[LineData(massage, credits=5)], price=Decimal("180.00"))
    received = from_now(days=-2)

    payment = payment_record(
        purchase=pending, method=PaymentMethod.CARD_TERMINAL, amount=Decimal("300.00"),
        actor=staff_user, reference="  T-4411 ", received_at=received,
    )

    assert (payment.method, payment.amount, payment.currency) == ("card_terminal", Decimal("300.00"), "GBP")
    assert (payment.reference, payment.recorded_by, payment.received_at) == ("T-4411", staff_user, received)
    pending.refresh_from_db()
    assert (pending.status, pending.paid_at) == (PurchaseStatus.PAID, received)
    grant = pending.grants.get()
    assert (grant.quantity, grant.remaining, grant.valid_from) == (10, 10, received)
    assert LedgerEntry.objects.get(grant=grant).kind == EntryKind.ISSUED
    assert balance(client_a, massage) == 10
    assert pending not in outstanding_purchases()
    assert_ledger_ok()


# --- Selling on the spot ------------------------------------------------------------------------


def test_on_the_spot_sale_holds_the_booking_with_one_reserved_credit(
    client_a, massage, ten_pack, session_at, sell_on_the_spot, staff_user
):
    session = session_at(from_now(days=2))
    booking = sell_on_the_spot(client_a, session, ten_pack)

    purchase = booking.purchase
    assert (purchase.status, purchase.client, purchase.price) == (PurchaseStatus.PENDING, client_a, Decimal("300.00"))
    reserved = booking.used_entry.grant
    assert (reserved.reservation, reserved.quantity, reserved.remaining) == (True, 1, 0)
    assert reserved.purchase_id == purchase.pk
    assert booking.used_entry.booking_id == booking.pk
    assert balance(client_a, massage) == 0  # the reserved credit is already used

    listed = outstanding_purchases().get()
    assert (listed.pk, listed.sessions_used, listed.first_session_at) == (purchase.pk, 1, session.starts_at)
    assert_ledger_ok()

    payment_record(purchase=purchase, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)

    assert balance(client_a, massage) == 9
    assert sorted(g.quantity for g in purchase.grants.all()) == [1, 9]
    assert not outstanding_purchases().exists()
    booking.refresh_from_db()
    assert (booking.status, booking.purchase_id) == (BookingStatus.BOOKED, purchase.pk)
    assert_ledger_ok()


def test_unlimited_pack_sold_on_the_spot(client_a, massage, make_pack, session_at, sell_on_the_spot, staff_user):
    membership = make_pack([(massage, True, None)], name="Unlimited massage", validity_amount=1)
    booking = sell_on_the_spot(client_a, session_at(from_now(days=2)), membership)
    assert booking.used_entry.amount == -1  # the reserved credit is an ordinary one
    assert balance(client_a, massage) == 0

    payment_record(purchase=booking.purchase, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)

    unlimited = booking.purchase.grants.get(reservation=False)
    assert unlimited.unlimited
    again = booking_create(client=client_a, session=session_at(from_now(days=5)), actor=staff_user)
    assert (again.used_entry.grant_id, again.used_entry.amount) == (unlimited.pk, 0)
    assert balance(client_a, massage) == 0
    assert_ledger_ok()


def test_pack_without_the_session_type_cannot_be_sold_on_the_spot(
    client_a, physio, make_pack, session_at, sell_on_the_spot
):
    physio_pack = make_pack([(physio, False, 5)], name="Five physio")
    with pytest.raises(NoCreditAvailable) as refused:
        sell_on_the_spot(client_a, session_at(from_now(days=2)), physio_pack)
    assert str(refused.value) == "Five physio has no Massage 60 credits."
    assert nothing_written()


def test_prepaid_only_forbids_selling_on_the_spot(client_a, ten_pack, session_at, sell_on_the_spot):
    settings_row = BusinessSettings.current()
    settings_row.prepaid_only = True
    settings_row.save()
    with pytest.raises(InvalidBookingChange) as refused:
        sell_on_the_spot(client_a, session_at(from_now(days=2)), ten_pack)
    assert str(refused.value) == (
        "Prepaid only: this business books clients only once their pack is paid. "
        "Sell the pack and record the payment first."
    )
    assert nothing_written()


def test_unpaid_booking_whose_session_started_stays_outstanding(
    client_a, ten_pack, session_at, sell_on_the_spot, staff_user, monkeypatch
):
    started = session_at(from_now(minutes=30))
    booking = sell_on_the_spot(client_a, started, ten_pack)
    later = started.starts_at + timedelta(hours=1)  # the session has begun; nobody has paid
    monkeypatch.setattr(timezone, "now", lambda: later)
    booking_mark_no_show(booking=booking, actor=staff_user)

    listed = outstanding_purchases().get()
    assert listed.pk == booking.purchase_id
    assert listed.sessions_used == 1
    assert listed.first_session_at == started.starts_at < later
    assert_ledger_ok()


def test_client_with_credit_uses_it_and_buys_nothing(
    client_a, massage, ten_pack, sell, session_at, sell_on_the_spot
):
    grant = sell(client_a, ten_pack).grants.get()
    booking = sell_on_the_spot(client_a, session_at(from_now(days=2)), ten_pack)
    assert booking.purchase is None
    assert booking.used_entry.grant_id == grant.pk
    assert Purchase.objects.count() == 1
    assert balance(client_a, massage) == 9
    assert not outstanding_purchases().exists()


def test_per_staff_price_is_charged_for_the_sessions_staff_member(
    client_a, client_b, massage, make_pack, jo, session_at, sell_on_the_spot
):
    pack = make_pack([(massage, False, 10)], price=Decimal("300.00"), staff_prices=[(jo, Decimal("350.00"))])
    with_jo = sell_on_the_spot(client_a, session_at(from_now(days=2), staff_member=jo), pack)
    with_coach = sell_on_the_spot(client_b, session_at(from_now(days=2)), pack)
    assert (with_jo.purchase.price, with_jo.purchase.staff_member) == (Decimal("350.00"), jo)
    assert with_coach.purchase.price == Decimal("300.00")
    with pytest.raises(InvalidPayment, match="must be the purchase's price, 350.00 GBP"):
        payment_record(purchase=with_jo.purchase, method="cash", amount=Decimal("300.00"), actor=None)
    assert_ledger_ok()


def test_pack_limited_to_other_staff_cannot_be_sold_for_this_session(
    client_a, massage, make_pack, jo, session_at, sell_on_the_spot
):
    jo_only = make_pack([(massage, False, 10)], name="Jo's ten", all_staff=False, staff_prices=[(jo,)])
    with pytest.raises(PackNotForSale, match="Jo's ten is not sold with Coach Carter"):
        sell_on_the_spot(client_a, session_at(from_now(days=2)), jo_only)
    assert nothing_written()


def test_new_joiner_offer_can_pay_for_a_first_booking(client_a, massage, make_pack, session_at, sell_on_the_spot):
    """The booking being made is not an earlier booking: a first-timer may buy the intro offer."""
    intro = make_pack([(massage, False, 2)], name="Intro offer", restrict_to="new_joiners", price=Decimal("49.00"))
    booking = sell_on_the_spot(client_a, session_at(from_now(days=2)), intro)
    assert booking.purchase.price == Decimal("49.00")

    # Their second visit is not a first one: the offer is refused and nothing is kept.
    second = session_at(from_now(days=4))
    with pytest.raises(PackNotForSale, match="Intro offer is for new joiners only, and Ada Lovelace has booked before"):
        sell_on_the_spot(client_a, second, intro)
    assert not Booking.objects.filter(session=second).exists()
    assert Purchase.objects.count() == 1
    assert_ledger_ok()


def test_members_pack_cannot_be_sold_on_a_clients_first_booking(
    client_a, massage, make_pack, session_at, sell_on_the_spot
):
    members = make_pack([(massage, False, 10)], name="Members' ten", restrict_to="active_members")
    with pytest.raises(PackNotForSale, match="for existing members only"):
        sell_on_the_spot(client_a, session_at(from_now(days=2)), members)
    assert nothing_written()


def test_session_type_not_requiring_credit_never_sells_a_pack(
    client_a, category, diary, ten_pack, session_at, sell_on_the_spot
):
    open_gym = SessionType.objects.create(name="Open gym", category=category, requires_credit=False)
    diary.session_types.add(open_gym)
    booking = sell_on_the_spot(client_a, session_at(from_now(days=2), session_type=open_gym), ten_pack)
    assert (booking.purchase, booking.used_entry) == (None, None)
    assert not Purchase.objects.exists()


# --- Restrict to (checked when a pack is sold) --------------------------------------------------


@pytest.fixture
def paid_up(client_a, ten_pack, sell):
    """Ada holds ten paid massage credits."""
    return sell(client_a, ten_pack)


@pytest.fixture
def book(staff_user):
    def do(client, session):
        return booking_create(client=client, session=session, actor=staff_user)

    return do


@pytest.fixture
def intro(make_pack, massage):
    return make_pack([(massage, False, 2)], name="Intro offer", restrict_to="new_joiners", price=Decimal("49.00"))


@pytest.fixture
def members(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Members' ten", restrict_to="active_members")


def test_new_joiners_pack_refused_once_the_client_has_booked(
    client_a, paid_up, intro, session_at, book, staff_user
):
    booking = book(client_a, session_at(from_now(days=3)))
    with pytest.raises(PackNotForSale) as refused:
        purchase_create(client=client_a, pack=intro, actor=staff_user)
    assert str(refused.value) == "Intro offer is for new joiners only, and Ada Lovelace has booked before."

    # A booking cancelled in time is as if it never happened.
    booking_cancel(booking=booking, actor=staff_user)
    assert purchase_create(client=client_a, pack=intro, actor=staff_user).pk


def test_a_late_cancelled_booking_still_makes_a_member(client_a, paid_up, intro, members, session_at, book, staff_user):
    booking_cancel(booking=book(client_a, session_at(from_now(hours=2))), actor=staff_user)
    with pytest.raises(PackNotForSale, match="for new joiners only"):
        purchase_create(client=client_a, pack=intro, actor=staff_user)
    assert purchase_create(client=client_a, pack=members, actor=staff_user).pk


def test_active_members_pack_refused_for_a_client_with_no_bookings(
    client_a, client_b, paid_up, members, session_at, book, staff_user
):
    with pytest.raises(PackNotForSale) as refused:
        purchase_create(client=client_b, pack=members, actor=staff_user)
    assert str(refused.value) == "Members' ten is for existing members only, and Grace Hopper has not booked yet."

    booking_cancel(booking=book(client_a, session_at(from_now(days=3))), actor=staff_user)
    with pytest.raises(PackNotForSale, match="has not booked yet"):  # cancelled in time: not a member
        purchase_create(client=client_a, pack=members, actor=staff_user)

    book(client_a, session_at(from_now(days=4)))
    assert purchase_create(client=client_a, pack=members, actor=staff_user).pk


def test_walk_in_sold_a_pack_after_their_session_began_gets_a_credit_for_it(
    client_a, session_at, ten_pack, sell_on_the_spot, staff_user, massage
):
    session = session_at(from_now(minutes=-10))
    booking = sell_on_the_spot(client_a, session, ten_pack)
    held = booking.used_entry.grant
    assert held.reservation and held.valid_from == session.starts_at
    payment_record(purchase=booking.purchase, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
    assert balance(client_a, massage) == 9
