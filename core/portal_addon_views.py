"""Add-ons on the client's own page (/me/<token>/bookings/<id>/extras/...), seed 003.

The client picks an extra for an upcoming booking, answers its intake form when it has one, and
confirms; core.addons.addon_attach (the front desk's own service, actor=None, channel "portal")
re-checks every rule in one transaction, so the page only shows and explains: what it says is
the service's own text. The intake questions come first on the page and the confirm button last,
so nothing is added before the client has answered them and read what it costs.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from catalog.models import SessionType
from core.addons import CREDIT, MAX_TEXT_ANSWER, PORTAL, PRICE, addon_attach, addon_options
from core.exceptions import AddOnBlocked, BookingError, IntakeIncomplete
from core.models import PLACE_HOLDING, Booking, BookingStatus
from core.portal_selectors import booking_of
from core.portal_views import _home_url, _int_or_none, _not_found, _page, with_client
from ledger.exceptions import LedgerError

YES_NO = (("yes", "Yes"), ("no", "No"))
ANSWER_MAX = MAX_TEXT_ANSWER  # a free-text answer; the page's textarea says so too
NOTHING_TO_ADD = "There are no extras to add to this session."


@dataclass
class OptionRow:
    """One extra as the client reads it on a phone."""

    option: object  # core.addons.AddOnOption
    name: str
    minutes: int
    cost: str  # "Uses 1 of your Hot stones credits" / "£25.00, pay at your visit"


def _money(amount, currency: str) -> str:
    from payments.public_views import money  # payments builds on core; imported late

    return money(amount, currency)


def _row(option) -> OptionRow:
    session_type = option.session_type
    minutes = int((option.ends_at - option.starts_at).total_seconds() // 60) or session_type.duration_minutes
    if option.pays_with == CREDIT:
        cost = f"Uses 1 of your {session_type.name} credits"
    elif option.pays_with == PRICE and option.price is not None:
        cost = f"{_money(option.price, option.currency)}, pay at your visit"
    else:
        cost = ""
    return OptionRow(option=option, name=session_type.name, minutes=minutes, cost=cost)


def _main_booking(client, booking_id: str) -> Booking | None:
    bid = _int_or_none(booking_id)
    booking = booking_of(client, bid) if bid else None
    # Extras belong to the main booking of a group: an add-on's own id finds nothing to add to.
    return booking if booking is not None and booking.main_booking_id is None else None


def _why_none(booking: Booking) -> str:
    """Why a booking offers no extras, in the client's words."""
    if booking.status != BookingStatus.BOOKED:
        return f"This booking is {booking.get_status_display().lower()}: extras can't be added to it."
    if booking.session.starts_at <= timezone.now():
        return "This session has already started: extras can no longer be added."
    return NOTHING_TO_ADD


def _already_added(booking: Booking, add_on_type_id: int) -> bool:
    """Read afresh: another request may have added it since this one loaded the booking."""
    return Booking.objects.filter(
        main_booking=booking, add_on_type_id=add_on_type_id, status__in=PLACE_HOLDING
    ).exists()


@require_GET
@with_client
def extras(request: HttpRequest, token: str, client, booking_id: str) -> HttpResponse:
    booking = _main_booking(client, booking_id)
    if booking is None:
        return _not_found(request, token, "We could not find this booking.")
    rows = [_row(option) for option in addon_options(booking, channel=PORTAL)]
    context = {
        "token": token, "client": client, "booking": booking, "rows": rows,
        "none_reason": "" if rows else _why_none(booking),
    }
    return _page(request, "portal/extras.html", context)


def _answers(post, questions) -> dict[str, str]:
    # As typed: the service checks them (core.addons.intake_check), and its words are shown.
    return {str(question.pk): (post.get(f"q-{question.pk}") or "").strip() for question in questions}


def _form_page(request, token, client, booking, row: OptionRow, questions, *, answers=None, errors=None,
               status: int = 200) -> HttpResponse:
    answers, errors = answers or {}, errors or {}
    fields = [
        {"question": q, "name": f"q-{q.pk}", "value": answers.get(str(q.pk), ""), "error": errors.get(str(q.pk), "")}
        for q in questions
    ]
    context = {
        "token": token, "client": client, "booking": booking, "row": row, "form": row.option.intake_form,
        "fields": fields, "yes_no": YES_NO, "has_errors": bool(errors), "answer_max": ANSWER_MAX,
    }
    return _page(request, "portal/extra_add.html", context, status=status)


