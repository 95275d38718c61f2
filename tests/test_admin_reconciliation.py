"""Reconciliation in the admin: finance runs it for a range of days, reads the mismatches grouped
by kind, settles each through a confirmation page and exports the run as CSV; front desk and
managers are refused; the list pages run a fixed number of queries whatever the row count."""
from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from core.roles import FRONT_DESK, MANAGER
from ledger.integrity import ledger_check
from payments.models import (
    MismatchKind,
    PurchaseStatus,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationStatus,
    Resolution,
)
from payments.reconciliation import CSV_COLUMNS, period_of_days
from tests.test_reconciliation import (  # noqa: F401 - fixtures shared with the service tests
    DAY,
    finance_user,
    pack,
    paid_online,
    seed,
    stripe_test_mode,
    two_days_later,
)

pytestmark = pytest.mark.django_db

RUNS = reverse("admin:payments_reconciliationrun_changelist")
RUN_ADD = reverse("admin:payments_reconciliationrun_add")
LINES = reverse("admin:payments_reconciliationline_changelist")


def detail_url(run) -> str:
    return reverse("admin:payments_reconciliationrun_change", args=[run.pk])


def action_url(line, name: str) -> str:
    return reverse(f"admin:payments_reconciliationline_{name}", args=[line.pk])


@pytest.fixture
def finance(client, finance_user):
    client.force_login(finance_user)
    return client


@pytest.fixture
def seeded_run(seed, finance):
    """The seeded day, reconciled from the admin's form."""
    seeded = seed()
    with two_days_later():
        response = finance.post(RUN_ADD, {"date_from": DAY.isoformat(), "date_to": DAY.isoformat()})
    run = ReconciliationRun.objects.get()
    assert response.status_code == 302 and response["Location"] == detail_url(run)
    return seeded, run


def test_finance_runs_a_period_and_reads_its_mismatches_grouped_by_kind(finance, seeded_run, finance_user):
    seeded, run = seeded_run
    assert (run.status, run.created_by, run.mismatches) == (ReconciliationStatus.DONE, finance_user, 5)
    assert (run.period_start, run.period_end) == period_of_days(DAY, DAY)

    page = finance.get(detail_url(run))
    html = page.content.decode()

    assert page.status_code == 200
    kinds = re.findall(r'id="mismatch-(\w+)"', html)
    assert kinds == [k.value for k in MismatchKind]  # each kind once, in the kinds' order
    assert html.index('id="mismatch-') < html.index('id="matched-lines"')
    # Each open mismatch offers the actions that fit it, and only those.
    paid = run.lines.get(mismatch=MismatchKind.PAID_NO_CREDITS)
    unpaid = run.lines.get(mismatch=MismatchKind.CREDITS_NO_PAYMENT)
    assert action_url(paid, "issue_credits") in html and action_url(paid, "void_credits") not in html
    assert action_url(unpaid, "void_credits") in html and action_url(unpaid, "issue_credits") not in html
    assert action_url(run.lines.get(mismatch=MismatchKind.REFUND_MISSING), "explain") in html
    assert reverse("admin:payments_reconciliationrun_export_csv", args=[run.pk]) in html
    messages = [str(m) for m in get_messages(page.wsgi_request)]
    assert any("5 mismatch(es)" in m for m in messages)

    listed = finance.get(RUNS).content.decode()
    assert f"#{run.pk}" in listed and "Done" in listed


def test_the_run_form_refuses_a_long_or_backward_range(finance):
    too_long = {"date_from": "2026-01-01", "date_to": "2026-02-01"}  # 32 days
    backwards = {"date_from": "2026-03-10", "date_to": "2026-03-09"}
    with two_days_later():
        long_page = finance.post(RUN_ADD, too_long).content.decode()
        back_page = finance.post(RUN_ADD, backwards).content.decode()
        form_page = finance.get(RUN_ADD)

    assert "at most 31 days" in long_page and "reconcile_stripe" in long_page
    assert "end on or after its first day" in back_page
    assert not ReconciliationRun.objects.exists()
    assert form_page.status_code == 200 and "Run reconciliation" in form_page.content.decode()


def test_a_failed_run_is_shown_with_stripes_error(finance, monkeypatch):
    from payments.stripe_double import DoubleError, StripeDouble

    def down(method, path, params):
        raise DoubleError(503, "Stripe is unavailable", "api_error")

    monkeypatch.setattr(StripeDouble, "_route", staticmethod(down))
    with two_days_later():
        response = finance.post(RUN_ADD, {"date_from": DAY.isoformat(), "date_to": DAY.isoformat()}, follow=True)
    run = ReconciliationRun.objects.get()
    assert run.status == ReconciliationStatus.FAILED
    assert "Stripe is unavailable" in response.content.decode()
    assert run.lines.count() == 0


