"""The admin home: the day and the business at a glance.

Each figure is one set-based query, so the page costs the same number of queries for a studio
with ten clients or ten thousand. Periods are the business's local day, week (from Monday) and
month, whatever time zone the request came from. A section is computed and shown only to users
who may view the rows behind it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db.models import Count, Exists, F, OuterRef, Q, Subquery, Sum, Window
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode
from django.utils import timezone

from core.models import PLACE_HOLDING, Booking, BookingStatus, Client, Session
from ledger.models import CreditGrant, EntryKind, GrantState, LedgerEntry
from payments.models import Purchase, PurchaseStatus
from payments.selectors import outstanding_purchases

NOT_BOOKED_SHOWN = 10
EXPIRY_HORIZON = timedelta(days=7)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Money:
    currency: str
    amount: Decimal
    count: int


@dataclass
class Dashboard:
    today: date
    sessions_today: list[dict] | None = None
    credits_week: dict | None = None
    sales_month: list[Money] | None = None
    not_booked: dict | None = None
    expiring: dict | None = None
    outstanding: list[Money] | None = None
    links: dict[str, str] = field(default_factory=dict)


def _local_midnight(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_default_timezone())


def periods(now: datetime) -> dict[str, Period]:
    """Today, this week (Monday to Monday) and this month, in the business's time zone."""
    today = timezone.localtime(now, timezone.get_default_timezone()).date()
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)
    next_first = (first + timedelta(days=32)).replace(day=1)
    return {
        "today": Period(_local_midnight(today), _local_midnight(today + timedelta(days=1))),
        "week": Period(_local_midnight(monday), _local_midnight(monday + timedelta(days=7))),
        "month": Period(_local_midnight(first), _local_midnight(next_first)),
    }


# --- Figures (one query each) ------------------------------------------------------------


def sessions_today(period: Period) -> list[dict]:
    rows = (
        Session.objects.filter(starts_at__gte=period.start, starts_at__lt=period.end)
        .annotate(booked=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING)))
        .values(
            "pk", "starts_at", "ends_at", "capacity", "booked",
            type_name=F("session_type__name"), staff_name=F("staff_member__display_name"),
        )
        .order_by("starts_at", "pk")
    )
    return [{**row, "full": row["booked"] >= row["capacity"]} for row in rows]


def credits_in_period(period: Period) -> dict:
    """Credits issued, used by bookings, and given back by cancellations (or overrides)."""
    totals = LedgerEntry.objects.filter(
        created_at__gte=period.start, created_at__lt=period.end
    ).aggregate(
        issued=Sum("amount", filter=Q(kind=EntryKind.ISSUED), default=0),
        used=Sum("amount", filter=Q(kind=EntryKind.USED), default=0),
        returned=Sum("amount", filter=Q(kind=EntryKind.RETURNED), default=0),
    )
    # Used entries carry negative amounts; shown as credits consumed.
    return {"issued": totals["issued"], "used": -totals["used"], "returned": totals["returned"]}


def _money_by_currency(purchases) -> list[Money]:
    rows = purchases.order_by().values("currency").annotate(
        amount=Sum("price"), count=Count("pk")
    ).order_by("currency")
    return [Money(r["currency"], r["amount"], r["count"]) for r in rows]


def sales_in_period(period: Period) -> list[Money]:
    return _money_by_currency(
        Purchase.objects.filter(
            status=PurchaseStatus.PAID, paid_at__gte=period.start, paid_at__lt=period.end
        )
    )


def outstanding_totals() -> list[Money]:
    # Totalled over the selector's rows by id: its per-purchase booking counts join bookings,
    # which would count a purchase's price once per booking if summed directly.
    return _money_by_currency(
        Purchase.objects.filter(pk__in=outstanding_purchases().values("pk"))
    )


def clients_not_booked(limit: int = NOT_BOOKED_SHOWN) -> dict:
    """Active clients whose latest paid purchase has no booking since it was bought."""
    last_paid = Purchase.objects.filter(
        client=OuterRef("pk"), status=PurchaseStatus.PAID
    ).order_by("-created_at", "-pk")
    booked_since = Booking.objects.filter(client=OuterRef("pk")).exclude(
        status=BookingStatus.CANCELLED
    ).filter(
        # A pack sold on the spot is created just after the booking it pays for.
        Q(created_at__gte=OuterRef("last_bought_at"))
        | Q(purchase__created_at__gte=OuterRef("last_bought_at"))
    )
    clients = (
        Client.objects.filter(archived=False)
        .annotate(
            last_bought_at=Subquery(last_paid.values("created_at")[:1]),
            last_pack=Subquery(last_paid.values("snapshot__name")[:1]),
        )
        .filter(last_bought_at__isnull=False)
        .exclude(Exists(booked_since))
        # The total rides along on each row, so the count and the first names are one query.
        .annotate(total=Window(Count("pk")))
        .order_by("-last_bought_at", "pk")
        .values("pk", "name", "last_bought_at", "last_pack", "total")[:limit]
    )
    rows = [{**row, "url": _link("core_client_change", "", row["pk"])} for row in clients]
    return {"count": rows[0]["total"] if rows else 0, "clients": rows}


def credits_expiring(now: datetime, horizon: timedelta = EXPIRY_HORIZON) -> dict:
    totals = CreditGrant.objects.filter(
        state=GrantState.ACTIVE, remaining__gt=0, expires_at__gt=now, expires_at__lte=now + horizon,
    ).aggregate(credits=Sum("remaining", default=0), clients=Count("client", distinct=True))
    return {**totals, "until": now + horizon}


# --- Page --------------------------------------------------------------------------------


def _link(name: str, query: str = "", *args) -> str:
    try:
        url = reverse(f"admin:{name}", args=args)
    except NoReverseMatch:
        return ""
    return f"{url}?{query}" if query else url


def build_dashboard(user, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    span = periods(now)
    board = Dashboard(today=span["today"].start.date())
    can = user.has_perm
    if can("core.view_session"):
        board.sessions_today = sessions_today(span["today"])
        board.links["sessions"] = _link(
            "core_session_changelist", f"starts_at__date={board.today.isoformat()}"
        )
    if can("ledger.view_ledgerentry"):
        board.credits_week = credits_in_period(span["week"])
        board.links["ledger"] = _link("ledger_ledgerentry_changelist")
    if can("payments.view_purchase"):
        board.sales_month = sales_in_period(span["month"])
        board.links["purchases"] = _link("payments_purchase_changelist", "status__exact=paid")
    if can("core.view_client") and can("payments.view_purchase"):
        board.not_booked = clients_not_booked()
    if can("ledger.view_creditgrant"):
        board.expiring = credits_expiring(now)
        board.links["expiring"] = _link("ledger_creditgrant_changelist", urlencode({
            "state__exact": GrantState.ACTIVE, "remaining__gt": 0,
            "expires_at__gt": now.isoformat(), "expires_at__lte": board.expiring["until"].isoformat(),
        }))
    if can("payments.view_outstandingpurchase"):
        board.outstanding = outstanding_totals()
        board.links["outstanding"] = _link("payments_outstandingpurchase_changelist")
    return board


def dashboard_callback(request, context: dict) -> dict:
    """unfold's DASHBOARD_CALLBACK: adds the figures to the admin home's context."""
    context["dashboard"] = build_dashboard(request.user)
    context["title"] = "Dashboard"
    return context
