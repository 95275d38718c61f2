"""Purchases: created with a snapshot of the pack, paid, then credited through the ledger."""
from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from decimal import Decimal

from catalog.models import CreditPack, RestrictTo
from catalog.services import pack_price_for, pack_snapshot
from core.models import Client, StaffMember
from ledger.services import credits_issue_for_purchase
from payments.exceptions import InvalidPayment, InvalidPurchaseState, PackNotForSale
from payments.models import Payment, PaymentMethod, Purchase, PurchaseChannel, PurchaseStatus


def client_has_booked(client: Client, *, excluding_booking_id: int | None = None) -> bool:
    """A client with any booking that was not cancelled in time counts as an existing member."""
    from core.models import Booking, BookingStatus

    bookings = Booking.objects.filter(client=client).exclude(status=BookingStatus.CANCELLED)
    return bookings.exclude(pk=excluding_booking_id).exists()


def check_restriction(pack: CreditPack, client: Client, *, excluding_booking_id: int | None = None) -> None:
    has_booked = client_has_booked(client, excluding_booking_id=excluding_booking_id)
    if pack.restrict_to == RestrictTo.NEW_JOINERS and has_booked:
        raise PackNotForSale(f"{pack.name} is for new joiners only, and {client.name} has booked before.")
    if pack.restrict_to == RestrictTo.ACTIVE_MEMBERS and not has_booked:
        raise PackNotForSale(f"{pack.name} is for existing members only, and {client.name} has not booked yet.")


@transaction.atomic
def purchase_create(
    *, client: Client, pack: CreditPack, actor, staff_member: StaffMember | None = None,
    channel: str = PurchaseChannel.DESK, for_booking_id: int | None = None,
) -> Purchase:
    """A pending purchase, priced and snapshotted from the database (never from the browser).

    `for_booking_id`: the booking this pack is sold on the spot to pay for. It is the booking
    being made, not a previous one, so "restrict to" leaves it out.
    """
    pack = CreditPack.objects.select_related("category").get(pk=pack.pk)
    if not pack.published:
        raise PackNotForSale(f"{pack.name} is not published, so it cannot be sold.")
    if not pack.credit_lines.exists():
        raise PackNotForSale(f"{pack.name} has no credit lines.")
    if staff_member is not None and not pack.all_staff:
        if not pack.staff_prices.filter(staff_member=staff_member).exists():
            raise PackNotForSale(f"{pack.name} is not sold with {staff_member}.")
    check_restriction(pack, client, excluding_booking_id=for_booking_id)
    purchase = Purchase(
        client=client, pack=pack, staff_member=staff_member,
        price=pack_price_for(pack, staff_member), currency=pack.currency,
        snapshot=pack_snapshot(pack), created_by=actor, channel=channel,
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
    if purchase.subscription_id is not None:
        from payments.subscriptions import plan_cycle_paid  # it builds on this module

        plan_cycle_paid(purchase, actor)
    credits_issue_for_purchase(purchase=purchase, actor=actor)
    return purchase


DESK_METHODS = (PaymentMethod.CASH, PaymentMethod.CARD_TERMINAL, PaymentMethod.BANK_TRANSFER)


@transaction.atomic
def payment_record(
    *, purchase: Purchase, method: str, amount: Decimal, actor, reference: str = "",
    received_at: datetime | None = None,
) -> Payment:
    """Record money taken at the desk for a purchase, mark it paid and release its credits."""
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if method not in DESK_METHODS:
        raise InvalidPayment("Record cash, card-terminal or bank-transfer payments here.")
    if purchase.status != PurchaseStatus.PENDING:
        raise InvalidPurchaseState(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: nothing to record."
        )
    if not isinstance(amount, Decimal) or amount != purchase.price:
        raise InvalidPayment(
            f"The amount must be the purchase's price, {purchase.price} {purchase.currency} "
            f"(got {amount})."
        )
    received_at = received_at or timezone.now()
    if received_at > timezone.now():
        raise InvalidPayment("A payment cannot be received in the future.")
    payment = Payment(
        purchase=purchase, method=method, amount=amount, currency=purchase.currency,
        reference=reference.strip(), received_at=received_at, recorded_by=actor,
    )
    payment._history_user = actor
    payment.save()
    purchase_mark_paid(purchase=purchase, actor=actor, paid_at=received_at)
    return payment
