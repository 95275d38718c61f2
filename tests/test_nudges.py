"""Nudges (core.nudges): every schedule edge in the business's time zone, and at most once."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.db import connection

from core.bookings import booking_create
from core.models import BusinessSettings, EmailLog, EmailStatus, NudgeKind, StaffNotification
from core.nudges import nudge_key, nudges_send_due, staff_notes_send_due
from core.tasks import notify_staff_of_issued_credits, send_due_nudges
from ledger.models import CreditGrant
from ledger.services import credits_adjust

LONDON = ZoneInfo("Europe/London")


def local(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON)


@pytest.fixture(autouse=True)
def london(settings):
    # The DST dates below are London's; the business zone is what the windows are measured in.
    settings.TIME_ZONE = "Europe/London"


@pytest.fixture
def run_at(django_capture_on_commit_callbacks):
    """Run the nudge job at a frozen moment; emails go out on commit, as in production."""

    def run(at: datetime, job=nudges_send_due):
        with time_machine.travel(at, tick=False), django_capture_on_commit_callbacks(execute=True):
            return job()

    return run


@pytest.fixture
def three_massages(make_pack, massage):
    return make_pack([(massage, False, 3)], name="Three massages")


@pytest.fixture
def paid(sell, client_a, three_massages):
    """Ada buys three massages at a given local time."""

    def buy(at: datetime, *, client=client_a, pack=three_massages, staff_member=None):
        with time_machine.travel(at, tick=False):
            return sell(client, pack, staff_member=staff_member, paid_at=at)

    return buy


def sent(mailoutbox, template_word: str) -> list:
    return [m for m in mailoutbox if template_word in m.subject.lower()]


# --- booking reminder: 24 hours after payment ----------------------------------------------------


def test_booking_reminder_at_exactly_24_hours_not_a_minute_before(paid, run_at, mailoutbox, client_a):
    purchase = paid(local(2026, 6, 10, 10, 0))
    run_at(local(2026, 6, 11, 9, 59))
    assert mailoutbox == []
    run_at(local(2026, 6, 11, 10, 0))
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == [client_a.email]
    assert "3 sessions" in message.body
    assert "/me/" in message.body  # the client's personal page, one tap away
    log = EmailLog.objects.get(dedupe_key=nudge_key(NudgeKind.BOOKING_REMINDER, purchase.pk))
    assert log.status == EmailStatus.SENT


def test_booking_reminder_counts_elapsed_hours_across_the_clocks_going_back(paid, run_at, mailoutbox):
    # Paid Saturday 10:00 BST (09:00 UTC); the clocks go back on Sunday 25 October 2026, so
    # 24 hours later is Sunday 09:00 GMT on the wall clock.
    paid(local(2026, 10, 24, 10, 0))
    run_at(local(2026, 10, 25, 8, 59))
    assert mailoutbox == []
    run_at(local(2026, 10, 25, 9, 0))
    assert len(mailoutbox) == 1


def test_booking_reminder_counts_elapsed_hours_across_the_clocks_going_forward(paid, run_at, mailoutbox):
    # Clocks go forward on Sunday 29 March 2026: 24 hours after Saturday 10:00 GMT is 11:00 BST.
    paid(local(2026, 3, 28, 10, 0))
    run_at(local(2026, 3, 29, 10, 59))
    assert mailoutbox == []
    run_at(local(2026, 3, 29, 11, 0))
    assert len(mailoutbox) == 1


def test_no_booking_reminder_once_the_client_has_booked(
    paid, run_at, mailoutbox, session_at, client_a, staff_user
):
    paid(local(2026, 6, 10, 10, 0))
    with time_machine.travel(local(2026, 6, 10, 18, 0), tick=False):
        booking_create(client=client_a, session=session_at(local(2026, 6, 15, 9, 0)), actor=staff_user)
    run_at(local(2026, 6, 11, 12, 0))
    assert mailoutbox == []


def test_no_booking_reminder_for_purchases_paid_over_a_week_ago(paid, run_at, mailoutbox):
    paid(local(2026, 6, 1, 10, 0))
    run_at(local(2026, 6, 8, 10, 0))  # exactly 7 days: history, not a fresh purchase
    assert mailoutbox == []
    assert not EmailLog.objects.exists()


def test_booking_reminder_sent_once_when_the_job_runs_twice(paid, run_at, mailoutbox):
    paid(local(2026, 6, 10, 10, 0))
    # Through the actor the scheduler sends hourly (its body, without a broker).
    assert run_at(local(2026, 6, 11, 10, 0), send_due_nudges.fn) == "booking_reminder: 1"
    assert run_at(local(2026, 6, 11, 11, 0), send_due_nudges.fn) == "nothing due"
    assert len(mailoutbox) == 1
    assert EmailLog.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_booking_reminder_sent_once_when_two_jobs_run_at_the_same_time(paid, mailoutbox):
    paid(local(2026, 6, 10, 10, 0))
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def job():
        try:
            start.wait(timeout=10)
            nudges_send_due(now=local(2026, 6, 11, 10, 0))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(mailoutbox) == 1
    assert EmailLog.objects.filter(nudge_kind=NudgeKind.BOOKING_REMINDER).count() == 1


def test_booking_reminder_switched_off_in_business_settings(paid, run_at, mailoutbox):
    BusinessSettings.objects.update_or_create(pk=1, defaults={"nudge_booking_reminder": False})
    paid(local(2026, 6, 10, 10, 0))
    run_at(local(2026, 6, 11, 10, 0))
    assert mailoutbox == []


def test_client_who_opted_out_gets_no_reminder(paid, run_at, mailoutbox, client_a, client_b, three_massages):
    client_a.nudges_opt_out = True
    client_a.save()
    paid(local(2026, 6, 10, 10, 0))
    paid(local(2026, 6, 10, 10, 0), client=client_b)
    run_at(local(2026, 6, 11, 10, 0))
    assert [m.to for m in mailoutbox] == [[client_b.email]]


# --- expiry reminder: 7 days before, local calendar ----------------------------------------------


@pytest.fixture
def grant_expiring(client_a, massage, staff_user):
    def make(expires_at: datetime, amount: int = 2) -> CreditGrant:
        with time_machine.travel(expires_at - timedelta(days=30), tick=False):
            credits_adjust(
                client=client_a, session_type=massage, amount=amount, reason="goodwill",
                actor=staff_user, expires_at=expires_at,
            )
        return CreditGrant.objects.get(client=client_a, expires_at=expires_at)

    return make


def test_expiry_reminder_a_week_before_the_end_of_the_local_day(grant_expiring, run_at, mailoutbox):
    # Usable until the end of Tuesday 30 June (local midnight): reminded from the end of 23 June.
    grant = grant_expiring(local(2026, 7, 1, 0, 0))
    run_at(local(2026, 6, 23, 23, 59, 59))
    assert mailoutbox == []
    run_at(local(2026, 6, 24, 0, 0))
    assert len(mailoutbox) == 1
    assert "2 credits" in mailoutbox[0].body
    assert "30 June" in mailoutbox[0].body  # the last local day they can be used
    assert EmailLog.objects.filter(dedupe_key=nudge_key(NudgeKind.EXPIRY_REMINDER, grant.pk)).exists()
    run_at(local(2026, 6, 29, 12, 0))
    assert len(mailoutbox) == 1


def test_expiry_reminder_keeps_the_wall_clock_across_the_clocks_going_back(
    grant_expiring, run_at, mailoutbox
):
    # Expires at the end of Tuesday 27 October (GMT); a week earlier is Wednesday 21 October
    # 00:00 BST, which is 167 hours before, not 168.
    grant_expiring(local(2026, 10, 28, 0, 0))
    run_at(local(2026, 10, 20, 23, 59, 59))
    assert mailoutbox == []
    run_at(local(2026, 10, 21, 0, 0))
    assert len(mailoutbox) == 1


def test_no_expiry_reminder_once_expired_or_used_up(grant_expiring, run_at, mailoutbox):
    grant_expiring(local(2026, 7, 1, 0, 0))
    run_at(local(2026, 7, 1, 0, 0))  # the very moment it expires: nothing left to remind about
    assert mailoutbox == []


def test_expiry_reminder_switched_off(grant_expiring, run_at, mailoutbox):
    BusinessSettings.objects.update_or_create(pk=1, defaults={"nudge_expiry_reminder": False})
    grant_expiring(local(2026, 7, 1, 0, 0))
    run_at(local(2026, 6, 25, 9, 0))
    assert mailoutbox == []


# --- ready for another pack? ---------------------------------------------------------------------


@pytest.fixture
def one_massage(make_pack, massage):
    return make_pack([(massage, False, 1)], name="One massage")


def test_next_pack_when_the_last_credit_is_used(
    paid, one_massage, run_at, mailoutbox, session_at, client_a, staff_user
):
    paid(local(2026, 6, 10, 10, 0), pack=one_massage)
    with time_machine.travel(local(2026, 6, 10, 11, 0), tick=False):
        booking_create(client=client_a, session=session_at(local(2026, 6, 12, 9, 0)), actor=staff_user)
    run_at(local(2026, 6, 10, 12, 0))
    run_at(local(2026, 6, 10, 13, 0))
    assert len(mailoutbox) == 1
    assert "another pack" in mailoutbox[0].subject.lower()
    assert "/me/" in mailoutbox[0].body


def test_no_next_pack_while_another_grant_still_has_credits(
    paid, one_massage, three_massages, run_at, mailoutbox, session_at, client_a, staff_user
):
    paid(local(2026, 6, 10, 10, 0), pack=one_massage)
    with time_machine.travel(local(2026, 6, 10, 11, 0), tick=False):
        booking_create(client=client_a, session=session_at(local(2026, 6, 12, 9, 0)), actor=staff_user)
    paid(local(2026, 6, 10, 11, 30), pack=three_massages)
    run_at(local(2026, 6, 10, 12, 0))
    assert sent(mailoutbox, "another pack") == []


def test_next_pack_switched_off_and_opt_out(
    paid, one_massage, run_at, mailoutbox, session_at, client_a, staff_user
):
    paid(local(2026, 6, 10, 10, 0), pack=one_massage)
    with time_machine.travel(local(2026, 6, 10, 11, 0), tick=False):
        booking_create(client=client_a, session=session_at(local(2026, 6, 12, 9, 0)), actor=staff_user)
    BusinessSettings.objects.update_or_create(pk=1, defaults={"nudge_next_pack": False})
    run_at(local(2026, 6, 10, 12, 0))
    assert mailoutbox == []
    BusinessSettings.objects.filter(pk=1).update(nudge_next_pack=True)
    client_a.nudges_opt_out = True
    client_a.save()
    run_at(local(2026, 6, 10, 13, 0))
    assert mailoutbox == []


# --- note to the staff member when credits are issued --------------------------------------------


def test_staff_member_told_once_by_email_and_admin_note(paid, run_at, mailoutbox, coach, client_a):
    purchase = paid(local(2026, 6, 10, 10, 0), staff_member=coach)
    paid(local(2026, 6, 10, 10, 5))  # no staff member: nobody to tell
    assert run_at(local(2026, 6, 10, 10, 10), notify_staff_of_issued_credits.fn) == 1
    assert run_at(local(2026, 6, 10, 10, 15), notify_staff_of_issued_credits.fn) == 0
    note = StaffNotification.objects.get()
    assert note.staff_member == coach
    assert (note.related_type, note.related_id) == ("purchase", purchase.pk)
    assert "Ada Lovelace" in note.text and "3 credits" in note.text
    assert [m.to for m in mailoutbox] == [[coach.user.email]]
    assert "Ada Lovelace" in mailoutbox[0].body


def test_staff_note_switched_off(paid, run_at, mailoutbox, coach):
    BusinessSettings.objects.update_or_create(pk=1, defaults={"nudge_staff_credits_issued": False})
    paid(local(2026, 6, 10, 10, 0), staff_member=coach)
    assert run_at(local(2026, 6, 10, 10, 10), staff_notes_send_due) == 0
    assert mailoutbox == [] and not StaffNotification.objects.exists()
