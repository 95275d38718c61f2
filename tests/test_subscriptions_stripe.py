"""Auto-debit recurring plans through Stripe: signed events in, credits out (seeds 001 and 002).

Stripe is the test-mode double behind the real SDK; its side moves on with the double's helpers
(complete_checkout, renew_subscription, pay_invoice) and every event is posted signed to
/stripe/webhook/, then processed as the worker would (tests/test_webhooks.py's deliver).
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from catalog.services import pack_update
from catalog.validation import LineData
from catalog.validity import expiry_for
from core.models import EmailLog, StaffMember, StaffNotification
from core.roles import FINANCE, MANAGER
from ledger.integrity import ledger_check
from ledger.models import CreditGrant, EntryKind, EntrySource, GrantState, LedgerEntry
from payments import stripe_double
from payments.models import (
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    StripeEvent,
    StripeEventStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.events import stripe_event_process
from payments.stripe_gateway import stripe_client
from payments.subscription_stripe import (
    subscription_checkout_params,
    subscription_checkout_session_create,
    subscription_push_to_stripe,
    subscription_store_session_id,
)
from payments.subscriptions import (
    subscription_activate,
    subscription_cancel,
    subscription_create,
    subscription_pause,
    subscription_resume,
)
# stripe_test_mode: the double and the webhook secret, for every test here (an autouse fixture).
from tests.test_webhooks import balance, deliver, post_event, stripe_test_mode  # noqa: F401

pytestmark = pytest.mark.django_db

T0 = datetime(2025, 1, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def monthly(make_pack, massage):
    return make_pack(
        [(massage, False, 4)], name="Monthly four", price=Decimal("60.00"), is_recurring=True,
        recurring_collection="auto_debit", billing_interval="month", recurs_when="pack_expires",
        validity_amount=1, validity_unit="months", minimum_commitment=3,
    )


@pytest.fixture
def manager(db, django_user_model):
    user = django_user_model.objects.create_user("mona", "mona@example.com", "pw-mona-123", is_staff=True)
    user.groups.add(Group.objects.get(name=MANAGER))
    return StaffMember.objects.create(user=user, display_name="Mona Manager")


# --- Helpers: Stripe's side, and its events delivered signed ---------------------------------


def start_plan(client, pack, *, activate=True, staff_member=None, unit_amount=None) -> Subscription:
    """A plan and its Checkout Session, as the public page makes them (unit_amount: a session
    that disagrees with our price)."""
    plan = subscription_create(client=client, pack=pack, actor=None, activate=activate, staff_member=staff_member)
    if unit_amount is None:
        session = subscription_checkout_session_create(plan)
    else:
        params = subscription_checkout_params(plan)
        params["line_items"][0]["price_data"]["unit_amount"] = unit_amount
        session = stripe_client().v1.checkout.sessions.create(params=params)
    return subscription_store_session_id(plan, session.id)


def event(event_type: str, object_id: str) -> dict:
    return stripe_double.build_event(event_type, stripe_double.load(object_id))


def stripe_sub(plan) -> dict:
    session = stripe_double.load(plan.stripe_checkout_session_id)
    return stripe_double.load(session["subscription"])


def pay_checkout(http, plan, capture, *, invoice_first=False):
    """The client pays on Stripe's page: the session completes, the first invoice is paid."""
    stripe_double.complete_checkout(plan.stripe_checkout_session_id)
    completed = event("checkout.session.completed", plan.stripe_checkout_session_id)
    paid = event("invoice.paid", stripe_sub(plan)["latest_invoice"])
    order = [paid, completed] if invoice_first else [completed, paid]
    stored = [deliver(http, e, capture) for e in order]
    plan.refresh_from_db()
    return stored


def renew(http, plan, capture, *, paid=True):
    """Stripe bills the next period; returns (the invoice, the stored event)."""
    invoice = stripe_double.renew_subscription(plan.stripe_subscription_id, paid=paid)
    stored = deliver(http, event("invoice.paid" if paid else "invoice.payment_failed", invoice["id"]), capture)
    plan.refresh_from_db()
    return stripe_double.load(invoice["id"]), stored


