"""Recurring packs on the public page: the card, buying a plan through Stripe Checkout (auto-debit
in mode subscription; an invoice plan's first cycle in mode payment), refusals, and the pages
after Stripe (the success page, the test-mode checkout posting to our webhook)."""
from __future__ import annotations

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
from ledger.integrity import ledger_check
from ledger.models import CreditGrant
from payments import stripe_double
from payments.events import stripe_event_process
from payments.models import (
    LocalStripeObject,
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    StripeEvent,
    StripeEventStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.subscription_stripe import plan_checkout_abandoned

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = "https://packs.example.com"


def text(response) -> str:
    return html.unescape(response.content.decode())


def buy(client, pack_id, **data):
    return client.post(f"/packs/{pack_id}/buy/", {"name": "Mary Shelley", "email": "mary@example.com", **data})


def sessions_in_double():
    return LocalStripeObject.objects.filter(object_type="checkout.session")


def recurring(make_pack, massage, **fields):
    defaults = dict(
        name="Monthly four", price=Decimal("60.00"), is_recurring=True, recurring_collection="auto_debit",
        billing_interval="month", recurs_when="pack_expires", validity_amount=1, validity_unit="months",
    )
    return make_pack([(massage, False, 4)], **{**defaults, **fields})


@pytest.fixture
def monthly(make_pack, massage):
    return recurring(make_pack, massage, minimum_commitment=12)


def webhook(client, event_type: str, object_id: str) -> StripeEvent:
    """Stripe's signed event reaches /stripe/webhook/; the stored event is then processed as the
    worker would (on_commit jobs do not run in these tests)."""
    payload = json.dumps(stripe_double.build_event(event_type, stripe_double.load(object_id)))
    response = client.post("/stripe/webhook/", payload, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=stripe_double.sign(payload))
    assert response.status_code == 200
    return stripe_event_process(StripeEvent.objects.get(event_id=json.loads(payload)["id"]).pk)


def pay_plan(client, plan):
    stripe_double.complete_checkout(plan.stripe_checkout_session_id)
    webhook(client, "checkout.session.completed", plan.stripe_checkout_session_id)
    sub = stripe_double.load(stripe_double.load(plan.stripe_checkout_session_id)["subscription"])
    webhook(client, "invoice.paid", sub["latest_invoice"])
    plan.refresh_from_db()


# --- The card -------------------------------------------------------------------------------------


def test_recurring_packs_show_how_they_renew_on_their_card(client, make_pack, massage, monthly):
    recurring(make_pack, massage, name="Fortnightly invoice", recurring_collection="invoice",
              billing_interval="week", billing_interval_count=2, free_trial_days=7)

    page = text(client.get("/packs/"))

    card = page[page.index(f'id="pack-{monthly.pk}"'):]
    assert "£60.00 / month" in card
    assert "Recurring: every month, minimum 12 payments." in card
    assert "Your card is charged automatically each time." in card
    assert "Valid 1 month from the start of each billing period" in card
    assert "Start this plan" in card and "Continue to payment" in card
    assert "£60.00 / 2 weeks" in page and "Recurring: every 2 weeks, 7-day free trial." in page
    assert "We email you an invoice each time it renews." in page and "Start free trial" in page


def test_the_pack_list_runs_a_fixed_number_of_queries_with_recurring_packs(
    client, make_pack, massage, physio, coach, django_assert_num_queries,
):
    def add(count):
        for _ in range(count):
            make_pack([(massage, False, 5), (physio, True)], staff_prices=[StaffPriceData(coach, Decimal("350.00"))])
            make_pack([(massage, False, 4)], is_recurring=True, recurring_collection="auto_debit",
                      billing_interval="month", recurs_when="pack_expires", free_trial_days=14)

    add(1)
    with django_assert_num_queries(3):
        assert client.get("/packs/").status_code == 200
    add(15)
    with django_assert_num_queries(3):
        response = client.get("/packs/")
    assert text(response).count('class="card pack"') == 32


# --- Buying an auto-debit plan --------------------------------------------------------------------


def test_buying_an_auto_debit_plan_starts_a_subscription_checkout_from_our_price(client, make_pack, massage):
    pack = recurring(make_pack, massage, free_trial_days=14, billing_interval_count=3)

    response = buy(client, pack.pk, price="1.00", unit_amount="1", interval="day")

    assert response.status_code == 303
    plan = Subscription.objects.get()
    row = sessions_in_double().get()
    session = row.data
    assert response["Location"] == f"https://packs.example.com/packs/test-checkout/{session['id']}/"
    assert (plan.status, plan.collection, plan.price, plan.created_by) == (
        SubscriptionStatus.PENDING, "auto_debit", Decimal("60.00"), None
    )
    assert (plan.client.email, plan.stripe_checkout_session_id) == ("mary@example.com", session["id"])
    assert (session["mode"], session["metadata"]) == ("subscription", {"subscription_id": str(plan.pk)})
    assert session["success_url"] == "https://packs.example.com/packs/success/?session_id={CHECKOUT_SESSION_ID}"
    assert row.idempotency_key == f"packdesk-plan-checkout-{plan.pk}"
    sent = LocalStripeObject.objects.get(object_id=f"{session['id']}_params").data
    price = sent["line_item"]["price_data"]
    assert (price["unit_amount"], price["currency"], price["recurring"]) == (
        "6000", "gbp", {"interval": "month", "interval_count": "3"}
    )
    assert price["product_data"] == {"name": "Monthly four"}
    assert sent["subscription_data"] == {"metadata": {"subscription_id": str(plan.pk)}, "trial_period_days": "14"}
    assert not Purchase.objects.exists() and not CreditGrant.objects.exists()  # credits come with invoice.paid


def test_the_success_page_confirms_then_shows_the_first_cycles_credits(client, monthly):
    buy(client, monthly.pk)
    plan = Subscription.objects.get()
    url = f"/packs/success/?session_id={plan.stripe_checkout_session_id}"

    pending = text(client.get(url))
    assert "Payment confirming…" in pending and "£60.00" in pending and "Monthly four" in pending

    pay_plan(client, plan)

    page = text(client.get(url))
    assert "Payment received" in page and "4 credits" in page and "Massage 60" in page
    assert "Recurring plan: £60.00 every month, minimum 12 payments." in page
    assert "Your card is charged automatically each time" in page
    assert plan.status == SubscriptionStatus.ACTIVE and plan.cycles.get().status == PurchaseStatus.PAID
    assert ledger_check().ok


def test_the_success_page_of_a_free_trial_says_when_it_ends_and_when_credits_come(client, make_pack, massage):
    pack = recurring(make_pack, massage, free_trial_days=14)
    checkout = text(client.get(urlsplit(buy(client, pack.pk)["Location"]).path))
    assert "Subscription: £60.00 every month, 14-day free trial." in checkout
    assert "Nothing is charged until the free trial ends." in checkout and "Start free trial (test mode)" in checkout
    plan = Subscription.objects.get()

    pay_plan(client, plan)

    page = text(client.get(f"/packs/success/?session_id={plan.stripe_checkout_session_id}"))
    assert plan.status == SubscriptionStatus.TRIALING and not CreditGrant.objects.exists()
    ends = timezone.localtime(plan.trial_ends_at)
    assert "Your free trial has started" in page and "Nothing has been charged yet." in page
    assert f"Your free trial runs until <strong>{ends.day} {ends:%B %Y}</strong>" in page
    assert f"Your credits come with your first payment, which your card pays on {ends.day} {ends:%B %Y}" in page
    assert "Payment received" not in page


# --- Buying an invoice plan ------------------------------------------------------------------------


def test_an_invoice_plan_pays_its_first_cycle_through_the_ordinary_checkout(client, make_pack, massage):
    pack = recurring(make_pack, massage, name="Invoice monthly", recurring_collection="invoice")

    response = buy(client, pack.pk)

    plan = Subscription.objects.get()
    cycle = plan.cycles.get()
    session = sessions_in_double().get().data
    assert response.status_code == 303 and response["Location"].endswith(f"/test-checkout/{session['id']}/")
    assert (session["mode"], session["metadata"], session["amount_total"]) == (
        "payment", {"purchase_id": str(cycle.pk)}, 6000
    )
    assert (cycle.cycle_number, cycle.status, cycle.channel) == (1, PurchaseStatus.PENDING, PurchaseChannel.ONLINE)
    assert cycle.stripe_checkout_session_id == session["id"]

    stripe_double.complete_checkout(session["id"])
    webhook(client, "checkout.session.completed", session["id"])

    cycle.refresh_from_db()
    assert cycle.status == PurchaseStatus.PAID and CreditGrant.objects.get(purchase=cycle).quantity == 4
    page = text(client.get(f"/packs/success/?session_id={session['id']}"))
    assert "4 credits" in page and "We email you an invoice each time it renews" in page
    assert ledger_check().ok


def test_an_invoice_plan_with_a_free_trial_starts_it_with_nothing_to_pay(client, make_pack, massage):
    pack = recurring(make_pack, massage, name="Invoice trial", recurring_collection="invoice", free_trial_days=7)

    response = buy(client, pack.pk)

    plan = Subscription.objects.get()
    assert response.status_code == 303 and "/packs/success/?plan=" in response["Location"]
    assert plan.status == SubscriptionStatus.TRIALING and not plan.cycles.exists()
    assert not sessions_in_double().exists()
    page = text(client.get(urlsplit(response["Location"]).path + "?" + urlsplit(response["Location"]).query))
    assert "Your free trial has started" in page and "we email you the invoice when the trial ends" in page
    assert client.get("/packs/success/?plan=forged-token").status_code == 404


def test_an_invoice_plan_whose_first_checkout_expires_is_cancelled_with_it(client, make_pack, massage):
    pack = recurring(make_pack, massage, name="Invoice monthly", recurring_collection="invoice")
    buy(client, pack.pk)
    plan = Subscription.objects.get()
    cycle = plan.cycles.get()
    stripe_double.expire_checkout(cycle.stripe_checkout_session_id)
    webhook(client, "checkout.session.expired", cycle.stripe_checkout_session_id)
    cycle.refresh_from_db()
    assert cycle.status == PurchaseStatus.CANCELLED

    # payments.events calls this once the cycle is cancelled (idempotent: a second call is a no-op).
    plan_checkout_abandoned(purchase_id=cycle.pk)
    assert plan_checkout_abandoned(purchase_id=cycle.pk) is None

    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.CANCELLED and not CreditGrant.objects.exists()


# --- Refusals, as for one-off packs --------------------------------------------------------------


@pytest.fixture
def booked_before(client_a, sell, make_pack, massage, coach, staff_user):
    sell(client_a, make_pack([(massage, False, 5)], sell_online=False))
    session = session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        actor=staff_user, outside_hours_reason="tests run at any hour",
    )
    booking_create(client=client_a, session=session, actor=staff_user)
    return client_a


