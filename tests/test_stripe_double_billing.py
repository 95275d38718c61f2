"""The double's Billing and balance answer the real SDK the way Stripe does, for what Packdesk calls:
invoices, customers, subscriptions bought through Checkout and renewed, and balance transactions."""
from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe
from dateutil.relativedelta import relativedelta

from payments import stripe_double
from payments.stripe_gateway import stripe_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def double(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.PUBLIC_BASE_URL = "https://packs.example.com"


@pytest.fixture
def client():
    return stripe_client()


@pytest.fixture
def customer(client):
    return client.v1.customers.create(params={"email": "ada@example.com", "name": "Ada Lovelace"})


def _invoice(client, customer, *, amount=12000, **extra):
    params = {
        "customer": customer.id, "collection_method": "send_invoice", "days_until_due": 14, "currency": "gbp",
        "metadata": {"purchase_id": "7", "invoice_id": "3"}, "auto_advance": False, **extra,
    }
    invoice = client.v1.invoices.create(params=params)
    client.v1.invoice_items.create(params={
        "customer": customer.id, "invoice": invoice.id, "amount": amount, "currency": "gbp",
        "description": "Ten massages",
    })
    return invoice


def _balance(source_id: str) -> list[dict]:
    rows = stripe_double.LocalStripeObject.objects.filter(object_type="balance_transaction", data__source=source_id)
    return [row.data for row in rows]


# --- Invoices --------------------------------------------------------------------------------


def test_invoice_created_finalized_and_paid_by_card(client, customer):
    draft = _invoice(client, customer)
    client.v1.invoice_items.create(params={
        "customer": customer.id, "invoice": draft.id, "amount": 3000, "currency": "gbp", "description": "Late fee",
    })
    draft = client.v1.invoices.retrieve(draft.id)
    assert (draft.status, draft.number, draft.amount_due, draft.total, draft.hosted_invoice_url) == (
        "draft", None, 15000, 15000, None
    )
    assert [line.amount for line in draft.lines.data] == [12000, 3000]
    assert (draft.subscription, draft.parent, draft.customer_email) == (None, None, "ada@example.com")

    opened = client.v1.invoices.finalize_invoice(draft.id)
    assert opened.status == "open" and opened.number.startswith("PDT-")
    assert opened.hosted_invoice_url == f"https://packs.example.com/packs/test-invoice/{draft.id}/"
    assert abs(opened.due_date - (opened.status_transitions.finalized_at + 14 * 86400)) <= 1
    client.v1.invoices.send_invoice(draft.id)

    stripe_double.pay_invoice(draft.id)
    paid = client.v1.invoices.retrieve(draft.id, params={"expand": ["payments"]})
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 15000, 0)
    assert paid.status_transitions.paid_at is not None
    [payment] = paid.payments.data
    assert (payment.status, payment.amount_paid, payment.payment.type) == ("paid", 15000, "payment_intent")
    intent = client.v1.payment_intents.retrieve(payment.payment.payment_intent)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (intent.status, charge.status, charge.amount, charge.customer) == (
        "succeeded", "succeeded", 15000, customer.id
    )
    [txn] = _balance(charge.id)
    assert (txn["type"], txn["amount"], txn["fee"], txn["net"], txn["id"]) == (
        "charge", 15000, 245, 14755, charge.balance_transaction  # 1.5% of 15000 = 225, + 20
    )
    assert "payments" not in client.v1.invoices.retrieve(draft.id)  # includable: only when expanded
    with pytest.raises(stripe.InvalidRequestError, match="already paid"):
        client.v1.invoices.pay(draft.id)
    with pytest.raises(stripe.InvalidRequestError, match="only void an open"):
        client.v1.invoices.void_invoice(draft.id)