def grants_of(cycle) -> list[CreditGrant]:
    return list(CreditGrant.objects.filter(purchase=cycle).order_by("pk"))


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


# --- First payment and renewals --------------------------------------------------------------


def test_first_payment_issues_the_cycles_credits_and_records_stripes_invoice(
    client, client_a, monthly, massage, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    assert plan.status == SubscriptionStatus.PENDING and not plan.cycles.exists()

    completed, paid = pay_checkout(client, plan, django_capture_on_commit_callbacks)

    assert (completed.status, paid.status) == (StripeEventStatus.PROCESSED, StripeEventStatus.PROCESSED)
    sub = stripe_sub(plan)
    assert plan.status == SubscriptionStatus.ACTIVE
    assert (plan.stripe_subscription_id, plan.stripe_customer_id) == (sub["id"], sub["customer"])
    cycle = plan.cycles.get()
    invoice = stripe_double.load(sub["latest_invoice"])
    intent = invoice["payments"]["data"][0]["payment"]["payment_intent"]
    assert (cycle.cycle_number, cycle.status, cycle.price) == (1, PurchaseStatus.PAID, Decimal("60.00"))
    assert cycle.stripe_payment_intent_id == intent
    payment = Payment.objects.get(purchase=cycle)
    assert (payment.method, payment.amount, payment.reference) == (PaymentMethod.STRIPE, Decimal("60.00"), intent)
    row = Invoice.objects.get(purchase=cycle)
    assert (row.kind, row.stripe_invoice_id, row.status, row.amount, row.currency) == (
        InvoiceKind.STRIPE, invoice["id"], InvoiceStatus.PAID, Decimal("60.00"), "GBP"
    )
    assert row.number == invoice["number"] and row.number
    assert cycle.period_start == datetime.fromtimestamp(invoice["lines"]["data"][0]["period"]["start"], tz=UTC)
    (grant,) = grants_of(cycle)
    assert (grant.quantity, grant.source) == (4, EntrySource.PURCHASE)
    assert grant.expires_at == expiry_for(cycle.period_start, 1, "months")
    assert balance(client_a, massage) == 4
    assert_ledger_ok()


def test_a_renewal_paid_late_counts_its_credits_from_the_cycle_start(
    client, client_a, monthly, massage, django_capture_on_commit_callbacks,
):
    with time_machine.travel(T0, tick=False) as clock:
        plan = start_plan(client_a, monthly)
        pay_checkout(client, plan, django_capture_on_commit_callbacks)
        clock.move_to(T0 + timedelta(days=31))
        invoice = stripe_double.renew_subscription(plan.stripe_subscription_id, paid=True)
        # The event is processed five days into the cycle (a queue backlog): the date that
        # counts is the cycle's start, not when we heard of the payment.
        clock.move_to(T0 + timedelta(days=36))
        stored = deliver(client, event("invoice.paid", invoice["id"]), django_capture_on_commit_callbacks)

    assert stored.status == StripeEventStatus.PROCESSED
    first, second = plan.cycles.order_by("cycle_number")
    assert (second.cycle_number, second.status) == (2, PurchaseStatus.PAID)
    assert second.period_start == datetime.fromtimestamp(invoice["lines"]["data"][0]["period"]["start"], tz=UTC)
    assert second.period_start == first.period_end
    assert second.paid_at == T0 + timedelta(days=36)
    (grant,) = grants_of(second)
    assert grant.source == EntrySource.RENEWAL and grant.quantity == 4
    assert grant.expires_at == expiry_for(second.period_start, 1, "months")
    plan.refresh_from_db()
    assert plan.current_period_start == second.period_start and plan.status == SubscriptionStatus.ACTIVE
    assert_ledger_ok()


def test_a_failed_renewal_issues_nothing_tells_client_and_staff_once_then_late_success_issues(
    client, client_a, monthly, massage, manager, django_capture_on_commit_callbacks,
):
    with time_machine.travel(T0, tick=False) as clock:
        plan = start_plan(client_a, monthly)
        pay_checkout(client, plan, django_capture_on_commit_callbacks)
        clock.move_to(T0 + timedelta(days=31))
        invoice = stripe_double.renew_subscription(plan.stripe_subscription_id, paid=False)
        post_event(client, failed := event("invoice.payment_failed", invoice["id"]))
        with django_capture_on_commit_callbacks(execute=True):  # the email leaves after commit
            stored = stripe_event_process(StripeEvent.objects.get(event_id=failed["id"]).pk)
        plan.refresh_from_db()

        assert stored.status == StripeEventStatus.PROCESSED
        (sent,) = mail.outbox
        assert sent.to == ["ada@example.com"] and "Monthly four" in sent.subject
        assert "did not go through" in sent.body and "We will retry the payment automatically" in sent.body
        assert invoice["hosted_invoice_url"] in sent.body
        cycle = plan.cycles.get(cycle_number=2)
        assert cycle.status == PurchaseStatus.PENDING and not grants_of(cycle)
        assert plan.status == SubscriptionStatus.PAST_DUE
        row = Invoice.objects.get(purchase=cycle)
        assert (row.stripe_invoice_id, row.status) == (invoice["id"], InvoiceStatus.OPEN)
        assert row.hosted_invoice_url == invoice["hosted_invoice_url"]
        assert balance(client_a, massage) == 4  # cycle 1's only

        # Stripe's retries fail again (and the same event is redelivered): still told once.
        deliver(client, event("invoice.payment_failed", invoice["id"]), django_capture_on_commit_callbacks)
        deliver(client, event("invoice.payment_failed", invoice["id"]), django_capture_on_commit_callbacks)
        email = EmailLog.objects.get(template="plan_payment_failed")
        assert (email.recipient, email.client, email.related_id) == ("ada@example.com", client_a, cycle.pk)
        note = StaffNotification.objects.get()
        assert note.staff_member == manager and "payment" in note.text and "Monthly four" in note.text
        assert plan.cycles.count() == 2 and Invoice.objects.filter(purchase=cycle).count() == 1

        # Eight days later the client pays on Stripe's page.
        clock.move_to(T0 + timedelta(days=39))
        stripe_double.pay_invoice(invoice["id"])
        paid = deliver(client, event("invoice.paid", invoice["id"]), django_capture_on_commit_callbacks)

    assert paid.status == StripeEventStatus.PROCESSED
    cycle.refresh_from_db()
    plan.refresh_from_db()
    assert cycle.status == PurchaseStatus.PAID and plan.status == SubscriptionStatus.ACTIVE
    (grant,) = grants_of(cycle)
    assert grant.expires_at == expiry_for(cycle.period_start, 1, "months")  # the cycle's start, not day 39
    assert Invoice.objects.get(purchase=cycle).status == InvoiceStatus.PAID
    assert cycle.stripe_payment_intent_id == Payment.objects.get(purchase=cycle).reference
    assert balance(client_a, massage) == 8
    assert EmailLog.objects.filter(template="plan_payment_failed").count() == 1
    assert_ledger_ok()


@pytest.mark.parametrize("plan_staff, told", [("coach", {"coach"}), (None, {"manager", "finance"})])
def test_a_failed_payment_tells_the_plans_staff_member_or_else_managers_and_finance(
    client, client_a, monthly, coach, manager, django_user_model, django_capture_on_commit_callbacks,
    plan_staff, told,
):
    user = django_user_model.objects.create_user("fin", "fin@example.com", "pw-fin-123", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE))
    staff = {"coach": coach, "manager": manager,
             "finance": StaffMember.objects.create(user=user, display_name="Fin Ance")}
    plan = start_plan(client_a, monthly, staff_member=staff.get(plan_staff))
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    renew(client, plan, django_capture_on_commit_callbacks, paid=False)

    assert set(StaffNotification.objects.values_list("staff_member", flat=True)) == {staff[n].pk for n in told}