def test_a_new_joiner_plan_refuses_an_existing_member_without_naming_them(client, make_pack, massage, booked_before):
    pack = recurring(make_pack, massage, name="Intro monthly", restrict_to="new_joiners")

    response = buy(client, pack.pk, name="Not Ada", email="ada@example.com")

    assert response.status_code == 403
    assert "Intro monthly is for new joiners only" in text(response) and "Ada Lovelace" not in text(response)
    assert not Subscription.objects.exists() and not sessions_in_double().exists()


@pytest.mark.parametrize("fields, data, status, message", [
    ({"restrict_to": "active_members"}, {"email": "new@example.com"}, 403, "is for existing members only"),
    ({"sell_online": False}, {}, 404, "That pack is not on sale online"),
    ({"published": False, "sell_online": False}, {}, 404, "That pack is not on sale online"),
    ({}, {"email": "nope"}, 400, "Enter a valid email address"),
])
def test_refused_plans_create_nothing(client, make_pack, massage, fields, data, status, message):
    pack = recurring(make_pack, massage, **fields)

    response = buy(client, pack.pk, **data)

    assert response.status_code == status and message in text(response)
    assert not Subscription.objects.exists() and not Client.objects.exists() and not sessions_in_double().exists()


def test_when_stripe_cannot_be_reached_the_plan_is_cancelled_and_the_client_told(
    client, monthly, settings, monkeypatch,
):
    settings.STRIPE_TEST_DOUBLE = False
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")

    response = buy(client, monthly.pk)

    assert response.status_code == 503
    assert "We could not start the payment just now, so nothing was charged." in text(response)
    plan = Subscription.objects.get()
    assert plan.status == SubscriptionStatus.CANCELLED and plan.stripe_checkout_session_id is None


