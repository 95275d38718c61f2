"""Reads of money: the outstanding payments list."""
from __future__ import annotations

from django.db.models import Count, Min, Q, QuerySet

from core.models import PLACE_HOLDING
from payments.models import Purchase, PurchaseChannel, PurchaseStatus


def outstanding_purchases() -> QuerySet[Purchase]:
    """Desk purchases still unpaid, with the sessions already booked on them and the first one."""
    return (
        Purchase.objects.filter(status=PurchaseStatus.PENDING, channel=PurchaseChannel.DESK)
        .select_related("client", "pack")
        .annotate(
            sessions_used=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING)),
            first_session_at=Min("bookings__session__starts_at"),
        )
        .order_by("created_at", "pk")
    )
