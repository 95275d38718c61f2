"""Report date ranges are the business's local days, across clock changes."""
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from reports.filters import ReportFilters, as_of_moment

LONDON = ZoneInfo("Europe/London")


def test_a_month_runs_from_local_midnight_to_local_midnight_across_the_clock_change():
    march = ReportFilters(start=date(2026, 3, 1), end=date(2026, 3, 31))
    assert march.start_at == datetime(2026, 3, 1, tzinfo=LONDON)
    assert march.end_at == datetime(2026, 4, 1, tzinfo=LONDON)
    # 1 April 00:00 BST is 31 March 23:00 UTC: the UTC offset moved inside the range.
    assert march.end_at.utcoffset() != march.start_at.utcoffset()
    assert march.describe() == "2026-03-01_2026-03-31"


def test_as_of_a_day_means_its_end_and_an_open_range_describes_itself():
    assert as_of_moment(date(2026, 10, 25)) == datetime(2026, 10, 26, tzinfo=LONDON)
    assert ReportFilters().describe() == "all-time"
    assert ReportFilters().start_at is None and ReportFilters().end_at is None


def test_an_end_before_the_start_is_refused():
    with pytest.raises(ValueError, match="end date is before the start"):
        ReportFilters(start=date(2026, 3, 2), end=date(2026, 3, 1))