def test_paid_out_of_band_takes_no_card_payment(client, customer):
    invoice = _invoice(client, customer)
    paid = client.v1.invoices.pay(invoice.id, params={"paid_out_of_band": True, "expand": ["payments"]})
    assert (paid.status, paid.amount_paid, paid.number is not None, paid.payments.data) == ("paid", 12000, True, [])
    assert not stripe_double.LocalStripeObject.objects.filter(object_type="charge").exists()


def test_void_invoice_cannot_be_paid_or_edited(client, customer):
    invoice = _invoice(client, customer)
    client.v1.invoices.finalize_invoice(invoice.id)
    void = client.v1.invoices.void_invoice(invoice.id)
    assert void.status == "void" and void.status_transitions.voided_at is not None
    with pytest.raises(stripe.InvalidRequestError, match="void invoice cannot be paid"):
        client.v1.invoices.pay(invoice.id)
    with pytest.raises(stripe.InvalidRequestError, match="only a draft invoice can be edited"):
        client.v1.invoice_items.create(params={"customer": customer.id, "invoice": invoice.id, "amount": 1})
    with pytest.raises(stripe.InvalidRequestError, match="re-finalize"):
        client.v1.invoices.finalize_invoice(invoice.id)


def test_only_a_draft_can_be_deleted(client, customer):
    draft, opened = _invoice(client, customer), _invoice(client, customer)
    client.v1.invoices.finalize_invoice(opened.id)
    assert client.v1.invoices.delete(draft.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError, match="No such invoice"):
        client.v1.invoices.retrieve(draft.id)
    with pytest.raises(stripe.InvalidRequestError, match="only delete a draft"):
        client.v1.invoices.delete(opened.id)
    assert stripe_double.LocalStripeObject.objects.filter(object_type="invoiceitem").count() == 1


def test_numbers_increase_and_lists_filter_by_customer_and_status(client, customer):
    other = client.v1.customers.create(params={"email": "bo@example.com"})
    first, second = _invoice(client, customer), _invoice(client, customer)
    _invoice(client, other)
    numbers = [client.v1.invoices.finalize_invoice(i.id).number for i in (first, second)]
    assert numbers[0] < numbers[1]
    listed = client.v1.invoices.list(params={"customer": customer.id, "status": "open"})
    assert [i.id for i in listed.data] == [second.id, first.id] and not listed.has_more
    assert [c.id for c in client.v1.customers.list(params={"email": "bo@example.com"}).data] == [other.id]


def test_pending_items_join_the_next_invoice_only_when_asked(client, customer):
    client.v1.invoice_items.create(params={"customer": customer.id, "amount": 500, "currency": "gbp"})
    assert client.v1.invoices.create(params={"customer": customer.id}).amount_due == 0
    invoice = client.v1.invoices.create(params={"customer": customer.id, "pending_invoice_items_behavior": "include"})
    assert invoice.amount_due == 500


@pytest.mark.parametrize("params, message", [
    ({"collection_method": "send_invoice"}, "days_until_due"),
    ({"days_until_due": 3}, "only set `days_until_due`"),
    ({"collection_method": "by_pigeon"}, "Invalid collection_method"),
    ({"colour": "red"}, "unknown parameter: colour"),
    ({"customer": "cus_test_nobody"}, "No such customer"),
])
def test_bad_invoice_params_are_refused(client, customer, params, message):
    with pytest.raises(stripe.InvalidRequestError, match=message):
        client.v1.invoices.create(params={"customer": customer.id, **params})
    assert not stripe_double.LocalStripeObject.objects.filter(object_type="invoice").exists()


def test_item_currency_must_match_the_invoice(client, customer):
    invoice = client.v1.invoices.create(params={"customer": customer.id, "currency": "gbp"})
    with pytest.raises(stripe.InvalidRequestError, match="must match the currency"):
        client.v1.invoice_items.create(
            params={"customer": customer.id, "invoice": invoice.id, "amount": 1, "currency": "eur"}
        )


