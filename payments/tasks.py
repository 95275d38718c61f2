"""Stripe event jobs: load by id, call the service, safe to run twice (payments.events)."""
import logging

import dramatiq

from payments.events import (
    SWEEP_MIN_AGE_SECONDS,
    stripe_event_process,
    stripe_events_process_pending,
)

logger = logging.getLogger(__name__)


# A failure is recorded on the event first, then re-raised so dramatiq retries with backoff
# (10 s, 20 s, 40 s ... up to 10 minutes); the sweep and the admin's Retry take over after that.
@dramatiq.actor(max_retries=5, min_backoff=10_000, max_backoff=600_000)
def process_stripe_event(event_pk: int) -> None:
    stripe_event_process(event_pk)


@dramatiq.actor(max_retries=0, time_limit=10 * 60_000)
def process_pending_stripe_events(min_age_seconds: int = SWEEP_MIN_AGE_SECONDS) -> str:
    """What the queue missed (it was down when the webhook came, or retries ran out).

    Not retried itself: the scheduler sends it again on its next tick.
    """
    result = stripe_events_process_pending(min_age_seconds=min_age_seconds)
    if result.failed:
        logger.warning("Stripe event sweep: %s (%s)", result, "; ".join(result.failed))
    return str(result)