# --- Free trial -----------------------------------------------------------------------------------


def test_no_credits_during_the_free_trial_then_credits_with_the_first_paid_cycle(
    client, client_a, make_pack, massage, django_capture_on_commit_callbacks,
):
    pack = make_pack(
        [(massage, False, 4)], name="Trial monthly", price=Decimal("60.00"), is_recurring=True,
        recurring_collection="auto_debit", billing_interval="month", recurs_when="pack_expires",
        validity_amount=1, validity_unit="months", free_trial_days=14,
    )
    with time_machine.travel(T0, tick=False) as clock:
        plan = start_plan(client_a, pack)
        assert stripe_double.load(plan.stripe_checkout_session_id)["amount_total"] == 0
        completed, trial_invoice = pay_checkout(client, plan, django_capture_on_commit_callbacks)

        sub = stripe_sub(plan)
        assert (completed.status, trial_invoice.status) == (StripeEventStatus.PROCESSED, StripeEventStatus.PROCESSED)
        assert plan.status == SubscriptionStatus.TRIALING
        assert plan.trial_ends_at == datetime.fromtimestamp(sub["trial_end"], tz=UTC) == T0 + timedelta(days=14)
        assert not plan.cycles.exists() and not CreditGrant.objects.exists()

        clock.move_to(T0 + timedelta(days=14))
        invoice, stored = renew(client, plan, django_capture_on_commit_callbacks)

    assert stored.status == StripeEventStatus.PROCESSED
    cycle = plan.cycles.get()
    assert (cycle.cycle_number, cycle.status) == (1, PurchaseStatus.PAID)
    assert cycle.period_start == T0 + timedelta(days=14)
    (grant,) = grants_of(cycle)
    assert grant.source == EntrySource.PURCHASE and grant.expires_at == expiry_for(cycle.period_start, 1, "months")
    assert plan.status == SubscriptionStatus.ACTIVE and balance(client_a, massage) == 4
    assert_ledger_ok()


