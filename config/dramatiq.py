"""Job queue glue: enqueue after commit, and the demo's in-process worker.

django-dramatiq builds the broker from settings.DRAMATIQ_BROKER (Redis, or a StubBroker in
the demo). Production runs `manage.py rundramatiq` as its own process.
"""
from __future__ import annotations

import logging
import threading

import dramatiq
import redis
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)
_worker: dramatiq.Worker | None = None
_worker_lock = threading.Lock()


def enqueue_on_commit(actor: dramatiq.Actor, *args, **kwargs) -> None:
    """Send a message only once the surrounding transaction has committed.

    A job never sees rows that were rolled back, nor runs before the rows it needs exist.
    If the broker is unreachable the write has already committed: the error is logged, not
    raised (it would turn a saved change into an error page, and stop later on_commit
    callbacks). Every job has a periodic sweep (config/schedule.py) that finds the work again.
    """

    def send() -> None:
        try:
            actor.send(*args, **kwargs)
        except (dramatiq.errors.BrokerError, redis.exceptions.RedisError, OSError):
            logger.exception("job %s not enqueued (broker unreachable): left for its periodic sweep",
                             actor.actor_name)

    transaction.on_commit(send)


def start_inprocess_worker() -> dramatiq.Worker | None:
    """Demo only: consume the stub broker's queues in threads of the web process."""
    global _worker
    if not settings.PACKDESK_INPROCESS_WORKER:
        return None
    with _worker_lock:
        if _worker is None:
            broker = dramatiq.get_broker()
            _worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=200)
            _worker.start()
            logger.info("in-process job worker started (demo mode, %s)", type(broker).__name__)
    return _worker
