"""Admin forms for the front desk: credit adjustments, the ledger filter, sessions and bookings.

The forms only collect and tidy input; the services decide (and refuse with their own text).
"""
from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta

from django import forms
from django.contrib.admin.widgets import AutocompleteSelect
from django.utils import timezone
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminRadioSelectWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminSingleDateWidget,
    UnfoldAdminSplitDateTimeWidget,
    UnfoldAdminTextareaWidget,
    UnfoldAdminTextInputWidget,
)

from catalog.models import CreditPack, SessionType
from catalog.services import pack_price_for
from core.models import Booking, Client, Session, StaffMember
from ledger.models import EntryKind


class AdjustCreditsForm(forms.Form):
    session_type = forms.ModelChoiceField(
        queryset=SessionType.objects.filter(requires_credit=True).order_by("name"),
        widget=UnfoldAdminSelectWidget(),
        empty_label="Select session type",
    )
    amount = forms.IntegerField(
        widget=UnfoldAdminIntegerFieldWidget(),
        help_text="Credits to add, or a negative number to remove (soonest-expiring first).",
    )
    reason = forms.CharField(
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 3}),
        help_text="Kept in the ledger with your name.",
    )
    expires_on = forms.DateField(
        required=False, label="Added credits usable until",
        widget=UnfoldAdminSingleDateWidget(),
        help_text="Last day the added credits can be used. Blank: 12 months from today.",
    )
    # Identifies this one submission, so a double click records one adjustment, not two.
    token = forms.UUIDField(widget=forms.HiddenInput, initial=uuid.uuid4)

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError("Enter a number of credits other than 0.")
        return amount

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("expires_on") and (cleaned.get("amount") or 0) < 0:
            self.add_error("expires_on", "Only added credits take an expiry date; leave it blank when removing.")
        return cleaned

    @property
    def expires_at(self) -> datetime | None:
        """Usable through the whole chosen day, in the business's time zone."""
        day = self.cleaned_data.get("expires_on")
        if day is None:
            return None
        return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))

    @property
    def idempotency_key(self) -> str:
        return f"admin-adjust:{self.cleaned_data['token']}"


class LedgerFilterForm(forms.Form):
    """GET filters for the ledger shown on the client page; names avoid the admin's own params."""

    ledger_type = forms.ModelChoiceField(
        queryset=SessionType.objects.order_by("name"), required=False,
        empty_label="All session types", widget=UnfoldAdminSelectWidget(), label="Session type",
    )
    ledger_kind = forms.ChoiceField(
        choices=[("", "All kinds"), *EntryKind.choices], required=False,
        widget=UnfoldAdminSelectWidget(), label="Kind",
    )

    def filters(self) -> dict:
        if not self.is_valid():
            return {}
        session_type = self.cleaned_data.get("ledger_type")
        return {
            "session_type_id": session_type.pk if session_type else None,
            "kind": self.cleaned_data.get("ledger_kind") or None,
        }


# --- Sessions -----------------------------------------------------------------------------


class SessionCreateForm(forms.Form):
    session_type = forms.ModelChoiceField(
        queryset=SessionType.objects.filter(archived=False).order_by("name"),
        widget=UnfoldAdminSelectWidget(), empty_label="Select session type",
    )
    staff_member = forms.ModelChoiceField(
        queryset=StaffMember.objects.filter(active=True).order_by("display_name"),
        widget=UnfoldAdminSelectWidget(), empty_label="Select staff member",
    )
    starts_at = forms.SplitDateTimeField(
        label="Start", widget=UnfoldAdminSplitDateTimeWidget(),
        help_text="Day and time, in the business's local time.",
    )
    capacity = forms.IntegerField(
        min_value=1, initial=1, widget=UnfoldAdminIntegerFieldWidget(),
        help_text="1 for a private appointment; more for a class.",
    )
    duration_minutes = forms.IntegerField(
        required=False, min_value=5, max_value=24 * 60, label="Duration override (minutes)",
        widget=UnfoldAdminIntegerFieldWidget(), help_text="Blank: the session type's own duration.",
    )
    outside_hours_reason = forms.CharField(
        required=False, max_length=200, label="Reason to book outside working hours",
        widget=UnfoldAdminTextInputWidget(),
        help_text="Only when the session is outside the staff member's working hours.",
    )


