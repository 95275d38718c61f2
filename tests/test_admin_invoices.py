"""Invoices in the admin: issue from a purchase, mark paid, void, retry, as Finance; Front desk only looks.

Through the test client with the real roles (core.roles); Stripe is the test double.
"""
from __future__ import annotations

import html
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.services import pack_snapshot
from core.bookings import booking_create
from ledger.models import GrantState
from payments.admin_invoices import IssueInvoiceMixin, issue_invoice_link, issue_invoice_url
from payments.invoices import invoice_issue_offline, invoice_issue_stripe, invoice_mark_paid_offline
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    OutstandingPurchase,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
)
from payments.services import purchase_create
from tests import test_invoice_sending, test_invoices, test_roles
from tests.test_roles import logged_in

pytestmark = pytest.mark.django_db

# Fixtures shared with tests/test_invoices.py and tests/test_roles.py (found by name here).
stripe_test_mode, flaky_stripe = test_invoices.stripe_test_mode, test_invoice_sending.flaky_stripe
roles, make_member, finance, desk = test_roles.roles, test_roles.make_member, test_roles.finance, test_roles.desk


def text(response) -> str:
    return html.unescape(response.content.decode())


def flashed(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def pending(client_a, make_pack, massage, session_at, staff_user) -> Purchase:
    pack = make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"))
    booking = booking_create(
        client=client_a, session=session_at(timezone.now() + timedelta(days=3)), actor=staff_user, sell_pack=pack,
    )
    return booking.purchase


def invoice_url(view: str, invoice: Invoice) -> str:
    return reverse(f"admin:payments_invoice_{view}", args=[invoice.pk])


# --- Issuing ------------------------------------------------------------------------------


def test_finance_issues_an_offline_invoice_from_the_outstanding_list(
    client, finance, pending, mailoutbox, django_capture_on_commit_callbacks,
):
    logged_in(client, finance)
    back = reverse("admin:payments_outstandingpurchase_changelist")
    url = issue_invoice_url(pending.pk, back=back)

    page = client.get(url)
    assert page.status_code == 200
    assert "Ten massages: 10 × Massage 60 (valid 3 months): 300.00 GBP" in text(page)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"kind": "offline", "days_until_due": "10", "next": back}, follow=True)

    invoice = Invoice.objects.get(purchase=pending)
    assert (invoice.kind, invoice.status, invoice.created_by) == (InvoiceKind.OFFLINE, InvoiceStatus.OPEN, finance)
    assert timedelta(days=9, hours=23) < invoice.due_at - timezone.now() <= timedelta(days=10)
    assert response.redirect_chain[-1][0] == back
    assert any(f"Invoice {invoice.number} emailed to ada@example.com" in m for m in flashed(response))
    [mail] = mailoutbox
    assert mail.to == ["ada@example.com"] and invoice.number in mail.subject


def test_finance_issues_a_stripe_invoice_from_the_purchase_page(client, finance, pending):
    logged_in(client, finance)
    response = client.post(issue_invoice_url(pending.pk), {"kind": "stripe", "days_until_due": "14"}, follow=True)

    invoice = Invoice.objects.get(purchase=pending)
    assert (invoice.kind, invoice.status) == (InvoiceKind.STRIPE, InvoiceStatus.OPEN)
    assert response.redirect_chain[-1][0] == reverse("admin:payments_purchase_change", args=[pending.pk])
    assert any(f"Stripe invoice {invoice.number} sent to ada@example.com" in m for m in flashed(response))


def test_issue_form_refuses_bad_days_and_a_second_invoice(client, finance, pending, staff_user):
    logged_in(client, finance)
    bad = client.post(issue_invoice_url(pending.pk), {"kind": "stripe", "days_until_due": "0"})
    assert bad.status_code == 200 and not Invoice.objects.exists()
    assert "Ensure this value is greater than or equal to 1." in text(bad)

    first = invoice_issue_offline(purchase=pending, actor=staff_user)
    again = client.get(issue_invoice_url(pending.pk), follow=True)
    assert any(f"already has an open invoice ({first.number})" in m for m in flashed(again))
    assert Invoice.objects.count() == 1


