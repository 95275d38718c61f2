"""GET /healthz for a load balancer: database, Redis and how far behind the jobs are.

Answered by core.middleware.HealthCheckMiddleware before anything else runs (no host check,
no session, no CSRF, no login). 200 while the site can serve ("ok", or "degraded" when work is
waiting longer than it should); 503 when the database or Redis cannot be reached, so the load
balancer takes this instance out. Only statuses and numbers are returned: reasons go to the log.
"""
from __future__ import annotations

import logging
import time

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponseNotAllowed, JsonResponse
from django.utils import timezone
from dramatiq import Message
from dramatiq.common import q_name

logger = logging.getLogger(__name__)

OK, DEGRADED, FAIL, SKIPPED = "ok", "degraded", "fail", "skipped"
QUEUE = "default"  # every actor of ours uses it (config/dead_letters.py)
NAMESPACE = "dramatiq"  # RedisBroker's default key prefix
SAMPLE = 10  # messages looked at from the head of the queue (the oldest ones)

_clients: dict[str, redis.Redis] = {}


def _redis(url: str) -> redis.Redis:
    """One client (and connection pool) per URL, with timeouts short enough for a probe."""
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(
            url, socket_connect_timeout=settings.HEALTHZ_TIMEOUT_SECONDS,
            socket_timeout=settings.HEALTHZ_TIMEOUT_SECONDS, health_check_interval=0,
        )
    return client


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any failure means this instance cannot serve
        logger.warning("healthz: database check failed: %s", type(exc).__name__)
        return FAIL
    return OK


def _oldest_message_age(client: redis.Redis, now_ms: int) -> tuple[int, float | None]:
    """(messages waiting, seconds the oldest of them has waited) in the default queue.

    dramatiq appends message ids to the list "dramatiq:default" and keeps each message in the
    hash "dramatiq:default.msgs"; workers take from the head. A retried message is counted from
    when it became due again (its eta), not from when it was first sent.
    """
    key = f"{NAMESPACE}:{q_name(QUEUE)}"
    pipe = client.pipeline(transaction=False)
    pipe.llen(key)
    pipe.lrange(key, 0, SAMPLE - 1)
    waiting, ids = pipe.execute()
    if not ids:
        return waiting, None
    oldest = None
    for data in client.hmget(f"{key}.msgs", ids):
        if data is None:  # taken by a worker between the two reads
            continue
        message = Message.decode(data)
        since = max(message.message_timestamp, int(message.options.get("eta") or 0))
        age = max(0.0, (now_ms - since) / 1000)
        oldest = age if oldest is None else max(oldest, age)
    return waiting, oldest


def _oldest_pending_stripe_event_age(now) -> float | None:
    from payments.models import StripeEvent, StripeEventStatus

    received = (
        StripeEvent.objects.filter(status=StripeEventStatus.PENDING)
        .order_by("received_at").values_list("received_at", flat=True).first()
    )
    return None if received is None else max(0.0, (now - received).total_seconds())


def health_report() -> tuple[str, dict, dict]:
    """(overall status, {check: status}, {lag figures})."""
    checks: dict[str, str] = {"database": _check_database()}
    lag: dict[str, float | int | None] = {}

    if settings.REDIS_URL:
        client = _redis(settings.REDIS_URL)
        try:
            client.ping()
            checks["redis"] = OK
        except (redis.RedisError, OSError) as exc:
            logger.warning("healthz: redis check failed: %s", type(exc).__name__)
            checks["redis"] = FAIL
        if checks["redis"] == OK:
            try:
                waiting, oldest = _oldest_message_age(client, int(time.time() * 1000))
            except (redis.RedisError, OSError, ValueError) as exc:
                logger.warning("healthz: queue check failed: %s", type(exc).__name__)
                checks["queue"] = FAIL
            else:
                lag["queue_waiting"] = waiting
                lag["queue_oldest_seconds"] = None if oldest is None else round(oldest, 1)
                late = oldest is not None and oldest > settings.HEALTHZ_QUEUE_LAG_SECONDS
                checks["queue"] = DEGRADED if late else OK
    else:
        checks["redis"] = checks["queue"] = SKIPPED  # the demo: in-process queue, no Redis

    if checks["database"] == OK:
        try:
            oldest = _oldest_pending_stripe_event_age(timezone.now())
        except Exception as exc:
            logger.warning("healthz: stripe event check failed: %s", type(exc).__name__)
            checks["stripe_events"] = FAIL
        else:
            lag["stripe_event_oldest_pending_seconds"] = None if oldest is None else round(oldest, 1)
            late = oldest is not None and oldest > settings.HEALTHZ_STRIPE_EVENT_LAG_SECONDS
            checks["stripe_events"] = DEGRADED if late else OK

    # Only the database and Redis take the instance out: a backlog is the workers' problem,
    # and taking web instances out would not clear it.
    if FAIL in (checks["database"], checks["redis"]):
        status = FAIL
    elif any(value in (DEGRADED, FAIL) for value in checks.values()):
        status = DEGRADED
    else:
        status = OK
    return status, checks, lag


def healthz(request: HttpRequest):
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    status, checks, lag = health_report()
    response = JsonResponse({"status": status, "checks": checks, "lag": lag},
                            status=503 if status == FAIL else 200)
    response["Cache-Control"] = "no-store"
    return response

