"""Processing stored Stripe events: idempotent, order-independent, failures visible and retried.

Each test drives Stripe's side through the double (the client pays, a delayed payment settles,
a session expires, a refund or a dispute is made in Stripe), lets Stripe's events arrive through
the real webhook, and checks what a person cares about: purchase status, payments, credits.
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from ledger.integrity import ledger_check
from ledger.models import CreditGrant, EntryKind, LedgerEntry
from payments import stripe_double
from payments.events import MAX_ATTEMPTS, stripe_events_due
from payments.models import (
    Payment,
    Purchase,
    PurchaseStatus,
    Refund,
    RefundStatus,
    StripeEvent,
    StripeEventStatus,
)
from payments.stripe_gateway import stripe_client
from tests.test_webhooks import (  # noqa: F401 - fixtures shared with the ingest tests
    balance,
    deliver,
    online_purchase,
    pack,
    session_event,
    stripe_test_mode,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def arrive(client, django_capture_on_commit_callbacks):
    """Stripe delivers an event to the webhook and its job runs: returns the stored event."""
    return lambda event: deliver(client, event, django_capture_on_commit_callbacks)


def _intent(purchase: Purchase) -> dict:
    session = stripe_double.load(purchase.stripe_checkout_session_id)
    return stripe_double.load(session["payment_intent"])


def _dispute_event(charge_id: str) -> dict:
    # As in Stripe's own example, the dispute names the charge and no payment_intent: the
    # processor re-reads the charge from Stripe to find the payment.
    dispute = stripe_double.example("dispute")
    dispute.update(id=stripe_double.new_id("dp"), charge=charge_id, payment_intent=None, reason="fraudulent")
    return stripe_double.build_event("charge.dispute.created", dispute)


# --- Order and repetition never pay or credit twice -----------------------------------------


def test_completed_twice_with_different_event_ids_credits_once(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)

    first = arrive(session_event(purchase, "checkout.session.completed"))
    second = arrive(session_event(purchase, "checkout.session.completed"))

    assert (first.status, second.status) == (StripeEventStatus.PROCESSED, StripeEventStatus.PROCESSED)
    assert Payment.objects.filter(purchase=purchase).count() == 1
    assert CreditGrant.objects.filter(purchase=purchase).count() == 1
    assert LedgerEntry.objects.filter(purchase=purchase, kind=EntryKind.ISSUED).count() == 1
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


def test_delayed_payment_stays_pending_then_credits_once_whatever_the_order(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    session_id = purchase.stripe_checkout_session_id
    stripe_double.complete_checkout(session_id, paid=False)  # a bank debit, still processing
    completed = session_event(purchase, "checkout.session.completed")

    # completed arrives while the debit is processing: acknowledged, nothing paid yet.
    assert arrive(completed).status == StripeEventStatus.PROCESSED
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    assert balance(client_a, massage) == 0

    stripe_double.settle_async_payment(session_id, succeeded=True)
    succeeded = session_event(purchase, "checkout.session.async_payment_succeeded")
    assert arrive(succeeded).status == StripeEventStatus.PROCESSED
    # Stripe re-sends the old completed event (a new delivery, same snapshot, new id) afterwards.
    late = dict(completed, id=stripe_double.new_id("evt"))
    assert arrive(late).status == StripeEventStatus.PROCESSED

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert Payment.objects.filter(purchase=purchase).count() == 1
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


def test_async_succeeded_before_completed_credits_once(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    session_id = purchase.stripe_checkout_session_id
    stripe_double.complete_checkout(session_id, paid=False)
    completed = session_event(purchase, "checkout.session.completed")  # sent, but delayed
    stripe_double.settle_async_payment(session_id, succeeded=True)

    assert arrive(session_event(purchase, "checkout.session.async_payment_succeeded")).status == "processed"
    assert balance(client_a, massage) == 10
    assert arrive(completed).status == StripeEventStatus.PROCESSED  # its snapshot says unpaid; Stripe says paid

    assert Payment.objects.filter(purchase=purchase).count() == 1
    assert CreditGrant.objects.filter(purchase=purchase).count() == 1
    assert balance(client_a, massage) == 10
    assert ledger_check().ok


# --- Unpaid endings, disputes, refunds, other types -----------------------------------------


def test_expired_checkout_cancels_the_pending_purchase(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    stripe_double.expire_checkout(purchase.stripe_checkout_session_id)

    event = arrive(session_event(purchase, "checkout.session.expired"))

    purchase.refresh_from_db()
    assert (event.status, purchase.status) == (StripeEventStatus.PROCESSED, PurchaseStatus.CANCELLED)
    assert not Payment.objects.filter(purchase=purchase).exists()
    assert balance(client_a, massage) == 0


def test_failed_delayed_payment_cancels_the_purchase(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    session_id = purchase.stripe_checkout_session_id
    stripe_double.complete_checkout(session_id, paid=False)
    arrive(session_event(purchase, "checkout.session.completed"))
    stripe_double.settle_async_payment(session_id, succeeded=False)

    event = arrive(session_event(purchase, "checkout.session.async_payment_failed"))

    purchase.refresh_from_db()
    assert (event.status, purchase.status) == (StripeEventStatus.PROCESSED, PurchaseStatus.CANCELLED)
    assert balance(client_a, massage) == 0


def test_dispute_flags_the_purchase_once_its_payment_is_known(arrive, client_a, pack):
    purchase = online_purchase(client_a, pack)
    session_id = purchase.stripe_checkout_session_id
    stripe_double.complete_checkout(session_id)
    completed = session_event(purchase, "checkout.session.completed")
    dispute = _dispute_event(_intent(purchase)["latest_charge"])

    # The dispute overtakes the payment's own event: it fails clearly, and succeeds on retry.
    early = arrive(dispute)
    assert early.status == StripeEventStatus.FAILED
    assert "which no purchase was paid with" in early.last_error
    arrive(completed)
    call_command("process_stripe_events", "--min-age", "0")

    early.refresh_from_db()
    purchase.refresh_from_db()
    assert (early.status, early.attempts) == (StripeEventStatus.PROCESSED, 2)
    assert purchase.disputed is True
    assert purchase.status == PurchaseStatus.PAID


def test_refund_made_in_stripe_is_reflected_once(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    arrive(session_event(purchase, "checkout.session.completed"))
    intent = _intent(purchase)
    # Half the money given back from Stripe's dashboard: half the credits are voided.
    stripe_client().v1.refunds.create(params={"payment_intent": intent["id"], "amount": 15000})
    charge = stripe_double.load(intent["latest_charge"])

    for _ in range(2):  # the same state delivered twice, under two event ids
        assert arrive(stripe_double.build_event("charge.refunded", charge)).status == StripeEventStatus.PROCESSED

    refund = Refund.objects.get(purchase=purchase)
    assert (refund.amount, refund.status) == (Decimal("150.00"), RefundStatus.SUCCEEDED)
    purchase.refresh_from_db()
    assert purchase.refunded_amount == Decimal("150.00")
    assert balance(client_a, massage) == 5
    assert ledger_check().ok


def test_other_event_types_and_other_integrations_sessions_are_stored_and_ignored(arrive, client_a, pack):
    purchase = online_purchase(client_a, pack)
    event = arrive(stripe_double.build_event("customer.created", {"id": "cus_test_1", "object": "customer"}))
    assert (event.status, event.attempts, event.last_error) == (StripeEventStatus.IGNORED, 1, "")

    # A session made by something else on the same Stripe account carries no purchase id.
    foreign = stripe_client().v1.checkout.sessions.create(params={
        "mode": "payment", "line_items": [{"quantity": 1, "price_data": {
            "currency": "gbp", "unit_amount": 500, "product_data": {"name": "T-shirt"}}}],
    })
    stripe_double.complete_checkout(foreign.id)
    other = arrive(stripe_double.build_event("checkout.session.completed", stripe_double.load(foreign.id)))
    assert other.status == StripeEventStatus.IGNORED

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    assert not Payment.objects.exists()


# --- What must never be paid: a clear failure, nothing changed ------------------------------


def test_amount_mismatch_fails_with_a_clear_error_and_pays_nothing(arrive, client_a, pack, massage):
    purchase = online_purchase(client_a, pack, unit_amount=100)  # Stripe charged 1.00, we sell at 300.00
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)

    event = arrive(session_event(purchase, "checkout.session.completed"))

    assert (event.status, event.attempts) == (StripeEventStatus.FAILED, 1)
    assert "Stripe took 100 GBP" in event.last_error and "costs 30000 GBP" in event.last_error
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    assert not Payment.objects.filter(purchase=purchase).exists()
    assert balance(client_a, massage) == 0


def test_currency_mismatch_fails(arrive, client_a, pack):
    purchase = online_purchase(client_a, pack, currency="EUR")
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)

    event = arrive(session_event(purchase, "checkout.session.completed"))

    assert event.status == StripeEventStatus.FAILED
    assert "30000 EUR" in event.last_error
    assert Purchase.objects.get(pk=purchase.pk).status == PurchaseStatus.PENDING


def test_unknown_purchase_or_someone_elses_session_fails_clearly(arrive, client_a, client_b, pack):
    ours, other = online_purchase(client_a, pack), online_purchase(client_b, pack)
    stripe_double.complete_checkout(ours.stripe_checkout_session_id)
    session = stripe_double.load(ours.stripe_checkout_session_id)

    # A paid session (in Stripe) whose metadata names a purchase that does not exist, or one
    # that is not its own: nothing is paid, and the event says why.
    for purchase_id, expected in ((999_999, "which does not exist"), (other.pk, "belongs to Checkout Session")):
        session["metadata"] = {"purchase_id": str(purchase_id)}
        stripe_double.save(session)
        event = arrive(stripe_double.build_event("checkout.session.completed", session))
        assert event.status == StripeEventStatus.FAILED
        assert expected in event.last_error
    other.refresh_from_db()
    assert other.status == PurchaseStatus.PENDING


def test_session_unknown_to_stripe_fails_with_stripes_words(arrive):
    event = arrive(stripe_double.build_event("checkout.session.completed", {"id": "cs_test_nowhere"}))
    assert event.status == StripeEventStatus.FAILED
    assert event.last_error.startswith("Stripe said: No such checkout.session")


# --- The sweep ------------------------------------------------------------------------------


def test_sweep_takes_pending_and_retryable_failed_events_old_enough(arrive, client_a, pack):
    purchase = online_purchase(client_a, pack, unit_amount=100)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    failed = arrive(session_event(purchase, "checkout.session.completed"))
    old = timezone.now() - timedelta(minutes=5)
    StripeEvent.objects.filter(pk=failed.pk).update(received_at=old)
    assert list(stripe_events_due()) == [failed]

    with pytest.raises(CommandError, match="1 Stripe event"):
        call_command("process_stripe_events")
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (StripeEventStatus.FAILED, 2)

    StripeEvent.objects.filter(pk=failed.pk).update(attempts=MAX_ATTEMPTS)
    assert list(stripe_events_due()) == []  # out of attempts: only the admin's Retry now
    fresh = StripeEvent.objects.create(event_id="evt_fresh", type="customer.created", payload={})
    assert list(stripe_events_due()) == []  # too young: its own job is on the way
    assert list(stripe_events_due(min_age_seconds=0)) == [fresh]


# --- Admin: the list, and Retry -------------------------------------------------------------


def _failed_dispute(arrive, client_a, pack) -> tuple[StripeEvent, dict, Purchase]:
    purchase = online_purchase(client_a, pack)
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = arrive(_dispute_event(_intent(purchase)["latest_charge"]))
    assert event.status == StripeEventStatus.FAILED
    return event, session_event(purchase, "checkout.session.completed"), purchase


def test_admin_list_shows_status_and_error_with_a_fixed_number_of_queries(admin_client, arrive, client_a, pack):
    event, _, _ = _failed_dispute(arrive, client_a, pack)
    url = reverse("admin:payments_stripeevent_changelist")

    with CaptureQueriesContext(connection) as few:
        response = admin_client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    assert event.event_id in page and "charge.dispute.created" in page and "Failed" in page
    assert "which no purchase was paid with" in page

    StripeEvent.objects.bulk_create(
        StripeEvent(event_id=f"evt_bulk_{n}", type="customer.created", payload={}) for n in range(60)
    )
    with CaptureQueriesContext(connection) as many:
        assert admin_client.get(url).status_code == 200
    assert len(few) == len(many)
    detail = admin_client.get(reverse("admin:payments_stripeevent_change", args=[event.pk]))
    assert detail.status_code == 200 and "fraudulent" in detail.content.decode()


def test_admin_retry_reruns_processing_and_reports_the_outcome(admin_client, arrive, client_a, pack):
    event, completed, purchase = _failed_dispute(arrive, client_a, pack)
    retry_url = reverse("admin:payments_stripeevent_retry", args=[event.pk])

    confirm = admin_client.get(retry_url)  # a confirmation page first: GET changes nothing
    assert confirm.status_code == 200 and "Retry now" in confirm.content.decode()
    still = admin_client.post(retry_url)  # the payment is still unknown: it fails again, no 500
    assert still.status_code == 302
    assert "failed again" in [str(m) for m in get_messages(still.wsgi_request)][0]
    event.refresh_from_db()
    assert (event.status, event.attempts) == (StripeEventStatus.FAILED, 2)

    arrive(completed)
    done = admin_client.post(retry_url)
    assert done.status_code == 302
    assert "is processed" in [str(m) for m in get_messages(done.wsgi_request)][0]
    event.refresh_from_db()
    purchase.refresh_from_db()
    assert event.status == StripeEventStatus.PROCESSED
    assert purchase.disputed is True
    assert admin_client.get(reverse("admin:payments_stripeevent_retry", args=[987654])).status_code == 404


def test_admin_bulk_retry_processes_what_it_can_and_lists_what_still_fails(admin_client, arrive, client_a, pack):
    mismatched = online_purchase(client_a, pack, unit_amount=100)
    stripe_double.complete_checkout(mismatched.stripe_checkout_session_id)
    bad = arrive(session_event(mismatched, "checkout.session.completed"))
    dispute, completed, _ = _failed_dispute(arrive, client_a, pack)
    arrive(completed)

    response = admin_client.post(
        reverse("admin:payments_stripeevent_changelist"),
        {"action": "retry_selected", "_selected_action": [bad.pk, dispute.pk, completed_pk(completed)]},
    )

    assert response.status_code == 302
    texts = [str(m) for m in get_messages(response.wsgi_request)]
    assert "1 event(s) processed, 0 ignored." in texts
    assert any("failed again" in t and "Stripe took 100 GBP" in t for t in texts)
    assert StripeEvent.objects.get(pk=dispute.pk).status == StripeEventStatus.PROCESSED
    assert StripeEvent.objects.get(pk=bad.pk).status == StripeEventStatus.FAILED


def completed_pk(event: dict) -> int:
    return StripeEvent.objects.get(event_id=event["id"]).pk


def test_retry_needs_the_permission(client, arrive, client_a, pack):
    event, _, _ = _failed_dispute(arrive, client_a, pack)
    viewer = get_user_model().objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    viewer.user_permissions.add(*_perms("view_stripeevent"))
    client.force_login(viewer)

    assert client.get(reverse("admin:payments_stripeevent_changelist")).status_code == 200
    assert client.post(reverse("admin:payments_stripeevent_retry", args=[event.pk])).status_code == 403
    event.refresh_from_db()
    assert event.attempts == 1


def _perms(*codenames):
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(content_type__app_label="payments", codename__in=codenames)
