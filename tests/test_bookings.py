"""Bookings and every credit rule: use, return, forfeit, overrides, attended, no-show.

Sessions are placed relative to the real clock; the two tests that need an exact instant (the
cancellation deadline, "from the session's day") pin django.utils.timezone.now.
"""
from datetime import datetime, time, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from catalog.models import SessionType
from catalog.validity import expiry_for
from core.bookings import booking_cancel, booking_create, booking_mark_attended, booking_mark_no_show
from core.exceptions import AlreadyBooked, InvalidBookingChange, PermissionRefused, SessionFull
from core.models import Booking, BookingStatus, Client
from ledger.exceptions import NoCreditAvailable
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry

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


def from_now(**delta) -> datetime:
    return timezone.now() + timedelta(**delta)


@pytest.fixture
def book(staff_user):
    def do(client, session, **kwargs):
        return booking_create(client=client, session=session, actor=staff_user, **kwargs)

    return do


@pytest.fixture
def massage_pack(make_pack, massage):
    return make_pack([(massage, False, 10)])


@pytest.fixture
def ten_massages(client_a, massage_pack, sell):
    """Ada holds 10 massage credits, paid ten days ago (so past sessions are inside the window)."""
    return sell(client_a, massage_pack, paid_at=from_now(days=-10)).grants.get()


@pytest.fixture
def manager(django_user_model):
    user = django_user_model.objects.create_user("manager", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="override_credit_rules"))
    return django_user_model.objects.get(pk=user.pk)  # a fresh instance: permissions are cached


def entries_for(booking, kind):
    return LedgerEntry.objects.filter(booking=booking, kind=kind)


# --- Booking uses a credit ----------------------------------------------------------------------


def test_booking_uses_one_credit_linked_both_ways(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(days=3)))

    booking.refresh_from_db()
    entry = booking.used_entry
    assert (booking.status, booking.booked_by, booking.purchase) == (BookingStatus.BOOKED, staff_user, None)
    assert (entry.kind, entry.amount, entry.balance_after) == (EntryKind.USED, -1, 9)
    assert entry.booking_id == booking.pk
    assert entry.grant_id == ten_massages.pk
    assert list(booking.ledger_entries.all()) == [entry]
    assert balance(client_a, massage) == 9
    ten_massages.refresh_from_db()
    assert ten_massages.remaining == 9
    assert_ledger_ok()


def test_booking_picks_the_soonest_expiring_grant_valid_for_type_staff_and_date(
    client_a, massage, physio, make_pack, sell, session_at, book, jo
):
    long = sell(client_a, make_pack([(massage, False, 5)], validity_amount=6)).grants.get()
    medium = sell(client_a, make_pack([(massage, False, 5)], validity_amount=2)).grants.get()
    jo_only = sell(
        client_a, make_pack([(massage, False, 5)], validity_amount=1, all_staff=False, staff_prices=[(jo,)])
    ).grants.get()
    sell(client_a, make_pack([(physio, False, 5)], validity_amount=1, validity_unit="weeks"))
    too_short = sell(
        client_a, make_pack([(massage, False, 5)], validity_amount=2, validity_unit="days")
    ).grants.get()

    with_coach = book(client_a, session_at(from_now(days=5)))  # after too_short's expiry
    assert with_coach.used_entry.grant_id == medium.pk

    with_jo = book(client_a, session_at(from_now(days=5), staff_member=jo))
    assert with_jo.used_entry.grant_id == jo_only.pk

    soon = book(client_a, session_at(from_now(days=1)))  # inside every window: the soonest wins
    assert soon.used_entry.grant_id == too_short.pk

    long.refresh_from_db()
    assert long.remaining == 5
    assert balance(client_a, massage) == 20 - 3
    assert_ledger_ok()


def test_unlimited_grant_books_only_inside_its_window(client_a, massage, make_pack, sell, session_at, book):
    sell(client_a, make_pack([(massage, True, None)], validity_amount=1, validity_unit="weeks"))

    inside = book(client_a, session_at(from_now(days=3)))
    assert (inside.used_entry.kind, inside.used_entry.amount) == (EntryKind.USED, 0)
    assert balance(client_a, massage) == 0

    later = session_at(from_now(days=10))
    with pytest.raises(NoCreditAvailable, match="outside their validity or staff"):
        book(client_a, later)
    assert not Booking.objects.filter(session=later).exists()
    assert_ledger_ok()


