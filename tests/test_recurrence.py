"""Invoice-mode recurring plans: when the next cycle opens ("recurs when", seed 001) and its bill.

The clock is moved with time_machine; Stripe is the double behind the real SDK; the invoice is
paid the way Stripe tells us (a signed invoice.paid webhook).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone

from catalog.validity import expiry_for
from core.bookings import booking_create
from core.models import EmailLog
from ledger.integrity import ledger_check
from ledger.models import CreditGrant, EntryKind, EntrySource, LedgerEntry
from payments import stripe_double
from payments.models import (
    Invoice,
    InvoiceStatus,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    Subscription,
    SubscriptionStatus,
)
from payments.recurrence import subscription_cycles_due, subscription_cycles_open_due
from payments.services import payment_record
from payments.subscriptions import subscription_cancel, subscription_create, subscription_pause
from tests.test_webhooks import deliver

pytestmark = pytest.mark.django_db

LONDON = ZoneInfo("Europe/London")
START = datetime(2025, 3, 3, 10, 0, tzinfo=LONDON)  # a Monday, well clear of the DST change


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_tests"
    settings.STRIPE_WEBHOOK_TOLERANCE = 300


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@pytest.fixture
def plan_pack(make_pack, massage):
    def make(recurs_when="pack_expires", *, credits=4, unlimited=False, **fields):
        defaults = dict(
            price=Decimal("80.00"), is_recurring=True, billing_interval="month",
            billing_interval_count=1, recurs_when=recurs_when, recurring_collection="invoice",
            validity_amount=1, validity_unit="months", minimum_commitment=3,
        )
        defaults.update(fields)
        return make_pack([(massage, unlimited, None if unlimited else credits, 1, "months")], **defaults)

    return make


@pytest.fixture
def paid_plan(plan_pack, client_a, staff_user):
    """A plan sold now with cycle 1 paid at the desk (its credits issued from now)."""

    def make(recurs_when="pack_expires", **fields) -> Subscription:
        plan = subscription_create(client=client_a, pack=plan_pack(recurs_when, **fields), actor=staff_user)
        cycle = plan.cycles.get()
        payment_record(purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=staff_user)
        plan.refresh_from_db()
        return plan

    return make


def run(capture, now=None):
    """The job, with its after-commit work (the bill) run as it would be in production."""
    with capture(execute=True):
        return subscription_cycles_open_due(now=now)


def cycles(plan) -> list[Purchase]:
    return list(plan.cycles.order_by("cycle_number"))


def expiry_of(plan) -> datetime:
    return CreditGrant.objects.filter(purchase__subscription=plan).latest("expires_at").expires_at


# --- pack_expires ------------------------------------------------------------------------


def test_pack_expires_opens_the_next_cycle_two_days_before_expiry_not_three(
    clock, paid_plan, django_capture_on_commit_callbacks
):
    plan = paid_plan("pack_expires")
    expires = expiry_of(plan)
    assert expires == expiry_for(START, 1, "months")  # 4 April 00:00, London

    clock.move_to(expires - timedelta(days=3))
    assert run(django_capture_on_commit_callbacks).opened == []
    assert len(cycles(plan)) == 1

    clock.move_to(expires - timedelta(days=2))
    result = run(django_capture_on_commit_callbacks)
    first, second = cycles(plan)
    assert result.opened == [second.pk]
    assert (second.cycle_number, second.status, second.price) == (2, PurchaseStatus.PENDING, Decimal("80.00"))
    # The new credits start where the old ones end.
    assert second.period_start == expires
    assert second.period_end == expiry_for(expires, 1, "months")
    assert second.snapshot == plan.snapshot and second.created_by is None
    plan.refresh_from_db()
    assert (plan.current_period_start, plan.status) == (expires, SubscriptionStatus.ACTIVE)
    assert ledger_check().ok


def test_running_twice_opens_one_cycle_and_sends_one_bill(clock, paid_plan, django_capture_on_commit_callbacks):
    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=2))

    run(django_capture_on_commit_callbacks)
    again = run(django_capture_on_commit_callbacks)
    clock.shift(timedelta(hours=1))
    later = run(django_capture_on_commit_callbacks)

    assert again.opened == [] and later.opened == []
    assert len(cycles(plan)) == 2
    assert Invoice.objects.filter(purchase__subscription=plan).count() == 1
    assert EmailLog.objects.filter(template="plan_payment_due").count() == 1


def test_an_unpaid_latest_cycle_gets_no_second_bill(clock, plan_pack, client_a, staff_user,
                                                   django_capture_on_commit_callbacks):
    plan = subscription_create(client=client_a, pack=plan_pack("pack_expires"), actor=staff_user)
    end = plan.cycles.get().period_end

    clock.move_to(end + timedelta(days=20))
    assert run(django_capture_on_commit_callbacks).opened == []
    assert len(cycles(plan)) == 1


def test_a_cancelled_plan_gets_nothing(clock, paid_plan, staff_user, django_capture_on_commit_callbacks):
    plan = paid_plan("pack_expires")
    subscription_cancel(subscription=plan, actor=staff_user, reason="moving away")

    clock.move_to(expiry_of(plan) - timedelta(days=1))
    assert run(django_capture_on_commit_callbacks).opened == []
    assert len(cycles(plan)) == 1
    assert not Invoice.objects.exists()


# --- no_credits_remain -----------------------------------------------------------------------


@pytest.fixture
def book(session_at, client_a, staff_user):
    def do(starts_at):
        return booking_create(client=client_a, session=session_at(starts_at), actor=staff_user)

    return do


def test_no_credits_remain_opens_one_day_after_the_last_session_that_used_the_last_credit(
    clock, paid_plan, book, django_capture_on_commit_callbacks
):
    plan = paid_plan("no_credits_remain", credits=2)
    book(START + timedelta(days=2))
    last = book(START + timedelta(days=5))  # 8 March 10:00–11:00
    session_end = last.session.ends_at

    # All credits are booked, but the last session has not happened a day ago yet.
    clock.move_to(session_end + timedelta(hours=12))  # the same day... and the night after
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(session_end + timedelta(days=1) - timedelta(minutes=1))
    assert run(django_capture_on_commit_callbacks).opened == []

    clock.move_to(session_end + timedelta(days=1))
    result = run(django_capture_on_commit_callbacks)
    second = cycles(plan)[1]
    assert result.opened == [second.pk]
    assert second.period_start == session_end + timedelta(days=1)  # now: the new pack starts at once
    assert ledger_check().ok


def test_a_use_given_back_does_not_count_as_the_last_session(
    clock, paid_plan, book, session_at, client_a, staff_user, django_capture_on_commit_callbacks
):
    from core.bookings import booking_cancel

    paid_plan("no_credits_remain", credits=1)
    far = book(START + timedelta(days=20))
    booking_cancel(booking=far, actor=staff_user)  # in time: the credit comes back
    near = book(START + timedelta(days=3))

    clock.move_to(near.session.ends_at + timedelta(days=1))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1


def test_no_credits_remain_falls_back_to_two_days_before_expiry_while_credits_remain(
    clock, paid_plan, book, django_capture_on_commit_callbacks
):
    plan = paid_plan("no_credits_remain", credits=3)
    book(START + timedelta(days=2))
    expires = expiry_of(plan)

    clock.move_to(expires - timedelta(days=3))
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(expires - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1
    assert cycles(plan)[1].period_start == expires


def test_an_unlimited_line_never_runs_out(clock, paid_plan, book, django_capture_on_commit_callbacks):
    plan = paid_plan("no_credits_remain", unlimited=True)
    session = book(START + timedelta(days=1)).session

    clock.move_to(session.ends_at + timedelta(days=2))
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(expiry_of(plan) - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1


# --- Pause and trial -----------------------------------------------------------------------


def test_a_paused_plan_gets_no_cycle_its_expiry_moves_and_it_resumes_when_the_date_passes(
    clock, paid_plan, staff_user, django_capture_on_commit_callbacks
):
    plan = paid_plan("pack_expires")
    expires = expiry_of(plan)
    clock.move_to(START + timedelta(days=10))
    until = timezone.now() + timedelta(days=30)  # 12 April, after the old expiry (4 April)
    subscription_pause(subscription=plan, until=until, actor=staff_user, reason="injury")

    moved = expiry_of(plan)
    assert moved == expires + timedelta(days=30)
    entry = LedgerEntry.objects.get(kind=EntryKind.ADJUSTED, grant__purchase__subscription=plan)
    assert entry.amount == 0 and "paused" in entry.note and "expiry moved" in entry.note

    clock.move_to(expires - timedelta(days=2))  # the old date: paused, then not due any more
    assert run(django_capture_on_commit_callbacks).opened == []
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.PAUSED

    clock.move_to(until)
    result = run(django_capture_on_commit_callbacks)
    plan.refresh_from_db()
    assert result.resumed == [plan.pk] and result.opened == []
    assert plan.status == SubscriptionStatus.ACTIVE and plan.paused_until is None
    assert expiry_of(plan) == moved  # resumed on time: the days of pause are kept

    clock.move_to(moved - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1
    assert cycles(plan)[1].period_start == moved
    assert ledger_check().ok


def test_a_trial_opens_cycle_one_when_it_ends(clock, plan_pack, client_a, staff_user,
                                             django_capture_on_commit_callbacks):
    plan = subscription_create(client=client_a, pack=plan_pack("pack_expires", free_trial_days=7), actor=staff_user)
    assert plan.status == SubscriptionStatus.TRIALING and not plan.cycles.exists()

    clock.move_to(plan.trial_ends_at - timedelta(minutes=1))
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(plan.trial_ends_at + timedelta(minutes=5))
    result = run(django_capture_on_commit_callbacks)
    first = plan.cycles.get()
    plan.refresh_from_db()
    assert result.opened == [first.pk]
    assert (first.cycle_number, first.period_start) == (1, plan.trial_ends_at)
    assert plan.status == SubscriptionStatus.PENDING  # the trial is over: awaiting the first payment
    assert CreditGrant.objects.filter(client=client_a).count() == 0  # no credits during the trial
    assert Invoice.objects.get(purchase=first).amount == first.price
    assert run(django_capture_on_commit_callbacks).opened == []  # once


# --- The bill ------------------------------------------------------------------------------


def test_the_due_list_is_one_query_whatever_the_number_of_plans(
    clock, paid_plan, django_assert_num_queries
):
    for _ in range(3):
        paid_plan("no_credits_remain")
    with django_assert_num_queries(1):
        assert list(subscription_cycles_due(timezone.now())) == []


def test_the_new_cycle_is_invoiced_in_stripe_for_its_price_and_the_client_emailed_once(
    clock, paid_plan, client_a, django_capture_on_commit_callbacks, mailoutbox
):
    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=2))
    run(django_capture_on_commit_callbacks)
    second = cycles(plan)[1]

    invoice = Invoice.objects.get(purchase=second)
    assert (invoice.kind, invoice.status, invoice.amount, invoice.currency, invoice.error) == (
        "stripe", InvoiceStatus.OPEN, Decimal("80.00"), "GBP", "",
    )
    in_stripe = stripe_double.load(invoice.stripe_invoice_id, "invoice")
    assert (in_stripe["amount_due"], in_stripe["currency"], in_stripe["status"]) == (8000, "gbp", "open")
    assert in_stripe["collection_method"] == "send_invoice"
    assert in_stripe["metadata"] == {"purchase_id": str(second.pk), "invoice_id": str(invoice.pk)}

    log = EmailLog.objects.get(template="plan_payment_due")
    assert (log.recipient, log.status, log.related_id) == ("ada@example.com", "sent", second.pk)
    sent = mailoutbox[-1]
    assert "80.00 GBP" in sent.body and invoice.hosted_invoice_url in sent.body
    assert invoice.number in sent.body and "added as soon as it is paid" in sent.body
    assert f"{timezone.localtime(invoice.due_at):%-d %B %Y}" in sent.body


def test_paying_the_invoice_issues_the_cycle_credits_dated_from_the_cycle_start(
    clock, client, paid_plan, client_a, massage, django_capture_on_commit_callbacks
):
    plan = paid_plan("pack_expires")
    old_expiry = expiry_of(plan)
    clock.move_to(old_expiry - timedelta(days=2))
    run(django_capture_on_commit_callbacks)
    second = cycles(plan)[1]
    invoice = Invoice.objects.get(purchase=second)

    clock.move_to(old_expiry + timedelta(days=5))  # paid a week later than it was billed
    paid = stripe_double.pay_invoice(invoice.stripe_invoice_id)
    stored = deliver(client, stripe_double.build_event("invoice.paid", paid), django_capture_on_commit_callbacks)

    assert stored.status == "processed", stored.last_error
    second.refresh_from_db()
    invoice.refresh_from_db()
    assert second.status == PurchaseStatus.PAID and invoice.status == InvoiceStatus.PAID
    grant = CreditGrant.objects.get(purchase=second)
    assert (grant.source, grant.quantity) == (EntrySource.RENEWAL, 4)
    assert grant.valid_from == second.period_start == old_expiry  # the cycle's start, not the payment
    assert grant.expires_at == expiry_for(old_expiry, 1, "months")
    assert ledger_check().ok

    # Paid: the plan recurs again from the new credits' expiry.
    clock.move_to(grant.expires_at - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1
    assert cycles(plan)[2].period_start == grant.expires_at


def test_a_stripe_refusal_is_kept_on_the_invoice_and_the_client_is_still_told(
    clock, paid_plan, monkeypatch, django_capture_on_commit_callbacks, mailoutbox
):
    import stripe

    from payments import invoice_stripe

    def refuse(*args, **kwargs):
        raise stripe.InvalidRequestError("No such customer", param="customer")

    monkeypatch.setattr(invoice_stripe, "_issue_in_stripe", refuse)
    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=2))
    run(django_capture_on_commit_callbacks)

    invoice = Invoice.objects.get(purchase=cycles(plan)[1])
    assert invoice.status == InvoiceStatus.DRAFT and "Stripe refused" in invoice.error
    assert EmailLog.objects.filter(template="plan_payment_due").count() == 1
    assert "pay at the front desk" in mailoutbox[-1].body


def test_a_cycle_left_unbilled_by_a_crash_is_billed_by_the_next_run(
    clock, paid_plan, django_capture_on_commit_callbacks
):
    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=2))
    with django_capture_on_commit_callbacks(execute=False):  # the process dies before the bill
        subscription_cycles_open_due()
    second = cycles(plan)[1]
    assert not Invoice.objects.filter(purchase=second).exists()

    clock.shift(timedelta(hours=1))
    run(django_capture_on_commit_callbacks)
    assert Invoice.objects.filter(purchase=second).count() == 1
    assert EmailLog.objects.filter(template="plan_payment_due", related_id=second.pk).count() == 1


def test_the_hourly_job_is_scheduled_and_runs_the_recurrence(clock, paid_plan, django_capture_on_commit_callbacks):
    from config.schedule import SCHEDULE, load_actor

    job = next(j for j in SCHEDULE if j.actor_path == "payments.tasks.open_due_plan_cycles")
    assert job.cron == "23 * * * *"
    actor = load_actor(job.actor_path)
    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert actor.fn() == "0 plans resumed, 1 cycles opened, 0 skipped"
    assert len(cycles(plan)) == 2 and Invoice.objects.count() == 1


def test_a_plan_waiting_for_activation_recurs_by_its_cycle_dates(
    clock, plan_pack, client_a, staff_user, django_capture_on_commit_callbacks
):
    plan = subscription_create(client=client_a, pack=plan_pack("no_credits_remain"), actor=staff_user, activate=False)
    first = plan.cycles.get()
    payment_record(purchase=first, method=PaymentMethod.CASH, amount=first.price, actor=staff_user)
    assert not CreditGrant.objects.exists()  # paid, not activated: no credits yet

    clock.move_to(first.period_end - timedelta(days=3))
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(first.period_end - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1
    assert cycles(plan)[1].period_start == first.period_end


def test_a_voided_cycle_is_skipped_and_the_next_opens_on_time(
    clock, paid_plan, staff_user, django_capture_on_commit_callbacks
):
    from payments.invoices import invoice_void

    plan = paid_plan("pack_expires")
    clock.move_to(expiry_of(plan) - timedelta(days=2))
    run(django_capture_on_commit_callbacks)
    second = cycles(plan)[1]
    invoice_void(invoice=Invoice.objects.get(purchase=second), actor=staff_user, reason="away that month")
    second.refresh_from_db()
    assert second.status == PurchaseStatus.CANCELLED
    assert stripe_double.load(Invoice.objects.get(purchase=second).stripe_invoice_id)["status"] == "void"

    clock.move_to(second.period_end - timedelta(days=3))
    assert run(django_capture_on_commit_callbacks).opened == []
    clock.move_to(second.period_end - timedelta(days=2))
    assert len(run(django_capture_on_commit_callbacks).opened) == 1
    assert cycles(plan)[2].period_start == second.period_end


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_open_one_cycle_and_send_one_bill(paid_plan):
    import threading

    from django.db import connection

    plan = paid_plan("pack_expires")
    at = expiry_of(plan) - timedelta(days=1)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def job() -> None:
        try:
            barrier.wait()
            subscription_cycles_open_due(now=at)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert [c.cycle_number for c in cycles(plan)] == [1, 2]
    assert Invoice.objects.filter(purchase__subscription=plan).count() == 1
    assert EmailLog.objects.filter(template="plan_payment_due").count() == 1
