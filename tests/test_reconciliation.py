"""Reconciliation: a day seeded in Stripe (the test double behind the real SDK) with one of each
mismatch among many matched payments, refunds, a dispute and a payout; the run finds exactly those
five, and each action settles its line with the ledger still consistent (the CSV export is tested
with the admin, tests/test_admin_reconciliation.py).

Everything is paid the way it is in production: online purchases through Checkout and signed
webhook events (tests/test_webhooks.py helpers), desk sales through payments.services.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import stripe
import time_machine
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.utils import timezone

from config import schedule
from core.roles import FINANCE, sync_roles
from ledger.integrity import ledger_check
from ledger.models import CreditGrant, GrantState, LedgerEntry
from payments import stripe_double
from payments.exceptions import PaymentError
from payments.models import (
    LocalStripeObject,
    MismatchKind,
    Payment,
    PaymentMethod,
    Purchase,
    PurchaseStatus,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationStatus,
    Resolution,
)
from payments.online import purchase_confirm_online
from payments.reconciliation import period_of_days, reconciliation_run
from payments.reconciliation_resolve import EXPLAIN, ISSUE_CREDITS, VOID, InvalidResolution, reconciliation_resolve
from payments.refunds import refund_create
from payments.services import payment_record, purchase_create
from payments.stripe_double import DoubleError, StripeDouble
from payments.stripe_gateway import stripe_client
from payments.tasks import ReconciliationFailed, reconcile_stripe_daily
from tests.test_webhooks import balance, deliver, online_purchase, session_event  # noqa: F401

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 10).date()
MANY = 110  # with the rest of the day, more than one page (100) of balance transactions


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_tests"
    settings.STRIPE_WEBHOOK_TOLERANCE = 300


def local(day, hour: int, minute: int = 0) -> datetime:
    return timezone.make_aware(datetime.combine(day, datetime.min.time()).replace(hour=hour, minute=minute))


@pytest.fixture
def finance_user(db, django_user_model):
    sync_roles()
    user = django_user_model.objects.create_user("fin", "fin@example.com", "pw-fin-123", is_staff=True)
    user.groups.add(Group.objects.get(name=FINANCE))
    return user


@pytest.fixture
def pack(make_pack, massage):
    return make_pack([(massage, False, 10)], price=Decimal("30.00"), currency="GBP")


@dataclass
class Seeded:
    matched: list[Purchase] = field(default_factory=list)
    # One purchase per mismatch kind, named after the kind it must be found as.
    paid_no_credits: Purchase | None = None
    credits_no_payment: Purchase | None = None
    amount_differs: Purchase | None = None
    refund_missing: Purchase | None = None
    not_in_stripe: Purchase | None = None
    outside: list[Purchase] = field(default_factory=list)  # paid just before and just after the day

    def expected(self) -> set[tuple[str, int]]:
        return {(kind, getattr(self, kind.value).pk) for kind in MismatchKind}


@pytest.fixture
def paid_online(client, django_capture_on_commit_callbacks):
    """A purchase bought on the public page and paid: Checkout, then Stripe's signed event."""

    def pay(customer, pack, **kwargs) -> Purchase:
        purchase = online_purchase(customer, pack, **kwargs)
        stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
        deliver(client, session_event(purchase, "checkout.session.completed"), django_capture_on_commit_callbacks)
        purchase.refresh_from_db()
        return purchase

    return pay


def charge_of(purchase: Purchase) -> str:
    return stripe_double.load(purchase.stripe_payment_intent_id)["latest_charge"]


