"""Recurring plans in the admin: the list, the plan page, selling at the desk, and the staff
actions per role (Front desk sells and looks; Manager and Finance act)."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import Client, EmailLog
from ledger.integrity import ledger_check
from ledger.models import CreditGrant, EntryKind, LedgerEntry
from payments import stripe_double
from payments.models import OutstandingPurchase, PaymentMethod, PurchaseStatus, Subscription, SubscriptionStatus
from payments.services import payment_record
from payments.subscriptions import subscription_create
from tests.test_admin import admin_url
from tests import test_roles

# The role fixtures (users in the Front desk, Manager and Finance groups), shared with test_roles.
roles, make_member = test_roles.roles, test_roles.make_member
desk, manager, finance = test_roles.desk, test_roles.manager, test_roles.finance

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True


@pytest.fixture
def plan_pack(make_pack, massage):
    def make(collection="invoice", **fields):
        defaults = dict(
            price=Decimal("60.00"), is_recurring=True, billing_interval="month", billing_interval_count=1,
            recurs_when="pack_expires", recurring_collection=collection, validity_amount=1,
            validity_unit="months", minimum_commitment=12,
        )
        defaults.update(fields)
        return make_pack([(massage, False, 4, 1, "months")], **defaults)

    return make


@pytest.fixture
def plan(plan_pack, client_a, staff_user):
    """An invoice plan with 3 of its 12 committed payments made (cycles 1–3 paid, 4 open)."""
    sub = subscription_create(client=client_a, pack=plan_pack(name="Monthly massage"), actor=staff_user)
    for number in (1, 2, 3):
        cycle = sub.cycles.get(cycle_number=number)
        payment_record(purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=staff_user)
        from payments.subscriptions import cycle_open

        cycle_open(subscription=sub, cycle_number=number + 1, period_start=cycle.period_end, actor=staff_user)
    sub.refresh_from_db()
    return sub


def as_user(client, user):
    client.force_login(user)
    return client


# --- The list and the plan page --------------------------------------------------------------


def _plans(pack, n: int, staff_user) -> None:
    start = Client.objects.count()
    for i in range(start, start + n):
        client = Client.objects.create(name=f"Client {i}", email=f"client{i}@example.com")
        sub = subscription_create(client=client, pack=pack, actor=staff_user)
        cycle = sub.cycles.get()
        payment_record(purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=staff_user)


def test_the_list_runs_the_same_queries_at_3_and_30_plans(admin_client, plan_pack, staff_user):
    pack = plan_pack()
    url = admin_url(Subscription, "changelist")

    _plans(pack, 3, staff_user)
    with CaptureQueriesContext(connection) as few:
        small = admin_client.get(url)
    _plans(pack, 27, staff_user)
    with CaptureQueriesContext(connection) as many:
        large = admin_client.get(url)

    assert small.status_code == large.status_code == 200
    assert len(large.context["cl"].result_list) == 30
    assert len(few) == len(many), [q["sql"] for q in many.captured_queries]


def test_the_list_shows_pack_payments_period_and_next_cycle(admin_client, plan):
    body = admin_client.get(admin_url(Subscription, "changelist")).content.decode()
    assert "Monthly massage" in body and "Ada Lovelace" in body
    assert "3 of 12, 9 to go" in body
    assert "cycle 4 awaiting payment" in body

    found = admin_client.get(admin_url(Subscription, "changelist") + "?q=ada@example").context["cl"].result_count
    missing = admin_client.get(admin_url(Subscription, "changelist") + "?q=nobody").context["cl"].result_count
    filtered = admin_client.get(admin_url(Subscription, "changelist") + "?status__exact=cancelled")
    assert (found, missing, filtered.context["cl"].result_count) == (1, 0, 0)


def test_the_plan_page_shows_what_was_bought_its_cycles_and_history(admin_client, plan):
    response = admin_client.get(admin_url(Subscription, "change", plan.pk))
    body = response.content.decode()
    assert response.status_code == 200
    assert "4 × Massage 60, valid 1 months" in body  # credits per cycle, from the snapshot
    assert "invoice, every 1 month, recurs when the pack expires, minimum 12 payments" in body
    assert 'id="plan-cycles"' in body and body.count("Pending payment") >= 1 and body.count(">Paid</td>") == 3
    assert "3 of 12, 9 to go" in body
    # Read-only: no save button, but the actions a manager would use.
    assert 'name="_save"' not in body
    assert admin_url(Subscription, "pause", plan.pk) in body and admin_url(Subscription, "cancel_plan", plan.pk) in body
    assert admin_client.get(admin_url(Subscription, "history", plan.pk)).status_code == 200


# --- Selling at the desk --------------------------------------------------------------------


def test_the_desk_sells_an_invoice_plan_whose_first_cycle_is_outstanding(client, desk, plan_pack, client_a):
    pack = plan_pack(name="Monthly physio")
    as_user(client, desk)
    page = client.get(admin_url(Subscription, "add"))
    assert page.status_code == 200 and "Activate now" in page.content.decode()

    response = client.post(admin_url(Subscription, "add"), {"client": client_a.pk, "pack": pack.pk, "activate": "on"})

    sub = Subscription.objects.get()
    assert response.status_code == 302 and response["Location"] == admin_url(Subscription, "change", sub.pk)
    assert (sub.client, sub.created_by, sub.activated_at is not None) == (client_a, desk, True)
    cycle = sub.cycles.get()
    assert cycle.status == PurchaseStatus.PENDING
    assert OutstandingPurchase.objects.filter(pk=cycle.pk).exists()
    # The desk looks but does not act on plans.
    detail = client.get(admin_url(Subscription, "change", sub.pk)).content.decode()
    assert admin_url(Subscription, "pause", sub.pk) not in detail


def test_selling_a_plan_to_activate_later_and_activating_it(client, manager, plan_pack, client_a, massage):
    pack = plan_pack()
    as_user(client, manager)
    client.post(admin_url(Subscription, "add"), {"client": client_a.pk, "pack": pack.pk})  # switch off
    sub = Subscription.objects.get()
    cycle = sub.cycles.get()
    payment_record(purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=manager)
    assert sub.activated_at is None and not CreditGrant.objects.exists()  # paid, but waits

    assert client.get(admin_url(Subscription, "activate", sub.pk)).status_code == 200
    response = client.post(admin_url(Subscription, "activate", sub.pk), {}, follow=True)

    assert "activated: 1 credit grant(s) issued" in response.content.decode()
    grant = CreditGrant.objects.get(purchase=cycle)
    assert grant.valid_from == cycle.period_start and grant.remaining == 4
    again = client.post(admin_url(Subscription, "activate", sub.pk), {})
    assert again.status_code == 200 and "was activated on" in again.content.decode()
    assert ledger_check().ok


def test_an_unsellable_pack_is_refused_with_the_reason(client, desk, plan_pack, client_a):
    pack = plan_pack(published=False, sell_online=False)
    as_user(client, desk)
    response = client.post(admin_url(Subscription, "add"), {"client": client_a.pk, "pack": pack.pk, "activate": "on"})
    assert response.status_code == 200 and "is not published, so it cannot be sold" in response.content.decode()
    assert not Subscription.objects.exists()


def test_an_auto_debit_plan_sold_at_the_desk_emails_the_client_a_card_link(
    client, desk, plan_pack, client_a, django_capture_on_commit_callbacks, mailoutbox
):
    pack = plan_pack("auto_debit")
    as_user(client, desk)
    client.post(admin_url(Subscription, "add"), {"client": client_a.pk, "pack": pack.pk, "activate": "on"})
    sub = Subscription.objects.get()
    assert sub.status == SubscriptionStatus.PENDING and not sub.cycles.exists()
    detail = client.get(admin_url(Subscription, "change", sub.pk)).content.decode()
    assert "Email the client a payment link" in detail

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(admin_url(Subscription, "payment_link", sub.pk), follow=True)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(admin_url(Subscription, "payment_link", sub.pk))  # a second click: the same link, no new email

    sub.refresh_from_db()
    session = stripe_double.load(sub.stripe_checkout_session_id, "checkout.session")
    assert session["mode"] == "subscription" and session["metadata"] == {"subscription_id": str(sub.pk)}
    assert "Payment link emailed to ada@example.com" in response.content.decode()
    assert EmailLog.objects.filter(template="plan_payment_due", recipient="ada@example.com").count() == 1
    assert session["url"] in mailoutbox[-1].body and "60.00 GBP" in mailoutbox[-1].body


# --- Staff actions per role -----------------------------------------------------------------


def test_the_front_desk_may_not_pause_or_cancel(client, desk, plan):
    as_user(client, desk)
    for view in ("pause", "resume", "cancel_plan", "activate"):
        assert client.get(admin_url(Subscription, view, plan.pk)).status_code == 403, view
    response = client.post(admin_url(Subscription, "cancel_plan", plan.pk), {"reason": "client asked"})
    assert response.status_code == 403
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE


def test_a_manager_pauses_and_resumes_and_the_credits_expiry_moves(client, manager, plan):
    as_user(client, manager)
    grant = CreditGrant.objects.filter(purchase__subscription=plan).latest("expires_at")
    until = timezone.localdate() + timedelta(days=21)

    response = client.post(admin_url(Subscription, "pause", plan.pk), {"until": until.isoformat(), "reason": "injury"},
                           follow=True)

    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.PAUSED
    assert timezone.localtime(plan.paused_until).date() == until
    assert "paused until" in response.content.decode()
    moved = CreditGrant.objects.get(pk=grant.pk).expires_at
    assert moved > grant.expires_at + timedelta(days=20)
    assert LedgerEntry.objects.filter(grant=grant, kind=EntryKind.ADJUSTED).exists()

    response = client.post(admin_url(Subscription, "resume", plan.pk), {}, follow=True)
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE and "resumed" in response.content.decode()
    assert CreditGrant.objects.get(pk=grant.pk).expires_at == grant.expires_at  # days not taken given back
    assert ledger_check().ok


def test_a_pause_refused_by_the_service_shows_its_reason_and_changes_nothing(client, finance, plan):
    as_user(client, finance)
    yesterday = timezone.localdate() - timedelta(days=1)
    response = client.post(admin_url(Subscription, "pause", plan.pk), {"until": yesterday.isoformat(), "reason": "x"})
    assert response.status_code == 200 and "Pause until a date in the future." in response.content.decode()
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE and plan.paused_until is None
    assert not LedgerEntry.objects.filter(kind=EntryKind.ADJUSTED).exists()


def test_finance_cancels_before_the_commitment_after_being_told_what_remains(client, finance, plan):
    as_user(client, finance)
    page = client.get(admin_url(Subscription, "cancel_plan", plan.pk)).content.decode()
    assert "minimum commitment of 12 payments and 9 are still to go" in page

    blank = client.post(admin_url(Subscription, "cancel_plan", plan.pk), {"reason": "  "})
    assert blank.status_code == 200
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE

    response = client.post(admin_url(Subscription, "cancel_plan", plan.pk), {"reason": "moving abroad"}, follow=True)
    plan.refresh_from_db()
    assert (plan.status, plan.cancel_reason) == (SubscriptionStatus.CANCELLED, "moving abroad")
    assert "cancelled: no more cycles" in response.content.decode()
    record = plan.history.first()
    assert (record.history_user, record.history_change_reason) == (finance, "cancelled by staff")
    # Cancelled: no more actions are offered.
    detail = client.get(admin_url(Subscription, "change", plan.pk)).content.decode()
    assert admin_url(Subscription, "cancel_plan", plan.pk) not in detail
