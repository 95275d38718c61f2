"""The diary and settings through the admin (test client): creating sessions through the service,
the sessions list, staff hours and time off, payments, and the business settings row."""
from __future__ import annotations

from datetime import time, timedelta

from django.urls import reverse

from core.bookings import booking_cancel, booking_create
from core.models import Booking, BusinessSettings, Session, TimeOff, WorkingHours
from payments.models import Payment
from payments.services import payment_record, purchase_create
from tests.frontdesk import book_url, local, page_text, session_post
from tests.frontdesk import (  # fixtures, used by name
    booked,  # noqa: F401
    desk,  # noqa: F401
    hours,  # noqa: F401
    new_session,  # noqa: F401
    pack,  # noqa: F401
)


# --- Sessions -----------------------------------------------------------------------------


def test_desk_creates_a_session_through_the_service(client, desk, coach, massage, hours):
    starts = local(7, 10)

    response = client.post(reverse("admin:core_session_add"), session_post(massage, coach, starts, capacity="6"))

    session = Session.objects.get()
    assert response.status_code == 302 and response.url == reverse("admin:core_session_change", args=[session.pk])
    assert (session.starts_at, session.capacity, session.duration_minutes) == (starts, 6, 60)
    assert session.ends_at == starts + timedelta(minutes=60) and session.created_by == desk


def test_a_double_booked_staff_member_is_refused_with_the_diarys_reason(client, desk, coach, massage, hours, new_session):
    first = new_session(local(7, 10))

    response = client.post(reverse("admin:core_session_add"), session_post(massage, coach, local(7, 10, 30)))

    assert response.status_code == 200
    assert f"Coach Carter is already in a session then: {first}." in page_text(response)
    assert Session.objects.count() == 1


def test_outside_working_hours_needs_a_reason(client, desk, coach, massage, hours):
    late = local(7, 21)
    url = reverse("admin:core_session_add")

    refused = client.post(url, session_post(massage, coach, late))
    assert refused.status_code == 200 and not Session.objects.exists()
    assert "is outside Coach Carter's working hours: give a reason to book it anyway." in page_text(refused)

    accepted = client.post(url, session_post(massage, coach, late, outside_hours_reason="client only free late"))
    assert accepted.status_code == 302
    assert Session.objects.get().outside_hours_reason == "client only free late"


def test_session_list_opens_on_today_and_later_with_places_taken(client, desk, new_session, client_a, client_b, sell, pack, staff_user):
    past = new_session(local(-2, 10))
    ahead = new_session(local(3, 10), capacity=4)
    for person in (client_a, client_b):
        sell(person, pack)
        booking_create(client=person, session=ahead, actor=staff_user)
    booking_cancel(booking=Booking.objects.get(client=client_b), actor=staff_user)

    upcoming = client.get(reverse("admin:core_session_changelist"))
    assert [s.pk for s in upcoming.context["cl"].result_list] == [ahead.pk]
    # Cancelled bookings free their place.
    assert "1/4" in page_text(upcoming)

    looking_back = client.get(reverse("admin:core_session_changelist") + "?when=past")
    assert [s.pk for s in looking_back.context["cl"].result_list] == [past.pk]


def test_session_page_lists_its_bookings_and_cannot_be_edited(client, desk, new_session, client_a, sell, pack, staff_user):
    sell(client_a, pack)
    session = new_session(local(3, 10), capacity=2)
    booking = booking_create(client=client_a, session=session, actor=staff_user)

    response = client.get(reverse("admin:core_session_change", args=[session.pk]))

    text = page_text(response)
    assert response.context["has_change_permission"] is False
    assert f'data-booking="{booking.pk}"' in text and "Ada Lovelace" in text
    assert f"Grant #{booking.used_entry.grant_id} · Ten massages" in text
    assert reverse("admin:core_booking_cancel_booking", args=[booking.pk]) in text
    assert "1 of 2 places taken" in text and book_url(session=session.pk) in text
    # A session with bookings stays (its credits are in the ledger).
    assert client.post(reverse("admin:core_session_delete", args=[session.pk]), {"post": "yes"}).status_code == 403


# --- Staff and settings -------------------------------------------------------------------


def test_staff_page_edits_hours_and_warns_when_time_off_covers_booked_sessions(admin_client, coach, booked):
    booked(local(3, 10))
    url = reverse("admin:core_staffmember_change", args=[coach.pk])
    page = admin_client.get(url)
    assert "working hours (weekly, local time)" in page_text(page).lower()
    data = {
        "user": coach.user_id, "display_name": coach.display_name, "active": "on",
        "session_types": [t.pk for t in coach.session_types.all()],
        "working_hours-TOTAL_FORMS": "1", "working_hours-INITIAL_FORMS": "0",
        "working_hours-0-weekday": "0", "working_hours-0-starts": "09:00", "working_hours-0-ends": "17:00",
        "time_off-TOTAL_FORMS": "1", "time_off-INITIAL_FORMS": "0",
        "time_off-0-starts_at_0": local(3, 0).date().isoformat(), "time_off-0-starts_at_1": "00:00",
        "time_off-0-ends_at_0": local(4, 0).date().isoformat(), "time_off-0-ends_at_1": "00:00",
        "time_off-0-reason": "holiday",
    }

    response = admin_client.post(url, data, follow=True)

    assert WorkingHours.objects.filter(staff_member=coach, weekday=0, starts=time(9)).exists()
    assert TimeOff.objects.filter(staff_member=coach, reason="holiday").exists()
    assert "1 session(s) with bookings fall in this time off" in page_text(response)


def test_payments_are_read_only_and_paid_purchases_offer_no_record_payment(admin_client, client_a, pack, staff_user):
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
    pending_page = page_text(admin_client.get(reverse("admin:payments_purchase_change", args=[purchase.pk])))
    assert reverse("admin:payments_purchase_record_payment", args=[purchase.pk]) in pending_page
    payment = payment_record(purchase=purchase, method="cash", amount=purchase.price, actor=staff_user)

    paid_page = page_text(admin_client.get(reverse("admin:payments_purchase_change", args=[purchase.pk])))
    assert reverse("admin:payments_purchase_record_payment", args=[purchase.pk]) not in paid_page
    assert admin_client.get(reverse("admin:payments_payment_add")).status_code == 403
    assert admin_client.post(reverse("admin:payments_payment_delete", args=[payment.pk]), {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse("admin:payments_payment_change", args=[payment.pk])).context["has_change_permission"] is False
    again = admin_client.post(
        reverse("admin:payments_purchase_record_payment", args=[purchase.pk]), {"method": "cash", "amount": "300.00"},
        follow=True,
    )
    assert f"Purchase #{purchase.pk} is paid: nothing to record." in page_text(again)
    assert Payment.objects.count() == 1


def test_an_empty_session_can_be_deleted(admin_client, new_session):
    empty = new_session(local(3, 10))

    admin_client.post(reverse("admin:core_session_delete", args=[empty.pk]), {"post": "yes"})

    assert not Session.objects.filter(pk=empty.pk).exists()


def test_business_settings_is_one_row_edited_never_added_or_deleted(admin_client):
    settings = BusinessSettings.current()

    assert admin_client.get(reverse("admin:core_businesssettings_add")).status_code == 403
    assert admin_client.post(reverse("admin:core_businesssettings_delete", args=[1]), {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse("admin:core_businesssettings_change", args=[1]), {"name": "Harbour Studio", "prepaid_only": "on"},
    )

    settings.refresh_from_db()
    assert (settings.name, settings.prepaid_only) == ("Harbour Studio", True)
    assert BusinessSettings.objects.count() == 1
