"""When a credit stops being usable, in the business's time zone."""
from __future__ import annotations

from datetime import datetime, time, timedelta

from dateutil.relativedelta import relativedelta
from django.utils import timezone

from catalog.models import ValidityUnit


def add_period(day, amount: int, unit: str):
    if unit == ValidityUnit.DAYS:
        return day + timedelta(days=amount)
    if unit == ValidityUnit.WEEKS:
        return day + timedelta(weeks=amount)
    if unit == ValidityUnit.MONTHS:
        # relativedelta clamps 31 Jan + 1 month to 28/29 Feb instead of overflowing into March.
        return day + relativedelta(months=amount)
    raise ValueError(f"unknown validity unit {unit!r}")


def expiry_for(start: datetime, amount: int, unit: str) -> datetime:
    """A credit valid for N days from 1 March is usable until the end of (1 March + N days),
    local time: bought 1 March with 30 days, last usable moment 31 March 23:59:59."""
    local_start = timezone.localtime(start)
    last_day = add_period(local_start.date(), amount, unit)
    return timezone.make_aware(datetime.combine(last_day + timedelta(days=1), time.min))
