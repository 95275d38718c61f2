"""Writes to bookings: book with a credit (or a pack sold on the spot), cancel, attend, no-show.

Lock order: the session row (capacity), then the ledger's own order (balance, then grants).
A booking group (a main booking and its add-ons, core.addons) moves together: the main booking's
row is locked first, then its add-ons' rows in key order, then the ledger.
"""
from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from catalog.models import CreditPack
from core.exceptions import (
    AlreadyBooked,
    InvalidBookingChange,
    PermissionRefused,
    SessionFull,
)
from core.models import PLACE_HOLDING, Booking, BookingStatus, BusinessSettings, Client, Session
from ledger.exceptions import NoCreditAvailable
from ledger.services import credit_forfeit, credit_redeem, credit_return, credits_reserve_for_purchase

OVERRIDE_PERMISSION = "core.override_credit_rules"
RETURN, FORFEIT = "return", "forfeit"


def redeem_for_booking(booking: Booking, session: Session, actor):
    return credit_redeem(
        client=booking.client, session_type=session.session_type, at=session.starts_at,
        staff_member=session.staff_member, actor=actor, booking_id=booking.pk,
        idempotency_key=f"booking:{booking.pk}:use", note=f"Booking #{booking.pk}: {session}",
    )


@transaction.atomic
def booking_create(
    *, client: Client, session: Session, actor, sell_pack: CreditPack | None = None,
) -> Booking:
    """Book a client on a session, paying with a credit.

    With `sell_pack` and no usable credit, the pack is sold on the spot: one of its credits holds
    the booking and the rest are released when the purchase is paid ("prepaid only" forbids it).
    """
    from payments.services import purchase_create  # payments builds on core; imported late

    session = Session.objects.select_for_update().select_related("session_type", "staff_member").get(pk=session.pk)
    if client.archived:
        raise InvalidBookingChange(f"{client.name} is archived: unarchive the client to book them.")
    holding = Booking.objects.filter(session=session, status__in=PLACE_HOLDING)
    if holding.filter(client=client).exists():
        raise AlreadyBooked(f"{client.name} is already booked on this session.")
    taken = holding.count()
    if taken >= session.capacity:
        raise SessionFull(f"This session is full ({taken} of {session.capacity} places taken).")
    booking = Booking(client=client, session=session, booked_by=actor)
    booking._history_user = actor
    booking.save()
    if not session.session_type.requires_credit:
        return booking
    try:
        booking.used_entry = redeem_for_booking(booking, session, actor)
    except NoCreditAvailable:
        if sell_pack is None:
            raise
        if BusinessSettings.current().prepaid_only:
            raise InvalidBookingChange(
                "Prepaid only: this business books clients only once their pack is paid. "
                "Sell the pack and record the payment first."
            )
        booking.purchase = purchase_create(
            client=client, pack=sell_pack, staff_member=session.staff_member, actor=actor,
            for_booking_id=booking.pk,
        )
        credits_reserve_for_purchase(
            purchase=booking.purchase, session_type=session.session_type, actor=actor, at=session.starts_at
        )
        booking.used_entry = redeem_for_booking(booking, session, actor)
    booking.save(update_fields=["used_entry", "purchase"])
    return booking


def _check_override(actor, override: str | None, reason: str) -> None:
    if override is None:
        return
    if override not in (RETURN, FORFEIT):
        raise InvalidBookingChange("Override must be 'return' or 'forfeit'.")
    if actor is None or not actor.has_perm(OVERRIDE_PERMISSION):
        raise PermissionRefused("Only staff allowed to override credit rules can choose the outcome.")
    if not reason.strip():
        raise InvalidBookingChange("Give a reason for overriding the credit rule: it is kept in the ledger.")


def _settle_credit(booking: Booking, *, give_back: bool, actor, note: str) -> None:
    if booking.used_entry_id is None:
        return
    if give_back:
        credit_return(used_entry=booking.used_entry, actor=actor, note=note)
    else:
        credit_forfeit(used_entry=booking.used_entry, actor=actor, note=note)


def cancellation_deadline(session: Session):
    return session.starts_at - timedelta(hours=session.session_type.cancellation_window_hours)


def _lock(booking: Booking) -> Booking:
    return (
        Booking.objects.select_for_update(of=("self",))
        .select_related("session__session_type", "client", "used_entry__grant")
        .get(pk=booking.pk)
    )


def _lock_add_ons(main: Booking) -> list[Booking]:
    """The main booking's add-ons still booked, locked in key order (after the main's row)."""
    if main.main_booking_id is not None:
        return []  # an add-on has no add-ons of its own
    return list(
        Booking.objects.select_for_update(of=("self",))
        .select_related("session__session_type", "client", "used_entry__grant")
        .filter(main_booking=main, status=BookingStatus.BOOKED)
        .order_by("pk")
    )


def _close(booking: Booking, *, status: str, actor, now, note: str | None = None) -> None:
    booking.status, booking.closed_at, booking.closed_by = status, now, actor
    fields = ["status", "closed_at", "closed_by"]
    if note is not None:
        booking.outcome_note = note[:300]
        fields.append("outcome_note")
    booking._history_user = actor
    booking.save(update_fields=fields)


