"""The public pack page: list, buy through Stripe Checkout (the real SDK against the test-mode
double), the success page, and the test-mode checkout page."""
import html
import json
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import dramatiq
import pytest
from django.utils import timezone

from catalog.validation import StaffPriceData
from core.bookings import booking_create
from core.models import Client
from core.sessions import session_create
from ledger.models import CreditGrant
from ledger.templatetags.credits import last_usable_day
from payments import stripe_double
from payments.checkout import checkout_session_create
from payments.events import stripe_event_process
from payments.models import LocalStripeObject, Purchase, PurchaseChannel, PurchaseStatus, StripeEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = "https://packs.example.com"


def text(response) -> str:
    return html.unescape(response.content.decode())


def sessions_in_double():
    return LocalStripeObject.objects.filter(object_type="checkout.session")


def nothing_created(clients_before: int) -> bool:
    return (
        Client.objects.count() == clients_before and not Purchase.objects.exists()
        and not sessions_in_double().exists()
    )


def buy(client, pack_id, **data):
    return client.post(f"/packs/{pack_id}/buy/", {"name": "Mary Shelley", "email": "mary@example.com", **data})


def pay_through_the_webhook(client, session_id):
    """What Stripe does after the client pays: the signed event reaches /stripe/webhook/; then the
    stored event is processed as the dramatiq actor would (on_commit jobs do not run here)."""
    stripe_double.complete_checkout(session_id)
    payload = json.dumps(stripe_double.build_event("checkout.session.completed", stripe_double.load(session_id)))
    response = client.post(
        "/stripe/webhook/", payload, content_type="application/json",
        HTTP_STRIPE_SIGNATURE=stripe_double.sign(payload),
    )
    assert response.status_code == 200
    stripe_event_process(StripeEvent.objects.get(event_id=json.loads(payload)["id"]).pk)