def test_front_desk_cannot_issue_an_invoice(client, desk, pending):
    logged_in(client, desk)
    assert client.get(issue_invoice_url(pending.pk)).status_code == 403
    assert client.post(issue_invoice_url(pending.pk), {"kind": "offline", "days_until_due": "5"}).status_code == 403
    assert not Invoice.objects.exists()


def test_the_issue_link_for_lists_goes_back_where_it_came_from(pending):
    link = str(issue_invoice_link(pending, back="/admin/payments/outstandingpurchase/"))
    assert f"/admin/payments/invoice/issue/{pending.pk}/?next=%2Fadmin%2Fpayments%2Foutstandingpurchase%2F" in link


# --- Acting on an invoice -------------------------------------------------------------------------


def test_finance_marks_an_invoice_paid_by_cash(client, finance, pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    logged_in(client, finance)
    assert client.get(invoice_url("mark_paid", invoice)).status_code == 200

    response = client.post(invoice_url("mark_paid", invoice), {"method": "cash", "reference": "R-1"}, follow=True)

    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID
    payment = Payment.objects.get(purchase=pending)
    assert (payment.method, payment.reference, payment.recorded_by) == (PaymentMethod.CASH, "R-1", finance)
    assert any(f"Invoice {invoice.number} paid" in m for m in flashed(response))


def test_mark_paid_with_a_wrong_method_shows_the_refusal(client, finance, pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    logged_in(client, finance)
    response = client.post(invoice_url("mark_paid", invoice), {"method": "stripe"})
    assert response.status_code == 200
    assert "Select a valid choice" in text(response)
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and not Payment.objects.exists()


def test_finance_voids_an_invoice_with_a_reason(client, finance, pending, staff_user):
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    logged_in(client, finance)
    page = client.get(invoice_url("void", invoice))
    assert page.status_code == 200
    assert "Voiding leaves these bookings as they are" in text(page)

    no_reason = client.post(invoice_url("void", invoice), {"reason": ""})
    assert no_reason.status_code == 200
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN

    client.post(invoice_url("void", invoice), {"reason": "Client left the country"})

    invoice.refresh_from_db()
    pending.refresh_from_db()
    assert (invoice.status, pending.status) == (InvoiceStatus.VOID, PurchaseStatus.CANCELLED)
    assert pending.grants.get().state == GrantState.VOIDED


def test_a_paid_invoice_is_refused_voiding_with_the_reason(client, finance, pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    invoice_mark_paid_offline(invoice=invoice, method=PaymentMethod.CASH, actor=staff_user)
    logged_in(client, finance)

    response = client.post(invoice_url("void", invoice), {"reason": "mistake"})

    assert response.status_code == 200
    assert "is paid, so it cannot be voided: refund the purchase instead." in text(response)
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.PAID


def test_finance_retries_a_stripe_invoice_stripe_did_not_take(client, finance, pending, staff_user, flaky_stripe):
    flaky_stripe("/finalize")
    invoice = invoice_issue_stripe(purchase=pending, actor=staff_user)
    assert invoice.status == InvoiceStatus.DRAFT
    logged_in(client, finance)
    listed = client.get(reverse("admin:payments_invoice_changelist"))
    assert "Stripe did not answer" in text(listed)
    detail = client.get(reverse("admin:payments_invoice_change", args=[invoice.pk]))
    assert invoice_url("retry_send", invoice) in text(detail)
    assert invoice_url("mark_paid", invoice) not in text(detail)  # not sent: nothing to pay yet

    client.post(invoice_url("retry_send", invoice))

    invoice.refresh_from_db()
    assert (invoice.status, invoice.error) == (InvoiceStatus.OPEN, "")


def test_front_desk_sees_invoices_but_cannot_act_on_them(client, desk, pending, staff_user):
    invoice = invoice_issue_offline(purchase=pending, actor=staff_user)
    logged_in(client, desk)
    listed = client.get(reverse("admin:payments_invoice_changelist"))
    assert listed.status_code == 200 and invoice.number in text(listed)
    for view in ("mark_paid", "void", "retry_send"):
        assert client.get(invoice_url(view, invoice)).status_code == 403
    assert client.post(invoice_url("mark_paid", invoice), {"method": "cash"}).status_code == 403
    assert client.post(invoice_url("void", invoice), {"reason": "x"}).status_code == 403
    invoice.refresh_from_db()
    assert invoice.status == InvoiceStatus.OPEN and not Payment.objects.exists()


# --- The list ---------------------------------------------------------------------------------


def add_invoices(pack, client_a, n: int) -> None:
    snapshot = pack_snapshot(pack)
    purchases = Purchase.objects.bulk_create(
        Purchase(client=client_a, pack=pack, price=pack.price, currency="GBP", snapshot=snapshot) for _ in range(n)
    )
    statuses = [InvoiceStatus.OPEN, InvoiceStatus.DRAFT, InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE]
    Invoice.objects.bulk_create(
        Invoice(
            purchase=purchase, kind=InvoiceKind.STRIPE if i % 2 else InvoiceKind.OFFLINE,
            number=f"PD-{purchase.pk:06d}", amount=pack.price, currency="GBP", status=statuses[i % 4],
            due_at=timezone.now() + timedelta(days=14),
            stripe_invoice_id=f"in_{purchase.pk}" if i % 2 else None,
            hosted_invoice_url=f"https://invoice.stripe.com/i/{purchase.pk}" if i % 2 else "",
        )
        for i, purchase in enumerate(purchases)
    )


def test_invoice_list_runs_a_fixed_number_of_queries(admin_client, make_pack, massage, client_a):
    pack = make_pack([(massage, False, 10)])
    url = reverse("admin:payments_invoice_changelist")
    counts = []
    for n in (10, 190):
        add_invoices(pack, client_a, n)
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(url)
        assert response.status_code == 200
        counts.append(len(captured))
    assert response.context["cl"].result_count == 200 > response.context["cl"].list_per_page
    assert counts[0] == counts[1], counts
    page = text(response)
    assert "https://invoice.stripe.com/i/" in page and "300.00 GBP" in page


def test_invoice_list_filters_and_search(admin_client, make_pack, massage, client_a, client_b, staff_user):
    pack = make_pack([(massage, False, 10)])
    ada = invoice_issue_offline(purchase=purchase_create(client=client_a, pack=pack, actor=staff_user), actor=staff_user)
    grace = invoice_issue_offline(purchase=purchase_create(client=client_b, pack=pack, actor=staff_user), actor=staff_user)
    url = reverse("admin:payments_invoice_changelist")

    found = admin_client.get(url, {"q": "grace"}).context["cl"].result_list
    assert [i.pk for i in found] == [grace.pk]
    found = admin_client.get(url, {"q": ada.number}).context["cl"].result_list
    assert [i.pk for i in found] == [ada.pk]
    assert admin_client.get(url, {"status__exact": "paid"}).context["cl"].result_count == 0
    assert admin_client.get(url, {"kind__exact": "offline"}).context["cl"].result_count == 2


@pytest.mark.parametrize("model, back", [
    (Purchase, "purchase_change"), (OutstandingPurchase, "outstandingpurchase_changelist"),
])
def test_the_issue_invoice_action_the_purchase_admins_mix_in(rf, finance, desk, pending, model, back):
    """PurchaseAdmin and OutstandingPurchaseAdmin offer Issue invoice, to finance only."""
    model_admin = admin.site._registry[model]
    assert isinstance(model_admin, IssueInvoiceMixin)
    assert "issue_invoice" in model_admin.actions_row
    request = rf.get("/")
    request.user = finance
    response = model_admin.issue_invoice(request, object_id=str(pending.pk))

    args = [pending.pk] if back == "purchase_change" else []
    assert response["Location"] == issue_invoice_url(pending.pk, back=reverse(f"admin:payments_{back}", args=args))
    request.user = desk
    with pytest.raises(PermissionDenied):
        model_admin.issue_invoice(request, object_id=str(pending.pk))
