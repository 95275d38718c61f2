"""Background report exports: create (enqueued on commit), run (the worker writes the file and
records its progress), retry, and clean up old files.

Files live in settings.REPORT_EXPORT_DIR (default var/exports): a private directory, never
served as static or media; the admin's download view checks the reports permission and
streams the file. Web and worker processes must share it (one host, or a shared volume).
"""
from __future__ import annotations

import logging
import os
from datetime import date, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from config.dramatiq import enqueue_on_commit
from reports import ledger_export
from reports.csv_safe import safe_row
from reports.filters import ReportFilters
from reports.models import ExportStatus, ReportExport, ReportKind
from reports.registry import REPORTS, export_filename

logger = logging.getLogger(__name__)
CHUNK_SIZE = 5000
# A running export whose progress has not moved for this long has lost its worker: it may be retried.
STALE_AFTER = timedelta(minutes=15)
KEEP_FILES_FOR = timedelta(days=7)
_DATES = ("start", "end")
_IDS = ("staff_member_id", "category_id", "session_type_id", "pack_id")


class ExportRefused(Exception):
    """An export that cannot be started or retried; the text says why."""


def export_dir() -> Path:
    path = Path(getattr(settings, "REPORT_EXPORT_DIR", "") or Path(settings.VAR_DIR) / "exports")
    path.mkdir(parents=True, exist_ok=True)
    return path


def export_file(export: ReportExport) -> Path | None:
    """The export's file, when it has one; a stored name never leaves the export directory."""
    if not export.file_path:
        return None
    path = (export_dir() / Path(export.file_path).name)
    return path if path.is_file() else None


def filters_to_json(filters: ReportFilters) -> dict:
    data = {name: getattr(filters, name).isoformat() for name in _DATES if getattr(filters, name)}
    data.update({name: getattr(filters, name) for name in _IDS if getattr(filters, name)})
    return data


def filters_from_json(data: dict) -> ReportFilters:
    return ReportFilters(
        **{name: date.fromisoformat(data[name]) for name in _DATES if data.get(name)},
        **{name: int(data[name]) for name in _IDS if data.get(name)},
    )


@transaction.atomic
def report_export_create(*, kind: str, filters: ReportFilters, actor) -> ReportExport:
    """Queue an export of `kind`; the worker starts once this transaction has committed."""
    if kind not in REPORTS:
        raise ExportRefused(f"There is no report called {kind!r}.")
    export = ReportExport.objects.create(
        kind=kind, filters=filters_to_json(filters), created_by=actor,
        file_name=export_filename(kind, filters),
    )
    from reports.tasks import run_report_export  # the actor imports this module

    enqueue_on_commit(run_report_export, export.pk)
    return export


@transaction.atomic
def report_export_retry(*, export: ReportExport, actor) -> ReportExport:
    """Queue a failed (or stalled) export again, with the same report and filters."""
    export = ReportExport.objects.select_for_update().get(pk=export.pk)
    stalled = export.status == ExportStatus.RUNNING and export.updated_at < timezone.now() - STALE_AFTER
    if export.status != ExportStatus.FAILED and not stalled:
        raise ExportRefused(f"Export #{export.pk} is {export.get_status_display().lower()}: only a failed export is retried.")
    _remove_file(export)
    export.status, export.rows_done, export.rows_total, export.error = ExportStatus.QUEUED, 0, None, ""
    export.file_path, export.started_at, export.finished_at = "", None, None
    export.file_name = export_filename(export.kind, filters_from_json(export.filters))
    export.updated_at = timezone.now()
    export.save()
    from reports.tasks import run_report_export

    enqueue_on_commit(run_report_export, export.pk)
    return export


def _claim(export_id: int) -> ReportExport | None:
    """Queued → running, once: a second delivery of the same message finds it taken."""
    with transaction.atomic():
        export = ReportExport.objects.select_for_update().filter(pk=export_id).first()
        if export is None or export.status != ExportStatus.QUEUED:
            return None
        now = timezone.now()
        export.status, export.started_at, export.updated_at = ExportStatus.RUNNING, now, now
        export.save(update_fields=["status", "started_at", "updated_at"])
        return export


def _count(kind: str, filters: ReportFilters) -> int | None:
    if kind == ReportKind.LEDGER:
        return ledger_export.ledger_entries(filters).count()
    report = REPORTS[kind]
    return report.estimate(filters) if report.estimate else None


def report_export_run(*, export_id: int) -> ReportExport | None:
    """Write the export's CSV, recording progress after every chunk. Idempotent per export.

    Each progress step is its own short UPDATE (autocommit in the worker), so the admin sees it
    while the file is written; the ledger's rows come from a server-side cursor, so memory stays
    at one chunk. A failure is recorded on the export (the admin shows it and offers Retry).
    """
    export = _claim(export_id)
    if export is None:
        return None
    rows = ReportExport.objects.filter(pk=export.pk)
    partial = None
    try:
        filters = filters_from_json(export.filters)
        rows.update(rows_total=_count(export.kind, filters), updated_at=timezone.now())

        def progress(done: int) -> None:
            rows.update(rows_done=done, updated_at=timezone.now())

        partial = export_dir() / f"export_{export.pk}.csv.partial"
        with open(partial, "w", newline="", encoding="utf-8") as out:
            written = write_report_csv(out, export.kind, filters, progress=progress, chunk_size=CHUNK_SIZE)
        final = partial.with_suffix("")  # export_<pk>.csv
        os.replace(partial, final)
        now = timezone.now()
        rows.update(
            status=ExportStatus.DONE, rows_done=written, rows_total=written, file_path=final.name,
            finished_at=now, updated_at=now,
        )
    except Exception as exc:  # recorded for the admin, who can retry
        logger.exception("report export #%s failed", export.pk)
        if partial is not None:
            partial.unlink(missing_ok=True)
        now = timezone.now()
        rows.update(status=ExportStatus.FAILED, error=f"{type(exc).__name__}: {exc}", finished_at=now, updated_at=now)
    return ReportExport.objects.get(pk=export.pk)


def write_report_csv(out, kind: str, filters: ReportFilters, *, progress=None, chunk_size: int = CHUNK_SIZE) -> int:
    """The same CSV the admin streams, written to a file: the ledger through write_ledger_csv,
    every other report from its rows in chunks."""
    if kind == ReportKind.LEDGER:
        return ledger_export.write_ledger_csv(out, filters, progress=progress, chunk_size=chunk_size)
    report = REPORTS[kind]
    rows = iter(report.rows(filters))
    chunks = iter(lambda: [safe_row(row) for _, row in zip(range(chunk_size), rows)], [])
    return ledger_export.write_csv_chunks(out, report.header, chunks, progress=progress)


def _remove_file(export: ReportExport) -> None:
    path = export_file(export)
    if path is not None:
        path.unlink(missing_ok=True)


def report_exports_cleanup(*, older_than: timedelta = KEEP_FILES_FOR) -> int:
    """Delete exports (their file and their row) that finished more than `older_than` ago."""
    old = ReportExport.objects.filter(
        status__in=(ExportStatus.DONE, ExportStatus.FAILED), finished_at__lt=timezone.now() - older_than,
    )
    removed = 0
    for export in old.iterator():
        _remove_file(export)
        export.delete()
        removed += 1
    return removed