# --- Delayed activation --------------------------------------------------------------------------


def test_delayed_activation_issues_every_paid_cycle_with_its_own_dates_even_one_already_expired(
    client, client_a, monthly, massage, staff_user, django_capture_on_commit_callbacks,
):
    with time_machine.travel(T0, tick=False) as clock:
        plan = start_plan(client_a, monthly, activate=False)
        pay_checkout(client, plan, django_capture_on_commit_callbacks)
        clock.move_to(T0 + timedelta(days=31))
        renew(client, plan, django_capture_on_commit_callbacks)

        first, second = plan.cycles.order_by("cycle_number")
        assert first.status == second.status == PurchaseStatus.PAID
        assert not CreditGrant.objects.exists()  # paid, not activated: nothing yet

        clock.move_to(T0 + timedelta(days=45))  # cycle 1's credits ended around day 31
        issued = subscription_activate(subscription=plan, actor=staff_user)

    old, current = sorted(issued, key=lambda g: g.purchase.cycle_number)
    old.refresh_from_db()
    current.refresh_from_db()
    assert old.expires_at == expiry_for(first.period_start, 1, "months")
    assert current.expires_at == expiry_for(second.period_start, 1, "months")
    assert (old.state, old.remaining) == (GrantState.EXPIRED, 0)
    assert (current.state, current.remaining) == (GrantState.ACTIVE, 4)
    kinds = list(LedgerEntry.objects.filter(grant=old).order_by("pk").values_list("kind", flat=True))
    assert kinds == [EntryKind.ISSUED, EntryKind.EXPIRED]  # both visible in the history
    assert balance(client_a, massage) == 4
    assert_ledger_ok()


# --- Snapshot, duplicates, order, mismatch -----------------------------------------------------


