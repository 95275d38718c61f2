"""Manual and late invoices: issued through Stripe or offline, paid, voided (payments.invoices).

Stripe is the test double behind the real SDK; its stored invoice is what a client would see.
Stripe's invoice events are posted signed through the webhook (tests/test_webhooks.py helpers).
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from catalog.services import pack_snapshot
from core.bookings import booking_cancel, booking_create
from core.models import BookingStatus, BusinessSettings, EmailLog
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, GrantState, LedgerEntry
from payments import stripe_double
from payments.exceptions import InvalidPayment, InvalidPurchaseState
from payments.invoices import (
    InvalidInvoice,
    invoice_issue_offline,
    invoice_issue_stripe,
    invoice_lines,
    invoice_mark_paid_offline,
    invoice_stripe_changed,
    invoice_void,
)
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    LocalStripeObject,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    StripeEventStatus,
    Subscription,
)
from payments.online import StripeMismatch
from payments.services import payment_record, purchase_create
from payments.stripe_gateway import stripe_client
from tests.test_webhooks import deliver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_tests"
    settings.STRIPE_WEBHOOK_TOLERANCE = 300


@pytest.fixture(autouse=True)
def ledger_balances_after_each_test(db):
    """Whatever a test did or was refused, the ledger still proves itself."""
    yield
    result = ledger_check()
    assert result.ok, result.problems


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


@pytest.fixture
def ten_pack(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"))


@pytest.fixture
def sold_on_the_spot(client_a, ten_pack, session_at, staff_user):
    """Ada booked with a pack sold on the spot: one held credit used, the purchase unpaid."""
    session = session_at(timezone.now() + timedelta(days=3))
    return booking_create(client=client_a, session=session, actor=staff_user, sell_pack=ten_pack)


@pytest.fixture
def pending(sold_on_the_spot) -> Purchase:
    return sold_on_the_spot.purchase


def stripe_invoices() -> list[dict]:
    return [row.data for row in LocalStripeObject.objects.filter(object_type="invoice").order_by("pk")]


def stripe_items() -> list[dict]:
    return [row.data for row in LocalStripeObject.objects.filter(object_type="invoiceitem").order_by("pk")]


def as_stripe_has_it(invoice: Invoice) -> dict:
    """The invoice read from Stripe as payments.events reads it (payments expanded)."""
    return stripe_client().v1.invoices.retrieve(invoice.stripe_invoice_id, params={"expand": ["payments"]}).to_dict()


def nothing_paid(purchase: Purchase) -> bool:
    purchase.refresh_from_db()
    return purchase.status == PurchaseStatus.PENDING and not Payment.objects.filter(purchase=purchase).exists()


# --- Issuing a Stripe invoice -----------------------------------------------------------------


def test_stripe_invoice_carries_our_line_items_and_amounts(pending, staff_user, client_a):
    before = timezone.now()
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)

    assert (invoice.kind, invoice.status, invoice.error) == (InvoiceKind.STRIPE, InvoiceStatus.OPEN, "")
    assert (invoice.amount, invoice.currency, invoice.created_by) == (Decimal("300.00"), "GBP", staff_user)
    [sent] = stripe_invoices()
    assert sent["id"] == invoice.stripe_invoice_id
    assert (invoice.number, invoice.hosted_invoice_url) == (sent["number"], sent["hosted_invoice_url"])
    assert invoice.number and invoice.hosted_invoice_url
    assert (sent["status"], sent["collection_method"]) == ("open", "send_invoice")
    assert (sent["amount_due"], sent["currency"]) == (30000, "gbp")
    assert sent["metadata"] == {"purchase_id": str(pending.pk), "invoice_id": str(invoice.pk)}
    [line] = sent["lines"]["data"]
    assert (line["amount"], line["currency"]) == (30000, "gbp")
    assert line["description"] == "Ten massages: 10 × Massage 60 (valid 3 months)"
    customer = stripe_double.load(sent["customer"], "customer")
    assert customer["email"] == client_a.email
    # Due in the business's default number of days, as Stripe counts it.
    days = BusinessSettings.current().invoice_days_until_due
    assert before + timedelta(days=days) - timedelta(minutes=1) <= invoice.due_at <= timezone.now() + timedelta(days=days)
    # Issuing sells nothing: the purchase waits for its money, the held credit is all Ada has.
    assert nothing_paid(pending)
    assert balance(client_a, pending.snapshot["lines"][0]["session_type_id"]) == 0


def test_days_until_due_chosen_by_finance(pending, staff_user):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user, days_until_due=30)
    sent = stripe_invoices()[0]
    assert sent["due_date"] - sent["status_transitions"]["finalized_at"] == 30 * 24 * 3600
    assert timedelta(days=29, hours=23) < invoice.due_at - timezone.now() <= timedelta(days=30)


def test_the_clients_existing_stripe_customer_is_reused(pending, staff_user, client_a, ten_pack):
    first = invoice_issue_stripe(purchase=pending, actor=staff_user)
    invoice_void(invoice=first, actor=staff_user, reason="wrong pack")
    again = purchase_create(client=client_a, pack=ten_pack, actor=staff_user)

    invoice_issue_stripe(purchase=again, actor=staff_user)

    assert LocalStripeObject.objects.filter(object_type="customer").count() == 1
    assert len({i["customer"] for i in stripe_invoices()}) == 1


def test_a_second_open_invoice_is_refused(pending, staff_user):
    first = invoice_issue_offline(purchase=pending, actor=staff_user)

    with pytest.raises(InvalidInvoice) as refused:
        invoice_issue_stripe(purchase=pending, actor=staff_user)

    assert str(refused.value) == (
        f"Purchase #{pending.pk} already has an open invoice ({first.number}): void it before issuing another."
    )
    assert list(Invoice.objects.values_list("pk", flat=True)) == [first.pk]
    assert stripe_invoices() == []


@pytest.mark.parametrize("days", [0, 366, "7", 2.5, True])
def test_days_until_due_out_of_range_is_refused(pending, staff_user, days):
    with pytest.raises(InvalidInvoice, match="Days until due must be a whole number from 1 to 365"):
        invoice_issue_offline(purchase=pending, actor=staff_user, days_until_due=days)
    assert not Invoice.objects.exists()


def test_only_a_purchase_awaiting_payment_is_invoiced(pending, staff_user):
    payment_record(purchase=pending, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
    for issue in (invoice_issue_stripe, invoice_issue_offline):
        with pytest.raises(InvalidInvoice, match=f"Purchase #{pending.pk} is paid: only a purchase awaiting payment"):
            issue(purchase=pending, actor=staff_user)
    assert not Invoice.objects.exists() and stripe_invoices() == []


# --- Paid in Stripe -----------------------------------------------------------------------------


def test_invoice_paid_event_releases_the_held_credits(
    pending, sold_on_the_spot, staff_user, client_a, massage, client, django_capture_on_commit_callbacks,
):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)  # the client pays on Stripe's page

    event = deliver(client, stripe_double.build_event("invoice.paid", stripe_double.load(invoice.stripe_invoice_id)),
                    django_capture_on_commit_callbacks)

    assert event.status == StripeEventStatus.PROCESSED, event.last_error
    invoice.refresh_from_db()
    pending.refresh_from_db()
    paid = as_stripe_has_it(invoice)
    intent = paid["payments"]["data"][0]["payment"]["payment_intent"]
    assert (invoice.status, pending.status, pending.stripe_payment_intent_id) == ("paid", "paid", intent)
    assert invoice.paid_at is not None and pending.paid_at == invoice.paid_at
    payment = Payment.objects.get(purchase=pending)
    assert (payment.method, payment.amount, payment.currency, payment.reference) == (
        PaymentMethod.STRIPE, Decimal("300.00"), "GBP", intent,
    )
    assert balance(client_a, massage) == 9  # ten bought, one already used by the booking
    sold_on_the_spot.refresh_from_db()
    assert sold_on_the_spot.status == BookingStatus.BOOKED


def test_invoice_paid_applied_directly_and_twice_pays_once(pending, staff_user, client_a, massage):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)
    paid = as_stripe_has_it(invoice)

    note = invoice_stripe_changed(paid)()
    again = invoice_stripe_changed(as_stripe_has_it(invoice))()

    assert note == f"invoice {paid['number']} paid, purchase #{pending.pk} paid"
    assert again == f"invoice {paid['number']} already paid"
    assert Payment.objects.filter(purchase=pending).count() == 1
    assert balance(client_a, massage) == 9
    assert LedgerEntry.objects.filter(purchase=pending, kind=EntryKind.ISSUED).count() == 2  # held + the other nine


@pytest.mark.parametrize("field, value, text", [
    ("amount_paid", 29999, "was paid 29999 GBP (minor units), but invoice"),
    ("currency", "eur", "was paid 30000 EUR (minor units), but invoice"),
])
def test_paid_amount_or_currency_differing_from_ours_is_refused(pending, staff_user, field, value, text):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)
    tampered = as_stripe_has_it(invoice) | {field: value}

    with pytest.raises(StripeMismatch, match=re.escape(text)):
        invoice_stripe_changed(tampered)()

    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN
    assert nothing_paid(pending)


def test_paid_in_stripe_after_being_paid_at_the_desk_asks_for_a_refund(pending, staff_user):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    payment_record(purchase=pending, method=PaymentMethod.CASH, amount=Decimal("300.00"), actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)

    with pytest.raises(InvalidPurchaseState, match="refund that one in Stripe"):
        invoice_stripe_changed(as_stripe_has_it(invoice))()
    assert Payment.objects.get(purchase=pending).method == PaymentMethod.CASH


def test_subscription_invoices_and_foreign_invoices_are_not_ours():
    assert invoice_stripe_changed({"id": "in_1", "subscription": "sub_1", "metadata": {"invoice_id": "1"}}) is None
    assert invoice_stripe_changed({"id": "in_1", "parent": {
        "type": "subscription_details", "subscription_details": {"subscription": "sub_1", "metadata": {}},
    }, "metadata": {"invoice_id": "1"}}) is None
    assert invoice_stripe_changed({"id": "in_2", "metadata": {}}) is None


def test_an_invoice_naming_another_purchase_is_refused(pending, staff_user, client_b, ten_pack):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)
    other = purchase_create(client=client_b, pack=ten_pack, actor=staff_user)
    forged = as_stripe_has_it(invoice)
    forged["metadata"] = {"purchase_id": str(other.pk), "invoice_id": str(invoice.pk)}

    with pytest.raises(StripeMismatch, match="nothing was applied"):
        invoice_stripe_changed(forged)()
    assert nothing_paid(pending) and nothing_paid(other)


# --- Voiding ------------------------------------------------------------------------------------


def test_void_cancels_the_purchase_and_voids_its_unused_credits(
    pending, sold_on_the_spot, staff_user, client_a, massage,
):
    # Cancelled in time, the booking gives its held credit back: now an unused credit to void.
    booking_cancel(booking=sold_on_the_spot, actor=staff_user)
    assert balance(client_a, massage) == 1
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)

    voided = invoice_void(invoice=invoice, actor=staff_user, reason="Client changed their mind")

    assert (voided.status, voided.voided_at is not None) == (InvoiceStatus.VOID, True)
    assert stripe_double.load(invoice.stripe_invoice_id)["status"] == "void"
    pending.refresh_from_db()
    assert pending.status == PurchaseStatus.CANCELLED
    held = CreditGrant.objects.get(purchase=pending)
    assert (held.state, held.remaining) == (GrantState.VOIDED, 0)
    entry = LedgerEntry.objects.get(grant=held, kind=EntryKind.VOIDED)
    assert (entry.amount, entry.actor) == (-1, staff_user)
    assert entry.note == f"Invoice {invoice.number} voided, purchase #{pending.pk} cancelled: Client changed their mind"
    assert balance(client_a, massage) == 0

    # Twice: nothing more happens.
    assert invoice_void(invoice=invoice, actor=staff_user, reason="again").status == InvoiceStatus.VOID
    assert LedgerEntry.objects.filter(grant=held, kind=EntryKind.VOIDED).count() == 1


def test_void_leaves_a_booking_made_with_the_held_credit(pending, sold_on_the_spot, staff_user, client_a, massage):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)

    invoice_void(invoice=invoice, actor=staff_user, reason="Bad debt")

    held = sold_on_the_spot.used_entry.grant
    held.refresh_from_db()
    sold_on_the_spot.refresh_from_db()
    assert (held.state, held.remaining) == (GrantState.VOIDED, 0)
    assert sold_on_the_spot.status == BookingStatus.BOOKED  # staff decide about the booking itself
    # Cancelled later, the credit comes back to a voided grant and is voided again at once.
    booking_cancel(booking=sold_on_the_spot, actor=staff_user)
    assert balance(client_a, massage) == 0


def test_voided_in_stripe_event_does_the_same(pending, staff_user, client, django_capture_on_commit_callbacks):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_client().v1.invoices.void_invoice(invoice.stripe_invoice_id)  # in Stripe's dashboard

    event = deliver(client, stripe_double.build_event("invoice.voided", stripe_double.load(invoice.stripe_invoice_id)),
                    django_capture_on_commit_callbacks)

    assert event.status == StripeEventStatus.PROCESSED, event.last_error
    invoice.refresh_from_db()
    pending.refresh_from_db()
    assert (invoice.status, pending.status) == (InvoiceStatus.VOID, PurchaseStatus.CANCELLED)
    assert CreditGrant.objects.get(purchase=pending).state == GrantState.VOIDED


def test_uncollectible_in_stripe_changes_the_status_only(pending, staff_user):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    in_stripe = stripe_double.load(invoice.stripe_invoice_id)  # marked so in Stripe's dashboard
    stripe_double.save(in_stripe | {"status": "uncollectible"})

    invoice_stripe_changed(as_stripe_has_it(invoice))()

    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.UNCOLLECTIBLE
    assert nothing_paid(pending)
    assert CreditGrant.objects.get(purchase=pending).state == GrantState.ACTIVE


def test_a_paid_invoice_cannot_be_voided(pending, staff_user, client_a, massage):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    invoice_mark_paid_offline(invoice=invoice, method=PaymentMethod.CASH, actor=staff_user)

    with pytest.raises(InvalidInvoice) as refused:
        invoice_void(invoice=invoice, actor=staff_user, reason="oops")

    assert str(refused.value) == f"Invoice {invoice.number} is paid, so it cannot be voided: refund the purchase instead."
    invoice.refresh_from_db()
    pending.refresh_from_db()
    assert (invoice.status, pending.status) == (InvoiceStatus.PAID, PurchaseStatus.PAID)
    assert balance(client_a, massage) == 9


def test_a_stripe_invoice_paid_in_stripe_cannot_be_voided_here(pending, staff_user):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    stripe_double.pay_invoice(invoice.stripe_invoice_id)  # its event has not arrived yet

    with pytest.raises(InvalidInvoice, match="is paid: it is recorded here when Stripe's confirmation arrives"):
        invoice_void(invoice=invoice, actor=staff_user, reason="oops")
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and nothing_paid(pending)


def test_void_needs_a_reason(pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    with pytest.raises(InvalidInvoice, match="Give a reason"):
        invoice_void(invoice=invoice, actor=staff_user, reason="  ")
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN


# --- Offline invoices ---------------------------------------------------------------------------


def test_offline_invoice_is_numbered_emailed_and_paid_by_cash(
    pending, staff_user, client_a, massage, mailoutbox, django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        invoice = invoice_issue_offline(purchase=pending, actor=staff_user, days_until_due=7)

    assert (invoice.kind, invoice.status, invoice.number) == (InvoiceKind.OFFLINE, InvoiceStatus.OPEN, f"PD-{invoice.pk:06d}")
    assert invoice.stripe_invoice_id is None and stripe_invoices() == []
    [mail] = mailoutbox
    assert mail.to == [client_a.email]
    assert invoice.number in mail.subject and "300.00 GBP" in mail.subject
    due = timezone.localtime(invoice.due_at)
    assert f"Due by: {due.day} {due:%B %Y}" in mail.body
    assert "Ten massages: 10 × Massage 60 (valid 3 months)" in mail.body
    assert f"bank transfer quoting {invoice.number}" in mail.body
    assert EmailLog.objects.get().related_id == pending.pk

    payment = invoice_mark_paid_offline(
        invoice=invoice, method=PaymentMethod.CASH, reference="R-17", actor=staff_user,
    )

    assert (payment.method, payment.amount, payment.reference, payment.recorded_by) == (
        PaymentMethod.CASH, Decimal("300.00"), "R-17", staff_user,
    )
    invoice.refresh_from_db()
    pending.refresh_from_db()
    assert (invoice.status, invoice.paid_at) == (InvoiceStatus.PAID, payment.received_at)
    assert pending.status == PurchaseStatus.PAID
    assert balance(client_a, massage) == 9


def test_stripe_invoice_paid_by_transfer_is_marked_paid_out_of_band(
    pending, staff_user, client_a, massage, client, django_capture_on_commit_callbacks,
):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)

    invoice_mark_paid_offline(invoice=invoice, method=PaymentMethod.BANK_TRANSFER, reference="TR 9", actor=staff_user)

    in_stripe = as_stripe_has_it(invoice)
    assert in_stripe["status"] == "paid"  # the client is no longer asked for it
    # Stripe's invoice.paid for that changes nothing more.
    event = deliver(client, stripe_double.build_event("invoice.paid", stripe_double.load(invoice.stripe_invoice_id)),
                    django_capture_on_commit_callbacks)
    assert event.status == StripeEventStatus.PROCESSED, event.last_error
    assert Payment.objects.get(purchase=pending).method == PaymentMethod.BANK_TRANSFER
    assert balance(client_a, massage) == 9


@pytest.mark.parametrize("kwargs, error, text", [
    ({"method": "cheque"}, InvalidPayment, "Record cash, card-terminal or bank-transfer payments here."),
    ({"method": "stripe"}, InvalidPayment, "Record cash, card-terminal or bank-transfer payments here."),
    ({"received_at": "future"}, InvalidPayment, "A payment cannot be received in the future."),
])
def test_bad_payment_input_changes_nothing(pending, staff_user, kwargs, error, text):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    args = {"method": PaymentMethod.CASH} | kwargs
    if args.get("received_at") == "future":
        args["received_at"] = timezone.now() + timedelta(minutes=5)

    with pytest.raises(error) as refused:
        invoice_mark_paid_offline(invoice=invoice, actor=staff_user, **args)

    assert str(refused.value) == text
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and nothing_paid(pending)
    assert as_stripe_has_it(invoice)["status"] == "open"


def test_a_void_invoice_is_not_marked_paid(pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    invoice_void(invoice=invoice, actor=staff_user, reason="sold by mistake")
    with pytest.raises(InvalidInvoice, match=f"Invoice {invoice.number} is void: only an open invoice is marked paid."):
        invoice_mark_paid_offline(invoice=invoice, method=PaymentMethod.CASH, actor=staff_user)
    assert not Payment.objects.exists()


# --- A recurring plan's cycle --------------------------------------------------------------------


def test_a_cycle_purchase_is_invoiced_for_its_period_with_the_plans_customer(client_a, ten_pack, staff_user):
    customer = stripe_client().v1.customers.create(params={"email": client_a.email, "name": client_a.name})
    plan = Subscription.objects.create(
        client=client_a, pack=ten_pack, collection="invoice", price=Decimal("300.00"), currency="GBP",
        snapshot=pack_snapshot(ten_pack), stripe_customer_id=customer.id,
    )
    start = timezone.make_aware(datetime(2026, 3, 1, 9, 0))
    cycle = Purchase.objects.create(
        client=client_a, pack=ten_pack, price=Decimal("300.00"), currency="GBP", snapshot=plan.snapshot,
        subscription=plan, cycle_number=2, period_start=start, period_end=start + timedelta(days=31),
    )
    [line] = invoice_lines(cycle)
    assert line["description"] == "Ten massages: 10 × Massage 60 (valid 3 months) — cycle 2, 01 Mar 2026 to 01 Apr 2026"

    invoice = invoice_issue_stripe(purchase=cycle, actor=None)

    assert invoice.status == InvoiceStatus.OPEN
    [sent] = stripe_invoices()
    assert sent["customer"] == customer.id
    assert LocalStripeObject.objects.filter(object_type="customer").count() == 1
    assert sent["lines"]["data"][0]["description"] == line["description"]
