"""When credits stop being usable: expiry in the business's time zone, and windows at redeem."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.utils import timezone

from catalog.validation import StaffPriceData
from catalog.validity import expiry_for
from core.models import StaffMember
from ledger.exceptions import NoCreditAvailable
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, GrantState, LedgerEntry
from ledger.services import credit_redeem, credit_return, credits_expire_due, grant_void

LONDON = ZoneInfo("Europe/London")


@pytest.fixture(autouse=True)
def business_in_london(settings):
    # The rules below are stated in the business's local time; pin it whatever the environment says.
    settings.TIME_ZONE = "Europe/London"


def london(*args):
    return datetime(*args, tzinfo=LONDON)


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def balance(client, session_type):
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


# --- expiry_for ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "amount", "unit", "expected"),
    [
        # 30 days from 1 March: usable through 31 March, so it stops at 1 April 00:00 (BST by then).
        (london(2026, 3, 1, 10), 30, "days", utc(2026, 3, 31, 23)),
        (london(2026, 1, 5, 9), 1, "days", utc(2026, 1, 7, 0)),
        (london(2026, 1, 5, 9), 2, "weeks", utc(2026, 1, 20, 0)),
        (london(2026, 1, 15, 9), 3, "months", london(2026, 4, 16)),
        # Month-end clamping: 31 Jan + 1 month is the last day of February, never early March.
        (london(2026, 1, 31, 12), 1, "months", london(2026, 3, 1)),
        (london(2028, 1, 31, 12), 1, "months", london(2028, 3, 1)),  # leap year: 29 Feb
        (london(2026, 3, 31, 12), 1, "months", london(2026, 5, 1)),  # 31 Mar -> 30 Apr
        (london(2026, 8, 31, 12), 6, "months", london(2027, 3, 1)),  # 31 Aug -> 28 Feb
    ],
)
def test_expiry_counts_days_weeks_months_to_the_end_of_the_local_day(start, amount, unit, expected):
    assert expiry_for(start, amount, unit) == expected


def test_expiry_is_the_end_of_the_local_day_not_the_utc_day():
    # 23:30 on 15 June in London is still 15 June there (22:30 UTC)...
    assert expiry_for(london(2026, 6, 15, 23, 30), 1, "days") == utc(2026, 6, 16, 23)
    # ...but 23:30 UTC on 15 June is already 16 June in London: one more day of validity.
    assert expiry_for(utc(2026, 6, 15, 23, 30), 1, "days") == utc(2026, 6, 17, 23)


def test_expiry_across_the_spring_dst_change():
    start = london(2026, 3, 28, 10)  # GMT, the day before clocks go forward
    expires = expiry_for(start, 1, "days")
    assert expires == london(2026, 3, 30, 0)
    assert expires == utc(2026, 3, 29, 23)
    # Only 37 real hours, because the night of 29 March is an hour short.
    assert expires.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=37)


def test_expiry_across_the_autumn_dst_change():
    expires = expiry_for(london(2026, 10, 24, 10), 1, "days")
    assert expires == london(2026, 10, 26, 0)
    assert expires == utc(2026, 10, 26, 0)  # GMT again after 25 October


def test_expiry_follows_the_configured_time_zone(settings):
    settings.TIME_ZONE = "America/New_York"
    assert expiry_for(utc(2026, 6, 16, 2), 1, "days") == datetime(
        2026, 6, 17, tzinfo=ZoneInfo("America/New_York")
    )  # 22:00 on 15 June in New York


def test_expiry_refuses_an_unknown_unit():
    with pytest.raises(ValueError, match="unknown validity unit 'years'"):
        expiry_for(london(2026, 1, 1), 1, "years")


# --- windows at redeem --------------------------------------------------------------------------


@pytest.mark.django_db
def test_validity_from_booking_opens_the_window_at_the_first_booking(
    client_a, massage, make_pack, sell, staff_user
):
    pack = make_pack(
        [(massage, False, 5)], valid_from="booking", validity_amount=7, validity_unit="days"
    )
    grant = sell(client_a, pack).grants.get()
    assert (grant.valid_from, grant.expires_at) == (None, None)

    before = timezone.now()
    credit_redeem(
        client=client_a, session_type=massage, at=before + timedelta(days=2), actor=staff_user
    )
    grant.refresh_from_db()
    # Counted from the day the booking is made, not the day of the session.
    assert before <= grant.valid_from <= timezone.now()
    assert grant.expires_at == expiry_for(grant.valid_from, 7, "days")

    credit_redeem(
        client=client_a,
        session_type=massage,
        at=grant.expires_at - timedelta(minutes=1),
        actor=staff_user,
    )
    with pytest.raises(NoCreditAvailable, match="outside their validity or staff"):
        credit_redeem(client=client_a, session_type=massage, at=grant.expires_at, actor=staff_user)
    assert balance(client_a, massage) == 3
    assert ledger_check().ok


@pytest.mark.django_db
def test_validity_from_booking_refuses_a_session_beyond_the_window_without_opening_it(
    client_a, massage, make_pack, sell, staff_user
):
    pack = make_pack(
        [(massage, False, 5)], valid_from="booking", validity_amount=7, validity_unit="days"
    )
    grant = sell(client_a, pack).grants.get()
    with pytest.raises(
        NoCreditAvailable, match="No credit: none of the client's Massage 60 credits"
    ):
        credit_redeem(
            client=client_a,
            session_type=massage,
            at=timezone.now() + timedelta(days=30),
            actor=staff_user,
        )
    grant.refresh_from_db()
    assert (grant.valid_from, grant.expires_at, grant.remaining) == (None, None, 5)


@pytest.mark.django_db
def test_validity_from_first_session_opens_the_window_at_the_session(
    client_a, massage, make_pack, sell, staff_user
):
    pack = make_pack(
        [(massage, False, 5)], valid_from="first_session", validity_amount=1, validity_unit="weeks"
    )
    grant = sell(client_a, pack).grants.get()
    first = timezone.localtime(timezone.now() + timedelta(days=40)).replace(
        hour=10, minute=0, second=0, microsecond=0
    )
    credit_redeem(client=client_a, session_type=massage, at=first, actor=staff_user)
    grant.refresh_from_db()
    assert grant.valid_from == first
    assert grant.expires_at == expiry_for(first, 1, "weeks")

    credit_redeem(
        client=client_a, session_type=massage, at=first + timedelta(days=7), actor=staff_user
    )
    with pytest.raises(NoCreditAvailable, match="outside their validity"):
        credit_redeem(
            client=client_a, session_type=massage, at=first + timedelta(days=8), actor=staff_user
        )
    # A session before the window opened is outside it too.
    with pytest.raises(NoCreditAvailable, match="outside their validity"):
        credit_redeem(
            client=client_a, session_type=massage, at=first - timedelta(days=1), actor=staff_user
        )
    assert balance(client_a, massage) == 3


@pytest.mark.django_db
def test_unlimited_grant_is_usable_any_number_of_times_inside_its_window(
    client_a, massage, make_pack, sell, staff_user, capsys
):
    pack = make_pack([(massage, True, None)], validity_amount=1, validity_unit="weeks")
    grant = sell(client_a, pack).grants.get()
    now = timezone.now()
    for hours in (1, 2, 24, 72, 24 * 6):
        entry = credit_redeem(
            client=client_a, session_type=massage, at=now + timedelta(hours=hours), actor=staff_user
        )
        assert (entry.kind, entry.amount, entry.grant_id, entry.balance_after) == (
            EntryKind.USED,
            0,
            grant.pk,
            0,
        )
    assert LedgerEntry.objects.filter(grant=grant, kind=EntryKind.USED).count() == 5
    grant.refresh_from_db()
    assert grant.remaining == 0 and grant.expires_at == expiry_for(grant.valid_from, 1, "weeks")

    with pytest.raises(NoCreditAvailable, match="outside their validity"):
        credit_redeem(
            client=client_a,
            session_type=massage,
            at=grant.expires_at + timedelta(hours=1),
            actor=staff_user,
        )
    credits_expire_due(now=grant.expires_at)
    with pytest.raises(NoCreditAvailable, match="used, expired or voided"):
        credit_redeem(
            client=client_a, session_type=massage, at=now + timedelta(hours=3), actor=staff_user
        )
    assert balance(client_a, massage) == 0
    call_command("ledger_check")
    assert "ledger ok: 1 clients, 7 entries" in capsys.readouterr().out


@pytest.mark.django_db
def test_staff_restricted_grant_refuses_other_staff(
    client_a, massage, physio, coach, make_pack, sell, staff_user, django_user_model
):
    other = StaffMember.objects.create(
        user=django_user_model.objects.create_user("other", "other@example.com", "pw-other-123"),
        display_name="Other Coach",
    )
    pack = make_pack(
        [(massage, False, 3)], all_staff=False, staff_prices=[StaffPriceData(coach, None)]
    )
    grant = sell(client_a, pack, staff_member=coach).grants.get()
    assert list(grant.allowed_staff.all()) == [coach]
    soon = timezone.now() + timedelta(days=1)

    with pytest.raises(
        NoCreditAvailable,
        match=r"can be used with this staff member on .* \(outside their validity or staff\)",
    ):
        credit_redeem(
            client=client_a, session_type=massage, at=soon, actor=staff_user, staff_member=other
        )
    assert balance(client_a, massage) == 3

    entry = credit_redeem(
        client=client_a, session_type=massage, at=soon, actor=staff_user, staff_member=coach
    )
    assert entry.grant_id == grant.pk and entry.balance_after == 2
    assert ledger_check().ok


@pytest.mark.django_db
def test_open_grant_is_preferred_to_the_one_not_yet_started(
    client_a, massage, make_pack, sell, staff_user
):
    # A grant with a known expiry goes first; one whose window opens at first use waits its turn.
    waiting = sell(
        client_a, make_pack([(massage, False, 2)], valid_from="first_session")
    ).grants.get()
    dated = sell(client_a, make_pack([(massage, False, 1)], validity_amount=6)).grants.get()
    soon = timezone.now() + timedelta(days=1)
    first = credit_redeem(client=client_a, session_type=massage, at=soon, actor=staff_user)
    second = credit_redeem(client=client_a, session_type=massage, at=soon, actor=staff_user)
    assert (first.grant_id, second.grant_id) == (dated.pk, waiting.pk)


@pytest.mark.django_db
def test_credit_returned_after_the_window_closed_expires_again_at_once(
    client_a, massage, make_pack, sell, staff_user, monkeypatch
):
    grant = sell(
        client_a, make_pack([(massage, False, 3)], validity_amount=1, validity_unit="days")
    ).grants.get()
    used = credit_redeem(
        client=client_a,
        session_type=massage,
        at=timezone.now() + timedelta(hours=1),
        actor=staff_user,
    )
    after = grant.expires_at + timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: after)  # the sweep has not run yet

    returned = credit_return(used_entry=used, actor=staff_user, note="cancelled in time")
    entries = list(
        LedgerEntry.objects.filter(grant=grant, pk__gte=returned.pk)
        .order_by("pk")
        .values_list("kind", "amount")
    )
    assert entries == [(EntryKind.RETURNED, 1), (EntryKind.EXPIRED, -3)]
    grant.refresh_from_db()
    assert (grant.state, grant.remaining) == (GrantState.EXPIRED, 0)
    assert balance(client_a, massage) == 0
    assert ledger_check().ok


@pytest.mark.django_db
def test_return_to_a_voided_membership_after_its_window_keeps_it_voided(
    client_a, massage, make_pack, sell, staff_user, monkeypatch
):
    grant = sell(
        client_a, make_pack([(massage, True, None)], validity_amount=1, validity_unit="weeks")
    ).grants.get()
    used = credit_redeem(
        client=client_a,
        session_type=massage,
        at=timezone.now() + timedelta(hours=1),
        actor=staff_user,
    )
    grant_void(grant=grant, actor=staff_user, note="membership refunded")
    after = grant.expires_at + timedelta(days=1)
    monkeypatch.setattr(timezone, "now", lambda: after)

    returned = credit_return(used_entry=used, actor=staff_user, note="cancelled")
    assert (returned.kind, returned.amount) == (EntryKind.RETURNED, 0)
    # Nothing more: a voided grant is not re-labelled as expired.
    assert not LedgerEntry.objects.filter(grant=grant, pk__gt=returned.pk).exists()
    grant.refresh_from_db()
    assert grant.state == GrantState.VOIDED
    assert ledger_check().ok
