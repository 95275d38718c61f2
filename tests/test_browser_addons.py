"""A client adds hot stones to their massage from the link in their email, on a phone (seed 003):
the intake form first, then the confirmation, then the extra on their page; and a blocking answer
that adds nothing and says why."""
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.models import IntakeForm, IntakeQuestion, SessionType
from core.bookings import booking_create
from core.models import Booking, BookingStatus, IntakeResponse, Session
from core.portal_tokens import portal_url
from core.sessions import session_create
from payments.models import PurchaseStatus
from tests.browser import screenshot
from tests.conftest import work_all_day

pytestmark = pytest.mark.django_db(transaction=True)

PREGNANT = "Hot stones are not suitable during pregnancy."


def local(days: int, hour: int) -> datetime:
    return timezone.make_aware(datetime.combine(timezone.localdate() + timedelta(days=days), time(hour)))


@pytest.fixture
def hot_stones(category, massage, coach):
    form = IntakeForm.objects.create(
        name="Hot stones screening",
        intro="Hot stones are heated basalt stones placed on the body. Please answer before we add them.",
    )
    IntakeQuestion.objects.create(form=form, position=1, text="Are you pregnant?", blocks_on_yes=True,
                                  block_reason=PREGNANT)
    IntakeQuestion.objects.create(form=form, position=2, text="Do you have any skin conditions?")
    IntakeQuestion.objects.create(form=form, position=3, text="Anything else we should know?", kind="text",
                                  required=False)
    add_on = SessionType.objects.create(
        name="Hot stones, 30 min", category=category, duration_minutes=30, price=Decimal("25.00"),
        currency="GBP", intake_form=form,
    )
    add_on.add_on_for.add(massage)
    coach.session_types.add(add_on)
    work_all_day(coach)
    return add_on


@pytest.fixture
def massage_booked(make_pack, sell, massage, coach, staff_user):
    def make(client, days=3):
        sell(client, make_pack([(massage, False, 5)]))
        session = session_create(session_type=massage, staff_member=coach, starts_at=local(days, 10), actor=staff_user)
        return booking_create(client=client, session=session, actor=staff_user)

    return make


def fits_the_phone(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth") <= 360


def question(page, text: str):
    return page.locator("fieldset.question", has_text=text)


def test_a_client_adds_hot_stones_after_the_intake_form_on_a_phone(
    live_server, phone_page, settings, hot_stones, massage_booked, client_a,
):
    settings.PUBLIC_BASE_URL = live_server.url
    booking = massage_booked(client_a)
    page = phone_page
    link = portal_url(client_a)

    page.goto(link)
    group = page.locator(f"#booking-{booking.pk}")
    assert fits_the_phone(page)
    screenshot(page, "addons-0-home")
    group.get_by_role("link", name="Add an extra").click()
    page.wait_for_url(f"**/bookings/{booking.pk}/extras/")
    option = page.locator(f"#option-{hot_stones.pk}")
    assert "£25.00, pay at your visit" in option.inner_text() and "11:00–11:30" in option.inner_text()
    assert fits_the_phone(page)
    screenshot(page, "addons-1-extras")

    option.get_by_role("link", name="Choose").click()
    page.wait_for_url(f"**/extras/{hot_stones.pk}/")
    assert "Please answer before we add them." in page.inner_text("#intake")
    # Nothing answered yet: the page says what is missing, under each question.
    page.get_by_role("button", name="Add Hot stones, 30 min").click()
    assert "Please answer the questions marked below." in page.inner_text("#form-error")
    assert "Please answer this question." in question(page, "Are you pregnant?").inner_text()
    assert fits_the_phone(page)
    screenshot(page, "addons-2-form-missing")

    question(page, "Are you pregnant?").get_by_label("No").check()
    question(page, "Do you have any skin conditions?").get_by_label("Yes").check()
    question(page, "Anything else we should know?").locator("textarea").fill("Eczema on my forearms")
    assert "£25.00, pay at your visit" in page.inner_text("#confirm")
    screenshot(page, "addons-3-form-answered")
    page.get_by_role("button", name="Add Hot stones, 30 min").click()

    page.wait_for_url(f"{link}#booking-{booking.pk}")
    assert "Added Hot stones, 30 min (11:00–11:30) to your Massage 60." in page.inner_text("body")
    extra = Booking.objects.get(main_booking=booking)
    shown = page.locator(f"#booking-{booking.pk} #extra-{extra.pk}").inner_text()
    assert "+ Hot stones, 30 min" in shown and "£25.00 to pay at your visit" in shown
    assert page.locator(f"#booking-{booking.pk}").get_by_role("link", name="Add an extra").count() == 0
    assert fits_the_phone(page)
    screenshot(page, "addons-4-added")

    assert extra.status == BookingStatus.BOOKED and extra.purchase.status == PurchaseStatus.PENDING
    assert [a["answer"] for a in IntakeResponse.objects.get(booking=extra).answers] == [
        "no", "yes", "Eczema on my forearms",
    ]

    # Cancelling the massage takes the extra with it, and the page says so before and after.
    group.get_by_role("link", name="Cancel").click()
    assert "Your extras are cancelled with it" in page.inner_text("#extras-cancelled")
    assert "+ Hot stones, 30 min" in page.inner_text("#booking")
    assert fits_the_phone(page)
    screenshot(page, "addons-6-cancel-group")
    page.get_by_role("button", name="Yes, cancel this booking").click()
    page.wait_for_url(link)
    assert "Cancelled with it: Hot stones, 30 min." in page.inner_text("body")
    extra.refresh_from_db()
    assert extra.status == BookingStatus.CANCELLED and extra.purchase.status == PurchaseStatus.CANCELLED


def test_a_blocking_answer_shows_the_reason_and_adds_nothing_on_a_phone(
    live_server, phone_page, settings, hot_stones, massage_booked, client_a,
):
    settings.PUBLIC_BASE_URL = live_server.url
    booking = massage_booked(client_a)
    sessions = Session.objects.count()
    page = phone_page
    link = portal_url(client_a)

    page.goto(f"{link}bookings/{booking.pk}/extras/{hot_stones.pk}/")
    question(page, "Are you pregnant?").get_by_label("Yes").check()
    question(page, "Do you have any skin conditions?").get_by_label("No").check()
    page.get_by_role("button", name="Add Hot stones, 30 min").click()

    assert PREGNANT in page.inner_text("#refused-reason")
    assert "Nothing was added and your answers were not kept." in page.inner_text("#extra-refused")
    assert fits_the_phone(page)
    screenshot(page, "addons-5-blocked")
    assert not Booking.objects.filter(main_booking=booking).exists()
    assert Session.objects.count() == sessions and not IntakeResponse.objects.exists()

    page.get_by_role("link", name="Back to your page").click()
    page.wait_for_url(link)
    assert "+ Hot stones" not in page.inner_text(f"#booking-{booking.pk}")