def test_idempotent_create_survives_later_actions_on_the_object(client, customer):
    options = {"idempotency_key": "inv-1"}
    invoice = client.v1.invoices.create(params={"customer": customer.id}, options=options)
    client.v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": "fin-1"})
    assert client.v1.invoices.create(params={"customer": customer.id}, options=options).id == invoice.id
    again = client.v1.invoices.finalize_invoice(invoice.id, options={"idempotency_key": "fin-1"})
    assert again.status == "paid"  # the first answer, not "already finalized"
    assert stripe_double.LocalStripeObject.objects.filter(object_type="invoice").count() == 1


# --- Balance transactions ----------------------------------------------------------------------


def test_every_money_movement_writes_a_balance_transaction(client):
    charge = stripe_double.record_charge(20000, "GBP", {"note": "dashboard sale"})
    refund = client.v1.refunds.create(params={"charge": charge["id"], "amount": 5000})
    dispute = stripe_double.create_dispute(charge["id"])
    payout = stripe_double.create_payout(9000, "gbp")

    listed = client.v1.balance_transactions.list(params={"expand": ["data.source"]}).data
    assert [(t.type, t.reporting_category, t.amount, t.fee, t.net) for t in listed] == [
        ("payout", "payout", -9000, 0, -9000),
        ("adjustment", "dispute", -20000, 0, -20000),
        ("refund", "refund", -5000, 0, -5000),
        ("charge", "charge", 20000, 320, 19680),  # 1.5% of 20000 = 300, + 20
    ]
    assert [t.source.id for t in listed] == [payout["id"], dispute["id"], refund.id, charge["id"]]
    assert listed[3].source.metadata["note"] == "dashboard sale" and listed[3].source.object == "charge"
    assert client.v1.charges.retrieve(charge["id"]).disputed is True
    assert client.v1.balance_transactions.retrieve(refund.balance_transaction).source == refund.id
    assert [t.id for t in client.v1.balance_transactions.list(params={"type": "charge"}).data] == [
        charge["balance_transaction"]
    ]


def test_checkout_payment_and_settled_bank_debit_write_charge_transactions(client):
    line = {"quantity": 1, "price_data": {"currency": "gbp", "unit_amount": 1000, "product_data": {"name": "One"}}}
    params = {"mode": "payment", "line_items": [line], "success_url": "http://x/s", "cancel_url": "http://x/c"}
    card, debit = (client.v1.checkout.sessions.create(params=params) for _ in range(2))
    stripe_double.complete_checkout(card.id)
    stripe_double.complete_checkout(debit.id, paid=False)
    assert len(client.v1.balance_transactions.list().data) == 1  # a processing debit has not moved money
    stripe_double.settle_async_payment(debit.id, succeeded=True)
    assert [t.amount for t in client.v1.balance_transactions.list().data] == [1000, 1000]


