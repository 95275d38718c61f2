"""Admin for reconciliation: run it for a date range, read a run's lines grouped by mismatch,
settle each mismatch (confirmation pages), and export a run as CSV.

Only orchestrates: payments.reconciliation runs and exports, payments.reconciliation_resolve
settles, and their refusals are shown as messages. Registered from payments.admin.
"""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from unfold.admin import ModelAdmin
from unfold.decorators import action, display
from unfold.widgets import UnfoldAdminSingleDateWidget, UnfoldAdminTextareaWidget

from core.admin import ReadOnlyAdminMixin, error_text, local_start
from core.admin_base import next_url
from ledger.exceptions import LedgerError
from reports.csv_safe import csv_lines
from payments.exceptions import PaymentError
from payments.models import (
    MismatchKind,
    ReconciliationLine,
    ReconciliationRun,
    ReconciliationStatus,
    Resolution,
)
from payments.money import from_minor
from payments.reconciliation import period_of_days, reconciliation_csv_rows, reconciliation_run
from payments.reconciliation_resolve import EXPLAIN, ISSUE_CREDITS, VOID, reconciliation_resolve

RESOLVE_PERMISSION = "payments.change_reconciliationline"
# Run in the request, so the admin keeps it short; longer periods: `manage.py reconcile_stripe`.
MAX_DAYS = 31
# The detail page lists every mismatch; matched lines beyond this are in the lines list.
MATCHED_SHOWN = 200
STATUS_LABELS = {"running": "info", "done": "success", "failed": "danger"}
RESOLUTION_LABELS = {"open": "warning", "resolved": "success", "explained": "info"}
ACTIONS = {  # action → (button, kinds it fits, what it does, its admin URL name)
    ISSUE_CREDITS: ("Issue credits", (MismatchKind.PAID_NO_CREDITS,),
                    "Records Stripe's payment on the purchase (when it is still pending) and issues its credits.",
                    "issue_credits"),
    VOID: ("Void credits", (MismatchKind.CREDITS_NO_PAYMENT,),
           "Cancels the unpaid purchase and voids its unused credits (used credits stay used).", "void_credits"),
    EXPLAIN: ("Explain", tuple(MismatchKind), "Marks the line explained: say why it is fine or what was done.", "explain"),
}


def period_text(run: ReconciliationRun) -> str:
    first = timezone.localtime(run.period_start).date()
    last = (timezone.localtime(run.period_end) - timedelta(microseconds=1)).date()
    return f"{first:%d %b %Y}" if first == last else f"{first:%d %b %Y} – {last:%d %b %Y}"


def _money(minor, currency: str) -> str:
    return "—" if minor is None else f"{from_minor(minor, currency)} {currency}"


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such object.")
    return int(object_id)


class RunForm(forms.Form):
    date_from = forms.DateField(label="From", widget=UnfoldAdminSingleDateWidget())
    date_to = forms.DateField(label="To (included)", widget=UnfoldAdminSingleDateWidget())

    def clean(self):
        data = super().clean()
        first, last = data.get("date_from"), data.get("date_to")
        if first and last:
            if last < first:
                raise forms.ValidationError("The period must end on or after its first day.")
            if first > timezone.localdate():
                raise forms.ValidationError("The period cannot start in the future.")
            if (last - first).days + 1 > MAX_DAYS:
                raise forms.ValidationError(
                    f"Reconcile at most {MAX_DAYS} days here (it runs while you wait); "
                    "use `manage.py reconcile_stripe` for a longer period."
                )
        return data


