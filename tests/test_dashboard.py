"""The admin home dashboard: right figures for a known day, in the business's time zone, and the
same number of queries for a small studio and a busy one."""
from __future__ import annotations

import itertools
from datetime import datetime, time, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import SessionType
from core.bookings import booking_cancel, booking_create
from core.dashboard import Money, build_dashboard, periods
from core.models import Booking, Client, Session
from core.roles import FINANCE, FRONT_DESK, sync_roles
from core.sessions import session_create
from ledger.services import credits_adjust
from payments.models import Purchase
from payments.services import purchase_create, purchase_mark_paid

_serial = itertools.count()
_slot = itertools.count()  # ten-minute slots of today, so bulk-made sessions never overlap


def local(day, hour: int = 0, minute: int = 0) -> datetime:
    return timezone.make_aware(datetime.combine(day, time(hour, minute)))


def at_utc(*args) -> datetime:
    return datetime(*args, tzinfo=dt_timezone.utc)


# --- Periods are the business's local day, week and month ----------------------------------


def test_periods_follow_the_business_time_zone(settings):
    settings.TIME_ZONE = "Europe/London"
    # 00:30 in London on 15 July (BST) is still 14 July in UTC.
    span = periods(at_utc(2026, 7, 14, 23, 30))
    assert span["today"].start == at_utc(2026, 7, 14, 23, 0)
    assert span["today"].end == at_utc(2026, 7, 15, 23, 0)
    assert span["week"].start == at_utc(2026, 7, 12, 23, 0)  # Monday 13 July, local midnight
    assert span["month"].start == at_utc(2026, 6, 30, 23, 0)
    assert span["month"].end == at_utc(2026, 7, 31, 23, 0)


def test_a_day_with_a_clock_change_ends_at_local_midnight(settings):
    settings.TIME_ZONE = "Europe/London"
    span = periods(at_utc(2026, 3, 29, 12, 0))  # clocks go forward at 01:00 GMT
    assert span["today"].start == at_utc(2026, 3, 29, 0, 0)
    assert span["today"].end == at_utc(2026, 3, 29, 23, 0)
    assert span["week"].start == at_utc(2026, 3, 23, 0, 0)
    assert span["month"].end == at_utc(2026, 3, 31, 23, 0)


# --- A known day --------------------------------------------------------------------------


def _client(name: str) -> Client:
    return Client.objects.create(name=name, email=f"{name.lower().replace(' ', '.')}@example.com")


@pytest.fixture
def yoga(db, category, coach):
    yoga = SessionType.objects.create(name="Yoga class", category=category, requires_credit=False)
    coach.session_types.add(yoga)
    return yoga


