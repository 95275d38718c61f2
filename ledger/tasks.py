"""Ledger jobs: load what they need, call a service, safe to run twice."""
import dramatiq

from ledger.services import credits_expire_due


@dramatiq.actor(max_retries=5, min_backoff=5_000, max_backoff=300_000)
def expire_due_credits() -> int:
    """Expire every grant whose window has closed (the scheduler sends this every few minutes)."""
    return credits_expire_due()
