"""Background report exports: queued on commit, written by the actor with progress, the same CSV
the admin would stream, retried after a failure, cleaned up later; and the ledger export keeps
its memory flat however many rows it writes."""
from __future__ import annotations

import io
import math
import tracemalloc
from datetime import date, timedelta

import dramatiq
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ledger.models import LedgerEntry
from ledger.services import credits_adjust
from reports import exports
from reports.exports import (
    ExportRefused,
    export_file,
    filters_from_json,
    filters_to_json,
    report_export_create,
    report_export_retry,
    report_export_run,
    report_exports_cleanup,
    write_report_csv,
)
from reports.filters import ReportFilters
from reports.ledger_export import write_ledger_csv
from reports.models import ExportStatus, ReportExport
from reports.tasks import run_report_export


@pytest.fixture(autouse=True)
def export_dir(settings, tmp_path):
    settings.REPORT_EXPORT_DIR = str(tmp_path / "exports")
    return tmp_path / "exports"


@pytest.fixture
def some_entries(client_a, client_b, massage, physio, staff_user):
    for number in range(7):
        credits_adjust(client=client_a if number % 2 else client_b, session_type=massage if number % 3 else physio,
                       amount=number + 1, reason=f"gift, \"{number}\"", actor=staff_user)
    return LedgerEntry.objects.count()


def ledger_csv(filters: ReportFilters) -> str:
    out = io.StringIO(newline="")
    write_ledger_csv(out, filters)
    return out.getvalue()


def test_filters_survive_the_json_round_trip():
    filters = ReportFilters(start=date(2026, 3, 1), end=date(2026, 3, 31), staff_member_id=4, pack_id=9)
    assert filters_from_json(filters_to_json(filters)) == filters
    assert filters_from_json(filters_to_json(ReportFilters())) == ReportFilters()


def test_an_export_is_queued_on_commit_and_written_by_the_actor_with_progress(
    redis_broker, some_entries, staff_user, monkeypatch, django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        export = report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user)
        assert redis_broker.client.hlen("dramatiq:default.msgs") == 0  # not before commit
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 1
    assert export.status == ExportStatus.QUEUED and export.file_name.startswith("packdesk_ledger_all-time_generated_")

    monkeypatch.setattr(exports, "CHUNK_SIZE", 2)
    with CaptureQueriesContext(connection) as queries:
        run_report_export.fn(export.pk)

    export.refresh_from_db()
    assert export.status == ExportStatus.DONE and export.error == ""
    assert export.rows_done == export.rows_total == some_entries and export.percent == 100
    progress = [q for q in queries if q["sql"].startswith('UPDATE "reports_reportexport" SET "rows_done"')]
    assert len(progress) == math.ceil(some_entries / 2)  # one short update per chunk
    assert export_file(export).read_bytes().decode("utf-8") == ledger_csv(ReportFilters())


def test_running_an_export_twice_writes_it_once(some_entries, staff_user):
    export = report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user)
    assert report_export_run(export_id=export.pk).status == ExportStatus.DONE
    finished = ReportExport.objects.get(pk=export.pk).finished_at
    assert report_export_run(export_id=export.pk) is None
    assert ReportExport.objects.get(pk=export.pk).finished_at == finished


def test_every_report_written_in_the_background_is_the_csv_the_admin_streams(some_entries, staff_user):
    filters = ReportFilters(start=timezone.localdate() - timedelta(days=1), end=timezone.localdate())
    for kind in ("purchases", "balances", "deferred", "roll_forward", "breakage", "redemptions", "outstanding"):
        export = report_export_create(kind=kind, filters=filters, actor=staff_user)
        export = report_export_run(export_id=export.pk)
        assert export.status == ExportStatus.DONE, (kind, export.error)
        out = io.StringIO(newline="")
        write_report_csv(out, kind, filters)
        assert export_file(export).read_bytes().decode("utf-8") == out.getvalue(), kind


def test_a_failed_export_keeps_its_error_and_a_retry_writes_it(some_entries, staff_user, settings, tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the export directory should be")
    settings.REPORT_EXPORT_DIR = str(blocked)
    export = report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user)

    export = report_export_run(export_id=export.pk)

    assert export.status == ExportStatus.FAILED and "FileExistsError" in export.error
    with pytest.raises(ExportRefused):  # only failed (or stalled) exports are retried
        report_export_retry(export=report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user),
                            actor=staff_user)

    settings.REPORT_EXPORT_DIR = str(tmp_path / "exports")
    export = report_export_retry(export=export, actor=staff_user)
    assert (export.status, export.error, export.rows_done) == (ExportStatus.QUEUED, "", 0)
    export = report_export_run(export_id=export.pk)
    assert export.status == ExportStatus.DONE and export.rows_done == some_entries


