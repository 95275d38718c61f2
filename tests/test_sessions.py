"""The diary: session_create checks duration, capacity, staff, working hours, time off, overlaps.

Working hours are weekly slots in the business's time zone (Europe/London), so the tests build
starts in local time and include both clock changes.
"""
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from catalog.models import SessionType
from core.exceptions import StaffUnavailable
from core.models import Session, StaffMember, TimeOff, Weekday, WorkingHours
from core.sessions import session_create

pytestmark = pytest.mark.django_db

END_OF_DAY = time.max  # a slot "until midnight"


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return timezone.make_aware(datetime.combine(day, time(hour, minute)))


def next_weekday(weekday: int, *, weeks_ahead: int = 1) -> date:
    today = timezone.localdate()
    return today + timedelta(days=(weekday - today.weekday()) % 7 + 7 * weeks_ahead)


def last_sunday(year: int, month: int) -> date:
    day = date(year, month + 1, 1) - timedelta(days=1)
    return day - timedelta(days=(day.weekday() - 6) % 7)


def next_clock_change(month: int) -> date:
    """The next last Sunday of March (clocks forward) or October (clocks back) in the UK."""
    today = timezone.localdate()
    day = last_sunday(today.year, month)
    return day if day > today else last_sunday(today.year + 1, month)


@pytest.fixture
def monday():
    return next_weekday(Weekday.MONDAY)


@pytest.fixture
def nine_to_five(coach):
    """Coach Carter works Monday to Saturday, 09:00–17:00 local time."""
    for weekday in range(Weekday.MONDAY, Weekday.SUNDAY):
        WorkingHours.objects.create(staff_member=coach, weekday=weekday, starts=time(9), ends=time(17))
    return coach


@pytest.fixture
def all_day(coach):
    """Coach Carter works every day, midnight to midnight."""
    for weekday in Weekday.values:
        WorkingHours.objects.create(staff_member=coach, weekday=weekday, starts=time(0), ends=END_OF_DAY)
    return coach


@pytest.fixture
def create(massage, staff_user):
    def make(staff_member, starts_at, **kwargs):
        kwargs.setdefault("session_type", massage)
        return session_create(staff_member=staff_member, starts_at=starts_at, actor=staff_user, **kwargs)

    return make


# --- Duration, capacity, who delivers it --------------------------------------------------------


def test_duration_comes_from_the_session_type(nine_to_five, create, monday, staff_user, physio):
    session = create(nine_to_five, local(monday, 10), session_type=physio)
    assert session.duration_minutes == 45
    assert session.ends_at == local(monday, 10, 45)
    assert session.capacity == 1
    assert session.created_by == staff_user
    assert session.outside_hours_reason == ""


def test_duration_can_be_overridden(nine_to_five, create, monday):
    session = create(nine_to_five, local(monday, 10), duration_minutes=90)
    assert session.duration_minutes == 90
    assert session.ends_at == local(monday, 11, 30)


@pytest.mark.parametrize("minutes", [4, 24 * 60 + 1])
def test_duration_must_be_five_minutes_to_a_day(nine_to_five, create, monday, minutes):
    with pytest.raises(ValidationError, match="Duration must be between 5 minutes and 24 hours"):
        create(nine_to_five, local(monday, 10), duration_minutes=minutes)
    assert not Session.objects.exists()


def test_capacity_must_be_at_least_one(nine_to_five, create, monday):
    with pytest.raises(ValidationError, match="Capacity must be at least 1"):
        create(nine_to_five, local(monday, 10), capacity=0)
    assert not Session.objects.exists()
    assert create(nine_to_five, local(monday, 10), capacity=8).capacity == 8


def test_staff_must_deliver_the_session_type(nine_to_five, create, monday, category):
    yoga = SessionType.objects.create(name="Yoga class", category=category, duration_minutes=75)
    with pytest.raises(StaffUnavailable, match="Coach Carter does not deliver Yoga class"):
        create(nine_to_five, local(monday, 10), session_type=yoga)
    assert not Session.objects.exists()