class NoteForm(forms.Form):
    note = forms.CharField(
        required=False, max_length=2000, widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}),
        help_text="Kept with the line (and on any voided credits' ledger entries).",
    )


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(ModelAdmin):
    list_display = ("run", "period", "state", "transactions", "mismatches", "open_count", "started", "started_by")
    list_filter = ("status",)
    list_select_related = ("created_by",)
    actions_list = ["run_now"]
    actions_row = ["export_csv"]
    show_full_result_count = False

    def get_queryset(self, request):
        still_open = Q(lines__resolution=Resolution.OPEN) & ~Q(lines__mismatch="")
        return super().get_queryset(request).annotate(open_lines=Count("lines", filter=still_open))

    # A run is a record: it is made by running it (the add page) and never edited or deleted.
    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_export_permission(self, request, obj=None) -> bool:
        return self.has_view_permission(request)

    @display(description="Run", ordering="pk")
    def run(self, obj: ReconciliationRun):
        url = reverse("admin:payments_reconciliationrun_change", args=[obj.pk])
        return format_html('<a href="{}">#{}</a>', url, obj.pk)

    @display(description="Period", ordering="period_start")
    def period(self, obj: ReconciliationRun) -> str:
        return period_text(obj)

    @display(description="Status", ordering="status", label=STATUS_LABELS)
    def state(self, obj: ReconciliationRun):
        return obj.status, obj.get_status_display()

    @display(description="Open", ordering="open_lines")
    def open_count(self, obj: ReconciliationRun) -> int:
        return obj.open_lines

    @display(description="Started", ordering="started_at")
    def started(self, obj: ReconciliationRun) -> str:
        return local_start(obj.started_at)

    @display(description="By")
    def started_by(self, obj: ReconciliationRun) -> str:
        return obj.created_by.get_username() if obj.created_by else "Scheduler"

    def add_view(self, request, form_url="", extra_context=None):
        """Run reconciliation now for a range of local days (synchronously, up to MAX_DAYS)."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        yesterday = timezone.localdate() - timedelta(days=1)
        initial = {"date_from": request.GET.get("date_from") or yesterday, "date_to": request.GET.get("date_to") or yesterday}
        form = RunForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            start, end = period_of_days(form.cleaned_data["date_from"], form.cleaned_data["date_to"])
            try:
                run = reconciliation_run(period_start=start, period_end=end, actor=request.user)
            except PaymentError as exc:
                form.add_error(None, error_text(exc))
            else:
                if run.status == ReconciliationStatus.FAILED:
                    messages.error(request, f"Reconciliation #{run.pk} failed: {run.error}")
                else:
                    messages.success(
                        request, f"Reconciliation #{run.pk} ({period_text(run)}): {run.transactions} Stripe "
                        f"transaction(s), {run.mismatches} mismatch(es).",
                    )
                return redirect(reverse("admin:payments_reconciliationrun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Run reconciliation",
            "intro": (
                "Reads Stripe's balance transactions (payments, refunds, disputes, fees, payouts) for these "
                "days, in the business's time zone, and matches each to our payments and refunds. It runs "
                f"while you wait, so at most {MAX_DAYS} days at a time. The scheduler reconciles each day "
                "on its own the night after."
            ),
            "submit_label": "Run reconciliation",
            "cancel_url": reverse("admin:payments_reconciliationrun_changelist"),
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The run's lines: each mismatch kind first, with its actions, then the matched lines."""
        run = ReconciliationRun.objects.select_related("created_by").filter(pk=_pk(object_id)).first()
        if run is None:
            raise Http404("No such reconciliation run.")
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        lines = run.lines.select_related("purchase__client", "refund", "resolved_by").order_by("occurred_at", "pk")
        mismatched = list(lines.exclude(mismatch=""))
        can_resolve = request.user.has_perm(RESOLVE_PERMISSION)
        groups = [
            {"kind": kind, "lines": [_row(line, can_resolve) for line in mismatched if line.mismatch == kind]}
            for kind in MismatchKind
        ]
        matched = lines.filter(mismatch="")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Reconciliation #{run.pk}: {period_text(run)}",
            "opts": self.model._meta,
            "run": run,
            "period": period_text(run),
            "groups": [g for g in groups if g["lines"]],
            "matched": [_row(line, False) for line in matched[:MATCHED_SHOWN]],
            "matched_count": matched.count(),
            "lines_url": reverse("admin:payments_reconciliationline_changelist") + f"?run__id__exact={run.pk}",
            "export_url": reverse("admin:payments_reconciliationrun_export_csv", args=[run.pk]),
            "rerun_url": reverse("admin:payments_reconciliationrun_add") + "?" + _dates_query(run),
            "can_run": self.has_add_permission(request),
        }
        return TemplateResponse(request, "payments/admin/reconciliation_run.html", context)

    @action(description="Run reconciliation", url_path="run", icon="play_arrow", permissions=["add"])
    def run_now(self, request):
        return redirect(reverse("admin:payments_reconciliationrun_add"))

    @action(description="Export CSV", url_path="export-csv", icon="download", permissions=["export"])
    def export_csv(self, request, object_id):
        """Every line with Stripe's and our figures and its resolution, then totals; streamed."""
        run = ReconciliationRun.objects.filter(pk=_pk(object_id)).first()
        if run is None:
            raise Http404("No such reconciliation run.")
        first = timezone.localtime(run.period_start).date()
        last = (timezone.localtime(run.period_end) - timedelta(microseconds=1)).date()
        generated = timezone.localtime().strftime("%Y%m%dT%H%M%S")
        response = StreamingHttpResponse(
            csv_lines(reconciliation_csv_rows(run)), content_type="text/csv; charset=utf-8",
        )
        response["Content-Disposition"] = (
            f'attachment; filename="reconciliation_{first:%Y-%m-%d}_{last:%Y-%m-%d}_run{run.pk}_{generated}.csv"'
        )
        return response


