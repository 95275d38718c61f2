"""Add-ons in the booking admin (seed 003): the booking group on a booking's page, the client's
intake answers (for those allowed to see health answers), and "Add an add-on".

Everything changes through core.addons: this page shows the options, posts the chosen one with
its answers, and shows the service's refusal next to the question or above the form.
"""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import F, Q
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.decorators import action, display
from unfold.widgets import UnfoldAdminRadioSelectWidget, UnfoldAdminTextareaWidget

from catalog.models import QuestionKind, SessionType
from core.addons import CREDIT, DESK, PRICE, AddOnOption, addon_attach, addon_options, addon_refusal
from core.admin_base import error_text, local_start, next_url
from core.admin_display import BOOKING_RELATED, STATUS_LABELS, PaidBy, paid_by
from core.exceptions import AddOnBlocked, BookingError, IntakeIncomplete
from core.models import Booking, BookingStatus, IntakeResponse
from ledger.exceptions import LedgerError
from payments.exceptions import PaymentError
from payments.models import PurchaseStatus

DOMAIN_ERRORS = (BookingError, LedgerError, PaymentError, ValidationError)
GROUP_RELATED = (*BOOKING_RELATED, "purchase", "add_on_type")
VIEW_INTAKE = "core.view_intakeresponse"
ADD_ON_PERMISSION = "core.add_booking"


def booking_paid_by(booking: Booking) -> PaidBy:
    """paid_by, plus an add-on sold at its own price (no credit: a purchase of its own)."""
    purchase = booking.purchase if booking.used_entry_id is None and booking.purchase_id else None
    if purchase is None:
        return paid_by(booking)
    text = f"Sold at its price, {purchase.price} {purchase.currency} (purchase #{purchase.pk}, "
    return PaidBy(text + f"{purchase.get_status_display().lower()})", purchase_id=purchase.pk)


def pays_with_text(option: AddOnOption) -> str:
    if option.pays_with == CREDIT:
        return f"a {option.session_type} credit"
    if option.pays_with == PRICE:
        return f"{option.price} {option.currency}, to pay at the desk"
    return "no payment needed" if option.available else "—"


class IntakeAnswersForm(forms.Form):
    """The intake form's questions as fields; core.addons.intake_check is the judge of them."""

    def __init__(self, data=None, *, questions):
        super().__init__(data)
        self.questions = questions
        for question in questions:
            if question.kind == QuestionKind.YES_NO:
                field = forms.ChoiceField(
                    choices=[("yes", "Yes"), ("no", "No")], widget=UnfoldAdminRadioSelectWidget(),
                )
            else:
                field = forms.CharField(widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}), strip=False)
            field.required = False  # "required" is the service's rule, reported per question
            field.label = question.text
            field.help_text = "Required." if question.required else "Optional."
            self.fields[self.name_for(question.pk)] = field

    @staticmethod
    def name_for(question_id) -> str:
        return f"q{question_id}"

    def answers(self) -> dict[str, str]:
        return {str(q.pk): self.cleaned_data.get(self.name_for(q.pk)) or "" for q in self.questions}

    def show_errors(self, errors: dict[str, str]) -> None:
        for question_id, message in errors.items():
            name = self.name_for(question_id)
            self.add_error(name if name in self.fields else None, message)


def _group(booking: Booking) -> list[Booking]:
    """The booking group: the main booking first, then its add-ons; one query."""
    main_id = booking.main_booking_id or booking.pk
    return list(
        Booking.objects.filter(Q(pk=main_id) | Q(main_booking_id=main_id)).select_related(*GROUP_RELATED)
        .order_by(F("main_booking_id").asc(nulls_first=True), "pk")
    )