def test_inactive_staff_member_is_refused(nine_to_five, create, monday):
    nine_to_five.active = False
    nine_to_five.save()
    with pytest.raises(StaffUnavailable, match="Coach Carter is not an active staff member"):
        create(nine_to_five, local(monday, 10))
    assert not Session.objects.exists()


def test_archived_session_type_is_refused(nine_to_five, create, monday, massage):
    massage.archived = True
    massage.save()
    with pytest.raises(ValidationError, match="Massage 60 is archived"):
        create(nine_to_five, local(monday, 10))


def test_naive_start_is_refused(nine_to_five, create, monday):
    with pytest.raises(ValidationError, match="The start needs a time zone"):
        create(nine_to_five, datetime.combine(monday, time(10)))
    assert not Session.objects.exists()


# --- Working hours ------------------------------------------------------------------------------


@pytest.mark.parametrize("hour, minute", [(9, 0), (12, 30), (16, 0)])
def test_inside_working_hours_is_accepted(nine_to_five, create, monday, hour, minute):
    session = create(nine_to_five, local(monday, hour, minute))
    assert session.outside_hours_reason == ""


@pytest.mark.parametrize(
    "hour, minute, why",
    [(8, 30, "starts before the slot"), (16, 30, "ends after the slot"), (7, 0, "wholly before")],
)
def test_partly_outside_working_hours_needs_a_reason(nine_to_five, create, monday, hour, minute, why):
    start = local(monday, hour, minute)
    with pytest.raises(StaffUnavailable) as refused:
        create(nine_to_five, start)
    assert str(refused.value) == (
        f"{timezone.localtime(start):%a %d %b %H:%M} is outside Coach Carter's working hours: "
        "give a reason to book it anyway."
    ), why
    with pytest.raises(StaffUnavailable):
        create(nine_to_five, start, outside_hours_reason="   ")  # blank does not count as a reason
    assert not Session.objects.exists()

    session = create(nine_to_five, start, outside_hours_reason="  Client can only come early  ")
    assert session.outside_hours_reason == "Client can only come early"


def test_a_day_without_working_hours_needs_a_reason(nine_to_five, create):
    sunday = next_weekday(Weekday.SUNDAY)
    with pytest.raises(StaffUnavailable, match="outside Coach Carter's working hours"):
        create(nine_to_five, local(sunday, 10))
    assert create(nine_to_five, local(sunday, 10), outside_hours_reason="Competition prep").pk


def test_session_crossing_midnight_always_needs_a_reason(all_day, create, monday):
    start = local(monday, 23, 30)
    with pytest.raises(StaffUnavailable, match="outside Coach Carter's working hours"):
        create(all_day, start)
    session = create(all_day, start, outside_hours_reason="Night shift cover")
    assert session.ends_at == local(monday + timedelta(days=1), 0, 30)


def test_session_ending_at_midnight_fits_a_slot_until_midnight(all_day, create, monday):
    session = create(all_day, local(monday, 23))
    assert session.ends_at == local(monday + timedelta(days=1), 0)
    assert session.outside_hours_reason == ""


def test_working_hours_are_local_time_on_a_summer_time_day(nine_to_five, create):
    WorkingHours.objects.create(staff_member=nine_to_five, weekday=Weekday.SUNDAY, starts=time(9), ends=time(17))
    summer = next_clock_change(3)  # clocks went forward at 01:00 GMT: local = UTC + 1
    winter = summer - timedelta(days=7)  # the Sunday before, still on GMT

    at_nine_local = datetime.combine(summer, time(8), tzinfo=dt_timezone.utc)
    assert timezone.localtime(at_nine_local).hour == 9
    assert create(nine_to_five, at_nine_local).outside_hours_reason == ""

    # 16:30 UTC is 17:30 local in summer: past the end of the slot.
    with pytest.raises(StaffUnavailable, match=r"Sun \d\d Mar 17:30 is outside"):
        create(nine_to_five, datetime.combine(summer, time(16, 30), tzinfo=dt_timezone.utc))
    # The same UTC time a week earlier is 16:30 local: inside.
    assert create(nine_to_five, datetime.combine(winter, time(16), tzinfo=dt_timezone.utc)).pk


