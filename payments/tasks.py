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


@dramatiq.actor(max_retries=8, min_backoff=10_000, max_backoff=600_000)
def push_subscription_to_stripe(subscription_id: int) -> None:
    """Tell Stripe a plan was paused, resumed or cancelled here (idempotent: pushes the current state)."""
    from payments.subscription_stripe import subscription_push_to_stripe

    subscription_push_to_stripe(subscription_id)


class ReconciliationFailed(Exception):
    """The daily reconciliation could not read Stripe; raised so dramatiq tries again later."""


# Retried a few times over the morning (1 min, 2, 4 ... up to an hour): Stripe outages are short.
@dramatiq.actor(max_retries=5, min_backoff=60_000, max_backoff=3_600_000, time_limit=30 * 60_000)
def reconcile_stripe_daily() -> str:
    """Reconcile yesterday (the business's local day) with Stripe; idempotent once it succeeded."""
    from payments.models import ReconciliationStatus
    from payments.reconciliation import reconciliation_run_daily

    run = reconciliation_run_daily()
    if run.status == ReconciliationStatus.FAILED:
        raise ReconciliationFailed(f"reconciliation #{run.pk}: {run.error}")
    return f"reconciliation #{run.pk}: {run.transactions} transactions, {run.mismatches} mismatches"


# Not retried: the scheduler sends it again next hour, and it is idempotent (a plan whose new
# cycle is open is pending, so it is never billed twice).
@dramatiq.actor(max_retries=0, time_limit=30 * 60_000)
def open_due_plan_cycles() -> str:
    """Invoice plans whose next cycle is due ("recurs when"): open it and bill it; end pauses."""
    from payments.recurrence import subscription_cycles_open_due

    result = subscription_cycles_open_due()
    if result.skipped:
        logger.warning("recurring plans: %s (%s)", result, "; ".join(result.skipped))
    return str(result)
