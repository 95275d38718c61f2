"""POST /stripe/webhook/: verify, store, enqueue. Nothing else happens in the request.

Stripe retries an event until we answer 2xx, so the answer must be quick and must mean "we have
it": the event is written to the database before the 200, and processing (payments.events)
runs in a dramatiq worker. A duplicate (Stripe re-sends, or two deliveries race) is answered 200
and not enqueued again: the first delivery's job, or the sweep, does the work.
If the queue is down, the event is still stored and acknowledged; the sweep
(process_pending_stripe_events / manage.py process_stripe_events) picks it up later.
"""
from __future__ import annotations

import json
import logging

import stripe
from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from config.dramatiq import enqueue_on_commit
from core.audit_log import audit
from payments.models import StripeEvent
from payments.tasks import process_stripe_event

logger = logging.getLogger(__name__)

# Stripe's events are a few KB; anything near this is not from Stripe.
MAX_BODY_BYTES = 512 * 1024


def _refuse(status: int, reason: str) -> JsonResponse:
    return JsonResponse({"error": reason}, status=status)


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if _declared_length(request) > MAX_BODY_BYTES:
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="too large")
        return _refuse(413, "Payload too large.")
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="too large")
        return _refuse(413, "Payload too large.")
    try:
        # Checks the HMAC over the raw body and the timestamp's age (the SDK's own check), then
        # parses the JSON once. construct_event would also build a Stripe object we never use:
        # that was ~40% of the view's CPU (bench/webhooks.py).
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), request.headers.get("Stripe-Signature"),
            settings.STRIPE_WEBHOOK_SECRET, tolerance=settings.STRIPE_WEBHOOK_TOLERANCE,
        )
        payload = json.loads(body)
        if not isinstance(payload, dict):
            raise ValueError("the body is not a JSON object")
    except stripe.SignatureVerificationError as exc:
        logger.warning("Stripe webhook refused: %s", exc)
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="signature")
        return _refuse(400, "Invalid signature.")
    # signed, but not a JSON event (RecursionError: nested thousands of levels deep)
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
        logger.warning("Stripe webhook refused: unreadable payload (%s)", exc)
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="payload")
        return _refuse(400, "Invalid payload.")
    event_id, event_type = payload.get("id"), payload.get("type")
    if not (isinstance(event_id, str) and event_id and isinstance(event_type, str) and event_type):
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="no id or type")
        return _refuse(400, "Invalid payload: an event needs an id and a type.")
    if len(event_id) > 255 or len(event_type) > 100:
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="id or type too long")
        return _refuse(400, "Invalid payload: id or type too long.")

    # The job is sent after the INSERT commits; if Redis is down, enqueue_on_commit logs it and
    # the event stays pending for the sweep. If the INSERT fails, the error stands (a 500) and
    # Stripe delivers the event again.
    try:
        created = _store(payload, event_id, event_type)
    except DataError as exc:
        # Valid JSON to Python, not to PostgreSQL (a NUL in a string, NaN, a number that overflows
        # to infinity): it will never be storable, so a retry cannot help. Outages stay a 500.
        logger.warning("Stripe webhook refused: payload PostgreSQL cannot store (%s)", exc)
        audit("stripe.webhook", level=logging.WARNING, outcome="refused", reason="not storable")
        return _refuse(400, "Invalid payload.")
    audit("stripe.webhook", event_id=event_id, type=event_type, livemode=bool(payload.get("livemode")),
          outcome="stored" if created else "duplicate")
    return JsonResponse({"received": True, "duplicate": not created})


def _store(payload: dict, event_id: str, event_type: str) -> bool:
    """Store the event once; enqueue its job after the INSERT commits. False for a duplicate."""
    try:
        with transaction.atomic():
            event = StripeEvent.objects.create(
                event_id=event_id, type=event_type, livemode=bool(payload.get("livemode")), payload=payload,
            )
            enqueue_on_commit(process_stripe_event, event.pk)
    except IntegrityError:
        # Unique event_id: Stripe sent it again, or two deliveries raced. The first one's job
        # (or the sweep) processes it, so nothing more is enqueued.
        if StripeEvent.objects.filter(event_id=event_id).exists():
            return False
        raise
    return True
