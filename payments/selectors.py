"""Reads of money: the outstanding payments list."""
from __future__ import annotations

from django.db.models import Count, IntegerField, Min, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from core.models import PLACE_HOLDING
from payments.models import Purchase, PurchaseChannel, PurchaseStatus


def outstanding_purchases() -> QuerySet[Purchase]:
    """Desk purchases (and recurring plans' cycles, however billed) still unpaid, with the sessions already
    booked on them and the first one; a cycle also carries its plan's payments made so far,
    so finance sees the commitment the client is on (seed 001)."""
    paid_cycles = (
        Purchase.objects.filter(
            subscription_id=OuterRef("subscription_id"),
            status__in=(PurchaseStatus.PAID, PurchaseStatus.REFUNDED),
        )
        .order_by()
        .values("subscription_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Purchase.objects.filter(status=PurchaseStatus.PENDING)
        # Online purchases are checkouts in progress, except a plan's cycle Stripe failed to
        # collect (auto-debit): that is money owed like a desk sale.
        .filter(
            Q(channel=PurchaseChannel.DESK)
            | Q(subscription__isnull=False, stripe_checkout_session_id__isnull=True)
        )
        .select_related("client", "pack", "subscription")
        .annotate(
            sessions_used=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING)),
            first_session_at=Min("bookings__session__starts_at"),
            plan_payments_made=Coalesce(Subquery(paid_cycles, output_field=IntegerField()), 0),
        )
        .order_by("created_at", "pk")
    )
