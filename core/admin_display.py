"""How bookings read on the front-desk pages: which credit paid, and what can be done next.

Every query here selects its related rows up front, so a page costs the same for 1 or 50 bookings.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet
from django.urls import reverse
from django.utils import timezone

from core.models import Booking, BookingStatus
from payments.models import PurchaseStatus

BOOKING_RELATED = (
    "client", "session__session_type", "session__staff_member", "used_entry__grant__purchase",
)
CLIENT_PAST_BOOKINGS_SHOWN = 20

STATUS_LABELS = {
    BookingStatus.BOOKED: "info",
    BookingStatus.ATTENDED: "success",
    BookingStatus.CANCELLED: "",
    BookingStatus.LATE_CANCELLED: "warning",
    BookingStatus.NO_SHOW: "danger",
}


@dataclass(frozen=True)
class PaidBy:
    text: str
    held_until_paid: bool = False  # a credit reserved by a pack sold on the spot, still unpaid
    purchase_id: int | None = None


def paid_by(booking: Booking) -> PaidBy:
    """The credit that paid for the visit: the grant, and the pack (as bought) it came from."""
    entry = booking.used_entry
    if entry is None:
        if not booking.session.session_type.requires_credit:
            return PaidBy("No credit needed")
        return PaidBy("—")
    grant = entry.grant
    purchase = grant.purchase
    if purchase is None:
        return PaidBy(f"Grant #{grant.pk} ({grant.get_source_display().lower()})")
    name = (purchase.snapshot or {}).get("name", "")
    held = grant.reservation and purchase.status == PurchaseStatus.PENDING
    return PaidBy(f"Grant #{grant.pk} · {name} (purchase #{purchase.pk})", held, purchase.pk)


@dataclass(frozen=True)
class BookingRow:
    """A booking with what the desk may do with it now (the services refuse the rest anyway)."""

    booking: Booking
    paid_by: PaidBy
    label: str
    can_cancel: bool
    can_attend: bool
    can_no_show: bool
    cancel_url: str
    attend_url: str
    no_show_url: str


def booking_rows(bookings, *, may_change: bool) -> list[BookingRow]:
    now = timezone.now()
    today = timezone.localdate()
    rows = []
    for booking in bookings:
        open_ = may_change and booking.status == BookingStatus.BOOKED
        starts = booking.session.starts_at
        rows.append(BookingRow(
            booking=booking,
            paid_by=paid_by(booking),
            label=STATUS_LABELS.get(booking.status, ""),
            can_cancel=open_,
            # The services' own rules: attended from the session's day, no-show once it started.
            can_attend=open_ and today >= timezone.localtime(starts).date(),
            can_no_show=open_ and now >= starts,
            cancel_url=reverse("admin:core_booking_cancel_booking", args=[booking.pk]),
            attend_url=reverse("admin:core_booking_mark_attended", args=[booking.pk]),
            no_show_url=reverse("admin:core_booking_mark_no_show", args=[booking.pk]),
        ))
    return rows


def bookings_for_session(session_id: int) -> QuerySet[Booking]:
    return (
        Booking.objects.filter(session_id=session_id).select_related(*BOOKING_RELATED)
        .order_by("client__name", "id")
    )


def bookings_for_client(client_id: int) -> dict:
    """Upcoming bookings (still booked, not yet started) and the most recent others: two queries."""
    now = timezone.now()
    base = Booking.objects.filter(client_id=client_id).select_related(*BOOKING_RELATED)
    upcoming = base.filter(status=BookingStatus.BOOKED, session__starts_at__gte=now)
    past = base.exclude(pk__in=upcoming.values("pk"))
    # One more than shown tells whether to offer "all bookings", without a count query.
    recent = list(past.order_by("-session__starts_at", "-id")[: CLIENT_PAST_BOOKINGS_SHOWN + 1])
    return {
        "upcoming": list(upcoming.order_by("session__starts_at", "id")),
        "past": recent[:CLIENT_PAST_BOOKINGS_SHOWN],
        "more_past": len(recent) > CLIENT_PAST_BOOKINGS_SHOWN,
    }
