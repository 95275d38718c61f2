"""Admin forms for people: the credit adjustment and the client page's ledger filter."""
from __future__ import annotations

import uuid
from datetime import datetime, time, timedelta

from django import forms
from django.utils import timezone
from unfold.widgets import (
    UnfoldAdminIntegerFieldWidget,
    UnfoldAdminSelectWidget,
    UnfoldAdminSingleDateWidget,
    UnfoldAdminTextareaWidget,
)

from catalog.models import SessionType
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
