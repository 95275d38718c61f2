"""Finance reports in the admin: the reports index (the sidebar's "Reports and exports"), each
report's page (filters, an on-page preview, Download CSV), background exports with their
progress, and the permission-checked download of a finished file.

Only orchestrates: the figures come from reports.registry (revenue, ledger, balances,
valuation), exports are created, run and retried by reports.exports. Every page needs the
reports.view_reports permission (Finance and Manager); anyone else gets 403.
"""
from __future__ import annotations

from itertools import chain
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.views.decorators.http import require_POST
from unfold.admin import ModelAdmin
from unfold.decorators import display

from core.admin import local_start
from reports.csv_safe import csv_lines
from reports.exports import (
    ExportRefused,
    STALE_AFTER,
    export_file,
    filters_from_json,
    report_export_create,
    report_export_retry,
)
from reports.forms import FILTER_LABELS, ReportFilterForm, filters_query
from reports.models import VIEW_REPORTS, ExportStatus, ReportExport
from reports.registry import REPORTS, Report, export_filename

STATUS_LABELS = {"queued": "info", "running": "warning", "done": "success", "failed": "danger"}
# The export list reloads itself this often while an export is queued or running.
REFRESH_SECONDS = 3


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such export.")
    return int(object_id)


def _period(export: ReportExport) -> str:
    filters = filters_from_json(export.filters)
    report = REPORTS.get(export.kind)
    if report is not None and "as_of" in report.uses:
        return f"as of {filters.end}" if filters.end else "now"
    return filters.describe().replace("_", " – ")