@pytest.mark.parametrize("rule", ["first_session", "booking"])
def test_validity_from_first_session_or_booking_opens_the_window_when_booked(
    client_a, massage, make_pack, sell, session_at, book, rule
):
    grant = sell(
        client_a, make_pack([(massage, False, 5)], valid_from=rule, validity_amount=1)
    ).grants.get()
    assert (grant.valid_from, grant.expires_at) == (None, None)
    session = session_at(from_now(days=5))

    before = timezone.now()
    book(client_a, session)

    grant.refresh_from_db()
    if rule == "first_session":
        assert grant.valid_from == session.starts_at
    else:
        assert before <= grant.valid_from <= timezone.now()
    assert grant.expires_at == expiry_for(grant.valid_from, 1, "months")
    assert_ledger_ok()


def test_session_type_without_credit_books_without_a_credit(client_a, category, diary, session_at, book, staff_user):
    open_gym = SessionType.objects.create(name="Open gym", category=category, requires_credit=False)
    diary.session_types.add(open_gym)

    booking = book(client_a, session_at(from_now(days=2), session_type=open_gym))
    assert (booking.status, booking.used_entry) == (BookingStatus.BOOKED, None)
    assert not LedgerEntry.objects.exists()

    cancelled = booking_cancel(booking=booking, actor=staff_user)
    assert cancelled.status == BookingStatus.CANCELLED
    assert not LedgerEntry.objects.exists()


# --- Refusals -----------------------------------------------------------------------------------


def test_no_credit_refuses_and_writes_nothing(client_a, massage, session_at, book):
    session = session_at(from_now(days=2))
    with pytest.raises(NoCreditAvailable) as refused:
        book(client_a, session)
    assert str(refused.value) == "No credit: the client holds no Massage 60 credits."
    assert not Booking.objects.exists()
    assert not LedgerEntry.objects.exists()
    assert not ClientBalance.objects.exists()


def test_all_credits_used_refuses_with_its_reason(client_a, massage, make_pack, sell, session_at, book):
    sell(client_a, make_pack([(massage, False, 1)]))
    book(client_a, session_at(from_now(days=2)))
    with pytest.raises(NoCreditAvailable) as refused:
        book(client_a, session_at(from_now(days=3)))
    assert str(refused.value) == "No credit: all of the client's Massage 60 credits are used, expired or voided."
    assert Booking.objects.count() == 1
    assert_ledger_ok()


def test_archived_client_is_refused(client_a, massage, ten_massages, session_at, book):
    client_a.archived = True
    client_a.save()
    with pytest.raises(InvalidBookingChange) as refused:
        book(client_a, session_at(from_now(days=2)))
    assert str(refused.value) == "Ada Lovelace is archived: unarchive the client to book them."
    assert not Booking.objects.exists()
    assert balance(client_a, massage) == 10


def test_already_booked_is_refused(client_a, massage, ten_massages, session_at, book):
    session = session_at(from_now(days=2), capacity=4)
    book(client_a, session)
    with pytest.raises(AlreadyBooked) as refused:
        book(client_a, session)
    assert str(refused.value) == "Ada Lovelace is already booked on this session."
    assert Booking.objects.count() == 1
    assert balance(client_a, massage) == 9
    assert_ledger_ok()


def test_full_session_is_refused(client_a, client_b, massage, massage_pack, sell, session_at, book):
    carol = Client.objects.create(name="Carol Shaw", email="carol@example.com")
    for client in (client_a, client_b, carol):
        sell(client, massage_pack)
    session = session_at(from_now(days=2), capacity=2)
    book(client_a, session)
    book(client_b, session)
    with pytest.raises(SessionFull) as refused:
        book(carol, session)
    assert str(refused.value) == "This session is full (2 of 2 places taken)."
    assert not Booking.objects.filter(client=carol).exists()
    assert balance(carol, massage) == 10
    assert_ledger_ok()


def test_a_cancelled_booking_frees_its_place(client_a, client_b, massage, massage_pack, sell, session_at, book, staff_user):
    sell(client_a, massage_pack)
    sell(client_b, massage_pack)
    session = session_at(from_now(days=3))
    first = book(client_a, session)
    with pytest.raises(SessionFull):
        book(client_b, session)

    booking_cancel(booking=first, actor=staff_user)
    taken = book(client_b, session)
    assert taken.status == BookingStatus.BOOKED
    assert balance(client_a, massage) == 10
    assert balance(client_b, massage) == 9
    assert_ledger_ok()