@pytest.fixture
def ten(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"), description="Our classic.")


def test_list_shows_packs_sold_online_grouped_with_price_credits_validity_and_restrictions(
    client, make_pack, massage, physio, coach, category, ten,
):
    from catalog.models import Category

    intro = Category.objects.create(name="Intro offers", position=5)
    make_pack(
        [(massage, False, 2), (physio, True)], name="Intro duo", category=intro, price=Decimal("49.50"),
        restrict_to="new_joiners", validity_amount=1, validity_unit="weeks", valid_from="first_session",
    )
    make_pack([(physio, False, 5)], name="Physio with Coach", all_staff=False,
              staff_prices=[StaffPriceData(coach, Decimal("180.00"))], price=Decimal("150.00"))
    make_pack([(massage, False, 1)], name="Unpublished one", published=False, sell_online=False)
    make_pack([(massage, False, 1)], name="Desk only", sell_online=False)
    make_pack([(massage, False, 1)], name="Monthly", is_recurring=True, billing_interval="month",
              recurs_when="pack_expires", recurring_collection="auto_debit")

    response = client.get("/packs/")

    assert response.status_code == 200
    page = text(response)
    assert "Unpublished one" not in page and "Desk only" not in page
    # A recurring pack is sold online too, saying how it renews (tests/test_subscriptions_public.py).
    assert "Monthly" in page and "Recurring: every month." in page
    # Categories in their order, each with its packs.
    assert page.index("Private sessions") < page.index("Ten massages") < page.index("Intro offers") < page.index("Intro duo")
    assert "£300.00" in page and "10 × Massage 60" in page and "Valid 3 months from payment" in page
    assert "Our classic." in page
    assert "£49.50" in page and "2 × Massage 60" in page and "Unlimited Physio" in page
    assert "Valid 1 week from your first session" in page and "New joiners only" in page
    # The one staff member it is sold with, at their own price (the only price there is).
    assert "With Coach Carter only" in page and "£180.00" in page
    assert page.count('name="csrfmiddlewaretoken"') == 4  # one form per pack, CSRF on


def test_list_runs_a_fixed_number_of_queries(client, make_pack, massage, physio, coach, django_assert_num_queries):
    def add_packs(count):
        for _ in range(count):
            make_pack([(massage, False, 5), (physio, True)],
                      staff_prices=[StaffPriceData(coach, Decimal("350.00"))])

    add_packs(2)
    with django_assert_num_queries(3):  # packs with categories, their credit lines, their staff prices
        assert client.get("/packs/").status_code == 200
    add_packs(28)
    with django_assert_num_queries(3):
        response = client.get("/packs/")
    assert text(response).count('class="card pack"') == 30


def test_buying_creates_a_pending_purchase_and_a_checkout_session_from_our_price(client, ten, settings):
    # Tampering: price, currency and pack data posted by the browser are ignored.
    response = buy(client, ten.pk, price="1.00", currency="usd", amount="100", unit_amount="1",
                   pack="999", name_of_pack="Free stuff")

    assert response.status_code == 303
    purchase = Purchase.objects.get()
    session = LocalStripeObject.objects.get(object_type="checkout.session").data
    assert response["Location"] == f"https://packs.example.com/packs/test-checkout/{session['id']}/"
    assert (purchase.status, purchase.channel, purchase.price, purchase.currency) == (
        PurchaseStatus.PENDING, PurchaseChannel.ONLINE, Decimal("300.00"), "GBP"
    )
    assert purchase.snapshot["name"] == "Ten massages" and purchase.snapshot["lines"][0]["credits"] == 10
    assert purchase.created_by is None and purchase.stripe_checkout_session_id == session["id"]
    assert (purchase.client.name, purchase.client.email) == ("Mary Shelley", "mary@example.com")
    assert (session["amount_total"], session["currency"], session["metadata"]) == (
        30000, "gbp", {"purchase_id": str(purchase.pk)}
    )
    assert session["customer_email"] == "mary@example.com"
    assert session["client_reference_id"] == str(purchase.pk)
    assert session["success_url"] == "https://packs.example.com/packs/success/?session_id={CHECKOUT_SESSION_ID}"
    assert session["cancel_url"].startswith("https://packs.example.com/packs/")
    assert LocalStripeObject.objects.get(object_type="checkout.session").idempotency_key == (
        f"packdesk-checkout-{purchase.pk}"
    )
    assert not CreditGrant.objects.exists()  # credits only once Stripe confirms payment


def test_existing_client_is_found_by_email_in_any_case_and_keeps_their_name(client, ten, client_a):
    response = buy(client, ten.pk, name="Someone Else", email="  ADA@Example.COM ")
    assert response.status_code == 303
    purchase = Purchase.objects.get()
    assert purchase.client == client_a
    client_a.refresh_from_db()
    assert client_a.name == "Ada Lovelace" and Client.objects.count() == 1


def test_a_second_request_for_the_same_purchase_gets_the_same_checkout_session(client, ten):
    buy(client, ten.pk)
    purchase = Purchase.objects.get()
    again = checkout_session_create(purchase)  # a retry: the key is the purchase's, not the request's
    assert again.id == purchase.stripe_checkout_session_id
    assert sessions_in_double().count() == 1


def test_a_per_staff_price_is_taken_from_the_database(client, make_pack, massage, coach):
    pack = make_pack([(massage, False, 10)], price=Decimal("300.00"),
                     staff_prices=[StaffPriceData(coach, Decimal("350.00"))])
    page = text(client.get("/packs/"))
    assert "from £300.00" in page and "Coach Carter, £350.00" in page and "Any other staff member, £300.00" in page

    assert buy(client, pack.pk, staff_member=str(coach.pk), price="300.00").status_code == 303

    purchase = Purchase.objects.get()
    assert (purchase.staff_member, purchase.price) == (coach, Decimal("350.00"))
    assert sessions_in_double().get().data["amount_total"] == 35000


@pytest.mark.parametrize("pack_id, data, status, message", [
    ("999999", {}, 404, "That pack is not on sale online"),
    ("abc", {}, 404, "That pack is not on sale online"),
    ("unpublished", {}, 404, "That pack is not on sale online"),
    ("desk-only", {}, 404, "That pack is not on sale online"),
    ("ten", {"email": "not-an-email"}, 400, "Enter a valid email address"),
    ("ten", {"email": ""}, 400, "Enter your email address."),
    ("ten", {"name": "   "}, 400, "Enter your name."),
    ("ten", {"name": "x" * 201}, 400, "at most 200 characters"),
    ("ten", {"email": "a" * 250 + "@example.com"}, 400, "at most 254 characters"),
    ("ten", {"staff_member": "12345"}, 403, "Choose a staff member listed for Ten massages"),
])
def test_bad_input_shows_the_page_again_with_a_message_and_creates_nothing(
    client, make_pack, massage, ten, client_a, pack_id, data, status, message,
):
    packs = {
        "ten": ten.pk,
        "unpublished": make_pack([(massage, False, 1)], published=False, sell_online=False).pk,
        "desk-only": make_pack([(massage, False, 1)], sell_online=False).pk,
    }
    clients_before = Client.objects.count()

    response = buy(client, packs.get(pack_id, pack_id), **data)

    assert response.status_code == status
    assert message in text(response)
    assert "Ten massages" in text(response)  # the list is there to choose again
    assert nothing_created(clients_before)


@pytest.fixture
def booked_before(client_a, sell, make_pack, massage, coach, staff_user):
    """Ada has booked a session before: an existing member."""
    sell(client_a, make_pack([(massage, False, 5)], sell_online=False))
    session = session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        actor=staff_user, outside_hours_reason="tests run at any hour",
    )
    booking_create(client=client_a, session=session, actor=staff_user)
    return client_a


