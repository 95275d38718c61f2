"""Concurrent front-desk writers on PostgreSQL: real threads, one connection each, started together.

Capacity and "already booked" are serialised by the session row lock, the diary by the staff
member row lock, and a booking's outcome by the booking row lock; these tests prove each one.
"""
from datetime import datetime, time, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from core.bookings import booking_cancel, booking_create, booking_mark_no_show
from core.exceptions import AlreadyBooked, InvalidBookingChange, SessionFull, StaffUnavailable
from core.models import Booking, BookingStatus, Client, Session
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from tests.test_redeem_race import run_together

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def balance(client, session_type) -> int:
    return ClientBalance.objects.get(client=client, session_type=session_type).balance


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


def outcomes(results, expected_error):
    """Split thread results into successes and refusals; anything else fails the test by name."""
    done = [value for status, value in results if status == "ok"]
    refused = [value for status, value in results if status == "error"]
    for exc in refused:
        assert isinstance(exc, expected_error), repr(exc)
    return done, refused


@pytest.fixture
def session_at(diary, staff_user, massage):
    def make(starts_at, *, capacity=1):
        return session_create(
            session_type=massage, staff_member=diary, starts_at=starts_at, capacity=capacity,
            actor=staff_user, outside_hours_reason="Race tests run at any hour",
        )

    return make


@pytest.fixture
def massage_pack(make_pack, massage):
    return make_pack([(massage, False, 10)])


def test_ten_clients_race_for_three_places(massage, massage_pack, sell, session_at, staff_user):
    clients = [Client.objects.create(name=f"Racer {n}", email=f"racer{n}@example.com") for n in range(10)]
    for client in clients:
        sell(client, massage_pack)
    session = session_at(timezone.now() + timedelta(days=2), capacity=3)

    results = run_together(
        *[lambda c=c: booking_create(client=c, session=session, actor=staff_user) for c in clients]
    )

    booked, refused = outcomes(results, SessionFull)
    assert (len(booked), len(refused)) == (3, 7)
    assert {str(exc) for exc in refused} == {"This session is full (3 of 3 places taken)."}
    assert Booking.objects.filter(session=session, status=BookingStatus.BOOKED).count() == 3
    winners = {b.client_id for b in booked}
    for client in clients:
        assert balance(client, massage) == (9 if client.pk in winners else 10)
    assert LedgerEntry.objects.filter(kind=EntryKind.USED).count() == 3
    assert_ledger_ok()


def test_one_client_booked_twice_at_once_gets_one_booking(
    client_a, massage, massage_pack, sell, session_at, staff_user
):
    sell(client_a, massage_pack)
    session = session_at(timezone.now() + timedelta(days=2), capacity=5)

    results = run_together(
        *[lambda: booking_create(client=client_a, session=session, actor=staff_user) for _ in range(5)]
    )

    booked, refused = outcomes(results, AlreadyBooked)
    assert (len(booked), len(refused)) == (1, 4)
    assert Booking.objects.filter(session=session).count() == 1
    assert balance(client_a, massage) == 9
    assert_ledger_ok()


def test_overlapping_sessions_for_one_staff_member_at_once_create_one(diary, massage, staff_user):
    """No IntegrityError from the exclusion constraint leaks out: the staff lock decides first."""
    day = timezone.localdate() + timedelta(days=7)
    starts = [timezone.make_aware(datetime.combine(day, time(10, 5 * n))) for n in range(8)]

    results = run_together(
        *[
            lambda s=s: session_create(session_type=massage, staff_member=diary, starts_at=s, actor=staff_user)
            for s in starts
        ]
    )

    created, refused = outcomes(results, StaffUnavailable)
    assert (len(created), len(refused)) == (1, 7)
    for exc in refused:
        assert str(exc).startswith("Coach Carter is already in a session then: Massage 60 with Coach Carter")
    assert list(Session.objects.values_list("pk", flat=True)) == [created[0].pk]


@pytest.fixture
def manager(django_user_model):
    user = django_user_model.objects.create_user("manager", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="override_credit_rules"))
    return django_user_model.objects.get(pk=user.pk)


def test_cancel_and_no_show_at_once_one_outcome_wins(
    client_a, massage, massage_pack, sell, session_at, staff_user, manager
):
    sell(client_a, massage_pack, paid_at=timezone.now() - timedelta(days=10))
    winners = []
    for round_ in range(6):
        # Started an hour ago: a cancel now is late (forfeit), the no-show is overridden (return),
        # so the ledger shows which one won.
        session = session_at(timezone.now() - timedelta(hours=1, minutes=90 * round_ + 1))
        booking = booking_create(client=client_a, session=session, actor=staff_user)

        results = run_together(
            lambda: booking_cancel(booking=booking, actor=staff_user),
            lambda: booking_mark_no_show(booking=booking, actor=manager, override="return", reason="Flat tyre"),
        )

        done, refused = outcomes(results, InvalidBookingChange)
        assert (len(done), len(refused)) == (1, 1), results
        booking.refresh_from_db()
        assert booking.status == done[0].status
        returned = LedgerEntry.objects.filter(booking=booking, kind=EntryKind.RETURNED).count()
        forfeited = LedgerEntry.objects.filter(booking=booking, kind=EntryKind.FORFEITED).count()
        if booking.status == BookingStatus.NO_SHOW:
            assert (returned, forfeited) == (1, 0)
            assert str(refused[0]) == "This booking is no-show; only a booked one can be cancelled."
        else:
            assert booking.status == BookingStatus.LATE_CANCELLED
            assert (returned, forfeited) == (0, 1)
            assert str(refused[0]) == "This booking is late-cancelled; only a booked one can be a no-show."
        winners.append(booking.status)

    late_cancels = winners.count(BookingStatus.LATE_CANCELLED)
    assert balance(client_a, massage) == 10 - late_cancels
    print("winner per round:", winners)
    assert_ledger_ok()
