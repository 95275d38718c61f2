"""One structured log line per money or credit change and per webhook, under the request id of
the request (or the job) that made it."""
from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal

import dramatiq
import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from config.log import RequestIdFilter
from core.portal_tokens import portal_token_for
from core.sessions import session_create
from ledger.models import EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.models import PaymentMethod, StripeEvent, StripeEventStatus
from payments.refunds import refund_create
from payments.services import payment_record, purchase_create
from payments.tasks import process_stripe_event
from tests.test_webhooks import online_purchase, post_event, session_event, stripe_test_mode  # noqa: F401
from payments import stripe_double


@pytest.fixture
def audit_lines(caplog):
    caplog.set_level(logging.INFO, logger="packdesk.audit")

    def lines(event=None):
        return [r for r in caplog.records if r.name == "packdesk.audit" and event in (None, r.event)]

    return lines


def fields(record) -> dict:
    return record.audit


@pytest.mark.django_db
def test_an_admin_credit_adjustment_logs_one_entry_line_with_the_requests_id(
    admin_client, admin_user, client_a, massage, audit_lines, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:core_client_adjust_credits", args=[client_a.pk]),
            {"session_type": massage.pk, "amount": "3", "reason": "goodwill", "expires_on": "",
             "token": "0b6cf7c4-5b7e-4b7a-9d5f-2f1d3c4b5a69"},
            HTTP_X_REQUEST_ID="adjust-42",
        )
    assert response.status_code == 302 and response["X-Request-ID"] == "adjust-42"

    [line] = audit_lines("ledger.entry")
    entry = LedgerEntry.objects.get()
    assert line.request_id == "adjust-42"
    assert fields(line) == {
        "entry_id": entry.pk, "kind": EntryKind.ADJUSTED, "amount": 3, "balance_after": 3,
        "client_id": client_a.pk, "session_type_id": massage.pk, "grant_id": entry.grant_id,
        "purchase_id": None, "booking_id": None, "refund_id": None, "source": entry.source,
        "actor_id": admin_user.pk,
    }
    # Ids only: nothing that names the client.
    assert client_a.name not in line.getMessage() and client_a.email not in line.getMessage()


@pytest.mark.django_db
def test_a_portal_booking_logs_its_used_entry_with_the_requests_id(
    client, client_a, massage, make_pack, sell, coach, staff_user, audit_lines, django_capture_on_commit_callbacks
):
    sell(client_a, make_pack([(massage, False, 3)]))
    session = session_create(
        session_type=massage, staff_member=coach, actor=staff_user, capacity=1,
        starts_at=timezone.now() + timedelta(days=2), outside_hours_reason="tests run at any hour",
    )
    before = len(audit_lines("ledger.entry"))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/me/{portal_token_for(client_a)}/book/{session.pk}/", HTTP_X_REQUEST_ID="book-7")
    assert response.status_code in (302, 303)

    lines = audit_lines("ledger.entry")[before:]
    assert [(fields(r)["kind"], fields(r)["amount"], fields(r)["balance_after"], r.request_id) for r in lines] == [
        (EntryKind.USED, -1, 2, "book-7"),
    ]
    assert fields(lines[0])["booking_id"] is not None and fields(lines[0])["actor_id"] is None