@pytest.fixture
def seed(client, django_capture_on_commit_callbacks, paid_online, pack, client_a, client_b, staff_user, sell):
    """The seeded day: `matched` paid online purchases, refunds, a dispute, a payout, a desk sale,
    one of each mismatch, and matched payments just outside the day (inside the matching margin)."""

    def make(matched: int = 4) -> Seeded:
        seeded = Seeded()
        with time_machine.travel(local(DAY, 0, 0) - timedelta(minutes=20), tick=True):
            seeded.outside.append(paid_online(client_b, pack))
        with time_machine.travel(local(DAY, 9), tick=True):
            seeded.matched = [paid_online((client_a, client_b)[i % 2], pack) for i in range(matched)]
            refund_create(purchase=seeded.matched[0], amount=Decimal("10.00"), reason="Partly unused", actor=staff_user)
            refund_create(purchase=seeded.matched[1], amount=Decimal("30.00"), reason="Moved away", actor=staff_user)
            # A dispute, whose event flagged the purchase: listed, not a mismatch.
            dispute = stripe_double.create_dispute(charge_of(seeded.matched[2]))
            deliver(client, stripe_double.build_event("charge.dispute.created", dispute),
                    django_capture_on_commit_callbacks)
            stripe_double.create_payout(5000, "gbp")
            desk = purchase_create(client=client_a, pack=pack, actor=staff_user)
            payment_record(purchase=desk, method=PaymentMethod.CASH, amount=desk.price, actor=staff_user)

            # 1. Paid in Stripe, no credits: the client paid, Stripe's event never came.
            purchase = online_purchase(client_a, pack)
            stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
            seeded.paid_no_credits = purchase
            # 2. Credits without a payment: marked paid with no money recorded.
            seeded.credits_no_payment = sell(client_b, pack)
            # 3. Amount differs: Stripe took less than the price (a stale session); the event was refused.
            purchase = online_purchase(client_a, pack, unit_amount=2500)
            stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
            deliver(client, session_event(purchase, "checkout.session.completed"), django_capture_on_commit_callbacks)
            seeded.amount_differs = purchase
            # 4. A refund made in Stripe's dashboard whose event never came.
            seeded.refund_missing = seeded.matched[3]
            stripe_client().v1.refunds.create(
                params={"payment_intent": seeded.refund_missing.stripe_payment_intent_id, "amount": 500}
            )
            # 5. Ours, not in Stripe: a Stripe payment recorded here that Stripe never had.
            purchase = online_purchase(client_b, pack)
            session = dict(stripe_double.load(purchase.stripe_checkout_session_id))
            session.update(payment_status="paid", payment_intent="pi_test_never_in_stripe")
            seeded.not_in_stripe = purchase_confirm_online(purchase_id=purchase.pk, checkout_session=session)
        with time_machine.travel(local(DAY + timedelta(days=1), 0, 10), tick=True):
            seeded.outside.append(paid_online(client_a, pack))
        for purchase in (seeded.paid_no_credits, seeded.credits_no_payment, seeded.amount_differs, *seeded.matched):
            purchase.refresh_from_db()
        return seeded

    return make


def two_days_later():
    """When finance reconciles the seeded day (its credits are still valid then)."""
    return time_machine.travel(local(DAY + timedelta(days=2), 8), tick=True)


def run_day(**kwargs) -> ReconciliationRun:
    start, end = period_of_days(DAY, DAY)
    with two_days_later():
        return reconciliation_run(period_start=start, period_end=end, **kwargs)


def stripe_transactions_in_day() -> int:
    start, end = period_of_days(DAY, DAY)
    rows = LocalStripeObject.objects.filter(object_type="balance_transaction")
    return sum(1 for row in rows if start.timestamp() <= row.data["created"] < end.timestamp())


def mismatches(run: ReconciliationRun) -> set[tuple[str, int]]:
    return {(line.mismatch, line.purchase_id) for line in run.lines.exclude(mismatch="")}


# --- The run ---------------------------------------------------------------------------------


