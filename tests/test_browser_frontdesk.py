"""The front desk's day in a real browser: find a client, sell a pack, book, cancel in time.

One path through the admin as a "Front desk" user, asserting at each step what the person at
the desk reads on the page (messages, the balances table) and, at the end, what the ledger holds.
Screenshots go to tests/artifacts/frontdesk-<n>-<step>.png.
"""
import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from playwright.sync_api import expect

from core.models import Booking, BookingStatus, Weekday, WorkingHours
from core.roles import FRONT_DESK, sync_roles
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from payments.models import Payment, PaymentMethod, Purchase, PurchaseStatus
from tests.browser import ARTIFACTS, admin_login, screenshot
from tests.frontdesk import local

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-desk-frontdesk-1"


@pytest.fixture
def front_desk_user(db):
    # Transactional tests flush the database, and with it the group the roles migration made.
    sync_roles()
    user = get_user_model().objects.create_user("sam", "sam@example.com", PASSWORD, is_staff=True)
    user.groups.add(Group.objects.get(name=FRONT_DESK))
    return user


@pytest.fixture
def upcoming_session(coach, massage, staff_user):
    """A massage in 3 days, well before the 24-hour cancellation window closes."""
    WorkingHours.objects.bulk_create(
        WorkingHours(staff_member=coach, weekday=day, starts="08:00", ends="20:00") for day in Weekday.values
    )
    return session_create(session_type=massage, staff_member=coach, starts_at=local(3, 10), actor=staff_user)


def tall_screenshot(page, name: str) -> None:
    """A full-page screenshot with the viewport as tall as the page: unfold's sticky submit bar
    then sits at the bottom instead of covering the balances in the middle of the picture."""
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(height, size["height"])})
    try:
        screenshot(page, name)
    finally:
        page.set_viewport_size(size)


def balance_cell(page, session_type: str):
    """The Credits cell of one row of the client page's Balances table."""
    row = page.locator("#client-balances tr.balance-row").filter(has_text=session_type)
    return row.locator("td").nth(1)