def _refused_page(request, token, client, booking, *, title: str, reason: str, blocked: bool) -> HttpResponse:
    context = {"token": token, "client": client, "booking": booking, "title": title, "reason": reason,
               "blocked": blocked}
    return _page(request, "portal/extra_refused.html", context, status=409)


def _added_message(extra: Booking, booking: Booking) -> str:
    session = extra.session
    when = f"{timezone.localtime(session.starts_at):%H:%M}–{timezone.localtime(session.ends_at):%H:%M}"
    if extra.used_entry_id is not None:
        cost = " One credit was used."
    elif extra.purchase_id is not None:
        cost = f" {_money(extra.purchase.price, extra.purchase.currency)} to pay at your visit."
    else:
        cost = ""
    return f"Added {session.session_type} ({when}) to your {booking.session.session_type}.{cost}"


def _offered(booking: Booking, type_id: int | None):
    return next((o for o in addon_options(booking, channel=PORTAL) if o.session_type.pk == type_id), None)


def _show(request, token: str, client, booking: Booking, type_id: int | None) -> HttpResponse:
    """The extra's intake form (when it has one) and what it costs, or why it can't be added."""
    option = _offered(booking, type_id)
    if option is None:
        held = next((e.add_on_type for e in booking.extras if e.add_on_type_id == type_id), None)
        if held is not None:
            reason = f"{held.name} is already part of this booking."
        elif (reason := _why_none(booking)) == NOTHING_TO_ADD:
            return _not_found(request, token, "This extra is not offered for this booking.")
        name = held.name if held else "This extra"
        return _refused_page(request, token, client, booking, title=f"{name} can't be added", reason=reason,
                             blocked=False)
    if not option.available:
        return _refused_page(request, token, client, booking, title=f"{option.session_type.name} can't be added",
                             reason=option.reason, blocked=False)
    form = option.intake_form
    return _form_page(request, token, client, booking, _row(option), list(form.questions.all()) if form else [])


def _submit(request, token: str, client, booking: Booking, type_id: int | None) -> HttpResponse:
    """Add the extra through the front desk's service; every refusal is its own, in its words."""
    add_on_type = SessionType.objects.select_related("intake_form").filter(pk=type_id).first() if type_id else None
    if add_on_type is None:
        return _not_found(request, token, "We could not find this extra.")
    form = add_on_type.intake_form
    questions = list(form.questions.all()) if form is not None else []
    answers = _answers(request.POST, questions)
    title = f"{add_on_type.name} can't be added"
    try:
        extra = addon_attach(booking=booking, add_on_type=add_on_type, actor=None, answers=answers, channel=PORTAL)
    except IntakeIncomplete as exc:
        option = _offered(booking, type_id)
        if option is None or not option.available:
            return _refused_page(request, token, client, booking, title=title, reason=str(exc), blocked=False)
        errors = {str(k): str(v) for k, v in exc.errors.items()}
        return _form_page(request, token, client, booking, _row(option), questions, answers=answers,
                          errors=errors, status=400)
    except AddOnBlocked as exc:
        return _refused_page(request, token, client, booking, title=title, reason=str(exc), blocked=True)
    except (BookingError, LedgerError) as exc:
        # A double submit: the first one added it, so this one says so instead of an error.
        if _already_added(booking, add_on_type.pk):
            messages.info(request, f"{add_on_type.name} is already part of this booking.")
            return HttpResponseRedirect(_home_url(token) + f"#booking-{booking.pk}", status=303)
        return _refused_page(request, token, client, booking, title=title, reason=str(exc), blocked=False)
    messages.success(request, _added_message(extra, booking))
    return HttpResponseRedirect(_home_url(token) + f"#booking-{booking.pk}", status=303)


@require_http_methods(["GET", "POST"])
@with_client
def extra_add(request: HttpRequest, token: str, client, booking_id: str, type_id: str) -> HttpResponse:
    booking = _main_booking(client, booking_id)
    if booking is None:
        return _not_found(request, token, "We could not find this booking.")
    view = _submit if request.method == "POST" else _show
    return view(request, token, client, booking, _int_or_none(type_id))