def test_balance_transactions_page_newest_first_through_auto_paging(client, django_assert_max_num_queries):
    base = 1_700_000_000
    written = [
        stripe_double.write_balance_transaction(kind="charge", amount=100 + i, currency="gbp",
                                                source=f"ch_{i}", created=base + i // 3)  # three per second
        for i in range(250)
    ]

    page = client.v1.balance_transactions.list(params={"limit": 100})
    assert len(page.data) == 100 and page.has_more
    walked = [t.id for t in page.auto_paging_iter()]
    assert walked == [t["id"] for t in reversed(written)]  # newest first; the later write first on a tie

    window = {"created": {"gte": base + 10, "lt": base + 50}, "limit": 100, "expand": ["data.source"]}
    in_window = list(client.v1.balance_transactions.list(params=window).auto_paging_iter())
    assert len(in_window) == 120 and {t.created for t in in_window} == set(range(base + 10, base + 50))
    with django_assert_max_num_queries(4):  # a page of 100, expanded, in a fixed number of queries
        client.v1.balance_transactions.list(params={"limit": 100, "expand": ["data.source"]})

    older = client.v1.balance_transactions.list(params={"limit": 3, "starting_after": walked[1]})
    assert [t.id for t in older.data] == walked[2:5]
    newer = client.v1.balance_transactions.list(params={"limit": 3, "ending_before": walked[5]})
    assert [t.id for t in newer.data] == walked[2:5]
    with pytest.raises(stripe.InvalidRequestError, match="between 1 and 100"):
        client.v1.balance_transactions.list(params={"limit": 101})
    with pytest.raises(stripe.InvalidRequestError, match="No such balance_transaction"):
        client.v1.balance_transactions.list(params={"starting_after": "txn_test_nowhere"})


# --- Subscriptions -----------------------------------------------------------------------------

MONTHLY = {
    "quantity": 1, "price_data": {
        "currency": "gbp", "unit_amount": 8000, "product_data": {"name": "Monthly massage"},
        "recurring": {"interval": "month", "interval_count": 1},
    },
}


def _subscribe(client, *, trial_days=None, line=MONTHLY, paid=True):
    sub_data = {"metadata": {"subscription_id": "9"}}
    if trial_days:
        sub_data["trial_period_days"] = trial_days
    session = client.v1.checkout.sessions.create(params={
        "mode": "subscription", "line_items": [line], "customer_email": "ada@example.com",
        "metadata": {"subscription_id": "9"}, "subscription_data": sub_data,
        "success_url": "http://x/s", "cancel_url": "http://x/c",
    })
    stripe_double.complete_checkout(session.id, paid=paid)
    return client.v1.checkout.sessions.retrieve(session.id)


def _months_later(ts: int, months: int) -> int:
    return int((datetime.fromtimestamp(ts, UTC) + relativedelta(months=months)).timestamp())


def test_subscription_checkout_charges_the_first_period(client):
    session = _subscribe(client)
    assert (session.status, session.payment_status, session.payment_intent) == ("complete", "paid", None)
    sub = client.v1.subscriptions.retrieve(session.subscription)
    item = sub["items"].data[0]
    assert (sub.status, sub.customer, sub.metadata.to_dict(), sub.latest_invoice) == (
        "active", session.customer, {"subscription_id": "9"}, session.invoice
    )
    assert (item.price.unit_amount, item.price.recurring.interval, item.price.recurring.interval_count) == (
        8000, "month", 1
    )
    assert item.current_period_end == _months_later(item.current_period_start, 1)
    assert (sub.trial_start, sub.trial_end, sub.cancel_at_period_end, sub.canceled_at, sub.pause_collection) == (
        None, None, False, None, None
    )
    assert client.v1.customers.retrieve(session.customer).email == "ada@example.com"

    invoice = client.v1.invoices.retrieve(session.invoice, params={"expand": ["payments"]})
    assert (invoice.status, invoice.billing_reason, invoice.amount_paid, invoice.subscription) == (
        "paid", "subscription_create", 8000, sub.id
    )
    assert invoice.parent.subscription_details.subscription == sub.id
    assert invoice.parent.subscription_details.metadata.to_dict() == {"subscription_id": "9"}
    period = invoice.lines.data[0].period
    assert (period.start, period.end) == (item.current_period_start, item.current_period_end)
    intent = client.v1.payment_intents.retrieve(invoice.payments.data[0].payment.payment_intent)
    assert (intent.status, intent.amount) == ("succeeded", 8000)
    assert [t.source for t in client.v1.balance_transactions.list().data] == [intent.latest_charge]


def test_trial_is_free_then_renewal_charges_the_first_paid_period(client):
    session = _subscribe(client, trial_days=14)
    assert (session.amount_total, session.payment_status) == (0, "no_payment_required")
    sub = client.v1.subscriptions.retrieve(session.subscription)
    assert sub.status == "trialing" and sub.trial_end - sub.trial_start == 14 * 86400
    assert sub["items"].data[0].current_period_end == sub.trial_end
    first = client.v1.invoices.retrieve(session.invoice, params={"expand": ["payments"]})
    assert (first.status, first.amount_due, first.billing_reason, first.payments.data) == (
        "paid", 0, "subscription_create", []
    )
    assert not stripe_double.LocalStripeObject.objects.filter(object_type="charge").exists()

    renewal = stripe_double.renew_subscription(sub.id)
    sub = client.v1.subscriptions.retrieve(sub.id)
    period = renewal["lines"]["data"][0]["period"]
    assert (renewal["status"], renewal["amount_paid"], renewal["billing_reason"]) == (
        "paid", 8000, "subscription_cycle"
    )
    assert (period["start"], period["end"]) == (sub.trial_end, _months_later(sub.trial_end, 1))
    assert (sub.status, sub.latest_invoice) == ("active", renewal["id"])
    assert sub["items"].data[0].current_period_start == sub.trial_end


def test_failed_renewal_leaves_the_invoice_open_until_paid_late(client):
    sub_id = _subscribe(client).subscription
    failed = stripe_double.renew_subscription(sub_id, paid=False)
    assert (failed["status"], failed["attempt_count"], failed["amount_remaining"]) == ("open", 1, 8000)
    assert client.v1.subscriptions.retrieve(sub_id).status == "past_due"
    invoice = client.v1.invoices.retrieve(failed["id"], params={"expand": ["payments"]})
    intent_id = invoice.payments.data[0].payment.payment_intent
    assert client.v1.payment_intents.retrieve(intent_id).status == "requires_payment_method"
    assert len(client.v1.balance_transactions.list().data) == 1  # only the first period's charge

    paid = stripe_double.pay_invoice(failed["id"])
    assert (paid["status"], paid["amount_paid"], paid["attempt_count"]) == ("paid", 8000, 2)
    assert client.v1.payment_intents.retrieve(intent_id).status == "succeeded"  # the same intent, retried
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"
    assert len(client.v1.balance_transactions.list().data) == 2


def test_periods_follow_the_billing_anchor_at_month_end(client, monkeypatch):
    jan_31 = int(datetime(2025, 1, 31, 9, tzinfo=UTC).timestamp())
    monkeypatch.setattr(stripe_double, "now", lambda: jan_31)
    monkeypatch.setattr("payments.stripe_double_subscriptions.now", lambda: jan_31)
    sub_id = _subscribe(client).subscription
    ends = [stripe_double.renew_subscription(sub_id)["lines"]["data"][0]["period"]["end"] for _ in range(2)]
    days = [datetime.fromtimestamp(ts, UTC).date().isoformat() for ts in ends]
    assert days == ["2025-03-31", "2025-04-30"]  # Feb 28 in between, then back to the 31st


def test_paused_collection_voids_renewals_and_cancel_at_period_end_ends_it(client):
    sub_id = _subscribe(client).subscription
    paused = client.v1.subscriptions.update(sub_id, params={"pause_collection": {"behavior": "void"}})
    assert paused.pause_collection.behavior == "void"
    skipped = stripe_double.renew_subscription(sub_id)
    assert skipped["status"] == "void" and client.v1.subscriptions.retrieve(sub_id).status == "active"
    assert len(client.v1.balance_transactions.list().data) == 1

    client.v1.subscriptions.update(sub_id, params={"pause_collection": ""})
    ending = client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True, "metadata": {"x": "1"}})
    assert ending.cancel_at_period_end and ending.cancel_at == ending["items"].data[0].current_period_end
    assert ending.pause_collection is None and ending.metadata.to_dict() == {"subscription_id": "9", "x": "1"}
    assert stripe_double.renew_subscription(sub_id) is None
    ended = client.v1.subscriptions.retrieve(sub_id)
    assert (ended.status, ended.ended_at) == ("canceled", ending.cancel_at)
    with pytest.raises(stripe_double.DoubleError, match="does not renew"):
        stripe_double.renew_subscription(sub_id)


