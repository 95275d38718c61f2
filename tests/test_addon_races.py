"""Concurrent add-on requests on PostgreSQL: real threads, one connection each, started together.

The main booking's row serialises everything done to one booking group, and the staff member's
row serialises the diary; the unique constraint is the last line behind them.
"""
from __future__ import annotations

import pytest

from core.addons import addon_attach
from core.bookings import booking_cancel, booking_create
from core.exceptions import AddOnRefused, AddOnUnavailable
from core.models import Booking, BookingStatus, IntakeResponse, Session
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.models import Purchase, PurchaseStatus
from tests.test_addons import (  # noqa: F401 - fixtures
    answers,
    balance,
    book_main,
    hot_stones,
    local,
    main,
    massage_credits,
    screening,
    scrub,
    staff,
    stone_credits,
)
from tests.test_redeem_race import run_together

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


def split(results):
    done = [value for status, value in results if status == "ok"]
    refused = [value for status, value in results if status == "error"]
    return done, refused


def test_the_same_add_on_twice_at_once_gives_one(main, hot_stones, stone_credits, screening, staff_user):
    given = answers(screening)
    attach = lambda: addon_attach(booking=main, add_on_type=hot_stones, actor=staff_user, answers=given)  # noqa: E731

    done, refused = split(run_together(attach, attach, attach))

    assert len(done) == 1 and len(refused) == 2
    for exc in refused:
        assert isinstance(exc, AddOnRefused) and str(exc) == "Hot stones is already part of this booking.", repr(exc)
    add_on = Booking.objects.get(main_booking=main)
    assert add_on.pk == done[0].pk and add_on.status == BookingStatus.BOOKED
    assert Session.objects.filter(session_type=hot_stones).count() == 1
    assert IntakeResponse.objects.filter(booking__main_booking=main).count() == 1
    assert LedgerEntry.objects.filter(session_type=hot_stones, kind=EntryKind.USED).count() == 1
    assert balance(main.client, hot_stones) == 4
    assert_ledger_ok()


def test_the_same_add_on_sold_twice_at_once_gives_one_purchase(main, hot_stones, screening, staff_user):
    given = answers(screening)
    attach = lambda: addon_attach(booking=main, add_on_type=hot_stones, actor=staff_user, answers=given)  # noqa: E731

    done, refused = split(run_together(attach, attach))

    assert (len(done), len(refused)) == (1, 1)
    assert isinstance(refused[0], AddOnRefused), repr(refused[0])
    assert Purchase.objects.filter(snapshot__add_on=True).count() == 1
    assert Purchase.objects.get(snapshot__add_on=True).status == PurchaseStatus.PENDING
    assert_ledger_ok()


def test_two_clients_of_one_class_race_for_the_slot_after_it(
    client_a, client_b, massage, hot_stones, stone_credits, staff, screening, staff_user
):
    """Two bookings, one staff member: only one add-on fits right after the class."""
    session = session_create(
        session_type=massage, staff_member=staff, starts_at=local(3, 10), capacity=2, actor=staff_user,
    )
    for client in (client_a, client_b):
        credits_adjust(client=client, session_type=massage, amount=1, reason="class", actor=staff_user)
    credits_adjust(client=client_b, session_type=hot_stones, amount=1, reason="gift", actor=staff_user)
    ada = booking_create(client=client_a, session=session, actor=staff_user)
    grace = booking_create(client=client_b, session=session, actor=staff_user)
    given = answers(screening)

    done, refused = split(run_together(
        *[lambda b=b: addon_attach(booking=b, add_on_type=hot_stones, actor=staff_user, answers=given)
          for b in (ada, grace)]
    ))

    assert (len(done), len(refused)) == (1, 1)
    assert isinstance(refused[0], AddOnUnavailable), repr(refused[0])
    assert str(refused[0]) == "Coach Carter has another session right after this one."
    assert Booking.objects.filter(add_on_type=hot_stones).count() == 1
    assert balance(client_a, hot_stones) + balance(client_b, hot_stones) == 5  # one of six credits used
    assert_ledger_ok()


def test_cancelling_while_an_add_on_is_added_leaves_a_consistent_group(
    main, client_a, hot_stones, stone_credits, massage, screening, staff_user
):
    given = answers(screening)

    results = run_together(
        lambda: addon_attach(booking=main, add_on_type=hot_stones, actor=staff_user, answers=given),
        lambda: booking_cancel(booking=main, actor=staff_user),
    )

    (attach_status, attached), (cancel_status, _) = results
    assert cancel_status == "ok"
    main.refresh_from_db()
    assert main.status == BookingStatus.CANCELLED
    if attach_status == "ok":  # added first, then cancelled with its group
        attached.refresh_from_db()
        assert attached.status == BookingStatus.CANCELLED
        assert not Session.objects.filter(session_type=hot_stones).exists()
    else:  # the cancel came first: nothing was added
        assert isinstance(attached, AddOnRefused), repr(attached)
        assert not Booking.objects.filter(main_booking=main).exists()
    assert (balance(client_a, massage), balance(client_a, hot_stones)) == (10, 5)
    assert_ledger_ok()