def test_duration_is_real_time_across_the_autumn_clock_change(all_day, create):
    """01:30 comes twice on the last Sunday of October; a one-hour session lasts one hour."""
    back = next_clock_change(10)
    start = timezone.make_aware(datetime.combine(back, time(1, 30)))  # the first 01:30 (BST)
    session = create(all_day, start, outside_hours_reason="Night shift cover")
    session.refresh_from_db()
    assert session.ends_at - session.starts_at == timedelta(minutes=60)
    assert session.ends_at == start.astimezone(dt_timezone.utc) + timedelta(hours=1)
    assert timezone.localtime(session.ends_at).strftime("%H:%M %Z") == "01:30 GMT"


# --- Time off and double-booking ----------------------------------------------------------------


def test_time_off_is_refused(nine_to_five, create, monday):
    TimeOff.objects.create(
        staff_member=nine_to_five, starts_at=local(monday, 12), ends_at=local(monday, 14), reason="Dentist"
    )
    with pytest.raises(StaffUnavailable, match=r"Coach Carter is off then \(Dentist\)"):
        create(nine_to_five, local(monday, 13))
    with pytest.raises(StaffUnavailable, match="is off then"):
        create(nine_to_five, local(monday, 11, 30))  # runs into the time off
    # A reason for working outside hours does not override time off.
    with pytest.raises(StaffUnavailable, match="is off then"):
        create(nine_to_five, local(monday, 13), outside_hours_reason="Urgent")
    assert not Session.objects.exists()
    assert create(nine_to_five, local(monday, 11)).ends_at == local(monday, 12)
    assert create(nine_to_five, local(monday, 14)).pk


@pytest.mark.parametrize(
    "start, minutes, shape",
    [
        ((9, 30), 60, "overlaps its start"),
        ((10, 30), 60, "overlaps its end"),
        ((9, 30), 120, "contains it"),
        ((10, 15), 30, "is contained in it"),
        ((10, 0), 60, "is the same slot"),
    ],
)
def test_staff_member_cannot_be_double_booked(nine_to_five, create, monday, start, minutes, shape):
    create(nine_to_five, local(monday, 10))  # 10:00–11:00
    with pytest.raises(StaffUnavailable) as refused:
        create(nine_to_five, local(monday, *start), duration_minutes=minutes)
    assert str(refused.value).startswith("Coach Carter is already in a session then: Massage 60 with Coach Carter"), shape
    assert Session.objects.count() == 1


def test_back_to_back_sessions_are_allowed(nine_to_five, create, monday):
    create(nine_to_five, local(monday, 10))
    before = create(nine_to_five, local(monday, 9))
    after = create(nine_to_five, local(monday, 11))
    assert (before.ends_at, after.starts_at) == (local(monday, 10), local(monday, 11))
    assert Session.objects.filter(staff_member=nine_to_five).count() == 3


def test_another_staff_member_may_work_at_the_same_time(
    nine_to_five, create, monday, massage, django_user_model
):
    other = StaffMember.objects.create(
        user=django_user_model.objects.create_user("jo"), display_name="Jo Lindqvist"
    )
    other.session_types.add(massage)
    WorkingHours.objects.create(staff_member=other, weekday=Weekday.MONDAY, starts=time(9), ends=time(17))
    create(nine_to_five, local(monday, 10))
    assert create(other, local(monday, 10)).staff_member == other


def test_database_refuses_an_overlapping_row_written_directly(nine_to_five, create, monday, massage):
    """The PostgreSQL exclusion constraint holds even when a write bypasses the service."""
    create(nine_to_five, local(monday, 10))
    with pytest.raises(IntegrityError, match="session_staff_no_overlap"), transaction.atomic():
        Session.objects.create(
            session_type=massage, staff_member=nine_to_five, starts_at=local(monday, 10, 30),
            ends_at=local(monday, 11, 30), duration_minutes=60,
        )
    # Touching ends are not an overlap for the constraint either ('[)' ranges).
    Session.objects.create(
        session_type=massage, staff_member=nine_to_five, starts_at=local(monday, 11),
        ends_at=local(monday, 12), duration_minutes=60,
    )
    assert Session.objects.count() == 2
