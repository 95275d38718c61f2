"""The client's page shows their recurring plans; the client may cancel only after the minimum
commitment (seed 001: "clients can't cancel until the minimum number of payments")."""
from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.portal_tokens import client_from_token, portal_token_for
from payments.models import Invoice, PaymentMethod, SubscriptionStatus
from payments.services import payment_record
from payments.subscriptions import cycle_open, subscription_cancel, subscription_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def plan_pack(make_pack, massage):
    def make(**fields):
        defaults = dict(
            price=Decimal("45.00"), is_recurring=True, billing_interval="month", billing_interval_count=1,
            recurs_when="pack_expires", recurring_collection="invoice", validity_amount=1,
            validity_unit="months", minimum_commitment=3,
        )
        defaults.update(fields)
        return make_pack([(massage, False, 4, 1, "months")], **defaults)

    return make


@pytest.fixture
def plan_with_payments(plan_pack, staff_user):
    """A plan whose first `paid` cycles are paid and whose next cycle is open."""

    def make(client, paid: int, **fields):
        plan = subscription_create(client=client, pack=plan_pack(**fields), actor=staff_user)
        for number in range(1, paid + 1):
            cycle = plan.cycles.get(cycle_number=number)
            payment_record(purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=staff_user)
            cycle_open(subscription=plan, cycle_number=number + 1, period_start=cycle.period_end, actor=staff_user)
        plan.refresh_from_db()
        return plan

    return make


def home(client):
    return f"/me/{portal_token_for(client)}/"


def is_home_of(location: str, client) -> bool:
    """A redirect to the client's own page (its token is signed anew, so compare whose it is)."""
    parts = location.strip("/").split("/")
    return len(parts) == 2 and parts[0] == "me" and client_from_token(parts[1]).pk == client.pk


def cancel_url(client, plan_id) -> str:
    return reverse("portal:plan_cancel", args=[portal_token_for(client), plan_id])


def test_the_page_shows_each_plan_with_payments_made_and_to_go(client, client_a, plan_with_payments):
    plan = plan_with_payments(client_a, 1, name="Monthly massage")

    body = client.get(home(client_a)).content.decode()

    assert 'id="plans"' in body and "Your plans" in body and "Monthly massage" in body
    assert "1 of 3 payments made, 2 to go" in body
    assert "Payment of 45.00 GBP due now (payment 2)" in body
    assert "45.00 GBP by invoice each cycle" in body
    assert "please contact us" in body
    assert f"/plans/{plan.pk}/cancel/" not in body  # no button before the commitment


def test_an_open_invoice_is_linked_for_paying(client, client_a, plan_with_payments):
    plan = plan_with_payments(client_a, 1)
    Invoice.objects.create(
        purchase=plan.cycles.get(cycle_number=2), kind="stripe", amount=Decimal("45.00"), currency="GBP",
        status="open", stripe_invoice_id="in_test_x", hosted_invoice_url="https://invoice.stripe.test/i/x",
    )
    body = client.get(home(client_a)).content.decode()
    assert 'href="https://invoice.stripe.test/i/x">Pay now</a>' in body


def test_before_the_commitment_the_client_cannot_cancel(client, client_a, plan_with_payments):
    plan = plan_with_payments(client_a, 2)

    page = client.get(cancel_url(client_a, plan.pk))
    assert page.status_code == 200
    assert "2 made, 1 to go. Please contact us to cancel or pause it." in page.content.decode()
    assert "Yes, cancel my plan" not in page.content.decode()

    refused = client.post(cancel_url(client_a, plan.pk))
    plan.refresh_from_db()
    assert refused.status_code == 409
    assert "minimum of 3 payments: 2 made, 1 to go. Please contact us to cancel or pause it." in refused.content.decode()
    assert plan.status == SubscriptionStatus.ACTIVE and plan.cancelled_at is None


def test_after_the_commitment_the_client_cancels(client, client_a, plan_with_payments):
    plan = plan_with_payments(client_a, 3)
    body = client.get(home(client_a)).content.decode()
    assert "3 of 3 payments made: your minimum commitment is complete" in body
    assert f"/plans/{plan.pk}/cancel/" in body  # the token in the URL is signed anew each time

    page = client.get(cancel_url(client_a, plan.pk)).content.decode()
    assert "Yes, cancel my plan" in page
    response = client.post(cancel_url(client_a, plan.pk))

    plan.refresh_from_db()
    assert response.status_code == 303 and is_home_of(response["Location"], client_a)
    assert plan.status == SubscriptionStatus.CANCELLED
    assert plan.history.first().history_change_reason == "cancelled by client"
    after = client.get(home(client_a)).content.decode()
    assert "is cancelled: no more payments" in after and "Cancelled on" in after
    assert client.post(cancel_url(client_a, plan.pk)).status_code == 409  # once


def test_staff_may_cancel_before_the_commitment(client_a, plan_with_payments, staff_user):
    plan = plan_with_payments(client_a, 0)
    subscription_cancel(subscription=plan, actor=staff_user, reason="moving away")
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.CANCELLED


def test_a_plan_without_a_minimum_may_be_cancelled_at_once(client, client_a, plan_with_payments):
    plan = plan_with_payments(client_a, 0, minimum_commitment=0)
    assert "0 payments made" in client.get(home(client_a)).content.decode()
    assert client.post(cancel_url(client_a, plan.pk)).status_code == 303


def test_another_clients_plan_is_not_found(client, client_a, client_b, plan_with_payments):
    theirs = plan_with_payments(client_b, 3)
    for response in (client.get(cancel_url(client_a, theirs.pk)), client.post(cancel_url(client_a, theirs.pk)),
                     client.get(cancel_url(client_a, "12x"))):
        assert response.status_code == 404
        assert "Grace" not in response.content.decode()
    theirs.refresh_from_db()
    assert theirs.status == SubscriptionStatus.ACTIVE


def test_the_page_runs_a_fixed_number_of_queries_whatever_the_number_of_plans(client, client_a, plan_with_payments):
    plan_with_payments(client_a, 1)

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(home(client_a)).status_code == 200
        return len(ctx.captured_queries)

    one = queries()
    for paid in (0, 2, 3):
        plan_with_payments(client_a, paid)
    assert queries() == one


# --- In a real browser, on a phone ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_client_sees_their_plan_and_cancels_it_on_a_phone(live_server, phone_page, settings, client_a,
                                                           plan_with_payments):
    from core.portal_tokens import portal_url
    from tests.browser import screenshot

    settings.PUBLIC_BASE_URL = live_server.url
    plan = plan_with_payments(client_a, 3, name="Monthly massage")
    page = phone_page
    link = portal_url(client_a)  # the link as emailed (a new call signs a new timestamp)

    page.goto(link)
    card = page.locator(f"#plan-{plan.pk}")
    assert "Monthly massage" in card.inner_text() and "3 of 3 payments made" in card.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    screenshot(page, "portal-plans-1-home")

    page.get_by_role("link", name="Cancel plan").click()
    page.wait_for_url("**/cancel/")
    screenshot(page, "portal-plans-2-confirm")
    page.get_by_role("button", name="Yes, cancel my plan").click()

    page.wait_for_url(link)
    assert "is cancelled: no more payments" in page.inner_text("body")
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.CANCELLED
