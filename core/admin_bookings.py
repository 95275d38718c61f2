"""Admin for bookings: book a client (with a pack sold on the spot), cancel, attended, no-show,
and add an add-on (core.admin_addons).

Bookings change only through core.bookings: the admin never edits or deletes one directly.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from unfold.decorators import action, display

from core.admin_addons import GROUP_RELATED, BookingAddOnsMixin, booking_paid_by, group_follows
from core.admin_base import DiaryDateFilter, HistoryAdmin, diary_ordering, error_text, local_start, next_url
from core.admin_display import STATUS_LABELS
from core.bookings import (
    FORFEIT,
    OVERRIDE_PERMISSION,
    RETURN,
    booking_cancel,
    booking_create,
    booking_mark_attended,
    booking_mark_no_show,
    cancellation_deadline,
)
from core.exceptions import BookingError
from core.forms import BookClientForm, BookingOutcomeForm
from core.models import PLACE_HOLDING, Booking, BookingStatus, BusinessSettings, Client, Session
from ledger.exceptions import LedgerError, NoCreditAvailable
from ledger.selectors import balances_for_client
from payments.exceptions import PaymentError

DOMAIN_ERRORS = (BookingError, LedgerError, PaymentError, ValidationError)
DETAIL_FIELDS = (
    "client", "session", "status", "paid_by_credit", "booked_by", "created_at", "closed_at",
    "closed_by", "outcome_note", "ledger_entries",
)


class BookingDateFilter(DiaryDateFilter):
    title = "session date"
    field = "session__starts_at"


def _pk(object_id) -> int:
    object_id = unquote(str(object_id))
    if not object_id.isdigit():
        raise Http404("No such booking.")
    return int(object_id)


@admin.register(Booking)
class BookingAdmin(BookingAddOnsMixin, HistoryAdmin):
    list_display = ("client_name", "session_start", "session_what", "status_label", "paid_by_credit")
    list_display_links = ("client_name",)
    list_filter = (
        "status", BookingDateFilter, ("session__staff_member", admin.RelatedFieldListFilter),
        ("session__session_type", admin.RelatedFieldListFilter),
    )
    list_select_related = GROUP_RELATED
    search_fields = ("client__name", "client__email")
    fields = DETAIL_FIELDS
    readonly_fields = DETAIL_FIELDS
    actions = ["mark_attended_selected"]
    actions_row = ["cancel_booking", "mark_attended", "mark_no_show"]
    actions_detail = ["add_add_on", "cancel_booking", "mark_attended", "mark_no_show"]
    show_full_result_count = False

    def get_ordering(self, request):
        return diary_ordering(request, "session__starts_at", ("-session__starts_at", "-id"))

    def get_queryset(self, request):
        return super().get_queryset(request).select_related(*GROUP_RELATED)

    # Status moves only through the actions below; bookings carry ledger entries, so they stay.
    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_status_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("core.change_booking")

    def get_actions_detail(self, request, object_id):
        """Only the actions that apply to this booking now (the services would refuse the rest)."""
        actions = super().get_actions_detail(request, object_id)
        booking = Booking.objects.filter(pk=_pk(object_id)).select_related("session").first()
        if booking is None or booking.status != BookingStatus.BOOKED:
            return []
        now = timezone.now()
        hidden = set()
        if timezone.localdate() < timezone.localtime(booking.session.starts_at).date():
            hidden.add("mark_attended")
        if now < booking.session.starts_at:
            hidden.add("mark_no_show")
        else:
            hidden.add("add_add_on")  # add-ons go with an upcoming session only
        if booking.main_booking_id is not None:
            hidden.add("add_add_on")
        return [a for a in actions if a.action_name.removeprefix("core_booking_") not in hidden]

    # --- Columns -----------------------------------------------------------------------------

    @display(description="Client", ordering="client__name")
    def client_name(self, obj: Booking) -> str:
        return obj.client.name

    @display(description="Session", ordering="session__session_type__name")
    def session_what(self, obj: Booking) -> str:
        if obj.add_on_type_id is not None:
            return f"{obj.add_on_type} (add-on) with {obj.session.staff_member}"
        return f"{obj.session.session_type} with {obj.session.staff_member}"

    @display(description="Start", ordering="session__starts_at")
    def session_start(self, obj: Booking) -> str:
        return local_start(obj.session.starts_at)

    @display(description="Status", ordering="status", label={k.value: v for k, v in STATUS_LABELS.items()})
    def status_label(self, obj: Booking):
        return obj.status, obj.get_status_display()

    @display(description="Paid with")
    def paid_by_credit(self, obj: Booking):
        paid = booking_paid_by(obj)
        if paid.held_until_paid:
            return format_html("{} <strong>— held until paid</strong>", paid.text)
        return paid.text

    @display(description="Ledger entries for this booking")
    def ledger_entries(self, obj: Booking):
        entries = obj.ledger_entries.select_related("actor").order_by("id")
        rows = format_html_join(
            "", "<li>{} · {} {} · {} · {}</li>",
            (
                (local_start(e.created_at), e.get_kind_display(), f"{e.amount:+d}", e.actor or "system", e.note)
                for e in entries
            ),
        )
        return format_html("<ul>{}</ul>", rows) if rows else "—"

    # --- Booking a client --------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """Book a client, from the session page, the client page or the bookings list."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        source = request.POST if request.method == "POST" else request.GET
        session = _find(Session.objects.select_related("session_type", "staff_member"), source.get("session"))
        client = _find(Client.objects.all(), source.get("client"))
        form = BookClientForm(
            request.POST or None, admin_site=self.admin_site, session=session,
            initial={"client": client, "session": session},
        )
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                booking = booking_create(
                    client=data["client"], session=data["session"], sell_pack=data["sell_pack"],
                    actor=request.user,
                )
            except NoCreditAvailable as exc:
                form.add_error(None, _no_credit_text(exc, form))
            except DOMAIN_ERRORS as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, _booked_text(booking))
                return redirect(next_url(request, reverse("admin:core_session_change", args=[booking.session_id])))
        context = {
            **self.admin_site.each_context(request),
            "title": "Book a client",
            "submit_label": "Book",
            "cancel_url": next_url(request, reverse("admin:core_booking_changelist")),
            "next": next_url(request, ""),
            "opts": self.model._meta,
            "form": form,
            "session": session,
            "session_taken": session.bookings.filter(status__in=PLACE_HOLDING).count() if session else None,
            "client": client,
            "balances": balances_for_client(client.pk) if client else None,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/booking/book.html", context)

    # --- Changing a booking's status (confirmation pages) ------------------------------------

    def _open_booking(self, request, object_id) -> Booking:
        booking = Booking.objects.select_related(*GROUP_RELATED).filter(pk=_pk(object_id)).first()
        if booking is None:
            raise Http404("No such booking.")
        if not self.has_view_permission(request, booking):
            raise PermissionDenied
        return booking

    def _confirm_page(self, request, booking: Booking, *, title, explanation, button, back, form=None, verdict=None):
        # The override choice is offered only to staff allowed to use it, and only when a credit
        # was used; posting it without the permission is refused by the service all the same.
        show_choice = form is not None and booking.used_entry_id is not None and (
            request.user.has_perm(OVERRIDE_PERMISSION)
        )
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "original": booking,
            "booking": booking,
            "paid_by": booking_paid_by(booking),
            "explanation": explanation,
            "verdict": verdict,  # (text, label colour) shown before the explanation
            "button": button,
            "form": form,
            "show_choice": show_choice,
            "back": back,
            "media": self.media + form.media if form else self.media,
        }
        return TemplateResponse(request, "admin/core/booking/confirm.html", context)

    def _not_open(self, request, booking: Booking, back: str):
        messages.error(
            request, f"This booking is {booking.get_status_display().lower()}: nothing left to change.",
        )
        return redirect(back)

    @action(description="Cancel booking", url_path="cancel", icon="event_busy", permissions=["change_status"])
    def cancel_booking(self, request, object_id):
        booking = self._open_booking(request, object_id)
        back = next_url(request, reverse("admin:core_booking_change", args=[booking.pk]))
        if booking.status != BookingStatus.BOOKED:
            return self._not_open(request, booking, back)
        deadline = cancellation_deadline(booking.session)
        in_time = timezone.now() <= deadline
        has_credit = booking.used_entry_id is not None
        rule = "return the credit (cancelled in time)" if in_time else "forfeit the credit (late cancellation)"
        other = "Override: forfeit the credit instead" if in_time else "Override: return the credit instead"
        form = BookingOutcomeForm(
            request.POST or None, rule_label=f"Follow the rule: {rule}", override_label=other,
        )
        if request.method == "POST" and form.is_valid():
            override = None
            if form.overriding:
                override = FORFEIT if in_time else RETURN
            try:
                booking = booking_cancel(
                    booking=booking, actor=request.user, override=override, reason=form.cleaned_data["reason"],
                )
            except DOMAIN_ERRORS as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"{booking.client.name}'s booking is cancelled: {booking.outcome_note}.")
                return redirect(back)
        window = f"{local_start(deadline)}, {booking.session.session_type.cancellation_window_hours} h before the start"
        if not has_credit:
            explanation = "No credit was used for this booking, so none moves."
        elif in_time:
            explanation = f"The deadline is {window}, so the credit returns to {booking.client.name}'s balance."
        else:
            explanation = f"The deadline was {window}, so the credit is forfeited."
        explanation += group_follows(booking, "cancelled under the same rule, freeing the staff member's time")
        return self._confirm_page(
            request, booking, title="Cancel this booking?", explanation=explanation,
            button="Yes, cancel the booking", form=form, back=back,
            verdict=("In time", "success") if in_time else ("Late", "warning"),
        )

    @action(description="Mark attended", url_path="attended", icon="how_to_reg", permissions=["change_status"])
    def mark_attended(self, request, object_id):
        booking = self._open_booking(request, object_id)
        back = next_url(request, reverse("admin:core_booking_change", args=[booking.pk]))
        if booking.status != BookingStatus.BOOKED:
            return self._not_open(request, booking, back)
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            try:
                booking_mark_attended(booking=booking, actor=request.user)
            except DOMAIN_ERRORS as exc:
                messages.error(request, error_text(exc))
            else:
                messages.success(request, f"{booking.client.name} attended {booking.session}.")
                return redirect(back)
        return self._confirm_page(
            request, booking, title="Mark attended?", button="Yes, mark attended", back=back,
            explanation="The credit stays used: the visit happened." + group_follows(booking, "marked attended too"),
        )

    @action(description="Mark no-show", url_path="no-show", icon="person_off", permissions=["change_status"])
    def mark_no_show(self, request, object_id):
        booking = self._open_booking(request, object_id)
        back = next_url(request, reverse("admin:core_booking_change", args=[booking.pk]))
        if booking.status != BookingStatus.BOOKED:
            return self._not_open(request, booking, back)
        has_credit = booking.used_entry_id is not None
        form = BookingOutcomeForm(
            request.POST or None, rule_label="Follow the rule: forfeit the credit",
            override_label="Override: return the credit instead",
        )
        if request.method == "POST" and form.is_valid():
            try:
                booking_mark_no_show(
                    booking=booking, actor=request.user, override=RETURN if form.overriding else None,
                    reason=form.cleaned_data["reason"],
                )
            except DOMAIN_ERRORS as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, f"{booking.client.name} marked as a no-show.")
                return redirect(back)
        explanation = (
            "A no-show forfeits the credit." if has_credit else "No credit was used for this booking, so none moves."
        ) + group_follows(booking, "no-shows too, under the same rule")
        return self._confirm_page(
            request, booking, title="Mark as a no-show?", explanation=explanation,
            button="Yes, mark no-show", form=form, back=back, verdict=("No-show", "danger"),
        )

    @admin.action(description="Mark selected bookings attended", permissions=["change_status"])
    def mark_attended_selected(self, request, queryset):
        """A class's register in one go, after a confirmation page listing who is marked."""
        bookings = list(queryset.select_related(*GROUP_RELATED).order_by("session__starts_at", "client__name"))
        if request.POST.get("confirmed") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Mark these bookings attended?",
                "opts": self.model._meta,
                "bookings": bookings,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            }
            return TemplateResponse(request, "admin/core/booking/attended_confirmation.html", context)
        done, marked = 0, set()
        for booking in bookings:  # main bookings first: their sessions start before their add-ons'
            if booking.main_booking_id in marked:
                done += 1  # marked attended with its main booking
                continue
            try:
                booking_mark_attended(booking=booking, actor=request.user)
            except DOMAIN_ERRORS as exc:
                messages.error(request, f"{booking.client.name}, {booking.session}: {error_text(exc)}")
            else:
                done += 1
                marked.add(booking.pk)
        if done:
            messages.success(request, f"{done} booking(s) marked attended.")
        return None