# --- The test-mode checkout posting to our own webhook over HTTP (a live server) -------------


@pytest.fixture
def live_host(live_server):
    broker = dramatiq.get_broker()
    broker.flush_all()
    yield urlsplit(live_server.url).netloc
    broker.flush_all()


@pytest.mark.django_db(transaction=True)
def test_paying_a_plan_on_the_test_checkout_sends_the_completed_and_the_first_invoice_events(
    client, monthly, live_host,
):
    path = urlsplit(buy(client, monthly.pk)["Location"]).path
    plan = Subscription.objects.get()
    page = text(client.get(path))
    assert "Subscription: £60.00 every month, minimum 12 payments." in page and "Pay £60.00 (test mode)" in page

    response = client.post(path, {"action": "pay"}, HTTP_HOST=live_host)

    assert response.status_code == 303
    assert response["Location"].endswith(f"/packs/success/?session_id={plan.stripe_checkout_session_id}")
    events = list(StripeEvent.objects.order_by("pk"))
    assert [e.type for e in events] == ["checkout.session.completed", "invoice.paid"]
    for stored in events:
        assert stripe_event_process(stored.pk).status == StripeEventStatus.PROCESSED
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE
    assert CreditGrant.objects.get(purchase__subscription=plan).quantity == 4
    # A second press sends the same events again: duplicates, acknowledged and ignored.
    assert client.post(path, {"action": "pay"}, HTTP_HOST=live_host).status_code == 303
    assert StripeEvent.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_plans_test_checkout_cancels_the_plan(client, monthly, live_host):
    path = urlsplit(buy(client, monthly.pk)["Location"]).path
    plan = Subscription.objects.get()

    response = client.post(path, {"action": "cancel"}, HTTP_HOST=live_host)

    assert response.status_code == 303 and response["Location"].endswith("/packs/?checkout=cancelled")
    stripe_event_process(StripeEvent.objects.get(type="checkout.session.expired").pk)
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.CANCELLED
    page = text(client.get(f"/packs/success/?session_id={plan.stripe_checkout_session_id}"))
    assert "Payment cancelled" in page and "nothing was charged" in page
