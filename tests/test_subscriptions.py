"""Recurring plans at the service level: cycles, validity from the cycle start, delayed
activation, the snapshot, pausing (expiry moved) and the minimum commitment (seeds 001, 002).

Stripe-driven plans (auto-debit) are in tests/test_subscriptions_stripe.py; "recurs when" in
tests/test_recurrence.py. Here cycles are opened and paid at the desk, which is the same path
an emailed invoice's payment takes once it arrives.
"""
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.utils import timezone

from catalog.services import pack_update
from catalog.validation import LineData
from catalog.validity import expiry_for
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, EntrySource, GrantState, LedgerEntry
from payments.exceptions import PackNotForSale
from payments.models import PaymentMethod, PurchaseStatus, SubscriptionStatus
from payments.services import payment_record
from payments.subscriptions import (
    CommitmentNotMet,
    SubscriptionError,
    client_may_cancel,
    cycle_open,
    payments_made,
    payments_remaining,
    subscription_activate,
    subscription_cancel,
    subscription_create,
    subscription_pause,
    subscription_resume,
)

pytestmark = pytest.mark.django_db
LONDON = ZoneInfo("Europe/London")


def at(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


@pytest.fixture
def monthly(make_pack, massage):
    """8 massages a month, valid one month, paid by invoice, at least 3 payments."""
    return make_pack(
        [(massage, False, 8)], name="Monthly 8", price=Decimal("400.00"), validity_amount=1,
        validity_unit="months", is_recurring=True, recurring_collection="invoice",
        billing_interval="month", recurs_when="pack_expires", minimum_commitment=3,
    )


def pay(cycle, staff_user, when=None):
    return payment_record(
        purchase=cycle, method=PaymentMethod.CASH, amount=cycle.price, actor=staff_user,
        received_at=when,
    )


def test_only_a_published_recurring_pack_makes_a_plan(make_pack, massage, client_a, staff_user):
    one_off = make_pack([(massage, False, 5)], name="Five")
    with pytest.raises(PackNotForSale, match="not a recurring pack"):
        subscription_create(client=client_a, pack=one_off, actor=staff_user)
    assert not client_a.subscriptions.exists()


def test_an_invoice_plan_opens_its_first_cycle_priced_and_snapshotted(monthly, client_a, staff_user):
    with time_machine.travel(at(2026, 3, 10, 9), tick=False):
        plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)

    cycle = plan.cycles.get()
    assert (plan.status, plan.collection, plan.minimum_commitment) == (SubscriptionStatus.PENDING, "invoice", 3)
    assert (cycle.cycle_number, cycle.status, cycle.price) == (1, PurchaseStatus.PENDING, Decimal("400.00"))
    assert cycle.period_start == at(2026, 3, 10, 9)
    assert cycle.period_end == expiry_for(at(2026, 3, 10, 9), 1, "months") == at(2026, 4, 11)
    assert cycle.snapshot == plan.snapshot and plan.snapshot["recurring"]["collection"] == "invoice"
    # The same cycle asked for twice is one purchase.
    assert cycle_open(subscription=plan, cycle_number=1, period_start=at(2026, 3, 12)).pk == cycle.pk


def test_credits_paid_late_still_count_from_the_cycle_start(monthly, client_a, massage, staff_user):
    with time_machine.travel(at(2026, 3, 10, 9), tick=False):
        plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)
    with time_machine.travel(at(2026, 3, 25, 15), tick=False):
        pay(plan.cycles.get(), staff_user)

    grant = CreditGrant.objects.get(purchase__subscription=plan)
    assert grant.valid_from == at(2026, 3, 10, 9)
    assert grant.expires_at == at(2026, 4, 11)  # from 10 March, not from the payment on 25 March
    assert balance(client_a, massage) == 8
    assert grant.entries.get().source == EntrySource.PURCHASE
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE
    assert_ledger_ok()


def test_a_later_cycle_issues_as_renewal_from_the_snapshot_not_the_edited_pack(
    monthly, client_a, massage, staff_user
):
    with time_machine.travel(at(2026, 3, 10, 9), tick=False):
        plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)
        pay(plan.cycles.get(), staff_user)
    pack_update(pack=monthly, actor=staff_user, price=Decimal("450.00"), lines=[LineData(massage, False, 4)])

    with time_machine.travel(at(2026, 4, 9, 9), tick=False):
        second = cycle_open(subscription=plan, cycle_number=2, period_start=at(2026, 4, 11))
        pay(second, staff_user)

    assert second.price == Decimal("400.00")
    grant = CreditGrant.objects.get(purchase=second)
    assert (grant.quantity, grant.source) == (8, EntrySource.RENEWAL)
    assert grant.valid_from == at(2026, 4, 11) and grant.expires_at == at(2026, 5, 12)
    assert balance(client_a, massage) == 16
    plan.refresh_from_db()
    assert plan.current_period_start == at(2026, 4, 11)
    assert_ledger_ok()


