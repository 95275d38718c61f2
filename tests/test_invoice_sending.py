"""Sending Stripe invoices when Stripe fails (draft, error, Retry never makes a second one), and
the demo's test-mode invoice page that stands in for Stripe's hosted page (payments.invoice_views).

Fixtures and helpers are tests/test_invoices.py's.
"""
from __future__ import annotations

import pytest
import stripe

from payments import invoice_stripe, stripe_double
from payments.invoices import invoice_issue_stripe, invoice_send_retry, invoice_void, InvalidInvoice
from payments.models import Invoice, InvoiceStatus, Payment, PurchaseStatus, StripeEventStatus
from payments.stripe_double import StripeDouble
from tests import test_invoices as base
from tests.test_webhooks import deliver

pytestmark = pytest.mark.django_db

# The same world as tests/test_invoices.py (pytest finds fixtures by name in this module).
stripe_test_mode = base.stripe_test_mode
ledger_balances_after_each_test = base.ledger_balances_after_each_test
ten_pack, sold_on_the_spot, pending = base.ten_pack, base.sold_on_the_spot, base.pending
stripe_invoices, stripe_items, balance = base.stripe_invoices, base.stripe_items, base.balance


class FlakyStripe(StripeDouble):
    """Stripe failing (HTTP 500) on the first request whose path ends with `fail_on`."""

    def __init__(self, fail_on: str, times: int = 1):
        super().__init__()
        self.fail_on, self.left = fail_on, times

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        if self.left and url.split("?")[0].rstrip("/").endswith(self.fail_on):
            self.left -= 1
            return '{"error": {"type": "api_error", "message": "Stripe is having a bad day"}}', 500, {}
        return super().request(method, url, headers, post_data, _usage=_usage)


@pytest.fixture
def flaky_stripe(monkeypatch):
    def install(fail_on: str, times: int = 1) -> None:
        http = FlakyStripe(fail_on, times)
        monkeypatch.setattr(
            invoice_stripe, "stripe_client",
            lambda: stripe.StripeClient("sk_test_packdesk_double", http_client=http, max_network_retries=0),
        )

    return install


# --- Stripe failing, and Retry -------------------------------------------------------------


def test_stripe_failure_leaves_a_draft_and_retry_makes_no_second_invoice(pending, staff_user, flaky_stripe):
    flaky_stripe("/finalize")

    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)

    assert invoice.status == InvoiceStatus.DRAFT
    assert invoice.error.startswith("Stripe did not answer")
    assert invoice.stripe_invoice_id == stripe_invoices()[0]["id"]  # kept at once, for the retry
    assert stripe_invoices()[0]["status"] == "draft"

    retried = invoice_send_retry(invoice=invoice, actor=staff_user)
    assert (retried.status, retried.error) == (InvoiceStatus.OPEN, "")
    with pytest.raises(InvalidInvoice, match="only a Stripe invoice that was not sent is sent again"):
        invoice_send_retry(invoice=retried, actor=staff_user)  # sent: nothing to retry
    assert len(stripe_invoices()) == 1
    assert len(stripe_items()) == 1
    assert stripe_invoices()[0]["amount_due"] == 30000


def test_retry_after_a_crash_before_stripes_id_was_stored_finds_the_invoice(pending, staff_user, flaky_stripe):
    flaky_stripe("/invoiceitems")
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    assert invoice.status == InvoiceStatus.DRAFT
    # As if the process died between Stripe's answer and our save.
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id=None)

    retried = invoice_send_retry(invoice=invoice, actor=staff_user)

    assert retried.status == InvoiceStatus.OPEN
    [only] = stripe_invoices()
    assert retried.stripe_invoice_id == only["id"]
    assert len(stripe_items()) == 1


def test_stripe_refusing_the_customer_leaves_a_draft_with_the_reason(pending, staff_user, flaky_stripe):
    flaky_stripe("/customers", times=5)
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    assert invoice.status == InvoiceStatus.DRAFT and "Stripe" in invoice.error
    assert invoice.stripe_invoice_id is None and stripe_invoices() == []


def test_voiding_a_draft_stripe_never_sent_cancels_the_purchase(pending, staff_user, flaky_stripe):
    flaky_stripe("/finalize")
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    assert invoice.status == InvoiceStatus.DRAFT

    invoice_void(invoice=invoice, actor=staff_user, reason="Client paid cash instead, resold")

    invoice.refresh_from_db()
    pending.refresh_from_db()
    assert (invoice.status, pending.status) == (InvoiceStatus.VOID, PurchaseStatus.CANCELLED)
    # Never finalized, so never payable in Stripe (deleted there, or an inert draft).
    assert all(i["status"] in ("draft", "deleted") for i in stripe_invoices())


# --- Demo: the test-mode invoice page (Stripe's hosted page stand-in) ---------------------------


@pytest.fixture
def webhook_posts(monkeypatch):
    """What the page sends to our webhook (over HTTP in the demo): recorded, delivered by the test."""
    from payments import invoice_views

    sent, answer = [], {"problem": ""}

    def record(request, event_type, object_id):
        sent.append((event_type, object_id))
        return answer["problem"]

    monkeypatch.setattr(invoice_views, "_deliver_test_event", record)
    return sent, answer


def test_the_test_invoice_page_pays_and_tells_our_webhook(
    pending, staff_user, client, client_a, massage, webhook_posts, django_capture_on_commit_callbacks,
):
    sent, _ = webhook_posts
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    url = f"/packs/test-invoice/{invoice.stripe_invoice_id}/"
    assert invoice.hosted_invoice_url.endswith(url)

    page = client.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert invoice.number in body and "£300.00" in body and "Ten massages: 10 × Massage 60" in body

    paid = client.post(url, {"action": "pay"})

    assert (paid.status_code, paid["Location"]) == (303, url)
    assert stripe_double.load(invoice.stripe_invoice_id)["status"] == "paid"
    assert sent == [("invoice.paid", invoice.stripe_invoice_id)]
    # The event it sent, as our webhook receives it: the purchase is paid, the credits released.
    event = deliver(client, stripe_double.build_event("invoice.paid", stripe_double.load(invoice.stripe_invoice_id)),
                    django_capture_on_commit_callbacks)
    assert event.status == StripeEventStatus.PROCESSED, event.last_error
    assert balance(client_a, massage) == 9
    assert "This invoice is paid" in client.get(url).content.decode()


def test_the_test_invoice_page_says_when_the_webhook_was_not_reached(pending, staff_user, client, webhook_posts):
    sent, answer = webhook_posts
    answer["problem"] = "our webhook answered HTTP 500"
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    url = f"/packs/test-invoice/{invoice.stripe_invoice_id}/"

    response = client.post(url, {"action": "pay"})

    assert response.status_code == 502
    assert "Test payment taken, but our webhook answered HTTP 500" in response.content.decode()
    assert 'id="pay-button"' in response.content.decode()  # press again to resend
    answer["problem"] = ""
    assert client.post(url, {"action": "pay"}).status_code == 303  # paid once, sent again
    assert len(sent) == 2 and Payment.objects.count() == 0  # nothing is paid until the event lands


def test_the_test_invoice_page_exists_only_in_test_mode(pending, staff_user, client, settings):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    assert client.get("/packs/test-invoice/in_nope/").status_code == 404
    void = invoice_void(invoice=invoice, actor=staff_user, reason="test")
    assert client.post(f"/packs/test-invoice/{void.stripe_invoice_id}/", {"action": "pay"}).status_code == 409
    settings.STRIPE_TEST_DOUBLE = False
    assert client.get(f"/packs/test-invoice/{invoice.stripe_invoice_id}/").status_code == 404