def test_a_seeded_day_yields_exactly_its_five_mismatches(seed, staff_user):
    seeded = seed(matched=MANY)
    assert stripe_transactions_in_day() > 100  # the listing needs a second page

    run = run_day(actor=staff_user)

    assert (run.status, run.error, run.created_by) == (ReconciliationStatus.DONE, "", staff_user)
    assert run.finished_at is not None
    assert run.transactions == stripe_transactions_in_day() == MANY + 7
    assert run.mismatches == 5 and run.lines.exclude(mismatch="").count() == 5
    assert mismatches(run) == seeded.expected()

    lines = {line.mismatch: line for line in run.lines.exclude(mismatch="")}
    assert lines[MismatchKind.PAID_NO_CREDITS].type == "charge"
    assert lines[MismatchKind.AMOUNT_DIFFERS].amount == 2500
    assert lines[MismatchKind.AMOUNT_DIFFERS].our_amount == Decimal("30.00")
    missing = lines[MismatchKind.REFUND_MISSING]
    assert (missing.type, missing.amount, missing.refund_id) == ("refund", -500, None)
    assert lines[MismatchKind.NOT_IN_STRIPE].type == "ours"
    assert lines[MismatchKind.NOT_IN_STRIPE].source_id == "pi_test_never_in_stripe"
    assert lines[MismatchKind.CREDITS_NO_PAYMENT].type == "ours"
    assert all(line.resolution == Resolution.OPEN for line in lines.values())

    # Everything else is matched or informational, and only the day's transactions are listed.
    by_type = {}
    for line in run.lines.filter(mismatch=""):
        by_type.setdefault(line.type, []).append(line)
    assert len(by_type["charge"]) == MANY
    assert {line.purchase_id for line in by_type["charge"]} == {p.pk for p in seeded.matched}
    assert len(by_type["refund"]) == 2 and all(line.refund_id for line in by_type["refund"])
    assert [line.detail for line in by_type["adjustment"]] == [
        f"Dispute (general) on purchase #{seeded.matched[2].pk} (flagged)."
    ]
    payout = by_type["payout"][0]
    assert (payout.amount, payout.fee, payout.net, payout.currency) == (-5000, 0, -5000, "GBP")
    seen = set(run.lines.values_list("purchase_id", flat=True))
    assert not seen & {p.pk for p in seeded.outside}
    # Fees and nets come from Stripe: a 30.00 charge costs 1.5% + 0.20.
    assert {(line.fee, line.net) for line in by_type["charge"]} == {(65, 2935)}


@pytest.mark.parametrize("failing_page, error", [
    (1, DoubleError(500, "Stripe is having a bad day", "api_error")),  # Stripe answers with an error
    (3, stripe.APIConnectionError("connection reset")),  # the network fails after two pages were read
])
def test_a_stripe_failure_fails_the_run_and_writes_no_line(seed, monkeypatch, failing_page, error):
    seed()
    monkeypatch.setattr("payments.reconciliation.PAGE_SIZE", 2)
    route, pages = StripeDouble._route, []

    def listing_fails(method, path, params):
        if path == ["balance_transactions"]:
            pages.append(params.get("starting_after"))
            if len(pages) == failing_page:
                raise error
        return route(method, path, params)

    monkeypatch.setattr(StripeDouble, "_route", staticmethod(listing_fails))
    run = run_day()

    assert len(pages) == failing_page and pages[0] is None
    assert run.status == ReconciliationStatus.FAILED and str(error.args[0]) in run.error
    assert (run.transactions, run.mismatches, run.finished_at is not None) == (0, 0, True)
    assert ReconciliationLine.objects.count() == 0


def test_period_must_be_aware_and_ordered(db):
    start, end = period_of_days(DAY, DAY)
    with pytest.raises(PaymentError, match="end after it starts"):
        reconciliation_run(period_start=end, period_end=start)
    assert not ReconciliationRun.objects.exists()


# --- Resolving ------------------------------------------------------------------------------


def line_of(run, kind) -> ReconciliationLine:
    return run.lines.get(mismatch=kind)


