"""Add-ons: cancelling the main booking cancels its add-ons with the same credit rules (core.addons).

Split from tests/test_addons.py, whose fixtures (the massage, its add-ons, the booked main session) it uses."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.models import SessionType
from core.addons import addon_options
from core.bookings import (
    booking_cancel,
    booking_mark_attended,
    booking_mark_no_show,
)
from core.models import (
    BookingStatus,
    Session,
)
from core.sessions import session_create
from ledger.models import EntryKind, LedgerEntry
from payments.models import PurchaseStatus
from payments.selectors import outstanding_purchases
from payments.services import payment_record
from tests.test_addons import (  # noqa: F401 - fixtures (and helpers) shared with tests/test_addons.py
    attach,  # noqa: F401, F811
    balance,  # noqa: F401, F811
    book_main,  # noqa: F401, F811
    hot_stones,  # noqa: F401, F811
    ledger_balances_after_each_scenario,  # noqa: F401, F811
    local,  # noqa: F401, F811
    main,  # noqa: F401, F811
    massage_credits,  # noqa: F401, F811
    screening,  # noqa: F401, F811
    scrub,  # noqa: F401, F811
    scrub_credits,  # noqa: F401, F811
    staff,  # noqa: F401, F811
    stone_credits,  # noqa: F401, F811
)

pytestmark = pytest.mark.django_db


# --- Cancelling the booking group ---------------------------------------------------------------


def test_main_cancelled_in_time_cancels_the_add_on_and_returns_its_credit(
    main, client_a, hot_stones, stone_credits, massage, staff, staff_user
):
    add_on = attach(main, hot_stones, staff_user)
    add_on_session = add_on.session_id

    booking_cancel(booking=main, actor=staff_user)

    add_on.refresh_from_db()
    assert add_on.status == BookingStatus.CANCELLED
    assert (balance(client_a, massage), balance(client_a, hot_stones)) == (10, 5)
    returned = LedgerEntry.objects.get(booking=add_on, kind=EntryKind.RETURNED)
    assert returned.reverses_id == add_on.used_entry_id
    assert f"cancelled with its main booking #{main.pk}" in add_on.outcome_note
    # The staff member's time after the massage is free again: a new session fits there.
    assert not Session.objects.filter(pk=add_on_session).exists()
    assert add_on.session_id == main.session_id  # the cancelled add-on stays in its appointment
    session_create(session_type=hot_stones, staff_member=staff, starts_at=local(3, 11), actor=staff_user)


def test_main_cancelled_late_forfeits_the_add_on_credit(
    main, client_a, hot_stones, stone_credits, massage, staff_user
):
    add_on = attach(main, hot_stones, staff_user)
    SessionType.objects.filter(pk=massage.pk).update(cancellation_window_hours=24 * 30)  # now it is late

    booking_cancel(booking=main, actor=staff_user)

    add_on.refresh_from_db()
    assert add_on.status == BookingStatus.LATE_CANCELLED
    assert (balance(client_a, massage), balance(client_a, hot_stones)) == (9, 4)
    assert LedgerEntry.objects.filter(booking=add_on, kind=EntryKind.FORFEITED).count() == 1
    assert not LedgerEntry.objects.filter(booking=add_on, kind=EntryKind.RETURNED).exists()


def test_main_cancelled_cancels_an_unpaid_add_on_purchase(main, hot_stones, staff_user):
    purchase = attach(main, hot_stones, staff_user).purchase

    booking_cancel(booking=main, actor=staff_user)

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.CANCELLED
    assert not outstanding_purchases().filter(pk=purchase.pk).exists()
    add_on = main.add_ons.get()
    assert f"unpaid purchase #{purchase.pk} cancelled" in add_on.outcome_note


def test_a_paid_add_on_purchase_is_left_for_a_refund(main, hot_stones, staff_user):
    purchase = attach(main, hot_stones, staff_user).purchase
    payment_record(purchase=purchase, method="card_terminal", amount=Decimal("25.00"), actor=staff_user)

    booking_cancel(booking=main, actor=staff_user)

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert "was paid: refund it if due" in main.add_ons.get().outcome_note


def test_an_add_on_cancelled_alone_keeps_the_main_booking(
    main, client_a, hot_stones, stone_credits, scrub, scrub_credits, staff_user
):
    stones = attach(main, hot_stones, staff_user)

    booking_cancel(booking=stones, actor=staff_user)

    main.refresh_from_db()
    stones.refresh_from_db()
    assert (main.status, stones.status) == (BookingStatus.BOOKED, BookingStatus.CANCELLED)
    assert balance(client_a, hot_stones) == 5
    # Its slot is free: the same add-on can be added again, and it is offered again.
    assert hot_stones in [o.session_type for o in addon_options(main) if o.available]
    again = attach(main, hot_stones, staff_user)
    assert again.session.starts_at == main.session.ends_at
    assert balance(client_a, hot_stones) == 4


def test_an_override_applies_to_the_whole_group(
    main, client_a, hot_stones, stone_credits, massage, staff_user, django_user_model
):
    from django.contrib.auth.models import Permission

    boss = django_user_model.objects.create_user("boss-override", is_staff=True)
    boss.user_permissions.add(Permission.objects.get(codename="override_credit_rules"))
    boss = django_user_model.objects.get(pk=boss.pk)
    add_on = attach(main, hot_stones, staff_user)

    booking_cancel(booking=main, actor=boss, override="forfeit", reason="third time this month")

    add_on.refresh_from_db()
    assert add_on.status == BookingStatus.CANCELLED
    assert (balance(client_a, massage), balance(client_a, hot_stones)) == (9, 4)
    assert "(override: third time this month)" in add_on.outcome_note


def test_no_show_and_attended_take_the_add_ons_along(
    client_a, book_main, hot_stones, stone_credits, scrub, scrub_credits, staff_user, monkeypatch
):
    missed, visited = book_main(client_a, local(3, 10)), book_main(client_a, local(4, 10))
    missed_add_on, visited_add_on = attach(missed, scrub, staff_user), attach(visited, hot_stones, staff_user)
    real_now = timezone.now

    at_noon = local(4, 12)
    monkeypatch.setattr(timezone, "now", lambda: at_noon)
    booking_mark_no_show(booking=missed, actor=staff_user)
    booking_mark_attended(booking=visited, actor=staff_user)
    monkeypatch.setattr(timezone, "now", real_now)

    missed_add_on.refresh_from_db()
    visited_add_on.refresh_from_db()
    assert (missed_add_on.status, visited_add_on.status) == (BookingStatus.NO_SHOW, BookingStatus.ATTENDED)
    assert LedgerEntry.objects.filter(booking=missed_add_on, kind=EntryKind.FORFEITED).count() == 1
    assert (balance(client_a, scrub), balance(client_a, hot_stones)) == (4, 4)


def test_a_second_add_on_follows_the_first(main, hot_stones, stone_credits, scrub, scrub_credits, staff_user):
    first = attach(main, scrub, staff_user)
    [option] = addon_options(main)
    assert (option.session_type, option.starts_at, option.ends_at) == (hot_stones, local(3, 11, 15), local(3, 11, 45))

    second = attach(main, hot_stones, staff_user)

    assert (first.session.starts_at, second.session.starts_at) == (local(3, 11), local(3, 11, 15))
    assert second.session.ends_at == local(3, 11, 45)
    assert list(main.add_ons.order_by("pk")) == [first, second]
