"""Nudge jobs (core.nudges): the scheduler sends them; each run is safe to repeat."""
import logging

import dramatiq

from core.nudges import nudges_send_due, staff_notes_send_due

logger = logging.getLogger(__name__)


# Retried with backoff (10 s ... 10 min) after a crash mid-run: what was already sent is in the
# email log and is not selected again, so a retry sends only the rest.
@dramatiq.actor(max_retries=3, min_backoff=10_000, max_backoff=600_000, time_limit=30 * 60_000)
def send_due_nudges() -> str:
    """Booking, expiry and next-pack reminders that are due (the scheduler sends this hourly)."""
    run = nudges_send_due()
    logger.info("nudges: %s", run)
    return str(run)


@dramatiq.actor(max_retries=3, min_backoff=10_000, max_backoff=600_000, time_limit=10 * 60_000)
def notify_staff_of_issued_credits() -> int:
    """Tell staff members about credits issued for their purchases (every few minutes)."""
    sent = staff_notes_send_due()
    if sent:
        logger.info("staff notified of issued credits: %s purchase(s)", sent)
    return sent