def test_client_may_book_again_after_cancelling(client_a, massage, ten_massages, session_at, book, staff_user):
    session = session_at(from_now(days=3))
    booking_cancel(booking=book(client_a, session), actor=staff_user)
    again = book(client_a, session)
    assert again.status == BookingStatus.BOOKED
    assert balance(client_a, massage) == 9
    assert_ledger_ok()


# --- Cancelling ---------------------------------------------------------------------------------


def test_cancel_in_time_returns_the_credit(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(days=3)))
    cancelled = booking_cancel(booking=booking, actor=staff_user)

    assert cancelled.status == BookingStatus.CANCELLED
    assert cancelled.closed_by == staff_user and cancelled.closed_at is not None
    assert cancelled.outcome_note == f"Booking #{booking.pk} cancelled in time, credit returned"
    returned = entries_for(booking, EntryKind.RETURNED).get()
    assert (returned.amount, returned.reverses_id, returned.grant_id) == (1, booking.used_entry_id, ten_massages.pk)
    assert not entries_for(booking, EntryKind.FORFEITED).exists()
    assert balance(client_a, massage) == 10
    assert_ledger_ok()


def test_late_cancel_forfeits_the_credit(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(hours=2)))  # inside the 24-hour window
    cancelled = booking_cancel(booking=booking, actor=staff_user)

    assert cancelled.status == BookingStatus.LATE_CANCELLED
    assert cancelled.outcome_note == f"Booking #{booking.pk} late cancellation, credit forfeited"
    forfeited = entries_for(booking, EntryKind.FORFEITED).get()
    assert (forfeited.amount, forfeited.reverses_id) == (0, booking.used_entry_id)
    assert not entries_for(booking, EntryKind.RETURNED).exists()
    assert balance(client_a, massage) == 9
    assert_ledger_ok()


@pytest.mark.parametrize(
    "after_deadline, status, kind",
    [
        (timedelta(0), BookingStatus.CANCELLED, EntryKind.RETURNED),
        (timedelta(microseconds=1), BookingStatus.LATE_CANCELLED, EntryKind.FORFEITED),
    ],
)
def test_cancelling_exactly_at_the_deadline_is_in_time(
    client_a, massage, ten_massages, session_at, book, staff_user, monkeypatch, after_deadline, status, kind
):
    session = session_at(from_now(days=3))
    booking = book(client_a, session)
    deadline = session.starts_at - timedelta(hours=massage.cancellation_window_hours)
    monkeypatch.setattr(timezone, "now", lambda: deadline + after_deadline)

    assert booking_cancel(booking=booking, actor=staff_user).status == status
    assert entries_for(booking, kind).count() == 1
    assert_ledger_ok()


def test_cancelling_twice_is_refused(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(days=3)))
    booking_cancel(booking=booking, actor=staff_user)
    with pytest.raises(InvalidBookingChange) as refused:
        booking_cancel(booking=booking, actor=staff_user)
    assert str(refused.value) == "This booking is cancelled; only a booked one can be cancelled."
    assert entries_for(booking, EntryKind.RETURNED).count() == 1
    assert balance(client_a, massage) == 10
    assert_ledger_ok()


# --- Overrides ----------------------------------------------------------------------------------


def test_override_needs_the_permission(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(hours=2)))
    with pytest.raises(PermissionRefused) as refused:
        booking_cancel(booking=booking, actor=staff_user, override="return", reason="Car broke down")
    assert str(refused.value) == "Only staff allowed to override credit rules can choose the outcome."
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED
    assert LedgerEntry.objects.filter(booking=booking).count() == 1  # the use only
    assert balance(client_a, massage) == 9


@pytest.mark.parametrize("reason", ["", "   "])
def test_override_needs_a_reason(client_a, ten_massages, session_at, book, manager, reason):
    booking = book(client_a, session_at(from_now(hours=2)))
    with pytest.raises(InvalidBookingChange) as refused:
        booking_cancel(booking=booking, actor=manager, override="return", reason=reason)
    assert str(refused.value) == "Give a reason for overriding the credit rule: it is kept in the ledger."
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED


def test_override_must_be_return_or_forfeit(client_a, ten_massages, session_at, book, manager):
    booking = book(client_a, session_at(from_now(hours=2)))
    with pytest.raises(InvalidBookingChange, match="Override must be 'return' or 'forfeit'"):
        booking_cancel(booking=booking, actor=manager, override="refund", reason="why not")


