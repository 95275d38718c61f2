"""Shared fixtures. The suite runs on real PostgreSQL and Redis (see scripts/with_services.py)."""
from __future__ import annotations

import os
from datetime import time, timedelta
from decimal import Decimal

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from django.contrib.auth import get_user_model
from django.utils import timezone

from catalog.models import Category, SessionType
from catalog.services import pack_create
from catalog.validation import LineData, StaffPriceData
from core.models import Client, StaffMember, Weekday, WorkingHours
from core.sessions import session_create
from payments.services import purchase_create, purchase_mark_paid


def pytest_configure(config):
    # The suite proves behaviour on PostgreSQL and Redis; SQLite would hide locking bugs.
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        raise pytest.UsageError(
            "Tests need PostgreSQL: set DATABASE_URL, or run `make test`, which starts throwaway servers."
        )
    if not os.environ.get("REDIS_URL"):
        raise pytest.UsageError(
            "Tests need Redis: set REDIS_URL, or run `make test`, which starts throwaway servers."
        )


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # The default hasher is deliberately slow; tests create many users and prove nothing with it.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user("desk", "desk@example.com", "pw-desk-123", is_staff=True)


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("boss", "boss@example.com", "pw-boss-123")


@pytest.fixture
def category(db):
    return Category.objects.create(name="Private sessions")


@pytest.fixture
def massage(db, category):
    return SessionType.objects.create(name="Massage 60", category=category, duration_minutes=60)


@pytest.fixture
def physio(db, category):
    return SessionType.objects.create(name="Physio", category=category, duration_minutes=45)


@pytest.fixture
def coach(db, massage, physio):
    user = get_user_model().objects.create_user("coach", "coach@example.com", "pw-coach-123")
    member = StaffMember.objects.create(user=user, display_name="Coach Carter")
    member.session_types.set([massage, physio])
    return member


@pytest.fixture
def client_a(db):
    return Client.objects.create(name="Ada Lovelace", email="ada@example.com")


@pytest.fixture
def client_b(db):
    return Client.objects.create(name="Grace Hopper", email="grace@example.com")


@pytest.fixture
def make_pack(db, category, staff_user):
    counter = {"n": 0}

    def make(lines, *, staff_prices=(), **fields):
        counter["n"] += 1
        defaults = dict(
            name=f"Pack {counter['n']}", category=category, price=Decimal("300.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=3,
            validity_unit="months", valid_from="payment",
        )
        defaults.update(fields)
        return pack_create(
            actor=staff_user,
            lines=[l if isinstance(l, LineData) else LineData(*l) for l in lines],
            staff_prices=[s if isinstance(s, StaffPriceData) else StaffPriceData(*s) for s in staff_prices],
            **defaults,
        )

    return make


@pytest.fixture
def sell(db, staff_user):
    """Sell and pay a pack for a client; returns the paid purchase."""

    def do(client, pack, *, staff_member=None, paid_at=None):
        purchase = purchase_create(client=client, pack=pack, staff_member=staff_member, actor=staff_user)
        return purchase_mark_paid(purchase=purchase, actor=staff_user, paid_at=paid_at)

    return do


def work_all_day(staff_member):
    for weekday in Weekday.values:
        WorkingHours.objects.create(staff_member=staff_member, weekday=weekday, starts=time(0), ends=time.max)


@pytest.fixture
def diary(coach):
    """The coach works every hour of every day, so diary tests are about their own rule only."""
    work_all_day(coach)
    return coach


@pytest.fixture
def jo(db, massage, django_user_model):
    member = StaffMember.objects.create(
        user=django_user_model.objects.create_user("jo"), display_name="Jo Lindqvist"
    )
    member.session_types.add(massage)
    work_all_day(member)
    return member


@pytest.fixture
def session_at(diary, staff_user, massage):
    def make(starts_at, *, session_type=massage, staff_member=diary, capacity=1):
        # Sessions sit wherever the clock puts them, sometimes across midnight: give the reason
        # the service asks for then, so these tests are about bookings only.
        return session_create(
            session_type=session_type, staff_member=staff_member, starts_at=starts_at,
            capacity=capacity, actor=staff_user, outside_hours_reason="Tests run at any hour",
        )

    return make


@pytest.fixture
def redis_broker():
    """The real Redis broker, emptied before and after: jobs in these tests go through Redis."""
    broker = dramatiq.get_broker()
    assert isinstance(broker, RedisBroker), "tests run against Redis, never the stub broker"
    broker.flush_all()
    yield broker
    broker.flush_all()


@pytest.fixture
def soon():
    return timezone.now() + timedelta(days=1)


# Browser fixtures (browser, desktop_page, phone_page) for the real-browser tests.
from tests.browser import browser, desktop_page, phone_page  # noqa: E402,F401
