"""A client buys a pack on a phone: /packs/, the test-mode checkout, the success page with credits.

The whole pipeline is real: the Checkout Session through the stripe SDK (test-mode double), the
signed event posted over HTTP to our webhook, stored, enqueued on Redis and processed by a
dramatiq worker, then the credits shown on the page that was saying "Payment confirming…".
"""
from decimal import Decimal

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from catalog.validation import StaffPriceData
from ledger.integrity import ledger_check
from ledger.models import CreditGrant
from ledger.templatetags.credits import last_usable_day
from payments.models import Purchase, PurchaseChannel, PurchaseStatus
from tests.browser import screenshot

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker():
    # REDIS_URL is set in tests, so there is no in-process worker: run a real one for this test.
    broker = dramatiq.get_broker()
    assert isinstance(broker, RedisBroker)
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    yield worker
    worker.stop()
    broker.flush_all()


def test_a_client_buys_a_pack_on_a_phone_and_sees_the_credits(live_server, phone_page, settings, worker, make_pack,
                                                              massage, physio, coach):
    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = live_server.url  # Stripe's (the double's) redirects come back here
    pack = make_pack([(massage, False, 10)], name="10 massages", price=Decimal("300.00"),
                     description="Ten 60-minute massages with any of our therapists.",
                     staff_prices=[StaffPriceData(coach, Decimal("350.00"))])
    make_pack([(physio, False, 2), (massage, False, 1)], name="Intro: 2 physio + 1 massage",
              price=Decimal("49.00"), restrict_to="new_joiners", validity_amount=3, validity_unit="weeks")
    make_pack([(physio, True)], name="Unlimited physio, one month", price=Decimal("89.00"),
              validity_amount=1, validity_unit="months", valid_from="first_session")
    page = phone_page

    page.goto(f"{live_server.url}/packs/")
    card = page.locator(f"#pack-{pack.pk}")
    assert "from £300.00" in card.inner_text() and "10 × Massage 60" in card.inner_text()
    # Nothing wider than the phone: no sideways scrolling at 360px.
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "public-1-packs")

    card.get_by_text("Buy this pack").click()
    card.get_by_label("Your name").fill("Mary Shelley")
    card.get_by_label("Email").fill("mary@example.com")
    card.get_by_label("With").select_option(label="Coach Carter, £350.00")  # priced per staff member
    screenshot(page, "public-2-form")
    card.get_by_role("button", name="Continue to payment").click()

    page.wait_for_url("**/packs/test-checkout/**")
    assert "TEST MODE" in page.inner_text("body") and "10 massages" in page.inner_text("body")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "public-3-test-checkout")
    page.get_by_role("button", name="Pay £350.00 (test mode)").click()

    page.wait_for_url("**/packs/success/?session_id=cs_test_*")
    # The page says "Payment confirming…" and refreshes until the worker has issued the credits.
    page.locator("#credits").wait_for(timeout=30_000)
    body = page.inner_text("body")
    purchase = Purchase.objects.get()
    grant = CreditGrant.objects.get(purchase=purchase)
    assert (purchase.status, purchase.price, purchase.staff_member) == (PurchaseStatus.PAID, Decimal("350.00"), coach)
    assert "Payment received" in body and "10 credits" in body and "Massage 60" in body
    day = last_usable_day(grant.expires_at)
    assert f"Usable until end of {day.day} {day:%B %Y}" in body
    assert "How to book your first session" in body
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "public-4-success")
    assert ledger_check().ok


def test_refusals_and_the_wait_for_payment_read_clearly_on_a_phone(live_server, phone_page, settings, make_pack,
                                                                     massage, client_a, sell, coach, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    from core.bookings import booking_create
    from core.sessions import session_create

    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = live_server.url
    sell(client_a, make_pack([(massage, False, 5)], sell_online=False))
    booking_create(client=client_a, actor=staff_user, session=session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        actor=staff_user, outside_hours_reason="tests run at any hour",
    ))
    intro = make_pack([(massage, False, 2)], name="Intro massage", price=Decimal("39.00"), restrict_to="new_joiners")
    page = phone_page
    page.goto(f"{live_server.url}/packs/")
    card = page.locator(f"#pack-{intro.pk}")

    # An existing member tries the new-joiner offer: told why, in words they can act on.
    card.get_by_text("Buy this pack").click()
    card.get_by_label("Your name").fill("Ada")
    card.get_by_label("Email").fill("ada@example.com")
    card.get_by_role("button", name="Continue to payment").click()
    alert = page.locator("#buy-error")
    assert "for new joiners only, and this email address has booked with us before" in alert.inner_text()
    assert page.locator(f"#pack-{intro.pk} details").get_attribute("open") is not None  # form kept open
    screenshot(page, "public-5-refused")

    # A mistyped email: the field says what is wrong, and keeps what was typed.
    card = page.locator(f"#pack-{intro.pk}")
    card.get_by_label("Email").fill("mary@example")
    card.get_by_role("button", name="Continue to payment").click()
    card = page.locator(f"#pack-{intro.pk}")
    assert "Enter a valid email address" in card.inner_text()
    assert card.get_by_label("Email").input_value() == "mary@example"
    screenshot(page, "public-6-bad-email")
    assert not Purchase.objects.filter(channel=PurchaseChannel.ONLINE).exists()

    # Back from the checkout before the payment is confirmed: the page waits and says so.
    card.get_by_label("Email").fill("mary@example.com")
    card.get_by_role("button", name="Continue to payment").click()
    page.wait_for_url("**/packs/test-checkout/**")
    purchase = Purchase.objects.get(channel=PurchaseChannel.ONLINE)
    page.goto(f"{live_server.url}/packs/success/?session_id={purchase.stripe_checkout_session_id}")
    assert "Payment confirming…" in page.inner_text("body")
    assert page.locator('meta[http-equiv="refresh"]').get_attribute("content") == "3"
    screenshot(page, "public-7-confirming")