def _dates_query(run: ReconciliationRun) -> str:
    first = timezone.localtime(run.period_start).date()
    last = (timezone.localtime(run.period_end) - timedelta(microseconds=1)).date()
    return f"date_from={first:%Y-%m-%d}&date_to={last:%Y-%m-%d}"


def _row(line: ReconciliationLine, can_resolve: bool) -> dict:
    actions = []
    if can_resolve and line.mismatch and line.resolution == Resolution.OPEN:
        back = reverse("admin:payments_reconciliationrun_change", args=[line.run_id])
        for label, kinds, _, url_name in ACTIONS.values():
            if line.mismatch in kinds:
                url = reverse(f"admin:payments_reconciliationline_{url_name}", args=[line.pk])
                actions.append({"label": label, "url": f"{url}?{urlencode({'next': back})}"})
    return {
        "line": line,
        "occurred": local_start(line.occurred_at),
        "stripe": _money(line.amount, line.currency),
        "fee": _money(line.fee, line.currency),
        "ours": f"{line.our_amount} {line.our_currency}" if line.our_amount is not None else "—",
        "purchase_url": reverse("admin:payments_purchase_change", args=[line.purchase_id]) if line.purchase_id else "",
        "actions": actions,
    }


class MismatchFilter(admin.SimpleListFilter):
    title = "mismatch"
    parameter_name = "mismatch"

    def lookups(self, request, model_admin):
        return (("any", "Any mismatch"), *MismatchKind.choices, ("none", "Matched or informational"))

    def queryset(self, request, queryset):
        value = self.value()
        if value == "any":
            return queryset.exclude(mismatch="")
        if value == "none":
            return queryset.filter(mismatch="")
        if value in MismatchKind.values:
            return queryset.filter(mismatch=value)
        return queryset