# --- Bookings -----------------------------------------------------------------------------


def bookable_sessions():
    """Sessions not started yet. (A credit issued now is valid from now, so it could not pay for
    a session that already started: the ledger would refuse a walk-in to a class under way.)"""
    return Session.objects.filter(starts_at__gt=timezone.now()).select_related("session_type", "staff_member")


def _pack_label(pack: CreditPack, session: Session | None) -> str:
    lines = ", ".join(
        f"{'unlimited' if line.unlimited else line.credits} × {line.session_type.name}"
        for line in pack.credit_lines.all()
    )
    staff = session.staff_member if session else None
    return f"{pack.name} — {pack_price_for(pack, staff)} {pack.currency} ({lines})"


class PackChoiceField(forms.ModelChoiceField):
    """Published packs labelled with their price (for the session's staff member) and credits."""

    session: Session | None = None

    def label_from_instance(self, obj: CreditPack) -> str:
        return _pack_label(obj, self.session)


class BookClientForm(forms.Form):
    client = forms.ModelChoiceField(queryset=Client.objects.all())
    session = forms.ModelChoiceField(
        queryset=Session.objects.none(), help_text="Upcoming sessions: type a session type or staff member.",
    )
    sell_pack = PackChoiceField(
        queryset=CreditPack.objects.none(), required=False, label="Sell this pack if no credit",
        widget=UnfoldAdminSelectWidget(), empty_label="Don't sell: book only with a credit",
        help_text=(
            "Used only when the client has no usable credit: the pack is sold on the spot, pending "
            "payment, and one of its credits holds this booking until the payment is recorded."
        ),
    )

    def __init__(self, *args, admin_site, session: Session | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The admin's own autocomplete (searching clients and upcoming sessions as you type).
        for name, queryset in (("client", Client.objects.all()), ("session", bookable_sessions())):
            field = self.fields[name]
            field.widget = AutocompleteSelect(Booking._meta.get_field(name), admin_site)
            field.queryset = queryset  # after the widget, so the widget gets the choices
        packs = CreditPack.objects.filter(published=True).prefetch_related(
            "credit_lines__session_type", "staff_prices"
        ).order_by("name")
        if session is not None:
            packs = packs.filter(credit_lines__session_type_id=session.session_type_id)
        self.fields["sell_pack"].queryset = packs
        self.fields["sell_pack"].session = session

    def clean(self):
        cleaned = super().clean()
        session, pack = cleaned.get("session"), cleaned.get("sell_pack")
        if session and pack and not any(
            line.session_type_id == session.session_type_id for line in pack.credit_lines.all()
        ):
            self.add_error(
                "sell_pack", f"{pack.name} has no {session.session_type} credits, so it cannot pay for this session."
            )
        return cleaned


RULE, OVERRIDE = "rule", "override"


class BookingOutcomeForm(forms.Form):
    """Confirming a cancel or no-show; staff allowed to override pick the other outcome, with a reason."""

    outcome = forms.ChoiceField(
        required=False, label="Credit", widget=UnfoldAdminRadioSelectWidget(), initial=RULE,
    )
    reason = forms.CharField(
        required=False, max_length=250, label="Reason for the override",
        widget=UnfoldAdminTextareaWidget(attrs={"rows": 2}),
        help_text="Required when overriding the rule; kept in the ledger with your name.",
    )

    def __init__(self, *args, rule_label: str, override_label: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["outcome"].choices = [(RULE, rule_label), (OVERRIDE, override_label)]

    @property
    def overriding(self) -> bool:
        return self.cleaned_data.get("outcome") == OVERRIDE

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("outcome") == OVERRIDE and not (cleaned.get("reason") or "").strip():
            self.add_error("reason", "Give a reason for overriding the credit rule: it is kept in the ledger.")
        return cleaned
