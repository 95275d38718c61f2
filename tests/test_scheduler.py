"""The periodic schedule, and jobs whose retries run out: dead letters in the admin, retried from it."""
from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import dramatiq
import pytest
from apscheduler.triggers.cron import CronTrigger
from django.conf import settings
from django.contrib.auth.models import Permission
from django.urls import reverse
from dramatiq_crontab import scheduler

from config import schedule
from config.dead_letters import dead_letters_count, dead_letters_list

LONDON = ZoneInfo("Europe/London")


def scheduled_jobs() -> dict:
    schedule.register()
    return {job.name: job for job in scheduler.get_jobs()}


def test_the_schedule_lists_the_periodic_jobs_with_their_cron_expressions():
    assert {job.actor_path: job.cron for job in schedule.SCHEDULE} == {
        "ledger.tasks.expire_due_credits": "*/5 * * * *",
        "payments.tasks.process_pending_stripe_events": "*/5 * * * *",
        "core.tasks.send_due_nudges": "7 * * * *",
        "core.tasks.notify_staff_of_issued_credits": "*/5 * * * *",
        "payments.tasks.reconcile_stripe_daily": "17 3 * * *",
        "payments.tasks.open_due_plan_cycles": "23 * * * *",
        "reports.tasks.remove_old_report_exports": "41 4 * * *",
    }
    jobs = scheduled_jobs()
    for periodic in schedule.SCHEDULE:
        job = jobs[periodic.actor_path.rpartition(".")[2]]
        actor = schedule.load_actor(periodic.actor_path)
        # The scheduler only sends the message (a worker runs it) ...
        assert job.func == actor.send
        # ... at the times of the cron expression, read in the business's time zone.
        expected = CronTrigger.from_crontab(periodic.cron, timezone=ZoneInfo(settings.TIME_ZONE))
        assert str(job.trigger) == str(expected)
        assert job.trigger.timezone == ZoneInfo(settings.TIME_ZONE)


def test_registering_twice_schedules_each_job_once():
    scheduled_jobs()
    assert schedule.register() == []
    names = [job.name for job in scheduler.get_jobs()]
    for periodic in schedule.SCHEDULE:
        assert names.count(periodic.actor_path.rpartition(".")[2]) == 1


def test_hourly_nudges_follow_the_local_clock_across_the_spring_dst_change(settings):
    settings.TIME_ZONE = "Europe/London"
    trigger = CronTrigger.from_crontab("7 * * * *", timezone=LONDON)
    # 29 March 2026: at 01:00 GMT the clocks go to 02:00 BST, so 01:07 never happens locally.
    after = datetime(2026, 3, 29, 0, 0, tzinfo=LONDON)
    first = trigger.get_next_fire_time(None, after)
    second = trigger.get_next_fire_time(first, first)
    assert (first.hour, first.minute, first.utcoffset().total_seconds()) == (0, 7, 0)
    assert second.minute == 7 and second.hour == 2 and second.utcoffset().total_seconds() == 3600
    # One real hour apart (same-zone subtraction would give wall-clock time): none lost or doubled.
    assert (second.astimezone(UTC) - first.astimezone(UTC)).total_seconds() == 3600


# --- Dead letters -------------------------------------------------------------------------

attempts = itertools.count(1)
state = {"broken": True, "done": []}


@dramatiq.actor(max_retries=1, min_backoff=10, max_backoff=20)
def packdesk_test_flaky_job(purchase_id: int) -> None:
    attempt = next(attempts)
    if state["broken"]:
        raise RuntimeError(f"provider refused (attempt {attempt})")
    state["done"].append(purchase_id)


def run_worker_until(broker, condition, timeout=20.0):
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "the worker did not get there in time"
            time.sleep(0.05)
    finally:
        worker.stop()


# Transactional: stopping a worker closes every database connection (DbConnectionsMiddleware).
@pytest.mark.django_db(transaction=True)
def test_a_job_that_keeps_failing_ends_dead_is_shown_in_the_admin_and_retried_from_it(
    redis_broker, client, admin_user
):
    global attempts
    attempts = itertools.count(1)
    state.update(broken=True, done=[])
    packdesk_test_flaky_job.send(42)
    run_worker_until(redis_broker, lambda: dead_letters_count() == 1)

    [letter] = dead_letters_list()
    assert (letter.actor_name, letter.args, letter.queue_name) == ("packdesk_test_flaky_job", (42,), "default")
    # Run once, retried once, then dead; the failure shown is the last run's, not the first's.
    assert letter.retries == 2
    assert letter.failure == "RuntimeError: provider refused (attempt 2)"
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0  # nothing left to run

    client.force_login(admin_user)
    tasks = client.get(reverse("admin:django_dramatiq_task_changelist"))
    assert tasks.status_code == 200 and "Dead letters" in tasks.content.decode()
    page = client.get(reverse("admin:dead_letters"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "packdesk_test_flaky_job" in html and "provider refused (attempt 2)" in html
    assert html.count('class="border-t border-base-200 align-top dark:border-base-800 dead-letter"') == 1

    # The cause is fixed; the admin sends the job again, with a fresh retry count.
    state["broken"] = False
    response = client.post(reverse("admin:dead_letters_retry"), {"letter": f"default|{letter.key}"}, follow=True)
    assert "1 job sent again." in response.content.decode()
    assert dead_letters_count() == 0
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 1
    run_worker_until(redis_broker, lambda: state["done"] == [42])

    # A second click on the same (now gone) letter sends nothing twice.
    again = client.post(reverse("admin:dead_letters_retry"), {"letter": f"default|{letter.key}"}, follow=True)
    assert "1 job was no longer dead" in again.content.decode()
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0
    assert "No dead letters" in client.get(reverse("admin:dead_letters")).content.decode()


@pytest.mark.django_db
def test_only_superusers_see_or_retry_dead_letters(redis_broker, client, staff_user):
    staff_user.user_permissions.add(*Permission.objects.filter(codename="view_task"))
    client.force_login(staff_user)
    assert client.get(reverse("admin:dead_letters")).status_code == 403
    assert client.post(reverse("admin:dead_letters_retry"), {"letter": "default|x"}).status_code == 403