def test_issue_credits_records_stripes_payment_and_issues_once(seed, finance_user, massage):
    seeded = seed()
    run = run_day()
    line = line_of(run, MismatchKind.PAID_NO_CREDITS)
    purchase = seeded.paid_no_credits
    intent = stripe_double.load(purchase.stripe_checkout_session_id)["payment_intent"]
    before = balance(purchase.client, massage)

    with two_days_later():
        resolved = reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user, note="webhook lost")
        again = reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user)

    purchase.refresh_from_db()
    assert (resolved.resolution, resolved.resolved_by, again.resolved_at) == (
        Resolution.RESOLVED, finance_user, resolved.resolved_at,
    )
    assert "webhook lost" in resolved.resolution_note and intent in resolved.resolution_note
    assert (purchase.status, purchase.stripe_payment_intent_id) == (PurchaseStatus.PAID, intent)
    payment = Payment.objects.get(purchase=purchase)
    assert (payment.method, payment.reference, payment.amount, payment.recorded_by) == (
        PaymentMethod.STRIPE, intent, Decimal("30.00"), finance_user,
    )
    assert CreditGrant.objects.filter(purchase=purchase).count() == 1
    assert balance(purchase.client, massage) == before + 10
    assert ledger_check().ok

    # The next run matches it by its payment.
    assert (MismatchKind.PAID_NO_CREDITS, purchase.pk) not in mismatches(run_day())


def test_issue_credits_for_a_paid_purchase_without_credits(db, finance_user, pack, client_a, massage):
    # Brought over from the previous system paid, with its Stripe payment, but without its credits:
    # the state is written as such an import would leave it (no service issues a paid purchase bare).
    with time_machine.travel(local(DAY, 11), tick=True):
        purchase = online_purchase(client_a, pack)
        stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
        intent = stripe_double.load(purchase.stripe_checkout_session_id)["payment_intent"]
        Purchase.objects.filter(pk=purchase.pk).update(
            status=PurchaseStatus.PAID, paid_at=timezone.now(), stripe_payment_intent_id=intent,
        )
        Payment.objects.create(purchase=purchase, method=PaymentMethod.STRIPE, amount=purchase.price,
                               currency=purchase.currency, reference=intent)
    run = run_day()
    line = run.lines.get(purchase=purchase)
    assert line.mismatch == MismatchKind.PAID_NO_CREDITS and "no credits were issued" in line.detail
    assert mismatches(run) == {(MismatchKind.PAID_NO_CREDITS, purchase.pk)}

    with two_days_later():
        reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user)
        reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user)

    assert CreditGrant.objects.filter(purchase=purchase, reservation=False).count() == 1
    assert balance(client_a, massage) == 10
    assert Payment.objects.filter(purchase=purchase).count() == 1
    assert ledger_check().ok
    assert mismatches(run_day()) == set()


def test_void_cancels_the_unpaid_purchase_and_voids_its_credits(seed, finance_user, massage):
    seeded = seed()
    run = run_day()
    line = line_of(run, MismatchKind.CREDITS_NO_PAYMENT)
    purchase = seeded.credits_no_payment
    before = balance(purchase.client, massage)

    with two_days_later():
        resolved = reconciliation_resolve(line=line, action=VOID, actor=finance_user, note="never paid at the desk")
        reconciliation_resolve(line=line, action=VOID, actor=finance_user)

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.CANCELLED
    assert resolved.resolution == Resolution.RESOLVED
    assert balance(purchase.client, massage) == before - 10
    grants = CreditGrant.objects.filter(purchase=purchase)
    assert {g.state for g in grants} == {GrantState.VOIDED}
    voids = LedgerEntry.objects.filter(grant__in=grants, kind="voided")
    assert voids.count() == 1 and f"Reconciliation line #{line.pk}" in voids.get().note
    assert "never paid at the desk" in voids.get().note
    assert ledger_check().ok
    assert (MismatchKind.CREDITS_NO_PAYMENT, purchase.pk) not in mismatches(run_day())


