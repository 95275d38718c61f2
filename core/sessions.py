"""Writes to the diary: sessions, respecting working hours, time off and double-booking."""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from catalog.models import SessionType
from core.exceptions import StaffUnavailable
from core.models import Session, StaffMember, TimeOff, WorkingHours


def within_working_hours(staff_member: StaffMember, starts_at: datetime, ends_at: datetime) -> bool:
    """True when one weekly slot covers the whole session, in the business's local time."""
    local_start, local_end = timezone.localtime(starts_at), timezone.localtime(ends_at)
    if local_start.date() != local_end.date() and local_end.time() != datetime.min.time():
        return False  # sessions crossing midnight are always an explicit exception
    end_time = local_end.time() if local_end.date() == local_start.date() else datetime.max.time()
    return WorkingHours.objects.filter(
        staff_member=staff_member, weekday=local_start.weekday(),
        starts__lte=local_start.time(), ends__gte=end_time,
    ).exists()


def staff_conflicts(
    staff_member: StaffMember, starts_at: datetime, ends_at: datetime, *, exclude_session_id: int | None = None
) -> str | None:
    """Why the staff member cannot take this slot (another session or time off), or None."""
    clash = Session.objects.filter(
        staff_member=staff_member, starts_at__lt=ends_at, ends_at__gt=starts_at
    ).exclude(pk=exclude_session_id).select_related("session_type").first()
    if clash is not None:
        return f"{staff_member} is already in a session then: {clash}."
    off = TimeOff.objects.filter(staff_member=staff_member, starts_at__lt=ends_at, ends_at__gt=starts_at).first()
    if off is not None:
        return f"{staff_member} is off then ({off.reason or 'time off'})."
    return None


@transaction.atomic
def session_create(
    *, session_type: SessionType, staff_member: StaffMember, starts_at: datetime, actor,
    capacity: int = 1, duration_minutes: int | None = None, outside_hours_reason: str = "",
) -> Session:
    if timezone.is_naive(starts_at):
        raise ValidationError({"starts_at": ["The start needs a time zone."]})
    # Python adds a timedelta to a zoneinfo datetime on the wall clock: across the autumn clock
    # change 01:30 BST + 60 minutes would give 02:30 GMT, two real hours. UTC has no such jumps.
    starts_at = starts_at.astimezone(dt_timezone.utc)
    if session_type.archived:
        raise ValidationError({"session_type": [f"{session_type} is archived."]})
    if capacity < 1:
        raise ValidationError({"capacity": ["Capacity must be at least 1."]})
    duration = duration_minutes or session_type.duration_minutes
    if not 5 <= duration <= 24 * 60:
        raise ValidationError({"duration_minutes": ["Duration must be between 5 minutes and 24 hours."]})
    # The staff row is the lock that serialises the staff member's diary.
    staff_member = StaffMember.objects.select_for_update().get(pk=staff_member.pk)
    if not staff_member.active:
        raise StaffUnavailable(f"{staff_member} is not an active staff member.")
    if not staff_member.session_types.filter(pk=session_type.pk).exists():
        raise StaffUnavailable(f"{staff_member} does not deliver {session_type}.")
    ends_at = starts_at + timedelta(minutes=duration)
    conflict = staff_conflicts(staff_member, starts_at, ends_at)
    if conflict:
        raise StaffUnavailable(conflict)
    reason = (outside_hours_reason or "").strip()
    if not within_working_hours(staff_member, starts_at, ends_at) and not reason:
        raise StaffUnavailable(
            f"{timezone.localtime(starts_at):%a %d %b %H:%M} is outside {staff_member}'s working hours: "
            "give a reason to book it anyway."
        )
    session = Session(
        session_type=session_type, staff_member=staff_member, starts_at=starts_at, ends_at=ends_at,
        duration_minutes=duration, capacity=capacity, outside_hours_reason=reason, created_by=actor,
    )
    session._history_user = actor
    session.save()
    return session
