"""The front desk's day through the admin (test client): booking with a credit or a pack sold
on the spot, outstanding payments, cancel / attended / no-show, who may override, the client page."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import RestrictTo
from core.bookings import booking_create
from core.models import Booking, BookingStatus, BusinessSettings, Session
from ledger.models import EntryKind, LedgerEntry
from payments.models import Payment, Purchase, PurchaseStatus
from tests.frontdesk import balance_of, book_url, cancel_url, local, make_user, page_text
from tests.frontdesk import (  # fixtures, used by name
    booked,  # noqa: F401
    desk,  # noqa: F401
    manager,  # noqa: F401
    new_session,  # noqa: F401
    pack,  # noqa: F401
)


# --- Booking ------------------------------------------------------------------------------


def test_booking_a_client_with_a_credit_uses_one(client, desk, new_session, client_a, sell, pack, massage):
    sell(client_a, pack)
    session = new_session(local(3, 10))
    back = reverse("admin:core_session_change", args=[session.pk])

    form = client.get(book_url(session=session.pk, next=back))
    assert form.status_code == 200 and "Ten massages — 300.00 GBP (10 × Massage 60)" in page_text(form)
    response = client.post(book_url(session=session.pk), {"client": client_a.pk, "session": session.pk, "next": back}, follow=True)

    booking = Booking.objects.get()
    assert response.redirect_chain[-1][0] == back
    assert "Ada Lovelace is booked on" in page_text(response)
    assert booking.status == BookingStatus.BOOKED and booking.booked_by == desk
    assert booking.used_entry.kind == EntryKind.USED and booking.purchase is None
    assert balance_of(client_a, massage) == 9


def test_booking_without_credit_says_why_and_offers_to_sell_a_pack(client, desk, new_session, client_a, pack):
    session = new_session(local(3, 10))

    response = client.post(book_url(), {"client": client_a.pk, "session": session.pk})

    assert response.status_code == 200
    assert (
        "No credit: the client holds no Massage 60 credits. You can pick a pack under "
        "“Sell this pack if no credit” to sell it on the spot"
    ) in page_text(response)
    assert not Booking.objects.exists() and not Purchase.objects.exists()


def test_full_session_and_already_booked_are_refused_with_their_text(client, desk, new_session, client_a, client_b, sell, pack, staff_user):
    sell(client_a, pack)
    sell(client_b, pack)
    session = new_session(local(3, 10))
    booking_create(client=client_a, session=session, actor=staff_user)

    again = client.post(book_url(), {"client": client_a.pk, "session": session.pk})
    full = client.post(book_url(), {"client": client_b.pk, "session": session.pk})

    assert "Ada Lovelace is already booked on this session." in page_text(again)
    assert "This session is full (1 of 1 places taken)." in page_text(full)
    assert Booking.objects.count() == 1


def test_prepaid_only_refuses_a_sale_on_the_spot(client, desk, new_session, client_a, pack):
    BusinessSettings.objects.update_or_create(pk=1, defaults={"prepaid_only": True})
    session = new_session(local(3, 10))

    response = client.post(book_url(), {"client": client_a.pk, "session": session.pk, "sell_pack": pack.pk})

    assert "Prepaid only: this business books clients only once their pack is paid." in page_text(response)
    assert not Booking.objects.exists() and not Purchase.objects.exists()


def test_pack_sold_on_the_spot_is_outstanding_until_the_payment_is_recorded(client, desk, new_session, client_a, pack, massage):
    session = new_session(local(3, 10))

    booked = client.post(
        book_url(), {"client": client_a.pk, "session": session.pk, "sell_pack": pack.pk}, follow=True,
    )
    booking = Booking.objects.get()
    purchase = booking.purchase
    assert "Ten massages sold on the spot" in page_text(booked)
    assert purchase.status == PurchaseStatus.PENDING and balance_of(client_a, massage) == 0

    outstanding_url = reverse("admin:payments_outstandingpurchase_changelist")
    outstanding = client.get(outstanding_url)
    [row] = outstanding.context["cl"].result_list
    assert (row.pk, row.sessions_used, row.first_session_at) == (purchase.pk, 1, session.starts_at)
    assert "300.00 GBP" in page_text(outstanding) and "Before first session" in page_text(outstanding)
    client_page = page_text(client.get(reverse("admin:core_client_change", args=[client_a.pk])))
    assert "held until paid" in client_page

    record_url = reverse("admin:payments_outstandingpurchase_record_payment", args=[purchase.pk])
    assert record_url in page_text(outstanding)
    paid = client.post(record_url, {"method": "cash", "amount": "300.00", "reference": "till 3"}, follow=True)

    assert paid.redirect_chain[-1][0] == outstanding_url
    assert list(paid.context["cl"].result_list) == []
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert Payment.objects.get(purchase=purchase).recorded_by == desk
    # The held credit paid for the booking; the other nine are released.
    assert balance_of(client_a, massage) == 9
    assert "held until paid" not in page_text(client.get(reverse("admin:core_client_change", args=[client_a.pk])))


def test_outstanding_list_flags_a_session_that_already_started(client, desk, new_session, client_a, pack, staff_user):
    session = new_session(local(1, 10))
    booking_create(client=client_a, session=session, sell_pack=pack, actor=staff_user)
    # Time passes: the session is under way and the pack is still unpaid.
    Session.objects.filter(pk=session.pk).update(
        starts_at=timezone.now() - timedelta(minutes=30), ends_at=timezone.now() + timedelta(minutes=30),
    )

    response = client.get(reverse("admin:payments_outstandingpurchase_changelist"))

    assert "Session already started" in page_text(response)
    started = client.get(reverse("admin:payments_outstandingpurchase_changelist") + "?first_session=started")
    assert len(started.context["cl"].result_list) == 1


def test_sell_form_uses_the_staff_members_price_and_shows_restrictions(client, desk, make_pack, massage, coach, client_a, new_session, sell, staff_user):
    priced = make_pack([(massage, False, 5)], staff_prices=[(coach, Decimal("350.00"))], all_staff=False)
    joiners = make_pack([(massage, False, 1)], restrict_to=RestrictTo.NEW_JOINERS, name="Intro offer")
    form = client.get(reverse("admin:payments_purchase_add") + f"?client={client_a.pk}")
    assert "per staff member: Coach Carter 350.00" in page_text(form)

    client.post(reverse("admin:payments_purchase_add"), {"client": client_a.pk, "pack": priced.pk, "staff_member": coach.pk})
    assert Purchase.objects.get().price == Decimal("350.00")

    sell(client_a, priced, staff_member=coach)
    booking_create(client=client_a, session=new_session(local(3, 10)), actor=staff_user)
    refused = client.post(reverse("admin:payments_purchase_add"), {"client": client_a.pk, "pack": joiners.pk})
    assert "Intro offer is for new joiners only, and Ada Lovelace has booked before." in page_text(refused)


def test_booking_form_offers_only_sessions_not_started_yet(client, desk, new_session, client_a):
    ahead = new_session(local(3, 10))
    under_way = new_session(timezone.now() - timedelta(minutes=10))
    url = reverse("admin:autocomplete") + "?app_label=core&model_name=booking&field_name=session&term=massage"

    found = client.get(url).json()["results"]

    assert [int(r["id"]) for r in found] == [ahead.pk]
    refused = client.post(book_url(), {"client": client_a.pk, "session": under_way.pk})
    assert refused.context["form"].errors == {"session": ["Select a valid choice. That choice is not one of the available choices."]}
    assert not Booking.objects.exists()


# --- Cancel, attended, no-show ------------------------------------------------------------


def test_cancel_in_time_returns_the_credit(client, desk, booked, client_a, massage):
    booking = booked(local(3, 10))
    assert balance_of(client_a, massage) == 9

    page = client.get(cancel_url(booking))
    assert "In time" in page_text(page) and "so the credit returns to Ada Lovelace's balance" in page_text(page)
    done = client.post(cancel_url(booking), {"confirmed": "yes"}, follow=True)

    booking.refresh_from_db()
    assert booking.status == BookingStatus.CANCELLED and booking.closed_by == desk
    assert balance_of(client_a, massage) == 10
    assert "booking is cancelled" in page_text(done)


def test_late_cancel_forfeits_the_credit(client, desk, booked, client_a, massage):
    booking = booked(timezone.now() + timedelta(hours=2))

    page = client.get(cancel_url(booking))
    assert "Late" in page_text(page) and "so the credit is forfeited" in page_text(page)
    client.post(cancel_url(booking), {"confirmed": "yes"})

    booking.refresh_from_db()
    assert booking.status == BookingStatus.LATE_CANCELLED
    assert balance_of(client_a, massage) == 9
    assert LedgerEntry.objects.filter(booking=booking, kind=EntryKind.FORFEITED).exists()


def test_override_is_not_offered_to_and_refused_for_staff_without_the_permission(client, desk, booked, client_a, massage):
    booking = booked(timezone.now() + timedelta(hours=2))

    page = client.get(cancel_url(booking))
    assert 'name="outcome"' not in page_text(page)
    response = client.post(cancel_url(booking), {"confirmed": "yes", "outcome": "override", "reason": "sick"})

    assert "Only staff allowed to override credit rules can choose the outcome." in page_text(response)
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED and balance_of(client_a, massage) == 9


def test_override_needs_a_reason_and_is_recorded_with_it(client, manager, booked, client_a, massage):
    client.force_login(manager)
    booking = booked(timezone.now() + timedelta(hours=2))

    page = client.get(cancel_url(booking))
    assert 'name="outcome"' in page_text(page) and "Override: return the credit instead" in page_text(page)
    no_reason = client.post(cancel_url(booking), {"confirmed": "yes", "outcome": "override", "reason": " "})
    assert "Give a reason for overriding the credit rule" in page_text(no_reason)
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED

    client.post(cancel_url(booking), {"confirmed": "yes", "outcome": "override", "reason": "doctor's note"})

    booking.refresh_from_db()
    assert booking.status == BookingStatus.LATE_CANCELLED
    assert balance_of(client_a, massage) == 10
    returned = LedgerEntry.objects.get(booking=booking, kind=EntryKind.RETURNED)
    assert "override: doctor's note" in returned.note and returned.actor == manager


def test_mark_attended_keeps_the_credit_used(client, desk, booked, client_a, massage):
    booking = booked(timezone.now() - timedelta(minutes=50))
    url = reverse("admin:core_booking_mark_attended", args=[booking.pk])

    assert "Yes, mark attended" in page_text(client.get(url))
    client.post(url, {"confirmed": "yes"})

    booking.refresh_from_db()
    assert booking.status == BookingStatus.ATTENDED and booking.closed_by == desk
    assert balance_of(client_a, massage) == 9


def test_mark_attended_before_the_sessions_day_is_refused(client, desk, booked):
    booking = booked(local(3, 10))

    response = client.post(reverse("admin:core_booking_mark_attended", args=[booking.pk]), {"confirmed": "yes"})

    assert "A session can be marked attended from its day on, not before." in page_text(response)
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED


def test_no_show_forfeits_and_a_permitted_override_returns(client, desk, manager, booked, client_a, massage):
    booking = booked(timezone.now() - timedelta(minutes=50))
    url = reverse("admin:core_booking_mark_no_show", args=[booking.pk])

    client.post(url, {"confirmed": "yes"})
    booking.refresh_from_db()
    assert booking.status == BookingStatus.NO_SHOW and balance_of(client_a, massage) == 9

    other = booked(timezone.now() - timedelta(hours=5))
    client.force_login(manager)
    client.post(
        reverse("admin:core_booking_mark_no_show", args=[other.pk]),
        {"confirmed": "yes", "outcome": "override", "reason": "storm closed the roads"},
    )
    other.refresh_from_db()
    # The second visit's credit came back: still one used, by the first no-show.
    assert other.status == BookingStatus.NO_SHOW and balance_of(client_a, massage) == 9
    assert LedgerEntry.objects.filter(booking=other, kind=EntryKind.RETURNED).exists()


def test_marking_a_class_attended_in_one_go(client, desk, client_a, client_b, sell, pack, new_session, staff_user):
    for person in (client_a, client_b):
        sell(person, pack, paid_at=timezone.now() - timedelta(days=7))
    session = new_session(timezone.now() - timedelta(minutes=30), capacity=6)
    bookings = [booking_create(client=p, session=session, actor=staff_user) for p in (client_a, client_b)]
    action = {"action": "mark_attended_selected", "_selected_action": [b.pk for b in bookings]}
    url = reverse("admin:core_booking_changelist")

    confirm = client.post(url, action)
    assert "Yes, mark attended" in page_text(confirm)
    done = client.post(url, {**action, "confirmed": "yes"}, follow=True)

    assert "2 booking(s) marked attended." in page_text(done)
    assert set(Booking.objects.values_list("status", flat=True)) == {BookingStatus.ATTENDED}


def test_bookings_are_never_edited_or_deleted_in_the_admin(client, desk, booked):
    booking = booked(local(3, 10))

    page = client.get(reverse("admin:core_booking_change", args=[booking.pk]))

    assert page.status_code == 200 and page.context["has_change_permission"] is False
    assert "Cancel booking" in page_text(page)
    assert client.post(reverse("admin:core_booking_delete", args=[booking.pk]), {"post": "yes"}).status_code == 403
    assert Booking.objects.filter(pk=booking.pk, status=BookingStatus.BOOKED).exists()


def test_booking_list_shows_the_credit_and_filters_by_status_and_staff(client, desk, booked, coach):
    booking = booked(local(3, 10))

    listing = client.get(reverse("admin:core_booking_changelist"))
    assert f"Grant #{booking.used_entry.grant_id} · Ten massages" in page_text(listing)
    by_staff = client.get(reverse("admin:core_booking_changelist") + f"?session__staff_member__id__exact={coach.pk}&status=booked")
    assert [b.pk for b in by_staff.context["cl"].result_list] == [booking.pk]
    cancelled = client.get(reverse("admin:core_booking_changelist") + "?status=cancelled")
    assert list(cancelled.context["cl"].result_list) == []


def test_staff_without_the_booking_permissions_cannot_book_or_cancel(client, booked, client_a, new_session):
    booking = booked(local(3, 10))
    client.force_login(make_user("viewer", "core.view_booking", "core.view_session", "core.view_client"))

    assert client.get(book_url()).status_code == 403
    assert client.post(cancel_url(booking), {"confirmed": "yes"}).status_code == 403
    assert client.get(reverse("admin:payments_purchase_record_payment", args=[1])).status_code == 403
    booking.refresh_from_db()
    assert booking.status == BookingStatus.BOOKED


# --- Client page --------------------------------------------------------------------------


def test_client_page_shows_upcoming_and_past_bookings_with_the_credit(client, desk, booked, client_a, django_assert_max_num_queries):
    ahead = booked(local(3, 10))
    gone = booked(local(-3, 10))
    url = reverse("admin:core_client_change", args=[client_a.pk])

    response = client.get(url)

    assert [r.booking.pk for r in response.context["upcoming_rows"]] == [ahead.pk]
    assert [r.booking.pk for r in response.context["past_rows"]] == [gone.pk]
    text = page_text(response)
    assert f"Grant #{ahead.used_entry.grant_id} · Ten massages" in text
    assert f"{reverse('admin:core_booking_add')}?client={client_a.pk}" in text
    # The past booking still open can be marked; the upcoming one only cancelled.
    assert reverse("admin:core_booking_mark_no_show", args=[gone.pk]) in text
    assert reverse("admin:core_booking_mark_no_show", args=[ahead.pk]) not in text


def test_client_page_query_count_does_not_grow_with_bookings(client, desk, client_a, sell, pack, new_session, staff_user):
    sell(client_a, pack, paid_at=timezone.now() - timedelta(days=7))
    url = reverse("admin:core_client_change", args=[client_a.pk])

    def count() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    booking_create(client=client_a, session=new_session(local(2, 9)), actor=staff_user)
    few = count()
    for day in range(3, 7):
        booking_create(client=client_a, session=new_session(local(day, 9)), actor=staff_user)
        booking_create(client=client_a, session=new_session(local(-day, 9)), actor=staff_user)
    assert count() == few
