"""The filters every finance report takes, and how a date range becomes moments.

Dates are the business's local days (settings.TIME_ZONE): "1 to 31 March" means from the start
of 1 March to the start of 1 April, local time, whatever the clock change in between.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.utils import timezone


def local_day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@dataclass(frozen=True)
class ReportFilters:
    """start/end are inclusive local days; the ids are optional narrowing filters."""

    start: date | None = None
    end: date | None = None
    staff_member_id: int | None = None
    category_id: int | None = None
    session_type_id: int | None = None
    pack_id: int | None = None

    def __post_init__(self):
        if self.start and self.end and self.end < self.start:
            raise ValueError("The end date is before the start date.")

    @property
    def start_at(self) -> datetime | None:
        """First moment of the range (inclusive)."""
        return local_day_start(self.start) if self.start else None

    @property
    def end_at(self) -> datetime | None:
        """First moment after the range (exclusive)."""
        return local_day_start(self.end + timedelta(days=1)) if self.end else None

    def describe(self) -> str:
        """For filenames and headings: 2026-03-01_2026-03-31 (or 'all-time')."""
        if not (self.start or self.end):
            return "all-time"
        return f"{self.start or 'start'}_{self.end or 'now'}"


def as_of_moment(day: date) -> datetime:
    """'Balances as of 31 March' means at the end of that local day (the start of 1 April)."""
    return local_day_start(day + timedelta(days=1))