def test_cancel_now_and_what_a_canceled_subscription_refuses(client):
    sub_id = _subscribe(client).subscription
    assert [s.id for s in client.v1.subscriptions.list().data] == [sub_id]
    cancelled = client.v1.subscriptions.cancel(sub_id, params={"cancellation_details": {"comment": "moving"}})
    assert (cancelled.status, cancelled.cancellation_details.comment) == ("canceled", "moving")
    assert cancelled.canceled_at is not None and cancelled.ended_at is not None
    assert client.v1.subscriptions.list().data == []  # Stripe lists live subscriptions unless asked
    assert [s.id for s in client.v1.subscriptions.list(params={"status": "canceled"}).data] == [sub_id]
    with pytest.raises(stripe.InvalidRequestError, match="canceled subscription can only update"):
        client.v1.subscriptions.update(sub_id, params={"pause_collection": {"behavior": "void"}})
    with pytest.raises(stripe.InvalidRequestError, match="already canceled"):
        client.v1.subscriptions.cancel(sub_id)


@pytest.mark.parametrize("change, message", [
    ({"mode": "subscription", "line_items": [{"price_data": {"currency": "gbp", "unit_amount": 10}}]},
     "at least one recurring price"),
    ({"mode": "payment"}, "recurring price"),
    ({"subscription_data": {"trial_period_days": 0}}, "at least 1"),
    ({"subscription_data": {"trial_days": 3}}, "unknown parameter: trial_days"),
])
def test_bad_subscription_checkout_is_refused(client, change, message):
    params = {"mode": "subscription", "line_items": [MONTHLY], "success_url": "http://x/s", **change}
    with pytest.raises(stripe.InvalidRequestError, match=message):
        client.v1.checkout.sessions.create(params=params)


