"""A client opens the link from their email on a phone, books a session and cancels it in time."""
from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import Booking, BookingStatus
from core.portal_tokens import portal_url
from core.sessions import session_create
from ledger.integrity import ledger_check
from tests.browser import screenshot

pytestmark = pytest.mark.django_db(transaction=True)


def credits_left(page) -> str:
    return page.locator("#credits .credits-left").first.inner_text()


def test_a_client_books_and_cancels_from_the_link_on_a_phone(live_server, phone_page, settings, make_pack, sell,
                                                           massage, physio, coach, client_a, staff_user):
    settings.PUBLIC_BASE_URL = live_server.url
    sell(client_a, make_pack([(massage, False, 6)], name="Six massages"))
    make_pack([(physio, False, 3)], name="Three physio")
    starts = timezone.localtime() + timedelta(days=3)
    starts = starts.replace(hour=10, minute=0, second=0, microsecond=0)
    sessions = [
        session_create(session_type=massage, staff_member=coach, starts_at=starts + timedelta(hours=h),
                       actor=staff_user, capacity=cap, outside_hours_reason="tests run at any hour")
        for h, cap in ((0, 1), (2, 8))
    ]
    page = phone_page
    link = portal_url(client_a)  # the link as emailed (a new call signs a new timestamp)

    page.goto(link)
    assert "Hello, Ada" in page.inner_text("body") and credits_left(page) == "6"
    assert "No Physio credits yet?" in page.inner_text("#offers")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "portal-1-home")

    page.locator("#book-link").click()
    page.wait_for_url("**/book/")
    assert page.locator(f"#session-{sessions[1].pk}").inner_text().count("8 places left") == 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "portal-2-book")
    page.locator(f"#session-{sessions[1].pk}").get_by_role("button", name="Book").click()

    page.wait_for_url(link)
    booking = Booking.objects.get(client=client_a)
    assert "Booked:" in page.inner_text("body") and credits_left(page) == "5"
    assert page.locator(f"#booking-{booking.pk}").is_visible()
    screenshot(page, "portal-3-booked")

    page.locator(f"#booking-{booking.pk}").get_by_role("link", name="Cancel").click()
    assert "your credit comes back" in page.inner_text("#in-time")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "portal-4-cancel")
    page.get_by_role("button", name="Yes, cancel this booking").click()

    page.wait_for_url(link)
    assert "your credit is back" in page.inner_text("body") and credits_left(page) == "6"
    assert "Nothing booked yet." in page.inner_text("#upcoming")
    screenshot(page, "portal-5-cancelled")
    booking.refresh_from_db()
    assert booking.status == BookingStatus.CANCELLED and ledger_check().ok

    page.goto(link[:-3] + "xx/")  # the signature's last two characters changed
    assert "This link is not valid" in page.inner_text("body")
    screenshot(page, "portal-6-bad-link")


def test_a_late_cancel_reads_clearly_on_a_phone(live_server, phone_page, settings, make_pack, sell, massage, coach,
                                                 client_a, staff_user):
    from core.bookings import booking_create

    settings.PUBLIC_BASE_URL = live_server.url
    sell(client_a, make_pack([(massage, False, 2)]))
    session = session_create(session_type=massage, staff_member=coach, actor=staff_user,
                             starts_at=timezone.now() + timedelta(hours=3), outside_hours_reason="tests")
    booking = booking_create(client=client_a, session=session, actor=staff_user)
    page = phone_page
    link = portal_url(client_a)
    page.goto(link + f"bookings/{booking.pk}/cancel/")
    assert "you lose the credit" in page.inner_text("#late")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "portal-7-late-cancel")
    page.get_by_role("button", name="Cancel anyway and lose the credit").click()
    page.wait_for_url(link)
    assert "the credit was used" in page.inner_text("body")
    assert "Late-cancelled" in page.inner_text("#past")
    screenshot(page, "portal-8-after-late-cancel")
    booking.refresh_from_db()
    assert booking.status == BookingStatus.LATE_CANCELLED
