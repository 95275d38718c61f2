"""The client's own page, opened from the signed link in their emails: /me/<token>/...

No login: the token is resolved on every request (core.portal_tokens), and every read or write is
scoped to the client it names. Writes go through the front desk's own services (actor=None: the
client), so booking and cancelling follow exactly the same rules and errors.
"""
from __future__ import annotations

from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.bookings import booking_cancel, booking_create, cancellation_deadline
from core.exceptions import BookingError
from core.models import Booking, BookingStatus, Session
from core.portal_selectors import (
    BOOKING_HORIZON,
    book_page,
    booking_of,
    client_page,
    open_sessions,
    paid_with,
    plan_of,
    plan_row,
)
from core.portal_tokens import PortalLinkExpired, PortalLinkInvalid, client_from_token
from ledger.exceptions import LedgerError

NEW_LINK_URL = "/me/link/"  # the "ask for a new link" page (core/portal_link.py)


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    response = render(request, template, {"business_name": settings.BUSINESS_NAME, **context}, status=status)
    # The URL is the client's key: keep it out of search engines and other sites' logs.
    # Not "no-referrer": browsers then send "Origin: null" on our own forms, which fails CSRF.
    response["X-Robots-Tag"] = "noindex"
    response["Referrer-Policy"] = "same-origin"
    return response