def test_bad_subscription_update_is_refused(client):
    sub_id = _subscribe(client).subscription
    with pytest.raises(stripe.InvalidRequestError, match="pause_collection"):
        client.v1.subscriptions.update(sub_id, params={"pause_collection": {"behavior": "nap"}})
    with pytest.raises(stripe.InvalidRequestError, match="No such subscription"):
        client.v1.subscriptions.retrieve("sub_test_nowhere")
    assert client.v1.subscriptions.retrieve(sub_id).pause_collection is None


def test_first_payment_by_bank_debit_leaves_the_subscription_incomplete_until_it_settles(client):
    session = _subscribe(client, paid=False)
    assert session.payment_status == "unpaid"
    assert client.v1.subscriptions.retrieve(session.subscription).status == "incomplete"
    assert client.v1.invoices.retrieve(session.invoice).status == "open"
    assert client.v1.balance_transactions.list().data == []

    stripe_double.pay_invoice(session.invoice)  # the debit clears
    assert client.v1.subscriptions.retrieve(session.subscription).status == "active"
    [payment] = client.v1.invoice_payments.list(params={"invoice": session.invoice}).data
    assert payment.status == "paid"
    intent = client.v1.payment_intents.retrieve(payment.payment.payment_intent)
    charge = client.v1.charges.retrieve(intent.latest_charge)
    assert (charge.status, charge.balance_transaction is not None) == ("succeeded", True)


def test_events_carry_invoices_as_stripe_sends_them(client, customer):
    invoice = _invoice(client, customer)
    stripe_double.pay_invoice(invoice.id)
    event = stripe_double.build_event("invoice.paid", stripe_double.load(invoice.id))
    assert event["data"]["object"]["status"] == "paid" and "payments" not in event["data"]["object"]
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        client.v1.invoices.retrieve(invoice.id, params={"expand": ["payment"]})
    expanded = client.v1.invoices.retrieve(invoice.id, params={"expand": ["customer"]})
    assert expanded.customer.email == "ada@example.com"
