"""Job queue glue: enqueue after commit, and the demo's in-process worker.

django-dramatiq builds the broker from settings.DRAMATIQ_BROKER (Redis, or a StubBroker in
the demo). Production runs `manage.py rundramatiq` as its own process.
"""
from __future__ import annotations

import logging
import threading

import dramatiq
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)
_worker: dramatiq.Worker | None = None
_worker_lock = threading.Lock()


def enqueue_on_commit(actor: dramatiq.Actor, *args, **kwargs) -> None:
    """Send a message only once the surrounding transaction has committed.

    A job never sees rows that were rolled back, nor runs before the rows it needs exist.
    """
    transaction.on_commit(lambda: actor.send(*args, **kwargs))


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