@pytest.mark.django_db
def test_a_desk_sale_and_refund_log_each_money_change_once(
    client_a, massage, make_pack, staff_user, audit_lines, django_capture_on_commit_callbacks
):
    pack = make_pack([(massage, False, 10)], price=Decimal("300.00"), currency="GBP")
    with django_capture_on_commit_callbacks(execute=True):
        purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
        payment_record(purchase=purchase, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
        refund_create(purchase=purchase, amount=Decimal("300.00"), reason="moved away", actor=staff_user)

    events = [r.event for r in audit_lines()]
    assert events.count("payment.recorded") == 1
    assert [(fields(r)["old_status"], fields(r)["status"]) for r in audit_lines("purchase.status")] == [
        (None, "pending"), ("pending", "paid"), ("paid", "refunded"),
    ]
    [payment] = audit_lines("payment.recorded")
    assert fields(payment)["amount"] == "300.00" and fields(payment)["method"] == PaymentMethod.CASH
    [created] = audit_lines("refund.created")
    assert fields(created)["amount"] == "300.00" and fields(created)["status"] == "pending"
    assert [fields(r)["status"] for r in audit_lines("refund.status")] == ["succeeded"]
    kinds = [fields(r)["kind"] for r in audit_lines("ledger.entry")]
    assert kinds == [EntryKind.ISSUED, EntryKind.VOIDED]
    assert all(r.request_id == "-" for r in audit_lines())  # no request here


@pytest.mark.django_db
def test_a_rolled_back_change_logs_nothing(client_a, massage, staff_user, audit_lines, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            credits_adjust(client=client_a, session_type=massage, amount=2, reason="oops", actor=staff_user)
            raise RuntimeError("changed my mind")
    assert audit_lines("ledger.entry") == []


@pytest.mark.django_db
def test_every_webhook_delivery_is_logged_stored_or_duplicate(client, client_a, make_pack, massage, audit_lines):
    purchase = online_purchase(client_a, make_pack([(massage, False, 10)]))
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = session_event(purchase, "checkout.session.completed")

    post_event(client, event)
    post_event(client, event)
    client.post("/stripe/webhook/", "{}", content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=bad")

    lines = audit_lines("stripe.webhook")
    assert [fields(r).get("outcome") for r in lines] == ["stored", "duplicate", "refused"]
    assert fields(lines[0]) == {"event_id": event["id"], "type": "checkout.session.completed",
                                "livemode": False, "outcome": "stored"}
    assert lines[2].levelno == logging.WARNING and fields(lines[2])["reason"] == "signature"


@pytest.mark.django_db(transaction=True)
def test_a_webhooks_line_and_its_jobs_lines_share_one_request_id(
    client, client_a, make_pack, massage, redis_broker, audit_lines, caplog
):
    caplog.handler.addFilter(RequestIdFilter())  # what the console handler does for every line
    caplog.set_level(logging.INFO)
    purchase = online_purchase(client_a, make_pack([(massage, False, 10)]))
    stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
    event = session_event(purchase, "checkout.session.completed")
    before = len(caplog.records)

    response = post_event(client, event)
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    worker = dramatiq.Worker(redis_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        redis_broker.join(process_stripe_event.queue_name, timeout=15_000)
    finally:
        worker.stop()
    assert StripeEvent.objects.get().status == StripeEventStatus.PROCESSED

    [webhook] = audit_lines("stripe.webhook")
    assert webhook.request_id == request_id
    job_lines = [r for r in audit_lines() if r.event != "stripe.webhook" and r.created >= webhook.created]
    assert {r.event for r in job_lines} >= {"payment.recorded", "ledger.entry", "purchase.status"}
    assert {r.request_id for r in job_lines} == {request_id}
    # The job's own, unstructured lines (payments.events) carry it too.
    processed = [r for r in caplog.records[before:] if r.name == "payments.events"]
    assert processed and {r.request_id for r in processed} == {request_id}


def test_a_job_sent_outside_a_request_runs_under_its_message_id_and_leaves_none_behind():
    from dramatiq import Message

    from core.middleware import DramatiqRequestId, _request_id, current_request_id

    middleware = DramatiqRequestId()
    scheduled = Message(queue_name="default", actor_name="expire_due_credits", args=(), kwargs={}, options={})
    middleware.before_enqueue(None, scheduled, None)
    assert "request_id" not in scheduled.options  # nothing to carry

    middleware.before_process_message(None, scheduled)
    assert current_request_id() == scheduled.message_id
    middleware.after_process_message(None, scheduled, result=None)
    assert current_request_id() is None

    token = _request_id.set("req-9")
    try:
        sent = Message(queue_name="default", actor_name="x", args=(), kwargs={}, options={})
        middleware.before_enqueue(None, sent, None)
    finally:
        _request_id.reset(token)
    assert sent.options["request_id"] == "req-9"
    sent.options["request_id"] = "bad id\nwith a newline"  # a tampered message keeps its own id
    middleware.before_process_message(None, sent)
    assert current_request_id() == sent.message_id
    middleware.after_skip_message(None, sent)
    assert current_request_id() is None
