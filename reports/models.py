"""Finance report exports: a CSV written in the background, with its progress and its file.

The reports themselves are reads (reports.revenue, reports.balances, reports.valuation,
reports.ledger_export); the one row we keep is the export job, so a large CSV survives the
request that asked for it, shows its progress, and is downloaded later through a
permission-checked admin view (reports.exports holds the files outside any public directory).
"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

VIEW_REPORTS = "reports.view_reports"


class ReportKind(models.TextChoices):
    PURCHASES = "purchases", "Purchases and revenue"
    LEDGER = "ledger", "Credit ledger"
    BALANCES = "balances", "Balances per client"
    DEFERRED = "deferred", "Deferred revenue"
    ROLL_FORWARD = "roll_forward", "Deferred revenue roll-forward"
    BREAKAGE = "breakage", "Breakage"
    REDEMPTIONS = "redemptions", "Redemptions per staff member"
    OUTSTANDING = "outstanding", "Outstanding payments and ageing"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ReportExport(models.Model):
    """One CSV export of one report with its filters, written by reports.tasks.run_report_export."""

    kind = models.CharField(max_length=20, choices=ReportKind.choices)
    # reports.filters.ReportFilters as JSON (reports.exports.filters_to_json), so a retry
    # writes exactly the same report.
    filters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    rows_done = models.PositiveIntegerField(default=0)
    # Counted when the export starts (null until then); rows written meanwhile may pass it, so
    # `percent` caps at 100 and the finished export records the rows it wrote.
    rows_total = models.PositiveIntegerField(null=True, blank=True)
    # What the download is called ("packdesk_ledger_2026-03-01_2026-03-31_generated_…csv") and
    # where it is, relative to reports.exports.export_dir(): never a public URL.
    file_name = models.CharField(max_length=200, blank=True)
    file_path = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Touched with every progress step: a running export silent for long has lost its worker.
    updated_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "report export"
        # The sidebar entry: the list page is the reports index (reports/admin.py).
        verbose_name_plural = "reports and exports"
        # Reading finance reports (every client's balances and payments) is its own permission,
        # held by Finance and Manager; the model's view/add/change/delete are not used alone.
        permissions = [("view_reports", "Can view and export finance reports")]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status="done") | (Q(finished_at__isnull=False) & ~Q(file_path="")),
                name="report_export_done_has_file",
            ),
        ]

    def __str__(self) -> str:
        return f"Export #{self.pk} {self.get_kind_display()} ({self.get_status_display().lower()})"

    @property
    def percent(self) -> int:
        if self.status == ExportStatus.DONE:
            return 100
        if not self.rows_total:
            return 0
        return min(100, self.rows_done * 100 // self.rows_total)