def test_explain_needs_a_note_and_fits_any_kind(seed, finance_user):
    seed()
    run = run_day()
    line = line_of(run, MismatchKind.AMOUNT_DIFFERS)

    with pytest.raises(InvalidResolution, match="note is required"):
        reconciliation_resolve(line=line, action=EXPLAIN, actor=finance_user, note="  ")
    line.refresh_from_db()
    assert line.resolution == Resolution.OPEN

    explained = reconciliation_resolve(line=line, action=EXPLAIN, actor=finance_user, note="Old price; refunded")
    assert (explained.resolution, explained.resolution_note) == (Resolution.EXPLAINED, "Old price; refunded")
    for kind in (MismatchKind.REFUND_MISSING, MismatchKind.NOT_IN_STRIPE):
        assert reconciliation_resolve(
            line=line_of(run, kind), action=EXPLAIN, actor=finance_user, note="checked",
        ).resolution == Resolution.EXPLAINED


def test_actions_that_do_not_fit_are_refused_and_change_nothing(seed, finance_user, massage):
    seeded = seed()
    run = run_day()
    entries = LedgerEntry.objects.count()
    paid_line, credits_line = line_of(run, MismatchKind.PAID_NO_CREDITS), line_of(run, MismatchKind.CREDITS_NO_PAYMENT)
    matched_line = run.lines.filter(mismatch="", type="charge").first()

    with pytest.raises(InvalidResolution, match="does not fit"):
        reconciliation_resolve(line=credits_line, action=ISSUE_CREDITS, actor=finance_user)
    with pytest.raises(InvalidResolution, match="does not fit"):
        reconciliation_resolve(line=paid_line, action=VOID, actor=finance_user)
    with pytest.raises(InvalidResolution, match="does not fit"):
        reconciliation_resolve(line=line_of(run, MismatchKind.AMOUNT_DIFFERS), action=VOID, actor=finance_user)
    with pytest.raises(InvalidResolution, match="nothing to resolve"):
        reconciliation_resolve(line=matched_line, action=EXPLAIN, actor=finance_user, note="x")
    with pytest.raises(InvalidResolution, match="Unknown action"):
        reconciliation_resolve(line=paid_line, action="delete", actor=finance_user)

    reconciliation_resolve(line=paid_line, action=EXPLAIN, actor=finance_user, note="client refunded by phone")
    with pytest.raises(InvalidResolution, match="already explained"):
        reconciliation_resolve(line=paid_line, action=ISSUE_CREDITS, actor=finance_user)

    assert LedgerEntry.objects.count() == entries
    seeded.paid_no_credits.refresh_from_db()
    seeded.credits_no_payment.refresh_from_db()
    assert seeded.paid_no_credits.status == PurchaseStatus.PENDING
    assert seeded.credits_no_payment.status == PurchaseStatus.PAID
    assert ReconciliationLine.objects.filter(resolution=Resolution.RESOLVED).count() == 0


def test_stripe_not_answering_refuses_the_action_and_changes_nothing(seed, finance_user, monkeypatch):
    seeded = seed()
    run = run_day()
    line = line_of(run, MismatchKind.PAID_NO_CREDITS)
    route = StripeDouble._route

    def charges_down(method, path, params):
        if path[:1] == ["charges"]:
            raise DoubleError(500, "Stripe timed out", "api_error")
        return route(method, path, params)

    monkeypatch.setattr(StripeDouble, "_route", staticmethod(charges_down))
    with pytest.raises(InvalidResolution, match="Stripe did not answer"):
        reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user)

    line.refresh_from_db()
    seeded.paid_no_credits.refresh_from_db()
    assert line.resolution == Resolution.OPEN and seeded.paid_no_credits.status == PurchaseStatus.PENDING
    assert not Payment.objects.filter(purchase=seeded.paid_no_credits).exists()


