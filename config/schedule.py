"""The periodic jobs: the one place that says what runs when.

Cron expressions are read in settings.TIME_ZONE (the business's time zone; dramatiq-crontab
builds each trigger with Django's default time zone), so "minute 7 of every hour" follows the
local clock through DST changes. The scheduler only *sends* messages; workers run them, and each
job is idempotent, so a tick sent twice or late does no harm. Days of the week, if ever used,
must be written as names (Mon..Sun): the library refuses digits.

`register()` runs in the scheduler process (core's `crontab` command) and the demo's in-process
scheduler, never at import time, so the web and worker processes do not load the scheduler.
"""
from __future__ import annotations

import importlib
import logging
import threading
from typing import NamedTuple

logger = logging.getLogger(__name__)


class PeriodicJob(NamedTuple):
    actor_path: str  # "module.actor_name", imported when the schedule is registered
    cron: str  # minute hour day-of-month month day-of-week, business time zone
    why: str


SCHEDULE: tuple[PeriodicJob, ...] = (
    PeriodicJob("ledger.tasks.expire_due_credits", "*/5 * * * *",
                "Expired entry for every grant whose window closed; also catches missed sends"),
    PeriodicJob("payments.tasks.process_pending_stripe_events", "*/5 * * * *",
                "Stripe events the queue missed (Redis down at webhook time, retries exhausted)"),
    PeriodicJob("core.tasks.send_due_nudges", "7 * * * *",
                "Client nudges that fell due this hour (each sent at most once)"),
    PeriodicJob("core.tasks.notify_staff_of_issued_credits", "*/5 * * * *",
                "Tell staff members about credits issued since the last run"),
    PeriodicJob("payments.tasks.reconcile_stripe_daily", "17 3 * * *",
                "Reconcile yesterday (the local day) with Stripe's balance transactions"),
    PeriodicJob("reports.tasks.remove_old_report_exports", "41 4 * * *",
                "Report exports finished over a week ago: their files and rows"),
    PeriodicJob("payments.tasks.open_due_plan_cycles", "23 * * * *",
                "Invoice plans: open and bill the next cycle when it is due (recurs when); end pauses"),
)

_registered: set[str] = set()
_lock = threading.Lock()


def load_actor(actor_path: str):
    module_name, _, actor_name = actor_path.rpartition(".")
    return getattr(importlib.import_module(module_name), actor_name)


def register() -> list[str]:
    """Add every job to dramatiq-crontab's scheduler; returns the actor paths added.

    A job whose module cannot be imported yet is logged and skipped rather than stopping the
    others (each app's actors ship with that app). Calling this twice adds nothing twice.
    """
    from dramatiq_crontab import cron

    added = []
    with _lock:
        for job in SCHEDULE:
            if job.actor_path in _registered:
                continue
            try:
                actor = load_actor(job.actor_path)
            except (ImportError, AttributeError):
                logger.error("periodic job %s not scheduled: actor not found", job.actor_path, exc_info=True)
                continue
            cron(job.cron)(actor)
            _registered.add(job.actor_path)
            added.append(job.actor_path)
    return added


_demo_thread: threading.Thread | None = None
_demo_lock = threading.Lock()


def start_inprocess_scheduler() -> threading.Thread | None:
    """Demo only: run the scheduler in a daemon thread of the web process.

    It sends to the in-process stub broker, so the demo expires credits and sends nudges on
    the same clock as production. One web process in the demo, so one scheduler.
    """
    global _demo_thread
    from django.conf import settings

    # Only beside the in-process worker (config.production turns that off), never in production.
    if not (settings.PACKDESK_INPROCESS_WORKER and settings.PACKDESK_INPROCESS_SCHEDULER):
        return None
    from dramatiq_crontab import scheduler

    with _demo_lock:
        if _demo_thread is None:
            register()
            _demo_thread = threading.Thread(target=scheduler.start, name="packdesk-scheduler", daemon=True)
            _demo_thread.start()
            logger.info("in-process scheduler started (demo mode): %d periodic jobs", len(_registered))
    return _demo_thread
