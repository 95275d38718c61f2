"""The finance reports: for each, its title, the filters it applies, its CSV columns and rows,
its on-page preview, and how many rows it may have (which decides streaming or background).

The admin (reports.admin) and the background export (reports.exports) both read this table, so
a report's CSV is the same whether it is streamed or written by the worker.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from ledger.models import ClientBalance
from reports import balances, ledger_export, revenue, valuation
from reports.filters import ReportFilters, as_of_moment
from reports.models import ReportKind

PREVIEW_ROWS = 50
IDENTITY = "opening + sales − redemptions − breakage − refunds + adjustments = closing"


def background_threshold() -> int:
    """Exports with more rows than this run in the background instead of streaming."""
    return int(getattr(settings, "REPORTS_BACKGROUND_ROWS", 50_000))


@dataclass
class Preview:
    """What the report page shows: a summary table (totals) and the first rows of the CSV."""

    summary_header: tuple[str, ...] = ()
    summary: list[tuple] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    total_rows: int | None = None  # None: all rows are shown
    notes: list[str] = field(default_factory=list)
    ties_out: bool | None = None


@dataclass(frozen=True)
class Report:
    kind: str
    description: str
    uses: tuple[str, ...]
    header: tuple[str, ...]
    rows: Callable[[ReportFilters], Iterable[tuple]]
    preview: Callable[[ReportFilters], Preview]
    # Rows the CSV will have (or an upper bound); None: always few (aggregates).
    estimate: Callable[[ReportFilters], int] | None = None
    always_background: bool = False
    dates_required: bool = False

    @property
    def title(self) -> str:
        return ReportKind(self.kind).label

    def is_background(self, filters: ReportFilters) -> bool:
        if self.always_background:
            return True
        return self.estimate is not None and self.estimate(filters) > background_threshold()


def _as_of(filters: ReportFilters) -> datetime:
    return as_of_moment(filters.end) if filters.end else timezone.now()


def _first(rows: Iterable[tuple]) -> list[tuple]:
    return list(islice(rows, PREVIEW_ROWS))


# --- 1. Purchases and revenue --------------------------------------------------------------


def _purchases_preview(filters: ReportFilters) -> Preview:
    rows = revenue.revenue(filters)
    totals = [r for r in rows if r.grouping == "total"]
    return Preview(
        summary_header=("currency", "payments", "gross", "refunds", "refunded", "net"),
        summary=[(r.currency, r.payments, r.gross, r.refunds, r.refunded, r.net) for r in totals],
        rows=[r.as_csv() for r in rows if r.grouping != "total"],
        notes=["Gross: payments received in the period. Refunds: refunds that succeeded in the period."],
    )


# --- 2. The credit ledger ------------------------------------------------------------------


def _ledger_preview(filters: ReportFilters) -> Preview:
    by_kind = (
        ledger_export.ledger_entries(filters).order_by().values("kind")
        .annotate(n=Count("pk"), credits=Coalesce(Sum("amount"), 0)).order_by("kind")
    )
    summary = [(row["kind"], row["n"], row["credits"]) for row in by_kind]
    total = sum(n for _, n, _ in summary)
    summary.append(("all", total, sum(c for _, _, c in summary)))
    return Preview(
        summary_header=("kind", "entries", "credits"), summary=summary,
        rows=ledger_export.ledger_preview_rows(filters, PREVIEW_ROWS), total_rows=total,
    )


def _ledger_rows(filters: ReportFilters) -> Iterable[tuple]:
    for chunk in ledger_export.query_chunks(ledger_export.ledger_rows(filters), 5000):
        yield from (chunk if ledger_export.formats_time_in_sql() else ledger_export.format_local(chunk))


# --- 3. Balances ---------------------------------------------------------------------------


def _balance_rows(filters: ReportFilters) -> Iterable[tuple]:
    for chunk in ledger_export.query_chunks(balances.balances_as_of(_as_of(filters), filters), 5000):
        yield from chunk


def _balances_estimate(filters: ReportFilters) -> int:
    # Every client and session type with any entry has a cached balance row: an upper bound on
    # the rows, counted on an index instead of summing the ledger twice.
    rows = ClientBalance.objects.all()
    if filters.session_type_id:
        rows = rows.filter(session_type_id=filters.session_type_id)
    if filters.category_id:
        rows = rows.filter(session_type__category_id=filters.category_id)
    return rows.count()


def _balances_preview(filters: ReportFilters) -> Preview:
    at = _as_of(filters)
    totals = balances.balance_totals(at, filters)
    return Preview(
        summary_header=("clients", "rows", "credits"),
        summary=[(totals["clients"], totals["rows"], totals["credits"])],
        rows=list(balances.balances_as_of(at, filters)[:PREVIEW_ROWS]), total_rows=totals["rows"],
    )


# --- 4. Deferred revenue and its roll-forward ------------------------------------------------


def _deferred_rows(filters: ReportFilters) -> list[tuple]:
    return [
        (r.currency, r.pack_name, r.session_type, r.credits, r.value)
        for r in valuation.deferred_revenue(_as_of(filters), filters)
    ]


def _deferred_preview(filters: ReportFilters) -> Preview:
    totals = valuation.deferred_revenue_total(_as_of(filters), filters)
    return Preview(
        summary_header=("currency", "deferred revenue"), summary=sorted(totals.items()),
        rows=_deferred_rows(filters),
        notes=["The value of unused credits at the end of the day: money taken for sessions not yet delivered."],
    )


ROLL_FORWARD_HEADER = (
    "currency", "opening", "sales", "redemptions", "breakage", "refunds", "adjustments", "closing",
    "difference", "ties_out",
)


def _roll_forward_rows(filters: ReportFilters) -> list[tuple]:
    return [
        (r.currency, r.opening, r.sales, r.redemptions, r.breakage, r.refunds, r.adjustments, r.closing,
         r.difference, "yes" if r.ties_out else "NO")
        for r in valuation.roll_forward(filters)
    ]


def _roll_forward_preview(filters: ReportFilters) -> Preview:
    rows = _roll_forward_rows(filters)
    return Preview(rows=rows, notes=[IDENTITY], ties_out=all(row[-1] == "yes" for row in rows))


# --- 5. Breakage, 6. Redemptions --------------------------------------------------------------


def _breakage_rows(filters: ReportFilters) -> list[tuple]:
    return [(r.currency, r.pack_name, r.session_type, r.credits, r.value) for r in valuation.breakage(filters)]


def _per_currency(rows: list[tuple], currency_at: int, numbers: tuple[int, ...]) -> list[tuple]:
    """Totals of a few (already aggregated) rows, per currency."""
    totals: dict[str, list] = {}
    for row in rows:
        sums = totals.setdefault(row[currency_at], [0] * len(numbers))
        for i, at in enumerate(numbers):
            sums[i] += row[at]
    return [(currency, *sums) for currency, sums in sorted(totals.items())]


def _breakage_preview(filters: ReportFilters) -> Preview:
    rows = _breakage_rows(filters)
    return Preview(summary_header=("currency", "credits", "value"), summary=_per_currency(rows, 0, (3, 4)), rows=rows)


def _redemption_rows(filters: ReportFilters) -> list[tuple]:
    return [
        (r.staff_member, r.session_type, r.currency, r.sessions, r.credits, r.value)
        for r in valuation.redemptions_by_staff(filters)
    ]


def _redemptions_preview(filters: ReportFilters) -> Preview:
    rows = _redemption_rows(filters)
    return Preview(
        summary_header=("currency", "sessions", "credits", "value"), summary=_per_currency(rows, 2, (3, 4, 5)),
        rows=rows,
    )


# --- 7. Outstanding payments -------------------------------------------------------------------


def _outstanding_preview(filters: ReportFilters) -> Preview:
    today = timezone.localdate()
    rows = balances.outstanding(filters, today)
    return Preview(
        summary_header=("currency", "ageing (days due)", "purchases", "amount"),
        summary=[(a.currency, a.bucket, a.purchases, a.amount) for a in balances.ageing(filters, today)],
        rows=[balances.outstanding_row(p, today) for p in rows[:PREVIEW_ROWS]], total_rows=rows.count(),
        notes=[f"As of today ({today:%d %b %Y}): unpaid desk sales and plan cycles, by days since due."],
    )


REPORTS: dict[str, Report] = {r.kind: r for r in (
    Report(
        ReportKind.PURCHASES, "Money received and refunded, per pack, staff member and payment method.",
        ("dates", "staff_member", "category", "pack"), revenue.HEADER, revenue.revenue_csv_rows,
        _purchases_preview,
    ),
    Report(
        ReportKind.LEDGER, "Every credit ledger entry, with client, session type, kind, amount and who made it.",
        ("dates", "staff_member", "category", "session_type", "pack"), ledger_export.LEDGER_HEADER,
        _ledger_rows, _ledger_preview, always_background=True,
    ),
    Report(
        ReportKind.BALANCES, "Credits each client holds per session type at the end of a day (non-zero only).",
        ("as_of", "category", "session_type"), balances.BALANCE_HEADER, _balance_rows, _balances_preview,
        estimate=_balances_estimate,
    ),
    Report(
        ReportKind.DEFERRED, "The value of unused credits at the end of a day, per pack and session type.",
        ("as_of", "staff_member", "category", "session_type", "pack"),
        ("currency", "pack", "session_type", "credits", "value"), _deferred_rows, _deferred_preview,
    ),
    Report(
        ReportKind.ROLL_FORWARD, f"Deferred revenue over a period: {IDENTITY}.",
        ("dates", "staff_member", "category", "session_type", "pack"), ROLL_FORWARD_HEADER,
        _roll_forward_rows, _roll_forward_preview, dates_required=True,
    ),
    Report(
        ReportKind.BREAKAGE, "Credits that expired unused in the period, and their value.",
        ("dates", "staff_member", "category", "session_type", "pack"),
        ("currency", "pack", "session_type", "credits", "value"), _breakage_rows, _breakage_preview,
    ),
    Report(
        ReportKind.REDEMPTIONS, "Sessions delivered per staff member and session type, and the revenue they released.",
        ("dates", "staff_member", "category", "session_type", "pack"),
        ("staff_member", "session_type", "currency", "sessions", "credits", "value"), _redemption_rows,
        _redemptions_preview,
    ),
    Report(
        ReportKind.OUTSTANDING, "Unpaid desk sales and plan cycles, aged 0-30, 31-60, 61-90 and 90+ days.",
        ("staff_member", "category", "pack"), balances.OUTSTANDING_HEADER, balances.outstanding_csv_rows,
        _outstanding_preview, estimate=lambda filters: balances.outstanding(filters).count(),
    ),
)}


def export_filename(kind: str, filters: ReportFilters, generated_at: datetime | None = None) -> str:
    """packdesk_breakage_2026-03-01_2026-03-31_generated_20261121T1030.csv: what and when."""
    report = REPORTS[kind]
    if "as_of" in report.uses:
        what = f"asof_{filters.end}" if filters.end else "asof_now"
    elif "dates" in report.uses:
        what = filters.describe()
    else:
        what = f"asof_{timezone.localdate()}"
    generated = timezone.localtime(generated_at or timezone.now()).strftime("%Y%m%dT%H%M")
    return f"packdesk_{kind}_{what}_generated_{generated}.csv"