def test_a_new_joiner_offer_refuses_an_existing_member_and_creates_nothing(
    client, make_pack, massage, booked_before,
):
    intro = make_pack([(massage, False, 2)], name="Intro offer", restrict_to="new_joiners")
    purchases_before = Purchase.objects.count()

    response = buy(client, intro.pk, name="Not Ada", email="ada@example.com")

    assert response.status_code == 403
    page = text(response)
    assert "Intro offer is for new joiners only, and this email address has booked with us before." in page
    assert "Ada Lovelace" not in page  # typing an email never reveals who it belongs to
    assert Purchase.objects.count() == purchases_before and not sessions_in_double().exists()
    # A new email is a new joiner.
    assert buy(client, intro.pk, email="newcomer@example.com").status_code == 303


def test_a_members_only_pack_refuses_a_new_email_without_creating_the_client(client, make_pack, massage):
    members = make_pack([(massage, False, 2)], name="Members deal", restrict_to="active_members")

    response = buy(client, members.pk, email="stranger@example.com")

    assert response.status_code == 403
    assert "Members deal is for existing members only" in text(response)
    assert nothing_created(0)


def test_when_stripe_cannot_be_reached_the_purchase_is_cancelled_and_the_client_told(client, ten, settings, monkeypatch):
    # The real API, through a proxy that refuses connections: nothing leaves this machine.
    settings.STRIPE_TEST_DOUBLE = False
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")

    response = buy(client, ten.pk)

    assert response.status_code == 503
    assert "We could not start the payment just now, so nothing was charged." in text(response)
    purchase = Purchase.objects.get()
    assert purchase.status == PurchaseStatus.CANCELLED and purchase.stripe_checkout_session_id is None
    assert not CreditGrant.objects.exists()