def test_delayed_activation_issues_every_paid_cycle_with_its_own_dates(monthly, client_a, massage, staff_user):
    with time_machine.travel(at(2026, 1, 5, 10), tick=False):
        plan = subscription_create(client=client_a, pack=monthly, actor=staff_user, activate=False)
        pay(plan.cycles.get(), staff_user)
    with time_machine.travel(at(2026, 3, 1, 10), tick=False):
        second = cycle_open(subscription=plan, cycle_number=2, period_start=at(2026, 3, 1, 10))
        pay(second, staff_user)

    assert not CreditGrant.objects.filter(client=client_a).exists()
    assert payments_made(plan) == 2

    with time_machine.travel(at(2026, 3, 3, 12), tick=False):
        grants = subscription_activate(subscription=plan, actor=staff_user)

    first, current = sorted(grants, key=lambda g: g.valid_from)
    # Cycle 1 (5 Jan – 5 Feb) ended before activation: issued and expired at once, same day.
    assert first.valid_from == at(2026, 1, 5, 10) and first.expires_at == at(2026, 2, 6)
    assert first.state == GrantState.EXPIRED
    kinds = list(first.entries.order_by("pk").values_list("kind", "amount", "created_at"))
    assert kinds == [
        (EntryKind.ISSUED, 8, at(2026, 3, 3, 12)), (EntryKind.EXPIRED, -8, at(2026, 3, 3, 12)),
    ]
    assert current.expires_at == at(2026, 4, 2) and current.state == GrantState.ACTIVE
    assert balance(client_a, massage) == 8
    with pytest.raises(SubscriptionError, match="was activated on 03 Mar 2026"):
        subscription_activate(subscription=plan, actor=staff_user)
    assert_ledger_ok()


def test_pausing_moves_the_expiry_by_the_pause_and_resuming_early_gives_back_the_rest(
    monthly, client_a, massage, staff_user
):
    with time_machine.travel(at(2026, 3, 10, 9), tick=False):
        plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)
        pay(plan.cycles.get(), staff_user)
    grant = CreditGrant.objects.get(purchase__subscription=plan)
    with time_machine.travel(at(2026, 3, 20, 9), tick=False):
        subscription_pause(subscription=plan, until=at(2026, 4, 3, 9), actor=staff_user, reason="Injury")
    grant.refresh_from_db()
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.PAUSED
    assert grant.expires_at == at(2026, 4, 11) + timedelta(days=14)
    moved = LedgerEntry.objects.get(grant=grant, kind=EntryKind.ADJUSTED)
    assert moved.amount == 0 and "paused until 03 Apr 2026" in moved.note

    with time_machine.travel(at(2026, 3, 27, 9), tick=False):
        subscription_resume(subscription=plan, actor=staff_user)
    grant.refresh_from_db()
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE and plan.paused_until is None
    assert grant.expires_at == at(2026, 4, 11) + timedelta(days=7)  # paused 7 of the 14 days
    assert balance(client_a, massage) == 8
    assert_ledger_ok()


@pytest.mark.parametrize("until_days, message", [(-1, "in the future"), (400, "at most 365 days")])
def test_a_bad_pause_changes_nothing(monthly, client_a, staff_user, until_days, message):
    plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)
    pay(plan.cycles.get(), staff_user)
    plan.refresh_from_db()
    with pytest.raises(SubscriptionError, match=message):
        subscription_pause(
            subscription=plan, until=timezone.now() + timedelta(days=until_days), actor=staff_user,
            reason="Holiday",
        )
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE and plan.paused_at is None


def test_the_client_cannot_cancel_before_the_minimum_payments_but_staff_can(
    monthly, client_a, client_b, staff_user
):
    plan = subscription_create(client=client_a, pack=monthly, actor=staff_user)
    pay(plan.cycles.get(), staff_user)
    assert (payments_made(plan), payments_remaining(plan), client_may_cancel(plan)) == (1, 2, False)
    with pytest.raises(CommitmentNotMet, match="minimum of 3 payments: 1 made, 2 to go"):
        subscription_cancel(subscription=plan, actor=None, reason="Moving away", by_client=True)
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.ACTIVE

    for number in (2, 3):
        start = timezone.now() + timedelta(days=31 * (number - 1))
        pay(cycle_open(subscription=plan, cycle_number=number, period_start=start), staff_user)
    assert client_may_cancel(plan)
    subscription_cancel(subscription=plan, actor=None, reason="Moving away", by_client=True)
    plan.refresh_from_db()
    assert plan.status == SubscriptionStatus.CANCELLED and plan.cancel_reason == "Moving away"
    with pytest.raises(SubscriptionError, match="cancelled: no new cycle"):
        cycle_open(subscription=plan, cycle_number=4, period_start=timezone.now() + timedelta(days=100))

    other = subscription_create(client=client_b, pack=monthly, actor=staff_user)
    subscription_cancel(subscription=other, actor=staff_user, reason="Agreed with the manager")
    other.refresh_from_db()
    assert other.status == SubscriptionStatus.CANCELLED
    # Issued credits stay with the client after a cancellation.
    assert CreditGrant.objects.filter(client=client_a, state=GrantState.ACTIVE).count() == 3


def test_a_free_trial_invoice_plan_opens_no_cycle_until_the_trial_ends(make_pack, massage, client_a, staff_user):
    pack = make_pack(
        [(massage, False, 4)], name="Trial plan", is_recurring=True, recurring_collection="invoice",
        billing_interval="month", recurs_when="pack_expires", free_trial_days=14,
    )
    with time_machine.travel(at(2026, 3, 10, 9), tick=False):
        plan = subscription_create(client=client_a, pack=pack, actor=staff_user)
    assert plan.status == SubscriptionStatus.TRIALING
    assert plan.trial_ends_at == at(2026, 3, 24, 9)
    assert not plan.cycles.exists() and not CreditGrant.objects.filter(client=client_a).exists()


def test_an_auto_debit_plan_waits_for_stripe(make_pack, massage, client_a, staff_user):
    pack = make_pack(
        [(massage, False, 4)], name="Card plan", is_recurring=True, recurring_collection="auto_debit",
        billing_interval="month", recurs_when="pack_expires",
    )
    plan = subscription_create(client=client_a, pack=pack, actor=staff_user)
    assert (plan.status, plan.collection, plan.cycles.count()) == (SubscriptionStatus.PENDING, "auto_debit", 0)
