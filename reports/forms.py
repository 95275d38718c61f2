"""The filter form of a report page: only the filters that report applies, read from the query
string (so the preview, the CSV link and a bookmarked page all carry the same filters)."""
from __future__ import annotations

from datetime import date, timedelta

from django import forms
from django.utils import timezone
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminSingleDateWidget

from catalog.models import Category, CreditPack, SessionType
from core.models import StaffMember
from reports.filters import ReportFilters

# Which filters a report may take: "dates" (a range), "as_of" (one day), and the narrowing ids.
FILTER_LABELS = {
    "dates": "Date range",
    "as_of": "As of a date",
    "staff_member": "Staff member",
    "category": "Category",
    "session_type": "Session type",
    "pack": "Credit pack",
}


def last_month(today: date | None = None) -> tuple[date, date]:
    first_of_this = (today or timezone.localdate()).replace(day=1)
    last = first_of_this - timedelta(days=1)
    return last.replace(day=1), last


class ReportFilterForm(forms.Form):
    start = forms.DateField(label="From", required=False, widget=UnfoldAdminSingleDateWidget())
    end = forms.DateField(label="To (included)", required=False, widget=UnfoldAdminSingleDateWidget())
    as_of = forms.DateField(
        label="As of (end of the day)", required=False, widget=UnfoldAdminSingleDateWidget(),
    )
    staff_member = forms.ModelChoiceField(
        StaffMember.objects.order_by("display_name", "pk"), required=False, widget=UnfoldAdminSelectWidget(),
    )
    category = forms.ModelChoiceField(
        Category.objects.order_by("name"), required=False, widget=UnfoldAdminSelectWidget(),
    )
    session_type = forms.ModelChoiceField(
        SessionType.objects.order_by("name"), required=False, widget=UnfoldAdminSelectWidget(),
    )
    pack = forms.ModelChoiceField(
        CreditPack.objects.order_by("name", "pk"), required=False, widget=UnfoldAdminSelectWidget(),
        label="Credit pack",
    )

    def __init__(self, data=None, *, uses: tuple[str, ...], dates_required: bool = False, **kwargs):
        self.uses = uses
        first, last = last_month()
        # Unbound (first visit): last month, or its last day for an "as of" report.
        if data is None or not any(key in data for key in self.base_fields):
            data = {"start": first, "end": last, "as_of": last}
        super().__init__(data, **kwargs)
        for name in list(self.fields):
            wanted = name in uses or (name in ("start", "end") and "dates" in uses)
            if not wanted:
                del self.fields[name]
        if dates_required:
            for name in ("start", "end"):
                if name in self.fields:
                    self.fields[name].required = True
        if "as_of" in self.fields:
            self.fields["as_of"].required = True

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and end < start:
            raise forms.ValidationError("The end date is before the start date.")
        return data

    def to_filters(self) -> ReportFilters:
        data = self.cleaned_data
        end = data.get("as_of") if "as_of" in self.uses else data.get("end")
        return ReportFilters(
            start=data.get("start"), end=end,
            staff_member_id=_pk(data.get("staff_member")), category_id=_pk(data.get("category")),
            session_type_id=_pk(data.get("session_type")), pack_id=_pk(data.get("pack")),
        )


def _pk(obj) -> int | None:
    return obj.pk if obj is not None else None


def filters_query(filters: ReportFilters, uses: tuple[str, ...]) -> dict[str, str]:
    """The query string that reproduces these filters on the report's page and CSV link."""
    query = {}
    if "dates" in uses:
        query.update(start=filters.start or "", end=filters.end or "")
    if "as_of" in uses:
        query["as_of"] = filters.end or ""
    for name, value in (
        ("staff_member", filters.staff_member_id), ("category", filters.category_id),
        ("session_type", filters.session_type_id), ("pack", filters.pack_id),
    ):
        if name in uses and value:
            query[name] = value
    return {key: str(value) for key, value in query.items()}