def _add_on_note(add_on: Booking, what: str, *, give_back: bool, override: str | None, reason: str) -> str:
    """An add-on's outcome note: what happened, and its credit's fate when it used one."""
    note = f"Add-on booking #{add_on.pk} {what}"
    if add_on.used_entry_id is not None:
        note += f", credit {'returned' if give_back else 'forfeited'}"
    return note + (f" (override: {reason})" if override else "")


def _release(add_on: Booking, *, actor) -> None:
    """A cancelled add-on: its unpaid purchase cancelled and its time freed (core.addons)."""
    from core.addons import addon_release  # add-ons build on bookings

    addon_release(add_on, actor=actor)


@transaction.atomic
def booking_cancel(*, booking: Booking, actor, override: str | None = None, reason: str = "") -> Booking:
    """Cancel: in time returns the credit, late forfeits it; an override chooses, with a reason.

    Cancelling a main booking cancels its add-ons too, under the main booking's deadline and the
    same choice (returned or forfeited); a cancelled add-on's unpaid purchase is cancelled and its
    time freed in the staff member's diary. An add-on cancelled on its own follows its own deadline.
    """
    reason = (reason or "").strip()
    _check_override(actor, override, reason)
    booking = _lock(booking)
    if booking.status != BookingStatus.BOOKED:
        raise InvalidBookingChange(
            f"This booking is {booking.get_status_display().lower()}; only a booked one can be cancelled."
        )
    add_ons = _lock_add_ons(booking)
    now = timezone.now()
    in_time = now <= cancellation_deadline(booking.session)
    give_back = in_time if override is None else override == RETURN
    status = BookingStatus.CANCELLED if in_time else BookingStatus.LATE_CANCELLED
    outcome = "credit returned" if give_back else "credit forfeited"
    timing = "cancelled in time" if in_time else "late cancellation"
    note = f"Booking #{booking.pk} {timing}, {outcome}" + (f" (override: {reason})" if override else "")
    _settle_credit(booking, give_back=give_back, actor=actor, note=note)
    _close(booking, status=status, actor=actor, now=now, note=note)
    if booking.main_booking_id is not None:
        _release(booking, actor=actor)
    for add_on in add_ons:
        what = f"cancelled with its main booking #{booking.pk} ({timing})"
        add_on_note = _add_on_note(add_on, what, give_back=give_back, override=override, reason=reason)
        _settle_credit(add_on, give_back=give_back, actor=actor, note=add_on_note)
        _close(add_on, status=status, actor=actor, now=now, note=add_on_note)
        _release(add_on, actor=actor)
    return booking


@transaction.atomic
def booking_mark_attended(*, booking: Booking, actor) -> Booking:
    """Attended; a main booking's add-ons still booked are marked attended with it.

    (An add-on that did not happen is cancelled first; it can also be marked on its own.)
    """
    booking = _lock(booking)
    if booking.status != BookingStatus.BOOKED:
        raise InvalidBookingChange(
            f"This booking is {booking.get_status_display().lower()}; only a booked one can be marked attended."
        )
    if timezone.localdate() < timezone.localtime(booking.session.starts_at).date():
        raise InvalidBookingChange("A session can be marked attended from its day on, not before.")
    now = timezone.now()
    _close(booking, status=BookingStatus.ATTENDED, actor=actor, now=now)
    for add_on in _lock_add_ons(booking):
        _close(add_on, status=BookingStatus.ATTENDED, actor=actor, now=now)
    return booking


@transaction.atomic
def booking_mark_no_show(*, booking: Booking, actor, override: str | None = None, reason: str = "") -> Booking:
    """A no-show forfeits the credit; staff allowed to override may return it, with a reason.

    A main booking's add-ons still booked are no-shows with it, under the same choice.
    """
    reason = (reason or "").strip()
    _check_override(actor, override, reason)
    booking = _lock(booking)
    if booking.status != BookingStatus.BOOKED:
        raise InvalidBookingChange(
            f"This booking is {booking.get_status_display().lower()}; only a booked one can be a no-show."
        )
    now = timezone.now()
    if now < booking.session.starts_at:
        raise InvalidBookingChange("The session has not started yet: cancel the booking instead.")
    add_ons = _lock_add_ons(booking)
    give_back = override == RETURN
    note = f"Booking #{booking.pk} no-show, credit {'returned' if give_back else 'forfeited'}"
    if override:
        note += f" (override: {reason})"
    _settle_credit(booking, give_back=give_back, actor=actor, note=note)
    _close(booking, status=BookingStatus.NO_SHOW, actor=actor, now=now, note=note)
    for add_on in add_ons:
        what = f"no-show with its main booking #{booking.pk}"
        add_on_note = _add_on_note(add_on, what, give_back=give_back, override=override, reason=reason)
        _settle_credit(add_on, give_back=give_back, actor=actor, note=add_on_note)
        _close(add_on, status=BookingStatus.NO_SHOW, actor=actor, now=now, note=add_on_note)
    return booking
