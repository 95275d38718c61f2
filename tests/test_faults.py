"""A lost database connection answers a clean 503 (core.db_errors), never a 500 with a traceback.

The outage itself (PostgreSQL really stopped and started under booking load, Redis stopped for
30 s, a worker SIGKILLed mid-way) is in bench/faults.py: `python -m bench.faults` runs it on
throwaway servers of its own. Here: the middleware's answers, in the site's real middleware stack.
"""
from __future__ import annotations

import json

import pytest
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.test import override_settings

from core.db_errors import MESSAGE, DatabaseUnavailableMiddleware

MIDDLEWARE = "core.db_errors.DatabaseUnavailableMiddleware"


def with_db_errors_middleware():
    """settings.MIDDLEWARE with ours after RequestIdMiddleware (a no-op once settings have it)."""
    middleware = list(settings.MIDDLEWARE)
    if MIDDLEWARE not in middleware:
        middleware.insert(middleware.index("core.middleware.RequestIdMiddleware") + 1, MIDDLEWARE)
    return override_settings(MIDDLEWARE=middleware)


@pytest.fixture
def lost_connection(monkeypatch):
    """Every portal page and every webhook store fails as a query does while PostgreSQL restarts."""
    def fail(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr("core.portal_views.client_from_token", fail)
    monkeypatch.setattr("payments.webhooks._store", fail)


@pytest.mark.django_db
def test_a_page_answers_a_plain_503_without_a_traceback(client, lost_connection):
    client.raise_request_exception = False
    with with_db_errors_middleware():
        response = client.get("/me/some-token/")
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/html")
    assert response["Retry-After"]
    body = response.content.decode()
    assert MESSAGE in body
    assert "Traceback" not in body and "OperationalError" not in body and "server closed" not in body


@pytest.mark.django_db
def test_the_webhook_answers_503_json_so_stripe_delivers_again(client, lost_connection, settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_tests"
    from payments import stripe_double

    body = json.dumps({"id": "evt_faults_1", "type": "checkout.session.completed", "object": "event",
                       "data": {"object": {}}})
    client.raise_request_exception = False
    with with_db_errors_middleware():
        response = client.post("/stripe/webhook/", data=body, content_type="application/json",
                               HTTP_STRIPE_SIGNATURE=stripe_double.sign(body))
    assert response.status_code == 503
    assert response.json() == {"error": "unavailable", "detail": MESSAGE}


@pytest.mark.parametrize("exc", [OperationalError("gone"), InterfaceError("connection already closed")])
def test_both_connection_errors_are_answered_and_others_are_left_alone(rf, exc):
    middleware = DatabaseUnavailableMiddleware(lambda request: None)
    assert middleware.process_exception(rf.get("/"), exc).status_code == 503
    assert middleware.process_exception(rf.get("/"), ValueError("a bug")) is None