@admin.register(ReconciliationLine)
class ReconciliationLineAdmin(ReadOnlyAdminMixin, ModelAdmin):
    """Lines are written by a run; only the actions below (services) change their resolution."""

    list_display = (
        "occurred", "run_link", "type", "stripe_amount", "our_figure", "purchase_link", "kind", "detail_short",
        "resolution_state", "resolved_by",
    )
    list_filter = (MismatchFilter, "resolution", "run")
    list_select_related = ("run", "purchase", "refund", "resolved_by")
    search_fields = ("balance_transaction_id", "source_id", "detail", "resolution_note")
    actions_row = [ISSUE_CREDITS, "void_credits", EXPLAIN]
    actions_detail = [ISSUE_CREDITS, "void_credits", EXPLAIN]
    show_full_result_count = False

    def has_resolve_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(RESOLVE_PERMISSION)

    @display(description="When", ordering="occurred_at")
    def occurred(self, obj: ReconciliationLine) -> str:
        return local_start(obj.occurred_at)

    @display(description="Run", ordering="run")
    def run_link(self, obj: ReconciliationLine):
        url = reverse("admin:payments_reconciliationrun_change", args=[obj.run_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.run_id, period_text(obj.run))

    @display(description="Stripe", ordering="amount")
    def stripe_amount(self, obj: ReconciliationLine) -> str:
        return _money(obj.amount, obj.currency)

    @display(description="Ours", ordering="our_amount")
    def our_figure(self, obj: ReconciliationLine) -> str:
        return f"{obj.our_amount} {obj.our_currency}" if obj.our_amount is not None else "—"

    @display(description="Purchase")
    def purchase_link(self, obj: ReconciliationLine):
        if not obj.purchase_id:
            return "—"
        url = reverse("admin:payments_purchase_change", args=[obj.purchase_id])
        return format_html('<a href="{}">#{} {}</a>', url, obj.purchase_id, obj.purchase.snapshot.get("name", ""))

    @display(description="Mismatch", ordering="mismatch")
    def kind(self, obj: ReconciliationLine) -> str:
        return obj.get_mismatch_display() if obj.mismatch else "—"

    @display(description="Detail")
    def detail_short(self, obj: ReconciliationLine):
        return format_html('<span title="{}">{}</span>', obj.detail, Truncator(obj.detail).chars(90))

    @display(description="Resolution", ordering="resolution", label=RESOLUTION_LABELS)
    def resolution_state(self, obj: ReconciliationLine):
        if not obj.mismatch:
            return "", "—"
        return obj.resolution, obj.get_resolution_display()

    @action(description="Issue credits", url_path="issue-credits", icon="add_card", permissions=["resolve"])
    def issue_credits(self, request, object_id):
        return resolve_view(self, request, object_id, ISSUE_CREDITS)

    @action(description="Void credits", url_path="void-credits", icon="block", permissions=["resolve"])
    def void_credits(self, request, object_id):
        return resolve_view(self, request, object_id, VOID)

    @action(description="Explain", url_path="explain", icon="edit_note", permissions=["resolve"])
    def explain(self, request, object_id):
        return resolve_view(self, request, object_id, EXPLAIN)


def resolve_view(model_admin, request, object_id, action_name: str):
    """GET: what the action will do, and a note. POST: do it through the service."""
    line = ReconciliationLine.objects.select_related("run", "purchase__client", "refund").filter(pk=_pk(object_id)).first()
    if line is None:
        raise Http404("No such reconciliation line.")
    back = next_url(request, reverse("admin:payments_reconciliationrun_change", args=[line.run_id]))
    label, kinds, what, _ = ACTIONS[action_name]
    if line.mismatch not in kinds or line.resolution != Resolution.OPEN:
        messages.error(
            request, f"Line #{line.pk} is “{line.get_mismatch_display() or 'matched'}”, "
            f"{line.get_resolution_display().lower()}: “{label}” does not fit it.",
        )
        return redirect(back)
    form = NoteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            line = reconciliation_resolve(line=line, action=action_name, actor=request.user, note=form.cleaned_data["note"])
        except (PaymentError, LedgerError) as exc:
            form.add_error(None, error_text(exc))
        else:
            messages.success(request, f"Line #{line.pk} {line.get_resolution_display().lower()}: {line.resolution_note}")
            return redirect(back)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"{label}: reconciliation line #{line.pk}",
        "intro": what + (" A note is required." if action_name == EXPLAIN else ""),
        "submit_label": label,
        "cancel_url": back,
        "next": back,
        "opts": model_admin.model._meta,
        "line": line,
        "row": _row(line, False),
        "form": form,
        "media": model_admin.media + form.media,
    }
    return TemplateResponse(request, "payments/admin/reconciliation_confirm.html", context)