def test_front_desk_sells_books_and_cancels_in_time(
    live_server, desktop_page, front_desk_user, client_a, client_b, make_pack, massage, upcoming_session,
):
    page = desktop_page
    make_pack([(massage, False, 10)], name="Ten massages")

    # 1. Log in as the front desk.
    admin_login(page, live_server, "sam", PASSWORD)
    expect(page.get_by_role("link", name="Clients").first).to_be_visible()
    screenshot(page, "frontdesk-1-logged-in")

    # 2. Find the client from the client list's search box (Grace is there to be filtered out);
    #    she has no credits yet.
    page.goto(f"{live_server.url}/admin/core/client/")
    search = page.locator("#searchbar")
    search.fill("lovelace")
    search.press("Enter")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Ada Lovelace")
    expect(rows.first.locator("td.field-credits")).to_have_text("0")
    screenshot(page, "frontdesk-2-client-found")
    rows.first.get_by_role("link", name="Ada Lovelace").click()
    expect(page.locator("#client-balances")).to_contain_text("No credits.")

    # 3. Sell a pack from the client page, then take the cash.
    page.get_by_role("link", name="Sell a pack").click()
    expect(page.get_by_role("heading", name="Sell a credit pack")).to_be_visible()
    expect(page.locator("#id_client")).to_have_value(str(client_a.pk))  # came with the client
    page.locator("#id_pack").select_option(label="Ten massages — 300.00 GBP")
    screenshot(page, "frontdesk-3a-sell-pack")
    page.get_by_role("button", name="Create purchase").click()

    expect(page.get_by_role("heading", name=re.compile(r"Record payment: purchase #\d+"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Purchase #\d+ created: 300\.00 GBP, pending payment"))).to_be_visible()
    expect(page.locator("#purchase-summary")).to_contain_text("Ada Lovelace")
    expect(page.get_by_label("Cash")).to_be_checked()
    expect(page.locator("#id_amount")).to_have_value("300.00")
    page.locator("#id_reference").fill("Receipt 0042")
    screenshot(page, "frontdesk-3b-record-payment")
    page.get_by_role("button", name="Record payment").click()
    expect(page.get_by_text(re.compile(
        r"Cash payment of 300\.00 GBP recorded for purchase #\d+: Ada Lovelace's credits are issued\."
    ))).to_be_visible()
    expect(page.get_by_text("Paid", exact=True)).to_be_visible()  # the purchase's status
    tall_screenshot(page, "frontdesk-3c-payment-recorded")

    # The payment lands on the purchase's page; back to the client through its link.
    page.get_by_role("link", name="Ada Lovelace <ada@example.com>").click()
    expect(page).to_have_url(re.compile(rf"/admin/core/client/{client_a.pk}/change/"))
    expect(balance_cell(page, "Massage 60")).to_have_text("10")
    # What the desk sees on arrival, without scrolling (the viewport, not the whole page).
    page.screenshot(path=str(ARTIFACTS / "frontdesk-3d-client-first-screen.png"))
    tall_screenshot(page, "frontdesk-3e-balance-after-sale")

    # 4. Book her on the upcoming massage from the client page: one credit is used.
    # (The link's name starts with its icon's ligature text, hence the pattern.)
    page.locator("#client-bookings").get_by_role("link", name=re.compile(r"Book$")).click()
    expect(page.get_by_role("heading", name="Book a client")).to_be_visible()
    expect(page.locator("#booking-client")).to_contain_text("Massage 60: 10")
    # The session field is the admin's autocomplete (select2): open it, type, pick.
    page.locator("#id_session + .select2 .select2-selection").click()
    page.locator(".select2-search__field").fill("Massage")
    page.locator(".select2-results__option").filter(has_text="Massage 60 with Coach Carter").click()
    expect(page.locator("#id_session")).to_have_value(str(upcoming_session.pk))
    screenshot(page, "frontdesk-4a-book")
    page.get_by_role("button", name="Book", exact=True).click()

    expect(page.get_by_text(re.compile(r"Ada Lovelace is booked on Massage 60 with Coach Carter"))).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/admin/core/client/{client_a.pk}/change/"))
    expect(balance_cell(page, "Massage 60")).to_have_text("9")
    upcoming = page.locator("#client-bookings tr.booking-row")
    expect(upcoming).to_have_count(1)
    expect(upcoming.first).to_contain_text("Booked")
    expect(upcoming.first).to_contain_text("Ten massages")
    tall_screenshot(page, "frontdesk-4b-booked")

    # 5. Cancel in time from the client page: the confirmation says the credit returns.
    upcoming.first.get_by_role("link", name="Cancel").click()
    expect(page.get_by_role("heading", name="Cancel this booking?")).to_be_visible()
    rule = page.locator("#rule")
    expect(rule).to_contain_text("In time")
    expect(rule).to_contain_text("so the credit returns to Ada Lovelace's balance")
    expect(page.locator("#override")).to_have_count(0)  # front desk may not override the rule
    screenshot(page, "frontdesk-5a-cancel-confirm")
    page.get_by_role("button", name="Yes, cancel the booking").click()

    expect(page.get_by_text(re.compile(r"Ada Lovelace's booking is cancelled"))).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/admin/core/client/{client_a.pk}/change/"))
    expect(balance_cell(page, "Massage 60")).to_have_text("10")
    expect(page.locator("#no-upcoming")).to_be_visible()
    past = page.locator("#client-past-bookings tr.booking-row")
    expect(past).to_have_count(1)
    expect(past.first).to_contain_text("Cancelled")
    tall_screenshot(page, "frontdesk-5b-cancelled")

    # What the ledger holds: issued 10 on payment, used and returned against the booking.
    purchase = Purchase.objects.get(client=client_a)
    assert purchase.status == PurchaseStatus.PAID and purchase.created_by == front_desk_user
    payment = Payment.objects.get(purchase=purchase)
    assert (payment.method, payment.reference) == (PaymentMethod.CASH, "Receipt 0042")
    booking = Booking.objects.get(client=client_a, session=upcoming_session)
    assert booking.status == BookingStatus.CANCELLED and booking.booked_by == front_desk_user
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 10
    entries = list(LedgerEntry.objects.filter(client=client_a).order_by("id"))
    assert [(e.kind, e.amount, e.balance_after) for e in entries] == [
        (EntryKind.ISSUED, 10, 10), (EntryKind.USED, -1, 9), (EntryKind.RETURNED, 1, 10),
    ]
    assert entries[0].purchase_id == purchase.pk and entries[0].booking_id is None
    assert [e.booking_id for e in entries[1:]] == [booking.pk, booking.pk]
    assert booking.used_entry_id == entries[1].pk
    assert {e.actor_id for e in entries} == {front_desk_user.pk}
    assert ledger_check().ok