def _link_error(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    return _page(request, "portal/link_error.html", {"message": message, "new_link_url": NEW_LINK_URL, "expired": status == 410},
                 status=status)


def _not_found(request: HttpRequest, token: str, message: str) -> HttpResponse:
    return _page(request, "portal/not_found.html", {"token": token, "message": message}, status=404)


def with_client(view):
    """Resolve the token into request's client, or answer with the clear expired / invalid page."""

    @wraps(view)
    def wrapper(request: HttpRequest, token: str, *args, **kwargs):
        try:
            client = client_from_token(token)
        except PortalLinkExpired as exc:
            return _link_error(request, str(exc), status=410)
        except PortalLinkInvalid as exc:
            return _link_error(request, str(exc), status=403)
        return view(request, token, client, *args, **kwargs)

    return never_cache(wrapper)


def _home_url(token: str) -> str:
    return reverse("portal:home", args=[token])


@require_GET
@with_client
def home(request: HttpRequest, token: str, client) -> HttpResponse:
    context = {
        "token": token,
        "client": client,
        "first_name": (client.name.split() or [""])[0],
        "page": client_page(client),
    }
    return _page(request, "portal/home.html", context)


def _int_or_none(value: str | None) -> int | None:
    # isascii: "²".isdigit() is true, but int("²") raises.
    return int(value) if value and value.isascii() and value.isdigit() and len(value) < 12 else None


def _book_page(request: HttpRequest, token: str, client, *, error: str = "", status: int = 200) -> HttpResponse:
    type_id = _int_or_none(request.GET.get("session_type"))
    staff_id = _int_or_none(request.GET.get("staff"))
    data = book_page(client, session_type_id=type_id, staff_id=staff_id)
    context = {
        "token": token, "client": client, "page": data, "error": error,
        "type_id": type_id, "staff_id": staff_id, "weeks": BOOKING_HORIZON.days // 7,
        "query": urlencode({k: v for k, v in (("session_type", type_id), ("staff", staff_id)) if v}),
    }
    return _page(request, "portal/book.html", context, status=status)


@require_GET
@with_client
def book_list(request: HttpRequest, token: str, client) -> HttpResponse:
    return _book_page(request, token, client)


@require_POST
@with_client
def book(request: HttpRequest, token: str, client, session_id: str) -> HttpResponse:
    sid = _int_or_none(session_id)
    session = Session.objects.filter(pk=sid).first() if sid else None
    if session is None:
        return _not_found(request, token, "This session does not exist (any more).")
    # The portal books only what it would list (future, within the horizon, staff active); the
    # capacity and credit checks are left to booking_create so their text is the front desk's.
    if not open_sessions(client).filter(pk=session.pk).exists():
        reason = _why_not_open(client, session)
        if reason:
            return _book_page(request, token, client, error=reason, status=409)
    try:
        booking = booking_create(client=client, session=session, actor=None)
    except (BookingError, LedgerError) as exc:
        return _book_page(request, token, client, error=str(exc), status=409)
    paid = booking.used_entry
    cost = "" if paid is None else (" Included in your membership." if paid.amount == 0 else " One credit was used.")
    messages.success(request, f"Booked: {session}.{cost}")
    return HttpResponseRedirect(_home_url(token), status=303)


def _why_not_open(client, session: Session) -> str:
    """Refusals the portal adds to the front desk's: only sessions a client may book online."""
    now = timezone.now()
    if session.starts_at <= now:
        return "This session has already started: it can no longer be booked."
    if session.starts_at > now + BOOKING_HORIZON:
        return f"Sessions can be booked online up to {BOOKING_HORIZON.days // 7} weeks ahead."
    if not session.staff_member.active:
        return "This session is not open for booking. Please contact us."
    return ""  # full, already booked or no credit: booking_create says which, in its own words


@require_http_methods(["GET", "POST"])
@with_client
def cancel(request: HttpRequest, token: str, client, booking_id: str) -> HttpResponse:
    bid = _int_or_none(booking_id)
    booking = booking_of(client, bid) if bid else None
    if booking is None:
        return _not_found(request, token, "We could not find this booking.")
    now = timezone.now()
    in_time = now <= cancellation_deadline(booking.session)
    error, status = "", 200
    if booking.status != BookingStatus.BOOKED:
        error, status = f"This booking is already {booking.get_status_display().lower()}.", 409
    elif booking.session.starts_at <= now:
        error, status = "This session has already started: it can no longer be cancelled online.", 409
    elif request.method == "POST":
        # The client confirmed what the page said: if the window closed since, say so again first.
        if request.POST.get("expected") == "in_time" and not in_time:
            error, status = "The free cancellation window has just closed: read the page again.", 409
        else:
            extras = [e for e in booking.extras if e.status == BookingStatus.BOOKED]
            try:
                cancelled = booking_cancel(booking=booking, actor=None)
            except (BookingError, LedgerError) as exc:
                error, status = str(exc), 409
            else:
                messages.success(request, _cancelled_message(booking, cancelled, extras))
                return HttpResponseRedirect(_home_url(token), status=303)
    context = {
        "token": token, "client": client, "booking": booking, "in_time": in_time, "error": error,
        "deadline": cancellation_deadline(booking.session), "credit": paid_with(booking),
        "can_cancel": booking.status == BookingStatus.BOOKED and booking.session.starts_at > now,
        "extras": [(e, paid_with(e)) for e in booking.extras if e.status == BookingStatus.BOOKED],
        # An add-on sold at its price has no credit at stake: what happens is about its purchase.
        "priced": booking.purchase.status if booking.used_entry_id is None and booking.purchase_id else "",
    }
    return _page(request, "portal/cancel.html", context, status=status)


def _cancelled_message(before: Booking, booking: Booking, extras: list[Booking]) -> str:
    if booking.used_entry_id is not None:
        text = "your credit is back" if booking.status == BookingStatus.CANCELLED else "the credit was used"
    elif before.purchase_id is not None:
        # An add-on sold at its price: an unpaid purchase is cancelled with it (core.addons).
        from payments.models import Purchase, PurchaseStatus

        paid = Purchase.objects.filter(pk=before.purchase_id, status=PurchaseStatus.PAID).exists()
        text = "you paid for it: please ask us about a refund" if paid else "nothing to pay for it"
    else:
        text = "no credit was needed"
    # before.session: a cancelled add-on's own session leaves the diary (core.addons.addon_release).
    message = f"{'Removed' if before.main_booking_id else 'Cancelled'}: {before.session}; {text}."
    if extras:
        names = ", ".join(str(e.add_on_type) for e in extras)
        message += f" Cancelled with it: {names}."
    return message


@require_http_methods(["GET", "POST"])
@with_client
def plan_cancel(request: HttpRequest, token: str, client, plan_id: str) -> HttpResponse:
    """The client cancels their recurring plan: only once its minimum commitment is paid.

    Before that the page (and a POST anyway) says to contact the business, which may cancel or
    pause it (seed 001); the refusal is the service's own (CommitmentNotMet).
    """
    from payments.exceptions import PaymentError
    from payments.models import SubscriptionStatus
    from payments.subscriptions import subscription_cancel

    pid = _int_or_none(plan_id)
    plan = plan_of(client, pid) if pid else None
    if plan is None:
        return _not_found(request, token, "We could not find this plan.")
    error, status = "", 200
    if plan.status == SubscriptionStatus.CANCELLED:
        error, status = "This plan is already cancelled.", 409
    elif request.method == "POST":
        try:
            subscription_cancel(
                subscription=plan, actor=None, reason="Cancelled by the client on their page", by_client=True,
            )
        except PaymentError as exc:
            error, status = str(exc), 409
        else:
            messages.success(request, f"Your {plan.snapshot.get('name', 'plan')} is cancelled: no more payments.")
            return HttpResponseRedirect(_home_url(token), status=303)
    context = {"token": token, "client": client, "row": plan_row(plan), "error": error}
    return _page(request, "portal/plan_cancel.html", context, status=status)
