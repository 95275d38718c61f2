"""The reports in the admin: the index in the sidebar, each report's page (filters, preview,
Download CSV), background exports with progress and a permission-checked download, and the
roles: Finance and Manager read reports, Front desk is refused."""
from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from core.models import Client
from core.roles import FINANCE, FRONT_DESK, MANAGER, ROLES
from ledger.services import credits_adjust
from payments.services import payment_record, purchase_create
from reports.exports import export_file, report_export_run, write_report_csv
from reports.filters import ReportFilters
from reports.forms import last_month
from reports.models import VIEW_REPORTS, ExportStatus, ReportExport
from reports.registry import REPORTS
from tests.test_roles import logged_in, make_member, roles  # noqa: F401 - fixtures

INDEX = "admin:reports_reportexport_changelist"


@pytest.fixture
def desk(make_member):  # noqa: F811 - the imported fixture
    return make_member(FRONT_DESK)


@pytest.fixture
def manager(make_member):  # noqa: F811
    return make_member(MANAGER)


@pytest.fixture
def finance(make_member):  # noqa: F811
    return make_member(FINANCE)


@pytest.fixture(autouse=True)
def export_dir(settings, tmp_path):
    settings.REPORT_EXPORT_DIR = str(tmp_path / "exports")


def report_url(kind: str, view: str = "report", **query) -> str:
    url = reverse(f"admin:reports_{view}", args=[kind])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def today_range() -> dict:
    today = timezone.localdate()
    return {"start": today - timedelta(days=1), "end": today}


def add_clients_with_credits(n: int, massage, actor) -> None:
    for client in Client.objects.bulk_create(
        Client(name=f"Client {i:03d}", email=f"client{i}-{Client.objects.count()}@example.com") for i in range(n)
    ):
        credits_adjust(client=client, session_type=massage, amount=2, reason="opening", actor=actor)


def sell_and_pay(client, pack, actor, method="cash"):
    purchase = purchase_create(client=client, pack=pack, actor=actor)
    return payment_record(purchase=purchase, method=method, amount=purchase.price, actor=actor)


@pytest.fixture
def some_history(client_a, client_b, massage, make_pack, staff_user):
    pack = make_pack([(massage, False, 10)], name="Ten massages", price=Decimal("300.00"))
    sell_and_pay(client_a, pack, staff_user)
    sell_and_pay(client_b, pack, staff_user, method="card_terminal")
    purchase_create(client=client_b, pack=pack, actor=staff_user)  # outstanding
    return pack


# --- Roles ----------------------------------------------------------------------------------


def test_finance_and_manager_hold_the_reports_permission_front_desk_does_not():
    assert VIEW_REPORTS in ROLES[FINANCE] and VIEW_REPORTS in ROLES[MANAGER]
    assert VIEW_REPORTS not in ROLES[FRONT_DESK]


def test_front_desk_is_refused_every_report_page(client, desk, finance, some_history, staff_user):
    export = report_export_run(export_id=ReportExport.objects.create(kind="balances", created_by=staff_user).pk)
    urls = [reverse(INDEX), reverse("admin:reports_reportexport_change", args=[export.pk]),
            reverse("admin:reports_reportexport_download", args=[export.pk]),
            reverse("admin:reports_reportexport_retry", args=[export.pk])]
    for kind in REPORTS:
        urls += [report_url(kind), report_url(kind, "report_csv")]
    logged_in(client, desk)
    for url in urls:
        assert client.get(url).status_code == 403, url
    assert client.post(report_url("ledger", "report_export"), today_range()).status_code == 403
    assert not ReportExport.objects.filter(kind="ledger").exists()

    logged_in(client, finance)
    assert client.get(reverse("admin:reports_reportexport_download", args=[export.pk])).status_code == 200


def test_nobody_logged_in_is_sent_to_the_login_page(client, db):
    response = client.get(report_url("purchases"))
    assert response.status_code == 302 and reverse("admin:login") in response["Location"]


# --- The index and the report pages -------------------------------------------------------------


def test_the_sidebar_leads_to_the_reports_index(client, finance, manager, db):
    for user in (finance, manager):
        response = logged_in(client, user).get(reverse("admin:index"))
        assert reverse(INDEX) in response.content.decode()
        index = client.get(reverse(INDEX)).content.decode()
        for kind, report in REPORTS.items():
            assert report_url(kind) in index and report.title in index


def test_every_report_page_renders_last_month_by_default(client, finance, some_history):
    first, last = last_month()
    logged_in(client, finance)
    for kind, report in REPORTS.items():
        response = client.get(report_url(kind))
        assert response.status_code == 200, kind
        form = response.context["form"]
        if "dates" in report.uses:
            assert (form.cleaned_data["start"], form.cleaned_data["end"]) == (first, last), kind
        if "as_of" in report.uses:
            assert form.cleaned_data["as_of"] == last, kind
        assert response.context["preview"] is not None, kind
        assert set(form.fields) <= {"start", "end", "as_of", *report.uses}, kind


def test_a_report_page_says_which_filters_it_applies(client, finance, db):
    text = logged_in(client, finance).get(report_url("purchases")).content.decode()
    assert "Filters applied: Date range, Staff member, Category, Credit pack." in text
    assert "Not applied to this report: Session type." in text


def test_the_preview_shows_totals_and_at_most_fifty_rows(client, finance, massage, staff_user):
    add_clients_with_credits(60, massage, staff_user)
    response = logged_in(client, finance).get(report_url("balances", as_of=timezone.localdate()))
    preview = response.context["preview"]
    assert preview.summary == [(60, 60, 120)]
    assert len(preview.rows) == 50 and preview.total_rows == 60
    assert "Rows (50 of 60)" in response.content.decode()