@pytest.fixture
def scene(db, staff_user, coach, massage, physio, yoga, make_pack, sell, client_a, client_b):
    """One day at the studio, described figure by figure in the tests below."""
    now = timezone.now()
    today = timezone.localdate()
    start_of_today = local(today)
    month_start = local(today.replace(day=1))
    in_three_days = now + timedelta(days=3)
    ten_massages = make_pack([(massage, False, 10)])  # 300.00 GBP
    five_physio = make_pack([(physio, False, 5)], price=Decimal("50.00"), currency="EUR")

    def session(session_type, starts_at, capacity=1):
        return session_create(
            session_type=session_type, staff_member=coach, starts_at=starts_at, capacity=capacity,
            actor=staff_user, outside_hours_reason="dashboard test",
        )

    ada, grace = client_a, client_b
    eve, fay, carol, dan, hal, ivy, jo = map(_client, ("Eve", "Fay", "Carol", "Dan", "Hal", "Ivy", "Jo"))

    # Today's diary, and its neighbours that must not show.
    session(yoga, local(today - timedelta(days=1), 22), capacity=8)
    first = session(massage, start_of_today)
    evening = session(yoga, local(today, 18), capacity=8)
    session(yoga, local(today + timedelta(days=1)), capacity=8)

    # Ada bought today and is booked at midnight on her massage credit.
    sell(ada, ten_massages, paid_at=start_of_today)
    booking_create(client=ada, session=first, actor=staff_user)
    # Grace bought today and has not booked.
    sell(grace, ten_massages, paid_at=start_of_today)
    # Eve paid last month, then booked a (free) yoga class.
    sell(eve, ten_massages, paid_at=month_start - timedelta(days=2))
    booking_create(client=eve, session=session(yoga, in_three_days, capacity=8), actor=staff_user)
    # Fay bought physio in euros, booked and cancelled in time: still not booked.
    sell(fay, five_physio, paid_at=start_of_today)
    fay_booking = booking_create(
        client=fay, session=session(physio, in_three_days + timedelta(hours=2)), actor=staff_user
    )
    booking_cancel(booking=fay_booking, actor=staff_user)
    # Ivy bought today but is archived: a sale, never on the daily list.
    sell(ivy, ten_massages, paid_at=start_of_today)
    Client.objects.filter(pk=ivy.pk).update(archived=True)
    # Dan has no purchase; he joins tonight's class and holds credits expiring in 3 days.
    booking_create(client=dan, session=evening, actor=staff_user)
    credits_adjust(
        client=dan, session_type=massage, amount=3, reason="goodwill", actor=staff_user,
        expires_at=in_three_days,
    )
    credits_adjust(
        client=hal, session_type=massage, amount=2, reason="goodwill", actor=staff_user,
        expires_at=now + timedelta(days=10),
    )
    # Carol's pack is unpaid; Jo was booked with a pack sold on the spot, also unpaid.
    purchase_create(client=carol, pack=ten_massages, actor=staff_user)
    booking_create(
        client=jo, session=session(massage, in_three_days + timedelta(hours=4)), actor=staff_user,
        sell_pack=ten_massages,
    )
    return {"first": first, "evening": evening, "names": {c.pk: c.name for c in (grace, fay)}}


def test_todays_sessions_in_local_time_with_places_taken(scene, admin_user):
    board = build_dashboard(admin_user)

    rows = [
        (timezone.localtime(r["starts_at"]).time(), r["type_name"], r["staff_name"], r["booked"], r["capacity"])
        for r in board.sessions_today
    ]
    assert rows == [
        (time(0, 0), "Massage 60", "Coach Carter", 1, 1),
        (time(18, 0), "Yoga class", "Coach Carter", 1, 8),
    ]
    assert [r["full"] for r in board.sessions_today] == [True, False]


def test_credits_issued_and_used_this_week(scene, admin_user):
    # Issued: four 10-credit packs paid (Ada, Grace, Eve, Ivy) + Fay's 5 + Jo's one held credit.
    # Used: Ada, Fay and Jo; Fay's came back when she cancelled. Adjustments are not issues.
    assert build_dashboard(admin_user).credits_week == {"issued": 46, "used": 3, "returned": 1}


def test_sales_this_month_by_currency(scene, admin_user):
    # Eve's pack was paid last month; unpaid packs are not sales.
    assert build_dashboard(admin_user).sales_month == [
        Money("EUR", Decimal("50.00"), 1),
        Money("GBP", Decimal("900.00"), 3),
    ]


def test_clients_who_bought_but_have_not_booked(scene, admin_user):
    board = build_dashboard(admin_user)

    assert board.not_booked["count"] == 2
    assert [c["name"] for c in board.not_booked["clients"]] == ["Fay", "Grace Hopper"]
    fay = board.not_booked["clients"][0]
    assert fay["last_pack"] == "Pack 2"
    assert fay["url"] == reverse("admin:core_client_change", args=[fay["pk"]])


def test_credits_expiring_in_the_next_seven_days(scene, admin_user):
    assert build_dashboard(admin_user).expiring | {"until": None} == {
        "credits": 3, "clients": 1, "until": None,
    }


def test_outstanding_payments_total_counts_each_purchase_once(scene, admin_user):
    # Jo's purchase has a booking on it: the total must not count its price per booking.
    assert build_dashboard(admin_user).outstanding == [Money("GBP", Decimal("600.00"), 2)]