def _find(queryset, value):
    value = str(value or "")
    return queryset.filter(pk=int(value)).first() if value.isdigit() else None


def _no_credit_text(exc: NoCreditAvailable, form: BookClientForm) -> str:
    """The ledger's reason, and what the desk can do about it here and now."""
    if BusinessSettings.current().prepaid_only:
        return f"{exc} This business is prepaid only: sell a pack and record its payment first, then book."
    if not form.fields["sell_pack"].queryset.exists():
        return f"{exc} No published pack includes this session type: adjust credits or publish a pack."
    return (
        f"{exc} You can pick a pack under “Sell this pack if no credit” to sell it on the spot: "
        "one of its credits holds the booking until the payment is recorded."
    )


def _booked_text(booking: Booking):
    text = f"{booking.client.name} is booked on {booking.session}."
    if booking.purchase_id is None:
        return text
    purchase = booking.purchase
    return format_html(
        "{} {} sold on the spot (purchase #{}, {} {} to pay): one credit holds this booking, the rest "
        "are released when the payment is recorded. <a class=\"underline\" href=\"{}\">Record payment now</a>",
        text, purchase.snapshot.get("name", ""), purchase.pk, purchase.price, purchase.currency,
        reverse("admin:payments_purchase_record_payment", args=[purchase.pk]),
    )