def test_override_returns_the_credit_of_a_late_cancel(client_a, massage, ten_massages, session_at, book, manager):
    booking = book(client_a, session_at(from_now(hours=2)))
    cancelled = booking_cancel(booking=booking, actor=manager, override="return", reason=" Car broke down ")

    assert cancelled.status == BookingStatus.LATE_CANCELLED
    assert cancelled.closed_by == manager
    assert cancelled.outcome_note.endswith("late cancellation, credit returned (override: Car broke down)")
    returned = entries_for(booking, EntryKind.RETURNED).get()
    assert returned.actor == manager
    assert "override: Car broke down" in returned.note
    assert balance(client_a, massage) == 10
    assert_ledger_ok()


def test_override_forfeits_the_credit_of_an_in_time_cancel(client_a, massage, ten_massages, session_at, book, manager):
    booking = book(client_a, session_at(from_now(days=3)))
    cancelled = booking_cancel(booking=booking, actor=manager, override="forfeit", reason="Third cancel this month")

    assert cancelled.status == BookingStatus.CANCELLED
    assert entries_for(booking, EntryKind.FORFEITED).get().amount == 0
    assert not entries_for(booking, EntryKind.RETURNED).exists()
    assert balance(client_a, massage) == 9
    assert_ledger_ok()


# --- No-show and attended -----------------------------------------------------------------------


def test_no_show_is_refused_before_the_session_starts(client_a, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(minutes=30)))
    with pytest.raises(InvalidBookingChange) as refused:
        booking_mark_no_show(booking=booking, actor=staff_user)
    assert str(refused.value) == "The session has not started yet: cancel the booking instead."
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED


def test_no_show_forfeits_the_credit(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(hours=-1)))
    missed = booking_mark_no_show(booking=booking, actor=staff_user)

    assert missed.status == BookingStatus.NO_SHOW
    assert missed.outcome_note == f"Booking #{booking.pk} no-show, credit forfeited"
    assert (entries_for(booking, EntryKind.FORFEITED).get().amount) == 0
    assert balance(client_a, massage) == 9
    with pytest.raises(InvalidBookingChange, match="This booking is no-show; only a booked one can be cancelled"):
        booking_cancel(booking=booking, actor=staff_user)
    assert_ledger_ok()


def test_no_show_override_returns_the_credit(client_a, massage, ten_massages, session_at, book, manager, staff_user):
    booking = book(client_a, session_at(from_now(hours=-1)))
    with pytest.raises(PermissionRefused):
        booking_mark_no_show(booking=booking, actor=staff_user, override="return", reason="Hospital")

    missed = booking_mark_no_show(booking=booking, actor=manager, override="return", reason="Hospital")
    assert missed.status == BookingStatus.NO_SHOW
    assert missed.outcome_note.endswith("no-show, credit returned (override: Hospital)")
    assert entries_for(booking, EntryKind.RETURNED).get().amount == 1
    assert not entries_for(booking, EntryKind.FORFEITED).exists()
    assert balance(client_a, massage) == 10
    assert_ledger_ok()


def test_attended_keeps_the_credit_used(client_a, massage, ten_massages, session_at, book, staff_user):
    booking = book(client_a, session_at(from_now(hours=-2)))
    attended = booking_mark_attended(booking=booking, actor=staff_user)
    assert attended.status == BookingStatus.ATTENDED
    assert attended.closed_by == staff_user
    assert LedgerEntry.objects.filter(booking=booking).count() == 1
    assert balance(client_a, massage) == 9
    with pytest.raises(InvalidBookingChange, match="This booking is attended; only a booked one can be a no-show"):
        booking_mark_no_show(booking=booking, actor=staff_user)
    assert_ledger_ok()


def test_attended_only_from_the_sessions_day(client_a, ten_massages, session_at, book, staff_user, monkeypatch):
    tomorrow = timezone.localdate() + timedelta(days=1)
    session = session_at(timezone.make_aware(datetime.combine(tomorrow, time(20))))
    booking = book(client_a, session)

    with pytest.raises(InvalidBookingChange) as refused:
        booking_mark_attended(booking=booking, actor=staff_user)
    assert str(refused.value) == "A session can be marked attended from its day on, not before."

    # Late the evening before, still refused; that morning, hours before it starts, accepted.
    eve = timezone.make_aware(datetime.combine(tomorrow - timedelta(days=1), time(23, 59)))
    monkeypatch.setattr(timezone, "now", lambda: eve)
    with pytest.raises(InvalidBookingChange):
        booking_mark_attended(booking=booking, actor=staff_user)
    morning = timezone.make_aware(datetime.combine(tomorrow, time(8)))
    monkeypatch.setattr(timezone, "now", lambda: morning)
    assert booking_mark_attended(booking=booking, actor=staff_user).status == BookingStatus.ATTENDED