def test_success_page_says_confirming_until_the_webhook_is_processed_then_shows_the_credits(client, ten):
    buy(client, ten.pk)
    purchase = Purchase.objects.get()
    url = f"/packs/success/?session_id={purchase.stripe_checkout_session_id}"

    pending = client.get(url)
    assert pending.status_code == 200
    assert "Payment confirming…" in text(pending)
    assert '<meta http-equiv="refresh" content="3">' in text(pending)

    # A webhook this late is not coming by itself: the page stops refreshing and says so.
    Purchase.objects.filter(pk=purchase.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    late = text(client.get(url))
    assert "taking longer than usual" in late and 'http-equiv="refresh"' not in late

    pay_through_the_webhook(client, purchase.stripe_checkout_session_id)

    paid = client.get(url)
    page = text(paid)
    purchase.refresh_from_db()
    grant = CreditGrant.objects.get(purchase=purchase)
    assert purchase.status == PurchaseStatus.PAID
    assert "Payment confirming" not in page and 'http-equiv="refresh"' not in page
    assert "Massage 60" in page and "10 credits" in page
    day = last_usable_day(grant.expires_at)
    assert f"Usable until end of {day.day} {day:%B %Y}" in page
    assert "How to book your first session" in page and "mary@example.com" in page
    assert paid["Cache-Control"].startswith("max-age=0")


def test_success_page_of_a_pack_valid_from_the_first_session_says_when_it_starts(client, make_pack, massage, physio):
    pack = make_pack([(massage, False, 3), (physio, True)], valid_from="first_session", validity_amount=2,
                     validity_unit="weeks")
    buy(client, pack.pk)
    purchase = Purchase.objects.get()
    pay_through_the_webhook(client, purchase.stripe_checkout_session_id)

    page = text(client.get(f"/packs/success/?session_id={purchase.stripe_checkout_session_id}"))

    assert "3 credits" in page and "Unlimited sessions" in page
    assert page.count("Valid 2 weeks from your first session") == 2


@pytest.mark.parametrize("query", ["", "?session_id=", "?session_id=cs_test_guess", "?session_id=" + "x" * 300])
def test_success_page_without_a_known_session_is_not_found(client, ten, query):
    buy(client, ten.pk)  # a real purchase exists; guessing never reaches it
    response = client.get(f"/packs/success/{query}")
    assert response.status_code == 404
    assert "We could not find this payment" in text(response) and "Mary" not in text(response)


def test_test_checkout_page_is_labelled_and_refuses_unknown_sessions(client, ten):
    response = buy(client, ten.pk)
    path = urlsplit(response["Location"]).path

    page = client.get(path)

    assert page.status_code == 200
    assert "TEST MODE" in text(page) and "Ten massages" in text(page) and "Pay £300.00 (test mode)" in text(page)
    assert "Cancel" in text(page)
    assert client.get("/packs/test-checkout/cs_test_nope/").status_code == 404


def test_test_checkout_is_not_there_with_real_stripe(client, ten, settings):
    response = buy(client, ten.pk)
    path = urlsplit(response["Location"]).path
    settings.STRIPE_TEST_DOUBLE = False
    assert client.get(path).status_code == 404
    assert client.post(path, {"action": "pay"}).status_code == 404
    assert stripe_double.load(path.split("/")[-2])["status"] == "open"


# --- The test-mode checkout posting to our own webhook over HTTP (a live server) -------------


@pytest.fixture
def live_host(live_server):
    broker = dramatiq.get_broker()
    broker.flush_all()  # the webhook enqueues jobs; no worker here, so none are left behind
    yield urlsplit(live_server.url).netloc
    broker.flush_all()


@pytest.mark.django_db(transaction=True)
def test_paying_on_the_test_checkout_posts_a_signed_event_to_our_webhook(client, ten, live_host):
    path = urlsplit(buy(client, ten.pk)["Location"]).path
    purchase = Purchase.objects.get()

    response = client.post(path, {"action": "pay"}, HTTP_HOST=live_host)

    assert response.status_code == 303
    assert response["Location"] == (
        f"https://packs.example.com/packs/success/?session_id={purchase.stripe_checkout_session_id}"
    )
    event = StripeEvent.objects.get()  # stored by the webhook, signature verified
    assert event.type == "checkout.session.completed"
    assert event.payload["data"]["object"]["id"] == purchase.stripe_checkout_session_id
    stripe_event_process(event.pk)
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert CreditGrant.objects.get(purchase=purchase).quantity == 10

    # A second press (double click, back button) sends the same event again: a duplicate.
    assert client.post(path, {"action": "pay"}, HTTP_HOST=live_host).status_code == 303
    assert StripeEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_cancelling_on_the_test_checkout_expires_the_session_and_cancels_the_purchase(client, ten, live_host):
    path = urlsplit(buy(client, ten.pk)["Location"]).path
    purchase = Purchase.objects.get()

    response = client.post(path, {"action": "cancel"}, HTTP_HOST=live_host)

    assert response.status_code == 303
    assert response["Location"] == "https://packs.example.com/packs/?checkout=cancelled"
    assert stripe_double.load(purchase.stripe_checkout_session_id)["status"] == "expired"
    stripe_event_process(StripeEvent.objects.get(type="checkout.session.expired").pk)
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.CANCELLED
    page = text(client.get(f"/packs/success/?session_id={purchase.stripe_checkout_session_id}"))
    assert "Payment cancelled" in page and "nothing was charged" in page
    assert "Payment cancelled: nothing was charged." in text(client.get("/packs/?checkout=cancelled"))
    # Paying a cancelled checkout is refused, and nothing is charged.
    refused = client.post(path, {"action": "pay"}, HTTP_HOST=live_host)
    assert refused.status_code == 409 and not CreditGrant.objects.exists()


def test_a_webhook_that_cannot_be_reached_is_reported_and_can_be_sent_again(client, ten):
    path = urlsplit(buy(client, ten.pk)["Location"]).path

    # The test client's host (testserver) is not a server: the delivery fails.
    response = client.post(path, {"action": "pay"})

    assert response.status_code == 502
    page = text(response)
    assert "Test payment taken, but our webhook could not be reached" in page
    assert "Send the payment confirmation again" in page
    assert stripe_double.load(path.split("/")[-2])["status"] == "complete"