def test_editing_the_pack_after_the_sale_changes_nothing_for_the_plans_next_cycles(
    client, client_a, monthly, massage, physio, staff_user, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    pack_update(pack=monthly, actor=staff_user, name="Monthly physio", validity_amount=2,
                lines=[LineData(physio, False, 9)])

    renew(client, plan, django_capture_on_commit_callbacks)

    second = plan.cycles.get(cycle_number=2)
    (grant,) = grants_of(second)
    assert (grant.session_type, grant.quantity) == (massage, 4)
    assert grant.expires_at == expiry_for(second.period_start, 1, "months")
    assert second.snapshot["name"] == "Monthly four" and second.price == Decimal("60.00")
    assert balance(client_a, physio) == 0 and balance(client_a, massage) == 8
    assert_ledger_ok()


def test_events_out_of_order_and_twice_apply_once(client, client_a, monthly, massage, django_capture_on_commit_callbacks):
    plan = start_plan(client_a, monthly)
    # invoice.paid overtakes checkout.session.completed: the plan is found by the metadata.
    paid, completed = pay_checkout(client, plan, django_capture_on_commit_callbacks, invoice_first=True)
    assert (paid.status, completed.status) == (StripeEventStatus.PROCESSED, StripeEventStatus.PROCESSED)
    assert plan.status == SubscriptionStatus.ACTIVE and plan.stripe_subscription_id == stripe_sub(plan)["id"]

    # Stripe sends both again, under new event ids (as after a timeout on our side).
    first_invoice = stripe_sub(plan)["latest_invoice"]
    deliver(client, event("invoice.paid", first_invoice), django_capture_on_commit_callbacks)
    deliver(client, event("checkout.session.completed", plan.stripe_checkout_session_id),
            django_capture_on_commit_callbacks)
    # A renewal that failed then succeeded, its events processed in reverse order.
    invoice = stripe_double.renew_subscription(plan.stripe_subscription_id, paid=False)
    stripe_double.pay_invoice(invoice["id"])
    late_paid = deliver(client, event("invoice.paid", invoice["id"]), django_capture_on_commit_callbacks)
    late_failed = deliver(client, event("invoice.payment_failed", invoice["id"]), django_capture_on_commit_callbacks)

    assert (late_paid.status, late_failed.status) == (StripeEventStatus.PROCESSED, StripeEventStatus.PROCESSED)
    assert list(plan.cycles.order_by("cycle_number").values_list("cycle_number", "status")) == [
        (1, PurchaseStatus.PAID), (2, PurchaseStatus.PAID),
    ]
    assert Payment.objects.count() == 2 and Invoice.objects.count() == 2
    assert CreditGrant.objects.count() == 2 and balance(client_a, massage) == 8
    assert not EmailLog.objects.filter(template="plan_payment_failed").exists()  # paid by then
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE
    assert_ledger_ok()


def test_an_invoice_for_another_amount_applies_nothing_and_says_why(
    client, client_a, monthly, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly, unit_amount=100)  # £1.00 in Stripe, £60.00 here

    _completed, paid = pay_checkout(client, plan, django_capture_on_commit_callbacks)

    assert paid.status == StripeEventStatus.FAILED
    assert "Stripe took 100 GBP" in paid.last_error and "costs 6000 GBP" in paid.last_error
    assert not Purchase.objects.exists() and not Payment.objects.exists() and not Invoice.objects.exists()
    assert not CreditGrant.objects.exists()
    assert_ledger_ok()


def test_an_event_about_a_plan_that_does_not_exist_is_a_mismatch(
    client, client_a, monthly, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    stripe_double.complete_checkout(plan.stripe_checkout_session_id)
    session = stripe_double.load(plan.stripe_checkout_session_id)
    session["metadata"] = {"subscription_id": "999999"}
    stripe_double.save(session)

    stored = deliver(client, event("checkout.session.completed", session["id"]), django_capture_on_commit_callbacks)

    assert stored.status == StripeEventStatus.FAILED and "plan #999999, which does not exist" in stored.last_error


# --- Pause, resume and cancel, both ways -----------------------------------------------------------


def test_pause_resume_and_cancel_are_pushed_to_stripe_idempotently(
    client, client_a, monthly, staff_user, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    until = timezone.now() + timedelta(days=20)

    subscription_pause(subscription=plan, until=until, actor=staff_user, reason="Injury")
    assert "paused in Stripe" in subscription_push_to_stripe(plan.pk)
    assert "already paused" in subscription_push_to_stripe(plan.pk)  # the job ran twice
    assert stripe_sub(plan)["pause_collection"] == {"behavior": "void", "resumes_at": int(until.timestamp())}
    # Stripe's own event about the pause changes nothing here (ours is already paused).
    deliver(client, event("customer.subscription.updated", plan.stripe_subscription_id),
            django_capture_on_commit_callbacks)
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.PAUSED and plan.paused_until == until

    subscription_resume(subscription=plan, actor=staff_user)
    assert "resumed in Stripe" in subscription_push_to_stripe(plan.pk)
    assert not stripe_sub(plan)["pause_collection"]
    assert "already matches" in subscription_push_to_stripe(plan.pk)

    subscription_cancel(subscription=plan, actor=staff_user, reason="Moving away")
    assert "cancelled in Stripe" in subscription_push_to_stripe(plan.pk)
    assert stripe_sub(plan)["status"] == "canceled"
    assert "already cancelled" in subscription_push_to_stripe(plan.pk)
    stored = deliver(client, event("customer.subscription.deleted", plan.stripe_subscription_id),
                     django_capture_on_commit_callbacks)
    plan.refresh_from_db()
    assert stored.status == StripeEventStatus.PROCESSED
    assert (plan.status, plan.cancel_reason) == (SubscriptionStatus.CANCELLED, "Moving away")
    assert_ledger_ok()


def test_a_cancel_in_stripe_cancels_the_plan_and_touches_no_credits(
    client, client_a, monthly, massage, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    stripe_client().v1.subscriptions.cancel(plan.stripe_subscription_id)

    stored = deliver(client, event("customer.subscription.deleted", plan.stripe_subscription_id),
                     django_capture_on_commit_callbacks)

    plan.refresh_from_db()
    assert stored.status == StripeEventStatus.PROCESSED
    assert (plan.status, plan.cancel_reason) == (SubscriptionStatus.CANCELLED, "cancelled in Stripe")
    assert balance(client_a, massage) == 4 and CreditGrant.objects.get().state == GrantState.ACTIVE
    assert_ledger_ok()


def test_a_renewal_stripe_charged_after_our_cancel_is_still_paid(
    client, client_a, monthly, massage, staff_user, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    subscription_cancel(subscription=plan, actor=staff_user, reason="Moving away")
    # Stripe renewed before the push job told it: the money is in, so the cycle is paid.
    invoice, stored = renew(client, plan, django_capture_on_commit_callbacks)

    assert stored.status == StripeEventStatus.PROCESSED
    cycle = plan.cycles.get(cycle_number=2)
    assert cycle.status == PurchaseStatus.PAID and len(grants_of(cycle)) == 1
    assert plan.status == SubscriptionStatus.CANCELLED
    assert_ledger_ok()


def test_a_pause_made_in_stripe_pauses_the_plan_until_stripe_resumes_it(
    client, client_a, monthly, django_capture_on_commit_callbacks,
):
    plan = start_plan(client_a, monthly)
    pay_checkout(client, plan, django_capture_on_commit_callbacks)
    resumes_at = int((timezone.now() + timedelta(days=10)).timestamp())
    stripe_client().v1.subscriptions.update(
        plan.stripe_subscription_id, params={"pause_collection": {"behavior": "void", "resumes_at": resumes_at}},
    )

    stored = deliver(client, event("customer.subscription.updated", plan.stripe_subscription_id),
                     django_capture_on_commit_callbacks)

    plan.refresh_from_db()
    assert stored.status == StripeEventStatus.PROCESSED
    assert plan.status == SubscriptionStatus.PAUSED
    assert plan.paused_until == datetime.fromtimestamp(resumes_at, tz=UTC)
    # Our state now matches Stripe's: the push job has nothing to do.
    assert "already paused" in subscription_push_to_stripe(plan.pk)