class BookingAddOnsMixin:
    """For core.admin_bookings.BookingAdmin (which provides _open_booking)."""

    def get_fields(self, request, obj=None):
        fields = list(super().get_fields(request, obj))
        if obj is not None:
            fields.append("booking_group")
            if obj.add_on_type_id is not None and request.user.has_perm(VIEW_INTAKE):
                fields.append("intake_answers")
        return fields

    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), "booking_group", "intake_answers")

    @display(description="Booking group")
    def booking_group(self, obj: Booking):
        rows = []
        for booking in _group(obj):
            what = booking.add_on_type or booking.session.session_type
            # A cancelled add-on gave its time back: it now sits in its main booking's session.
            own_session = booking.session.session_type_id == what.pk
            rows.append({
                "booking": booking, "what": what, "is_add_on": booking.add_on_type_id is not None,
                "when": (
                    f"{local_start(booking.session.starts_at)}–{timezone.localtime(booking.session.ends_at):%H:%M}"
                    if own_session else "time freed"
                ),
                "this": booking.pk == obj.pk, "label": STATUS_LABELS.get(booking.status, ""),
                "paid_by": booking_paid_by(booking),
                "to_pay": booking.purchase_id is not None and booking.purchase.status == PurchaseStatus.PENDING,
            })
        return render_to_string("admin/core/booking/group.html", {"rows": rows, "booking": obj})

    @display(description="Intake answers")
    def intake_answers(self, obj: Booking):
        response = IntakeResponse.objects.filter(booking=obj).select_related("form", "submitted_by").first()
        if response is None:
            return "No intake form was asked for this add-on."
        return render_to_string("admin/core/booking/intake.html", {"response": response})

    # A plain name, not "core.add_booking": unfold's system check looks a dotted permission up in
    # the database, which breaks `migrate` and `check --deploy` on an empty one.
    def has_add_on_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(ADD_ON_PERMISSION)

    @action(description="Add an add-on", url_path="add-on", icon="add_circle", permissions=["add_on"])
    def add_add_on(self, request, object_id):
        booking = self._open_booking(request, object_id)
        back = next_url(request, reverse("admin:core_booking_change", args=[booking.pk]))
        options = addon_options(booking)
        source = request.POST if request.method == "POST" else request.GET
        chosen_id = str(source.get("add_on") or "")
        chosen = next((o for o in options if str(o.session_type.pk) == chosen_id), None)
        add_on_type = chosen.session_type if chosen else None
        if add_on_type is None and request.method == "POST" and chosen_id.isdigit():
            # No longer offered (added meanwhile, session started...): the service says why.
            add_on_type = SessionType.objects.select_related("intake_form").filter(pk=int(chosen_id)).first()
        form_of = add_on_type.intake_form if add_on_type else None
        questions = sorted(form_of.questions.all(), key=lambda q: (q.position, q.pk)) if form_of else []
        form = IntakeAnswersForm(request.POST if request.method == "POST" else None, questions=questions)
        if request.method == "POST" and add_on_type is not None and form.is_valid():
            try:
                add_on = addon_attach(
                    booking=booking, add_on_type=add_on_type, actor=request.user, answers=form.answers(), channel=DESK,
                )
            except IntakeIncomplete as exc:
                form.show_errors(exc.errors)
                form.add_error(None, str(exc))
            except AddOnBlocked as exc:
                form.add_error(None, exc.reason)
            except DOMAIN_ERRORS as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, _added_text(add_on))
                return redirect(back)
        elif request.method == "POST" and add_on_type is None:
            form.add_error(None, "Choose one of the add-ons offered for this booking.")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Add an add-on to {booking.client.name}'s booking",
            "opts": self.model._meta,
            "original": booking,
            "booking": booking,
            "paid_by": booking_paid_by(booking),
            "options": [(o, pays_with_text(o)) for o in options],
            "why_none": _why_no_options(booking) if not options else "",
            "chosen": chosen,
            "add_on_type": add_on_type,
            "form": form,
            "intake_form": form_of,
            "back": back,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/booking/add_on.html", context)


def group_follows(booking: Booking, what: str) -> str:
    """For a confirmation page: which add-ons will follow the main booking (core.bookings)."""
    if booking.main_booking_id is not None:
        return ""
    names = [
        str(add_on.add_on_type) for add_on in
        booking.add_ons.filter(status=BookingStatus.BOOKED).select_related("add_on_type").order_by("pk")
    ]
    return f" Its add-ons follow ({', '.join(names)}): {what}." if names else ""


def _why_no_options(booking: Booking) -> str:
    return addon_refusal(booking) or (
        f"No add-on is offered with {booking.session.session_type}, or every one is already added."
    )


def _added_text(add_on: Booking):
    session = add_on.session
    text = (
        f"{add_on.add_on_type} added to {add_on.client.name}'s booking: "
        f"{local_start(session.starts_at)}–{timezone.localtime(session.ends_at):%H:%M} with {session.staff_member}"
    )
    if add_on.used_entry_id is not None:
        return f"{text}, paid with a {add_on.add_on_type} credit."
    if add_on.purchase_id is None:
        return f"{text}."
    purchase = add_on.purchase
    return format_html(
        "{}, sold at {} {} (purchase #{}). <a class=\"underline\" href=\"{}\">Record payment now</a>",
        text, purchase.price, purchase.currency, purchase.pk,
        reverse("admin:payments_purchase_record_payment", args=[purchase.pk]),
    )
