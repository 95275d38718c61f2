"""POST /stripe/webhook/: only verified events are stored, each once, then handed to the queue.

Stripe is the test double behind the real SDK; events are signed with stripe's own helper.
The helpers here are shared with tests/test_webhook_processing.py.
"""
from __future__ import annotations

import contextlib
import json
import time
from datetime import timedelta
from decimal import Decimal

import dramatiq
import pytest
import redis
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant
from payments import stripe_double
from payments.events import StripeEventFailed
from payments.models import (
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    StripeEvent,
    StripeEventStatus,
)
from payments.money import to_minor
from payments.services import purchase_create
from payments.stripe_gateway import stripe_client
from payments.tasks import process_pending_stripe_events, process_stripe_event

URL = "/stripe/webhook/"


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_tests"
    settings.STRIPE_WEBHOOK_TOLERANCE = 300


@pytest.fixture
def pack(make_pack, massage):
    return make_pack([(massage, False, 10)], price=Decimal("300.00"), currency="GBP")


# --- Helpers: a purchase bought online, and Stripe's events about it -----------------------


def online_purchase(client, pack, *, unit_amount: int | None = None, currency: str | None = None) -> Purchase:
    """A pending online purchase and its Checkout Session, made as the public page makes them.

    `unit_amount` / `currency` make Stripe's session disagree with our price (a tampered or
    stale session), which must never mark the purchase paid.
    """
    purchase = purchase_create(client=client, pack=pack, actor=None, channel=PurchaseChannel.ONLINE)
    metadata = {"purchase_id": str(purchase.pk)}
    session = stripe_client().v1.checkout.sessions.create(
        params={
            "mode": "payment", "customer_email": client.email, "client_reference_id": str(purchase.pk),
            "metadata": metadata, "payment_intent_data": {"metadata": metadata},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": (currency or purchase.currency).lower(),
                "unit_amount": unit_amount or to_minor(purchase.price, purchase.currency),
                "product_data": {"name": purchase.snapshot["name"]},
            }}],
            "success_url": "http://testserver/packs/success/?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://testserver/packs/",
        },
        options={"idempotency_key": f"packdesk-checkout-{purchase.pk}"},
    )
    purchase.stripe_checkout_session_id = session.id
    purchase.save(update_fields=["stripe_checkout_session_id"])
    return purchase


def session_event(purchase: Purchase, event_type: str, **kwargs) -> dict:
    """An event carrying the session as Stripe holds it now (the double's stored object)."""
    return stripe_double.build_event(event_type, stripe_double.load(purchase.stripe_checkout_session_id), **kwargs)


def post_raw(http, body: str, *, signature: str | None):
    headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
    return http.post(URL, data=body, content_type="application/json", **headers)


def post_event(http, event: dict, **sign_kwargs):
    body = json.dumps(event)
    return post_raw(http, body, signature=stripe_double.sign(body, **sign_kwargs))


def deliver(http, event: dict, capture) -> StripeEvent:
    """Stripe delivers `event`; the job the webhook enqueued then runs, as a worker would.

    A failing job raises (so dramatiq retries); here the stored event's status shows the outcome.
    """
    with capture() as callbacks:
        response = post_event(http, event)
    assert response.status_code == 200, response.content
    stored = StripeEvent.objects.get(event_id=event["id"])
    if callbacks:
        with contextlib.suppress(StripeEventFailed):
            process_stripe_event(stored.pk)
    stored.refresh_from_db()
    return stored


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


# --- Verified events ----------------------------------------------------------------------


@pytest.mark.django_db
def test_paid_checkout_event_is_stored_enqueued_on_commit_and_issues_the_credits(
    client, client_a, pack, massage, django_capture_on_commit_callbacks
):
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = session_event(purchase, "checkout.session.completed")

    with django_capture_on_commit_callbacks() as callbacks:
        response = post_event(client, event)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.status) == (event["id"], "checkout.session.completed", "pending")
    assert stored.payload == event
    assert len(callbacks) == 1  # the job is sent only once the INSERT has committed
    assert balance(client_a, massage) == 0  # nothing is issued by the request itself

    process_stripe_event(stored.pk)  # what the worker runs

    stored.refresh_from_db()
    purchase.refresh_from_db()
    assert (stored.status, stored.attempts, stored.last_error) == (StripeEventStatus.PROCESSED, 1, "")
    assert stored.processed_at is not None
    assert purchase.status == PurchaseStatus.PAID
    intent_id = stripe_double.load(purchase.stripe_checkout_session_id)["payment_intent"]
    assert purchase.stripe_payment_intent_id == intent_id
    payment = Payment.objects.get(purchase=purchase)
    assert (payment.method, payment.amount, payment.currency, payment.reference) == (
        PaymentMethod.STRIPE, Decimal("300.00"), "GBP", intent_id,
    )
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


