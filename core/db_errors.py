"""A lost database connection answers a clean 503, not a 500 page with a traceback.

While PostgreSQL restarts (or a failover happens) every query fails with OperationalError or
InterfaceError. This middleware turns those into a short 503 with Retry-After: plain HTML for
pages, JSON for the Stripe webhook (Stripe retries any non-2xx delivery). The transaction was
rolled back by the database, so nothing half-written remains; the next request reconnects
(Django drops an unusable connection at the end of the request; CONN_HEALTH_CHECKS makes it
check a persistent connection before reusing it).

Add it to settings.MIDDLEWARE right after RequestIdMiddleware (so the 503 carries the request id
and every later middleware's database errors are caught too):

    "core.db_errors.DatabaseUnavailableMiddleware",
"""
from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

MESSAGE = "We are having a short technical problem; please try again in a minute."
RETRY_AFTER_SECONDS = 30
_JSON_PREFIXES = ("/stripe/webhook/",)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Please try again in a minute</title>
<meta name="robots" content="noindex"></head>
<body><h1>Please try again in a minute</h1><p>{message}</p></body></html>
"""


def is_database_unavailable(exc: BaseException) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError))


def unavailable_response(request) -> HttpResponse:
    if request.path.startswith(_JSON_PREFIXES) or "application/json" in request.headers.get("Accept", ""):
        response = JsonResponse({"error": "unavailable", "detail": MESSAGE}, status=503)
    else:
        response = HttpResponse(_PAGE.format(message=MESSAGE), status=503, content_type="text/html; charset=utf-8")
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    return response


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if is_database_unavailable(exception):
            return self._answer(request, exception)
        return None

    def _answer(self, request, exc) -> HttpResponse:
        # One line, no traceback: the outage is the database's, not a bug in the code.
        logger.error("database unavailable: %s %s answered 503 (%s: %s)", request.method, request.path,
                     type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        return unavailable_response(request)
