"""The test-mode Stripe double answers the real SDK the way Stripe does, for what we call."""
import json

import pytest
import stripe

from payments import stripe_double
from payments.stripe_gateway import stripe_client

pytestmark = pytest.mark.django_db

LINE = {"quantity": 1, "price_data": {"currency": "gbp", "unit_amount": 30000, "product_data": {"name": "Ten"}}}


@pytest.fixture(autouse=True)
def double(settings):
    settings.STRIPE_TEST_DOUBLE = True


def test_checkout_refund_and_signed_event_through_the_real_sdk(settings):
    client = stripe_client()
    params = {
        "mode": "payment", "line_items": [LINE], "metadata": {"purchase_id": "5"},
        "success_url": "http://x/s?session_id={CHECKOUT_SESSION_ID}", "cancel_url": "http://x/c",
        "customer_email": "a@example.com", "client_reference_id": "5",
    }
    session = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k1"})
    again = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k1"})
    assert again.id == session.id  # Stripe's idempotency: the same key answers the same object
    assert (session.amount_total, session.currency, session.metadata["purchase_id"]) == (30000, "gbp", "5")
    assert session.url.endswith(f"/packs/test-checkout/{session.id}/")

    stripe_double.complete_checkout(session.id)
    paid = client.v1.checkout.sessions.retrieve(session.id)
    assert (paid.status, paid.payment_status) == ("complete", "paid")

    refund = client.v1.refunds.create(params={"payment_intent": paid.payment_intent, "amount": 10000})
    assert refund.amount == 10000
    with pytest.raises(stripe.InvalidRequestError, match="greater than unrefunded"):
        client.v1.refunds.create(params={"payment_intent": paid.payment_intent, "amount": 25000})
    assert [r.id for r in client.v1.refunds.list(params={"payment_intent": paid.payment_intent}).data] == [refund.id]

    event = stripe_double.build_event("checkout.session.completed", stripe_double.load(session.id))
    payload = json.dumps(event)
    verified = stripe.Webhook.construct_event(payload, stripe_double.sign(payload), settings.STRIPE_WEBHOOK_SECRET)
    assert verified.type == "checkout.session.completed"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, stripe_double.sign(payload, secret="whsec_wrong"), settings.STRIPE_WEBHOOK_SECRET)


def test_unknown_object_is_a_stripe_error():
    with pytest.raises(stripe.InvalidRequestError, match="No such checkout.session"):
        stripe_client().v1.checkout.sessions.retrieve("cs_test_missing")