@pytest.mark.django_db
def test_duplicate_event_is_acknowledged_stored_once_and_credits_once(
    client, client_a, pack, massage, django_capture_on_commit_callbacks
):
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = session_event(purchase, "checkout.session.completed")

    first = deliver(client, event, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks() as callbacks:
        again = post_event(client, event)
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert callbacks == []  # not enqueued a second time
    process_stripe_event(first.pk)  # and a job that runs twice anyway changes nothing

    assert StripeEvent.objects.count() == 1
    assert Payment.objects.filter(purchase=purchase).count() == 1
    assert CreditGrant.objects.filter(purchase=purchase).count() == 1
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


# --- Refused deliveries: 400 and nothing stored ---------------------------------------------


def _signed_event_body() -> str:
    return json.dumps(stripe_double.build_event("checkout.session.completed", {"id": "cs_test_x"}))


REFUSED = {
    # Signed, then changed on the way.
    "bad signature": lambda body: (body.replace("cs_test_x", "cs_test_y"), stripe_double.sign(body)),
    "missing header": lambda body: (body, None),
    "garbled header": lambda body: (body, "not-a-signature"),
    "wrong secret": lambda body: (body, stripe_double.sign(body, secret="whsec_someone_else")),
    "old timestamp": lambda body: (body, stripe_double.sign(body, timestamp=int(time.time()) - 1000)),
    "malformed JSON": lambda body: ("{not json", stripe_double.sign("{not json")),
    "JSON but not an event": lambda body: ("[1, 2]", stripe_double.sign("[1, 2]")),
    "event without an id": lambda body: (
        '{"object": "event", "type": "checkout.session.completed"}',
        stripe_double.sign('{"object": "event", "type": "checkout.session.completed"}'),
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(REFUSED))
def test_unverified_or_unreadable_delivery_is_refused_and_nothing_stored(
    client, case, django_capture_on_commit_callbacks
):
    body, signature = REFUSED[case](_signed_event_body())
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_raw(client, body, signature=signature)
    assert response.status_code == 400
    assert "error" in response.json()
    assert StripeEvent.objects.count() == 0
    assert callbacks == []


@pytest.mark.django_db
def test_old_timestamp_within_tolerance_is_accepted(client, settings):
    # The same 1000-second-old signature is fine when the configured tolerance allows it.
    settings.STRIPE_WEBHOOK_TOLERANCE = 2000
    event = stripe_double.build_event("customer.created", {"id": "cus_test_1", "object": "customer"})
    assert post_event(client, event, timestamp=int(time.time()) - 1000).status_code == 200
    assert StripeEvent.objects.filter(event_id=event["id"]).exists()


@pytest.mark.django_db
def test_only_post_and_no_oversized_body(client):
    assert reverse("stripe_webhook") == URL
    assert client.get(URL).status_code == 405
    body = json.dumps({"id": "evt_big", "type": "x", "object": "event", "padding": "x" * 600_000})
    response = post_raw(client, body, signature=stripe_double.sign(body))
    assert response.status_code == 413
    assert StripeEvent.objects.count() == 0


# --- The queue: down, and up --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_queue_down_event_is_still_stored_and_acknowledged_then_the_sweep_processes_it(
    client, client_a, pack, massage, redis_broker, monkeypatch, caplog
):
    def redis_is_down(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    # Stands in for Redis being unreachable: the send after commit raises as RedisBroker's would.
    monkeypatch.setattr(process_stripe_event, "send", redis_is_down)
    paid, expired = online_purchase(client_a, pack), online_purchase(client_a, pack)
    stripe_double.complete_checkout(paid.stripe_checkout_session_id)
    stripe_double.expire_checkout(expired.stripe_checkout_session_id)
    first = session_event(paid, "checkout.session.completed")
    second = session_event(expired, "checkout.session.expired")

    for event in (first, second):
        response = post_event(client, event)
        assert response.status_code == 200
        assert response.json() == {"received": True, "duplicate": False}
    assert set(StripeEvent.objects.values_list("status", flat=True)) == {StripeEventStatus.PENDING}
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0
    assert caplog.text.count("job process_stripe_event not enqueued (broker unreachable)") == 2

    # The sweep leaves events younger than its minimum age to the queue...
    assert process_pending_stripe_events() == "0 processed, 0 ignored, 0 failed"
    # ... and takes them once they are older (here: the periodic job, then the command).
    StripeEvent.objects.filter(event_id=first["id"]).update(received_at=timezone.now() - timedelta(minutes=5))
    assert process_pending_stripe_events() == "1 processed, 0 ignored, 0 failed"
    call_command("process_stripe_events", "--min-age", "0")

    assert set(StripeEvent.objects.values_list("status", flat=True)) == {StripeEventStatus.PROCESSED}
    paid.refresh_from_db()
    expired.refresh_from_db()
    assert (paid.status, expired.status) == (PurchaseStatus.PAID, PurchaseStatus.CANCELLED)
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_processes_the_event_the_webhook_enqueued(
    client, client_a, pack, massage, redis_broker
):
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = session_event(purchase, "checkout.session.completed")

    assert post_event(client, event).status_code == 200
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 1
    worker = dramatiq.Worker(redis_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        redis_broker.join(process_stripe_event.queue_name, timeout=15_000)
    finally:
        worker.stop()

    assert StripeEvent.objects.get().status == StripeEventStatus.PROCESSED
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert balance(client_a, massage) == 10
    assert ledger_check().ok