def test_issue_credits_through_its_confirmation_page(finance, seeded_run):
    seeded, run = seeded_run
    line = run.lines.get(mismatch=MismatchKind.PAID_NO_CREDITS)
    url = action_url(line, "issue_credits")

    confirm = finance.get(url, {"next": detail_url(run)})
    assert confirm.status_code == 200
    assert f"Line #{line.pk}" in confirm.content.decode() and "Issue credits" in confirm.content.decode()
    seeded.paid_no_credits.refresh_from_db()
    assert seeded.paid_no_credits.status == PurchaseStatus.PENDING  # GET changes nothing

    with two_days_later():
        done = finance.post(url, {"note": "event lost", "next": detail_url(run)})
    assert done.status_code == 302 and done["Location"] == detail_url(run)
    line.refresh_from_db()
    seeded.paid_no_credits.refresh_from_db()
    assert line.resolution == Resolution.RESOLVED and "event lost" in line.resolution_note
    assert seeded.paid_no_credits.status == PurchaseStatus.PAID
    assert ledger_check().ok
    # Resolved: no more buttons for it, and its resolution shows.
    html = finance.get(detail_url(run)).content.decode()
    assert url not in html and "Resolved" in html


def test_explain_without_a_note_shows_the_services_refusal(finance, seeded_run):
    _, run = seeded_run
    line = run.lines.get(mismatch=MismatchKind.AMOUNT_DIFFERS)
    page = finance.post(action_url(line, "explain"), {"note": ""})
    assert page.status_code == 200 and "note is required" in page.content.decode()
    line.refresh_from_db()
    assert line.resolution == Resolution.OPEN

    finance.post(action_url(line, "explain"), {"note": "Stale session; refunded in Stripe"})
    line.refresh_from_db()
    assert (line.resolution, line.resolution_note) == (Resolution.EXPLAINED, "Stale session; refunded in Stripe")


def test_an_action_that_does_not_fit_the_line_is_refused_with_a_message(finance, seeded_run):
    seeded, run = seeded_run
    line = run.lines.get(mismatch=MismatchKind.PAID_NO_CREDITS)
    response = finance.post(action_url(line, "void_credits"), {"note": "x"}, follow=True)
    assert "does not fit" in response.content.decode()
    line.refresh_from_db()
    seeded.paid_no_credits.refresh_from_db()
    assert line.resolution == Resolution.OPEN and seeded.paid_no_credits.status == PurchaseStatus.PENDING


