"""Purchases: created with a snapshot of the pack, paid, then credited through the ledger."""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from catalog.models import CreditPack
from catalog.services import pack_price_for, pack_snapshot
from core.models import Client, StaffMember
from ledger.services import credits_issue_for_purchase
from payments.exceptions import InvalidPurchaseState, PackNotForSale
from payments.models import Purchase, PurchaseStatus


@transaction.atomic
def purchase_create(
    *, client: Client, pack: CreditPack, actor, staff_member: StaffMember | None = None,
) -> Purchase:
    """A pending purchase, priced and snapshotted from the database (never from the browser)."""
    pack = CreditPack.objects.select_related("category").get(pk=pack.pk)
    if not pack.published:
        raise PackNotForSale(f"{pack.name} is not published, so it cannot be sold.")
    if not pack.credit_lines.exists():
        raise PackNotForSale(f"{pack.name} has no credit lines.")
    if staff_member is not None and not pack.all_staff:
        if not pack.staff_prices.filter(staff_member=staff_member).exists():
            raise PackNotForSale(f"{pack.name} is not sold with {staff_member}.")
    purchase = Purchase(
        client=client, pack=pack, staff_member=staff_member,
        price=pack_price_for(pack, staff_member), currency=pack.currency,
        snapshot=pack_snapshot(pack), created_by=actor,
    )
    purchase._history_user = actor
    purchase.save()
    return purchase


@transaction.atomic
def purchase_mark_paid(
    *, purchase: Purchase, actor, paid_at: datetime | None = None,
) -> Purchase:
    """Record payment and issue the credits. Paying twice issues once."""
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if purchase.status == PurchaseStatus.PAID:
        credits_issue_for_purchase(purchase=purchase, actor=actor)
        return purchase
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidPurchaseState(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()} and cannot be paid."
        )
    purchase.status = PurchaseStatus.PAID
    purchase.paid_at = paid_at or timezone.now()
    purchase._history_user = actor
    purchase.save(update_fields=["status", "paid_at"])
    credits_issue_for_purchase(purchase=purchase, actor=actor)
    return purchase