@admin.register(ReportExport)
class ReportExportAdmin(ModelAdmin):
    list_display = ("export", "report", "period", "state", "progress", "rows", "created", "by", "file")
    list_filter = ("status", "kind")
    list_select_related = ("created_by",)
    list_before_template = "reports/admin/report_index.html"
    readonly_fields = (
        "kind", "filters", "status", "rows_done", "rows_total", "file_name", "error", "created_by",
        "created_at", "started_at", "finished_at",
    )
    fields = readonly_fields
    show_full_result_count = False

    # Reading reports is the permission; exports are made from a report's page, never edited.
    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.has_perm(VIEW_REPORTS)

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.has_perm(VIEW_REPORTS)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _check(self, request) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    # --- The list: reports index above, exports below -----------------------------------------

    def changelist_view(self, request, extra_context=None):
        busy = ReportExport.objects.filter(status__in=(ExportStatus.QUEUED, ExportStatus.RUNNING)).exists()
        context = {
            "reports": [
                {"report": report, "url": reverse("admin:reports_report", args=[kind]),
                 "filters": ", ".join(FILTER_LABELS[name] for name in report.uses) or "none"}
                for kind, report in REPORTS.items()
            ],
            "refresh_seconds": REFRESH_SECONDS if busy else None,
            **(extra_context or {}),
        }
        return super().changelist_view(request, extra_context=context)

    @display(description="Export", ordering="pk")
    def export(self, obj: ReportExport):
        url = reverse("admin:reports_reportexport_change", args=[obj.pk])
        return format_html('<a href="{}">#{}</a>', url, obj.pk)

    @display(description="Report", ordering="kind")
    def report(self, obj: ReportExport) -> str:
        return obj.get_kind_display()

    @display(description="Period")
    def period(self, obj: ReportExport) -> str:
        return _period(obj)

    @display(description="Status", ordering="status", label=STATUS_LABELS)
    def state(self, obj: ReportExport):
        return obj.status, obj.get_status_display()

    @display(description="Progress")
    def progress(self, obj: ReportExport):
        if obj.status == ExportStatus.FAILED:
            return format_html('<span class="text-red-600" title="{}">{}</span>', obj.error, obj.error[:120])
        if obj.status == ExportStatus.RUNNING and not obj.rows_done:
            return "Preparing…"
        return format_html(
            '<div class="export-progress" data-percent="{}" title="{}%">'
            '<div class="bg-base-200 h-2 rounded-full w-32 dark:bg-base-700">'
            '<div class="bg-primary-600 h-2 rounded-full" style="width: {}%"></div></div>'
            '<span class="text-xs">{}%</span></div>',
            obj.percent, obj.percent, obj.percent, obj.percent,
        )

    @display(description="Rows")
    def rows(self, obj: ReportExport) -> str:
        if obj.rows_total is None:
            return "—"
        return f"{obj.rows_done:,} of {obj.rows_total:,}" if obj.status != ExportStatus.DONE else f"{obj.rows_done:,}"

    @display(description="Created", ordering="created_at")
    def created(self, obj: ReportExport) -> str:
        return local_start(obj.created_at)

    @display(description="By")
    def by(self, obj: ReportExport) -> str:
        return obj.created_by.get_username() if obj.created_by else "—"

    @display(description="File")
    def file(self, obj: ReportExport):
        if obj.status == ExportStatus.DONE:
            url = reverse("admin:reports_reportexport_download", args=[obj.pk])
            return format_html('<a class="text-primary-600 export-download" href="{}">{}</a>', url, obj.file_name)
        if obj.status == ExportStatus.FAILED or self._stalled(obj):
            url = reverse("admin:reports_reportexport_retry", args=[obj.pk])
            return format_html('<a class="text-primary-600 export-retry" href="{}">Retry</a>', url)
        return "—"

    @staticmethod
    def _stalled(obj: ReportExport) -> bool:
        return obj.status == ExportStatus.RUNNING and obj.updated_at < timezone.now() - STALE_AFTER

    # --- Extra pages ----------------------------------------------------------------------------

    def get_urls(self):
        view = self.admin_site.admin_view
        extra = [
            path("report/<str:kind>/", view(self.report_view), name="reports_report"),
            path("report/<str:kind>/csv/", view(self.report_csv_view), name="reports_report_csv"),
            path("report/<str:kind>/export/", view(require_POST(self.report_export_view)), name="reports_report_export"),
            path("<path:object_id>/download/", view(self.download_view), name="reports_reportexport_download"),
            path("<path:object_id>/retry/", view(self.retry_view), name="reports_reportexport_retry"),
        ]
        return extra + super().get_urls()

    def _report(self, request, kind: str) -> Report:
        self._check(request)
        report = REPORTS.get(kind)
        if report is None:
            raise Http404("No such report.")
        return report

    def _form(self, request, report: Report, data) -> ReportFilterForm:
        return ReportFilterForm(data, uses=report.uses, dates_required=report.dates_required)

    def report_view(self, request, kind: str):
        """The filter form, the preview (totals and up to 50 rows) and the way to the CSV."""
        report = self._report(request, kind)
        form = self._form(request, report, request.GET)
        preview = filters = None
        background = False
        if form.is_valid():
            filters = form.to_filters()
            preview = report.preview(filters)
            background = report.is_background(filters)
        query = urlencode(filters_query(filters, report.uses)) if filters else ""
        context = {
            **self.admin_site.each_context(request),
            "title": report.title,
            "opts": self.model._meta,
            "report": report,
            "form": form,
            "media": self.media + form.media,
            "uses": [FILTER_LABELS[name] for name in report.uses],
            "unused": [label for name, label in FILTER_LABELS.items() if name not in report.uses
                       and not (name == "as_of" and "dates" in report.uses)
                       and not (name == "dates" and "as_of" in report.uses)],
            "preview": preview,
            "background": background,
            "csv_url": reverse("admin:reports_report_csv", args=[kind]) + f"?{query}",
            "export_url": reverse("admin:reports_report_export", args=[kind]),
            "export_fields": filters_query(filters, report.uses) if filters else {},
            "exports_url": reverse("admin:reports_reportexport_changelist"),
        }
        return TemplateResponse(request, "reports/admin/report.html", context)

    def report_csv_view(self, request, kind: str):
        """Stream a small report's CSV; a large one is sent back to be exported in the background."""
        report = self._report(request, kind)
        form = self._form(request, report, request.GET)
        page = reverse("admin:reports_report", args=[kind]) + f"?{request.GET.urlencode()}"
        if not form.is_valid():
            return redirect(page)
        filters = form.to_filters()
        if report.is_background(filters):
            messages.warning(request, f"{report.title} is too large to download directly: export it in the background.")
            return redirect(page)
        lines = csv_lines(chain([report.header], report.rows(filters)))
        response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{export_filename(kind, filters)}"'
        return response

    def report_export_view(self, request, kind: str):
        report = self._report(request, kind)
        form = self._form(request, report, request.POST)
        if not form.is_valid():
            messages.error(request, "Check the filters: " + "; ".join(
                f"{name}: {' '.join(errors)}" for name, errors in form.errors.items()))
            return redirect(reverse("admin:reports_report", args=[kind]))
        try:
            export = report_export_create(kind=kind, filters=form.to_filters(), actor=request.user)
        except ExportRefused as exc:
            messages.error(request, str(exc))
            return redirect(reverse("admin:reports_report", args=[kind]))
        messages.success(request, f"Export #{export.pk} ({report.title}) queued: it appears below when done.")
        return redirect(reverse("admin:reports_reportexport_changelist"))

    def download_view(self, request, object_id):
        """The finished file, to staff with the reports permission only (never a public URL)."""
        self._check(request)
        export = ReportExport.objects.filter(pk=_pk(object_id)).first()
        if export is None or export.status != ExportStatus.DONE:
            raise Http404("No finished export with that number.")
        path = export_file(export)
        if path is None:
            raise Http404("This export's file has been removed: run the report again.")
        return FileResponse(open(path, "rb"), as_attachment=True, filename=export.file_name, content_type="text/csv")

    def retry_view(self, request, object_id):
        """GET: what a retry does; POST: queue it again (reports.exports.report_export_retry)."""
        self._check(request)
        export = ReportExport.objects.filter(pk=_pk(object_id)).first()
        if export is None:
            raise Http404("No such export.")
        back = reverse("admin:reports_reportexport_changelist")
        form = forms.Form(request.POST if request.method == "POST" else None)
        if form.is_valid():
            try:
                export = report_export_retry(export=export, actor=request.user)
            except ExportRefused as exc:
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Export #{export.pk} queued again.")
            return redirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Retry export #{export.pk}: {export.get_kind_display()}",
            "intro": (f"It failed: {export.error}. " if export.error else "")
            + "Retrying writes the same report with the same filters again, as a new file.",
            "submit_label": "Retry export",
            "cancel_url": back,
            "opts": self.model._meta,
            "form": form,
            "media": self.media,
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)
