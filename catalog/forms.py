"""Admin forms for the catalog. Every rule comes from catalog.validation, as in the services."""
from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from unfold.forms import PaginationInlineFormSet

from catalog.models import CreditPack, SessionType
from catalog.services import PACK_FIELDS
from catalog.validation import (
    LineData,
    StaffPriceData,
    validate_credit_lines,
    validate_pack_fields,
    validate_session_type_change,
    validate_staff_prices,
)


def _add_errors(form: forms.Form, exc: ValidationError) -> None:
    """Put each message on the field it names; a field that already failed keeps its first error."""
    for field, messages in exc.message_dict.items():
        if field in form.fields:
            if not form.has_error(field):
                form.add_error(field, messages)
        else:
            form.add_error(None, messages)


class CreditPackForm(forms.ModelForm):
    class Meta:
        model = CreditPack
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        # clean() runs before the form's values reach the instance, so fields not on the form
        # (or that failed) fall back to the stored values.
        data = {}
        for name in PACK_FIELDS:
            if name in cleaned:
                data[name] = cleaned[name]
            elif name == "category":
                data["category_id"] = self.instance.category_id
            else:
                data[name] = getattr(self.instance, name)
        try:
            validate_pack_fields(data)
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned


class _PackInlineFormSet(PaginationInlineFormSet):
    """Rows checked as a whole by catalog.validation.

    clean() deliberately skips the model formset's validate_unique: the validation functions
    report duplicates themselves, naming the row, and the database constraint still backs them.
    """

    def kept_rows(self) -> list[dict]:
        """Cleaned data of the rows that will exist after saving (not blank, not deleted)."""
        rows = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or self._should_delete_form(form):
                continue
            rows.append(data)
        return rows


class CreditLineFormSet(_PackInlineFormSet):
    def clean(self):
        lines = [
            LineData(
                session_type=row["session_type"], unlimited=bool(row.get("unlimited")),
                credits=row.get("credits"), validity_amount=row.get("validity_amount"),
                validity_unit=row.get("validity_unit") or "",
            )
            # A row without a session type already shows its own "required" error.
            for row in self.kept_rows() if row.get("session_type") is not None
        ]
        try:
            validate_credit_lines(lines)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["credit_lines"]) from exc


class StaffPriceFormSet(_PackInlineFormSet):
    def clean(self):
        rows = [
            StaffPriceData(staff_member=row["staff_member"], price=row.get("price"))
            for row in self.kept_rows() if row.get("staff_member") is not None
        ]
        # The admin validates the pack form first and hands this formset that form's instance,
        # so all_staff and currency are the values being saved, not the stored ones.
        try:
            validate_staff_prices(
                rows, all_staff=bool(self.instance.all_staff), currency=self.instance.currency or "",
            )
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["staff_prices"]) from exc


class SessionTypeForm(forms.ModelForm):
    class Meta:
        model = SessionType
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        # The instance still holds the stored values here: that is what the change is compared to.
        try:
            validate_session_type_change(
                self.instance,
                archived=cleaned.get("archived", self.instance.archived),
                requires_credit=cleaned.get("requires_credit", self.instance.requires_credit),
            )
        except ValidationError as exc:
            _add_errors(self, exc)
        return cleaned