def test_the_page_shows_the_figures(scene, admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert 'data-figure="issued">46<' in page
    assert 'data-figure="sales-GBP">900.00 GBP<' in page
    assert 'data-figure="outstanding-GBP">600.00 GBP<' in page
    assert 'data-figure="expiring">3 credits<' in page
    assert 'data-figure="not-booked"' in page and ">Fay</a>" in page
    assert page.count('class="session-row"') == 2


def test_every_dashboard_link_opens(scene, admin_client, admin_user):
    links = build_dashboard(admin_user).links
    assert {"sessions", "ledger", "purchases", "expiring"} <= {name for name, url in links.items() if url}
    for name, url in links.items():
        if url:
            assert admin_client.get(url).status_code == 200, (name, url)
    expiring = admin_client.get(links["expiring"])
    assert expiring.context["cl"].result_count == 1  # Dan's grant, not Hal's


def test_sections_follow_what_the_user_may_view(db, client):
    sync_roles()
    nobody = get_user_model().objects.create_user("plain", password="pw-plain-123", is_staff=True)
    board = build_dashboard(nobody)
    assert (board.sessions_today, board.credits_week, board.sales_month, board.outstanding) == (None,) * 4

    for role in (FRONT_DESK, FINANCE):
        user = get_user_model().objects.create_user(f"user-{role}", password="pw-role-123", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        board = build_dashboard(user)
        assert board.sessions_today == [] and board.outstanding == [] and board.expiring["credits"] == 0
        client.force_login(user)
        assert client.get(reverse("admin:index")).status_code == 200


# --- Fixed number of queries --------------------------------------------------------------


def add_busy_day(n: int, *, staff_user, coach, massage, make_pack) -> None:
    """n clients who bought, n sessions today each with a booking, n unpaid and n expiring grants."""
    today = timezone.localdate()
    pack = make_pack([(massage, False, 10)])
    clients = Client.objects.bulk_create(
        Client(name=f"Client {k}", email=f"client{k}@example.com")
        for k in (next(_serial) for _ in range(n))
    )
    slots = [next(_slot) for _ in range(n)]
    sessions = Session.objects.bulk_create(
        Session(
            session_type=massage, staff_member=coach, starts_at=local(today) + timedelta(minutes=10 * i),
            ends_at=local(today) + timedelta(minutes=10 * i + 5), duration_minutes=5, capacity=2,
        )
        for i in slots
    )
    Booking.objects.bulk_create(Booking(client=c, session=s) for c, s in zip(clients, sessions))
    for client in clients:
        purchase_create(client=client, pack=pack, actor=staff_user)
        credits_adjust(
            client=client, session_type=massage, amount=1, reason="load",
            actor=staff_user, expires_at=timezone.now() + timedelta(days=2),
        )
    # Some paid, so the sales and "not booked" figures have rows too.
    for purchase in Purchase.objects.filter(client__in=clients[: max(1, n // 3)]):
        purchase_mark_paid(purchase=purchase, actor=staff_user)


def queries_for(fn) -> int:
    with CaptureQueriesContext(connection) as captured:
        fn()
    return len(captured.captured_queries)


def test_the_dashboard_costs_the_same_queries_at_3_and_at_60(
    db, admin_client, admin_user, staff_user, coach, massage, make_pack, django_assert_max_num_queries,
):
    sync_roles()
    desk = get_user_model().objects.create_user("front", password="pw-front-123", is_staff=True)
    desk.groups.add(Group.objects.get(name=FRONT_DESK))
    world = dict(staff_user=staff_user, coach=coach, massage=massage, make_pack=make_pack)
    index = reverse("admin:index")

    add_busy_day(3, **world)
    small = {
        "callback": queries_for(lambda: build_dashboard(admin_user)),
        "page": queries_for(lambda: admin_client.get(index)),
        "front desk": queries_for(lambda: build_dashboard(get_user_model().objects.get(pk=desk.pk))),
    }
    add_busy_day(57, **world)
    assert Session.objects.count() == 60
    large = {
        "callback": queries_for(lambda: build_dashboard(admin_user)),
        "page": queries_for(lambda: admin_client.get(index)),
        "front desk": queries_for(lambda: build_dashboard(get_user_model().objects.get(pk=desk.pk))),
    }

    assert small == large
    with django_assert_max_num_queries(6):
        board = build_dashboard(admin_user)
    assert len(board.sessions_today) == 60 and board.not_booked["count"] == 20
