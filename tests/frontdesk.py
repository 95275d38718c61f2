"""Helpers and fixtures shared by the admin front-desk tests (test_admin_frontdesk, test_admin_diary)."""
from __future__ import annotations

import html
from datetime import datetime, time, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from core.bookings import booking_create
from core.models import Weekday, WorkingHours
from core.sessions import session_create
from ledger.models import ClientBalance

DESK_PERMISSIONS = (
    "core.view_client", "core.view_staffmember", "core.view_session", "core.add_session",
    "core.view_booking", "core.add_booking", "core.change_booking",
    "payments.view_purchase", "payments.add_purchase", "payments.add_payment", "payments.view_payment",
    "payments.view_outstandingpurchase", "ledger.view_ledgerentry",
)


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def balance_of(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def local(days: int, hour: int, minute: int = 0) -> datetime:
    """A moment `days` from today at `hour`:`minute`, in the business's time zone."""
    day = timezone.localdate() + timedelta(days=days)
    return timezone.make_aware(datetime.combine(day, time(hour, minute)))


def make_user(username: str, *permissions: str):
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw-123", is_staff=True)
    for name in permissions:
        app_label, codename = name.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return get_user_model().objects.get(pk=user.pk)  # fresh, without a stale permission cache


@pytest.fixture
def desk(db, client):
    """A front-desk login with the permissions the desk needs and no override."""
    user = make_user("frontdesk", *DESK_PERMISSIONS)
    client.force_login(user)
    return user


@pytest.fixture
def manager(db):
    return make_user("manager", *DESK_PERMISSIONS, "core.override_credit_rules")


@pytest.fixture
def hours(coach):
    WorkingHours.objects.bulk_create(
        WorkingHours(staff_member=coach, weekday=day, starts=time(8), ends=time(20)) for day in Weekday.values
    )


@pytest.fixture
def pack(make_pack, massage):
    return make_pack([(massage, False, 10)], name="Ten massages")


@pytest.fixture
def new_session(coach, massage, staff_user):
    def make(starts_at, *, capacity=1):
        return session_create(
            session_type=massage, staff_member=coach, starts_at=starts_at, capacity=capacity,
            outside_hours_reason="test diary", actor=staff_user,
        )

    return make


def book_url(**params) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{reverse('admin:core_booking_add')}?{query}"


def session_post(session_type, staff_member, starts_at: datetime, **extra) -> dict:
    starts_at = timezone.localtime(starts_at)
    return {
        "session_type": session_type.pk, "staff_member": staff_member.pk,
        "starts_at_0": starts_at.date().isoformat(), "starts_at_1": starts_at.strftime("%H:%M"),
        "capacity": "1", "duration_minutes": "", "outside_hours_reason": "", **extra,
    }


@pytest.fixture
def booked(client_a, sell, pack, new_session, staff_user):
    """Book client A on a session starting at `starts_at`, paid with a credit (valid since last week)."""
    sell(client_a, pack, paid_at=timezone.now() - timedelta(days=7))

    def make(starts_at):
        return booking_create(client=client_a, session=new_session(starts_at), actor=staff_user)

    return make


def cancel_url(booking) -> str:
    return reverse("admin:core_booking_cancel_booking", args=[booking.pk])