def test_money_that_is_no_purchase_of_ours_cannot_be_credited(db, finance_user):
    with time_machine.travel(local(DAY, 12), tick=True):
        charge = stripe_double.record_charge(4200, "gbp", {"order": "elsewhere"})
    run = run_day()
    line = run.lines.get(source_id=charge["id"])
    assert (line.mismatch, line.purchase_id) == (MismatchKind.PAID_NO_CREDITS, None)
    assert "no purchase of ours" in line.detail

    with pytest.raises(InvalidResolution, match="no purchase of ours"):
        reconciliation_resolve(line=line, action=ISSUE_CREDITS, actor=finance_user)
    assert reconciliation_resolve(
        line=line, action=EXPLAIN, actor=finance_user, note="Sold through the shop till",
    ).resolution == Resolution.EXPLAINED


def test_a_failed_bank_debit_after_credits_is_credits_without_payment(client, django_capture_on_commit_callbacks,
                                                                     pack, client_a, finance_user, massage):
    with time_machine.travel(local(DAY, 10), tick=True):
        purchase = online_purchase(client_a, pack)
        stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
        deliver(client, session_event(purchase, "checkout.session.completed"), django_capture_on_commit_callbacks)
        stripe_double.settle_async_payment(purchase.stripe_checkout_session_id, succeeded=False)
    run = run_day()
    assert mismatches(run) == {(MismatchKind.CREDITS_NO_PAYMENT, purchase.pk)}
    assert "failed" in run.lines.get(mismatch=MismatchKind.CREDITS_NO_PAYMENT).detail

    reconciliation_resolve(line=run.lines.get(mismatch=MismatchKind.CREDITS_NO_PAYMENT), action=VOID,
                           actor=finance_user)
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.CANCELLED and balance(client_a, massage) == 0
    assert ledger_check().ok


# --- Scheduled and command-line runs -------------------------------------------------------------


def test_the_daily_job_reconciles_yesterday_once(seed):
    seeded = seed()
    with time_machine.travel(local(DAY + timedelta(days=1), 3, 17), tick=True):
        first = reconcile_stripe_daily.fn()
        second = reconcile_stripe_daily.fn()
    run = ReconciliationRun.objects.get()
    assert first == second == f"reconciliation #{run.pk}: {run.transactions} transactions, 5 mismatches"
    assert (run.period_start, run.period_end, run.created_by) == (*period_of_days(DAY, DAY), None)
    assert mismatches(run) == seeded.expected()


def test_the_daily_job_raises_so_it_is_retried_when_stripe_fails(db, monkeypatch):
    def down(method, path, params):
        raise DoubleError(503, "Service unavailable", "api_error")

    monkeypatch.setattr(StripeDouble, "_route", staticmethod(down))
    with time_machine.travel(local(DAY + timedelta(days=1), 3, 17), tick=True):
        with pytest.raises(ReconciliationFailed, match="Service unavailable"):
            reconcile_stripe_daily.fn()
    assert ReconciliationRun.objects.get().status == ReconciliationStatus.FAILED


def test_the_schedule_runs_the_daily_reconciliation_at_17_past_3():
    jobs = {job.actor_path: job.cron for job in schedule.SCHEDULE}
    assert jobs["payments.tasks.reconcile_stripe_daily"] == "17 3 * * *"
    assert schedule.load_actor("payments.tasks.reconcile_stripe_daily") is reconcile_stripe_daily


def test_the_command_reconciles_a_range_of_days(seed, capsys):
    seed()
    with time_machine.travel(local(DAY + timedelta(days=2), 8), tick=True):
        call_command("reconcile_stripe", "--from", "2026-03-09", "--to", "2026-03-10")
        with pytest.raises(CommandError, match="on or after"):
            call_command("reconcile_stripe", "--from", "2026-03-10", "--to", "2026-03-09")
        with pytest.raises(CommandError, match="not a date"):
            call_command("reconcile_stripe", "--from", "yesterday")
    run = ReconciliationRun.objects.get()
    assert (run.period_start, run.period_end) == (period_of_days(DAY - timedelta(days=1), DAY))
    assert f"Reconciliation #{run.pk} 2026-03-09..2026-03-10" in capsys.readouterr().out
    # Two days: the day before's payment is now inside the period, and still matched.
    assert run.mismatches == 5