def test_csv_export_streams_every_line_with_totals_that_add_up(finance, seeded_run, finance_user):
    _, run = seeded_run
    explained = run.lines.get(mismatch=MismatchKind.AMOUNT_DIFFERS)
    finance.post(action_url(explained, "explain"), {"note": "stale price"})

    response = finance.get(reverse("admin:payments_reconciliationrun_export_csv", args=[run.pk]))

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert re.fullmatch(
        rf'attachment; filename="reconciliation_2026-03-10_2026-03-10_run{run.pk}_\d{{8}}T\d{{6}}\.csv"',
        response["Content-Disposition"],
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    lines, totals = [r for r in rows if r["line"] != "TOTAL"], [r for r in rows if r["line"] == "TOTAL"]
    assert len(lines) == run.lines.count() and len(totals) == 1
    total, stripe_rows = totals[0], [r for r in lines if r["balance_transaction"]]
    for column in ("stripe_amount", "stripe_fee", "stripe_net"):
        assert Decimal(total[column]) == sum(Decimal(r[column]) for r in stripe_rows)
    assert Decimal(total["our_amount"]) == sum(Decimal(r["our_amount"]) for r in lines if r["our_amount"])
    assert Decimal(total["stripe_amount"]) - Decimal(total["stripe_fee"]) == Decimal(total["stripe_net"])
    assert (total["balance_transaction"], total["currency"]) == (f"{run.transactions} balance transactions", "GBP")
    row = next(r for r in lines if r["mismatch"] == MismatchKind.AMOUNT_DIFFERS.label)
    assert (row["stripe_amount"], row["our_amount"], row["resolution"]) == ("25.00", "30.00", "Explained")
    assert (row["resolution_note"], row["resolved_by"]) == ("stale price", finance_user.username)
    assert {r["mismatch"] for r in lines} == {"", *(k.label for k in MismatchKind)}
    assert all(r["resolution"] == "" for r in lines if not r["mismatch"])


@pytest.mark.parametrize("role", [FRONT_DESK, MANAGER])
def test_front_desk_and_managers_are_refused_everywhere(client, seeded_run, django_user_model, role):
    _, run = seeded_run
    user = django_user_model.objects.create_user(f"{role}-x", password="pw-x-12345", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client.force_login(user)
    line = run.lines.get(mismatch=MismatchKind.PAID_NO_CREDITS)
    urls = [
        RUNS, RUN_ADD, detail_url(run), LINES,
        reverse("admin:payments_reconciliationrun_export_csv", args=[run.pk]),
        reverse("admin:payments_reconciliationline_change", args=[line.pk]),
        *(action_url(line, name) for name in ("issue_credits", "void_credits", "explain")),
    ]
    for url in urls:
        assert client.get(url).status_code == 403, url
    assert client.post(action_url(line, "issue_credits"), {"note": ""}).status_code == 403
    assert client.post(RUN_ADD, {"date_from": DAY.isoformat(), "date_to": DAY.isoformat()}).status_code == 403
    line.refresh_from_db()
    assert line.resolution == Resolution.OPEN and ReconciliationRun.objects.count() == 1


def test_the_lines_list_filters_by_kind_and_run(finance, seeded_run):
    _, run = seeded_run
    page = finance.get(LINES, {"mismatch": "any", "run__id__exact": run.pk})
    assert page.status_code == 200 and page.context["cl"].result_count == 5
    refund = finance.get(LINES, {"mismatch": MismatchKind.REFUND_MISSING.value})
    assert refund.context["cl"].result_count == 1
    open_lines = finance.get(LINES, {"resolution__exact": "open", "mismatch": "any"})
    assert open_lines.context["cl"].result_count == 5


# --- Query counts ----------------------------------------------------------------------------


def add_runs(n: int, user) -> list[ReconciliationRun]:
    start, end = period_of_days(DAY, DAY)
    runs = ReconciliationRun.objects.bulk_create(
        ReconciliationRun(period_start=start - timedelta(days=i), period_end=end - timedelta(days=i),
                          status=ReconciliationStatus.DONE, created_by=user, transactions=3, mismatches=1)
        for i in range(n)
    )
    ReconciliationLine.objects.bulk_create(
        ReconciliationLine(run=run, type="charge", balance_transaction_id=f"txn_{run.pk}_{k}", amount=3000,
                           currency="GBP", mismatch=MismatchKind.PAID_NO_CREDITS if k == 0 else "")
        for run in runs for k in range(3)
    )
    return runs


def add_lines(run, purchases, n: int, user) -> None:
    ReconciliationLine.objects.bulk_create(
        ReconciliationLine(
            run=run, type="charge", balance_transaction_id=f"txn_x_{run.pk}_{i}", amount=3000, fee=65, net=2935,
            currency="GBP", purchase=purchases[i % len(purchases)], our_amount=Decimal("30.00"), our_currency="GBP",
            mismatch=MismatchKind.AMOUNT_DIFFERS, detail="differs", resolution=Resolution.EXPLAINED,
            resolution_note="ok", resolved_by=user,
        )
        for i in range(n)
    )


def queries(client, url) -> tuple[int, object]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200
    return len(captured), response


def test_run_list_query_count_does_not_grow_with_rows(finance, finance_user):
    add_runs(10, finance_user)
    small, _ = queries(finance, RUNS)
    add_runs(190, finance_user)
    large, response = queries(finance, RUNS)
    assert response.context["cl"].result_count == 200 > response.context["cl"].list_per_page
    assert small == large, (small, large)


def test_line_list_and_run_page_query_counts_do_not_grow_with_rows(finance, finance_user, seed):
    seeded = seed()
    run = add_runs(1, finance_user)[0]
    add_lines(run, seeded.matched, 10, finance_user)
    small, _ = queries(finance, LINES)
    small_detail, _ = queries(finance, detail_url(run))
    add_lines(run, seeded.matched, 290, finance_user)
    large, response = queries(finance, LINES)
    large_detail, detail = queries(finance, detail_url(run))
    assert response.context["cl"].result_count > response.context["cl"].list_per_page
    assert small == large, (small, large)
    assert small_detail == large_detail, (small_detail, large_detail)
    assert detail.content.decode().count('class="border-t border-base-200 align-top') == 301