def test_a_stalled_running_export_may_be_retried(staff_user):
    export = ReportExport.objects.create(kind="ledger", status=ExportStatus.RUNNING, created_by=staff_user,
                                         updated_at=timezone.now() - timedelta(minutes=5))
    with pytest.raises(ExportRefused):
        report_export_retry(export=export, actor=staff_user)
    ReportExport.objects.filter(pk=export.pk).update(updated_at=timezone.now() - exports.STALE_AFTER - timedelta(seconds=1))
    assert report_export_retry(export=export, actor=staff_user).status == ExportStatus.QUEUED


def test_old_exports_and_their_files_are_removed(some_entries, staff_user):
    old = report_export_run(export_id=report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user).pk)
    new = report_export_run(export_id=report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user).pk)
    path = export_file(old)
    ReportExport.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(days=8))

    assert report_exports_cleanup() == 1

    assert not path.exists() and not ReportExport.objects.filter(pk=old.pk).exists()
    assert export_file(new) is not None


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_writes_the_export(redis_broker, client_a, massage, staff_user):
    credits_adjust(client=client_a, session_type=massage, amount=3, reason="opening", actor=staff_user)
    with transaction.atomic():
        export = report_export_create(kind="ledger", filters=ReportFilters(), actor=staff_user)
    worker = dramatiq.Worker(redis_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        redis_broker.join(run_report_export.queue_name, timeout=30_000)
    finally:
        worker.stop()
    export.refresh_from_db()
    assert export.status == ExportStatus.DONE and export.rows_done == 1
    assert "opening" in export_file(export).read_bytes().decode("utf-8")


# --- Bounded memory ----------------------------------------------------------------------------


def add_entries(n: int, client, session_type, actor) -> None:
    """n entries on one grant, set-based (a service call per row would take minutes): only the
    export's memory is measured here, so the rows need to be many, not a real history."""
    [first] = credits_adjust(client=client, session_type=session_type, amount=1, reason="seed", actor=actor)
    offset = LedgerEntry.objects.count()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO ledger_ledgerentry (kind, amount, balance_after, note, source, idempotency_key, created_at,
                                            actor_id, client_id, grant_id, session_type_id)
            SELECT 'issued', 1, 1 + i, 'bulk note, "quoted"', 'adjustment', 'bulk:' || (i + %(offset)s), now(),
                   %(actor)s, %(client)s, %(grant)s, %(type)s
            FROM generate_series(1, %(n)s) AS i
            """,
            {"n": n, "offset": offset, "actor": actor.pk, "client": client.pk, "grant": first.grant_id,
             "type": session_type.pk},
        )


class CountingSink:
    """A file-like object that keeps only the size of what is written."""

    def __init__(self):
        self.size = 0

    def write(self, text: str) -> int:
        self.size += len(text)
        return len(text)


def peak_while_exporting(chunk_size: int) -> tuple[int, int, int]:
    sink = CountingSink()
    tracemalloc.start()
    try:
        rows = write_ledger_csv(sink, ReportFilters(), chunk_size=chunk_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return rows, peak, sink.size


def test_the_ledger_export_memory_does_not_grow_with_rows(client_a, massage, staff_user):
    add_entries(10_000, client_a, massage, staff_user)
    rows_10k, peak_10k, size_10k = peak_while_exporting(chunk_size=1000)
    add_entries(40_000, client_a, massage, staff_user)
    rows_50k, peak_50k, size_50k = peak_while_exporting(chunk_size=1000)

    assert (rows_10k, rows_50k) == (10_001, 50_002)
    assert size_50k > 4.5 * size_10k  # five times the CSV...
    assert peak_50k < 1.5 * peak_10k  # ...in the same memory: one chunk at a time
    assert peak_50k < 3 * 1024 * 1024, peak_50k


def test_the_ledger_csv_has_the_rows_postgresql_copy_writes(some_entries, client_a, massage, staff_user):
    from reports.ledger_export import ledger_rows

    credits_adjust(client=client_a, session_type=massage, amount=1, reason="line one\nline two, \"quoted\"", actor=staff_user)
    sql, params = ledger_rows(ReportFilters()).query.sql_with_params()
    copied = bytearray()
    with connection.cursor() as cursor, cursor.cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params) as copy:
        for data in copy:
            copied += data
    ours = ledger_csv(ReportFilters())
    assert ours.split("\r\n", 1)[1].replace("\r\n", "\n") == copied.decode()