def test_the_roll_forward_page_shows_the_identity_and_that_it_ties_out(client, finance, some_history):
    response = logged_in(client, finance).get(report_url("roll_forward", **today_range()))
    text = response.content.decode()
    assert "opening + sales − redemptions − breakage − refunds + adjustments = closing" in text
    assert response.context["preview"].ties_out is True and 'id="ties-out"' in text


def test_invalid_dates_are_refused_on_the_page(client, finance, db):
    today = timezone.localdate()
    response = logged_in(client, finance).get(report_url("breakage", start=today, end=today - timedelta(days=3)))
    assert response.status_code == 200 and response.context["preview"] is None
    assert "The end date is before the start date." in response.content.decode()


# --- Download CSV ----------------------------------------------------------------------------------


def streamed(response) -> str:
    return b"".join(response.streaming_content).decode()


def test_a_small_report_streams_its_csv_with_a_name_saying_what_and_when(client, finance, some_history):
    dates = today_range()
    response = logged_in(client, finance).get(report_url("purchases", "report_csv", **dates))

    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    name = f'packdesk_purchases_{dates["start"]}_{dates["end"]}_generated_{timezone.localtime():%Y%m%dT}'
    assert f'filename="{name}' in response["Content-Disposition"]
    text = streamed(response)
    out = io.StringIO(newline="")
    write_report_csv(out, "purchases", ReportFilters(**dates))
    assert text == out.getvalue()
    assert ["Total", "All", "GBP", "2", "600.00", "0", "0.00", "600.00"] in list(csv.reader(io.StringIO(text)))


def test_the_ledger_is_exported_in_the_background_never_streamed(client, finance, some_history):
    logged_in(client, finance)
    page = client.get(report_url("ledger", **today_range()))
    assert 'id="report-export-form"' in page.content.decode() and 'id="report-download"' not in page.content.decode()

    refused = client.get(report_url("ledger", "report_csv", **today_range()), follow=True)
    assert "export it in the background" in refused.content.decode()


def test_a_report_over_the_row_limit_goes_to_the_background(client, finance, some_history, settings):
    settings.REPORTS_BACKGROUND_ROWS = 1
    logged_in(client, finance)
    page = client.get(report_url("balances", as_of=timezone.localdate()))
    assert page.context["background"] is True
    assert client.get(report_url("balances", "report_csv", as_of=timezone.localdate())).status_code == 302


# --- Background exports through the admin --------------------------------------------------------


def test_a_background_export_from_queue_to_download(client, finance, desk, some_history, django_capture_on_commit_callbacks, redis_broker):
    logged_in(client, finance)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(report_url("ledger", "report_export"), today_range())
    assert response.status_code == 302 and response["Location"] == reverse(INDEX)
    export = ReportExport.objects.get()
    assert export.created_by == finance and export.status == ExportStatus.QUEUED

    running = client.get(reverse(INDEX)).content.decode()
    assert 'id="export-refresh"' in running and "window.location.reload" in running

    export = report_export_run(export_id=export.pk)
    done = client.get(reverse(INDEX)).content.decode()
    assert 'data-percent="100"' in done and 'id="export-refresh"' not in done
    download = reverse("admin:reports_reportexport_download", args=[export.pk])
    assert download in done

    response = client.get(download)
    assert response.status_code == 200
    assert f'filename="{export.file_name}"' in response["Content-Disposition"]
    body = b"".join(response.streaming_content)
    assert body == export_file(export).read_bytes() and body.startswith(b"entry_id,date,")

    assert logged_in(client, desk).get(download).status_code == 403


def test_a_failed_export_shows_its_error_and_is_retried_from_the_list(client, finance, staff_user, settings, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    settings.REPORT_EXPORT_DIR = str(blocked)
    export = report_export_run(export_id=ReportExport.objects.create(kind="ledger", created_by=staff_user).pk)
    logged_in(client, finance)

    listing = client.get(reverse(INDEX)).content.decode()
    retry = reverse("admin:reports_reportexport_retry", args=[export.pk])
    assert "FileExistsError" in listing and retry in listing
    assert client.get(retry).status_code == 200

    settings.REPORT_EXPORT_DIR = str(tmp_path / "exports")
    assert client.post(retry).status_code == 302
    export.refresh_from_db()
    assert export.status == ExportStatus.QUEUED and export.error == ""


# --- Fixed query counts -----------------------------------------------------------------------------


def queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_report_pages_and_the_export_list_run_a_fixed_number_of_queries(
    client, finance, some_history, massage, client_a, staff_user,
):
    logged_in(client, finance)
    urls = [report_url(kind, **today_range()) if "dates" in r.uses else report_url(kind, as_of=timezone.localdate())
            if "as_of" in r.uses else report_url(kind) for kind, r in REPORTS.items()]
    urls.append(reverse(INDEX))
    for _ in range(3):
        report_export_run(export_id=ReportExport.objects.create(kind="balances", created_by=staff_user).pk)
    before = [queries(client, url) for url in urls]

    add_clients_with_credits(60, massage, staff_user)
    for _ in range(5):
        sell_and_pay(client_a, some_history, staff_user)
        purchase_create(client=client_a, pack=some_history, actor=staff_user)
    for _ in range(30):
        report_export_run(export_id=ReportExport.objects.create(kind="balances", created_by=staff_user).pk)
    after = [queries(client, url) for url in urls]

    assert before == after, list(zip(urls, before, after))
