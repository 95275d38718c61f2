"""Operating it: /healthz for the load balancer, the request id, and logs without secrets."""
from __future__ import annotations

import io
import json
import logging
import socket
import time
from datetime import timedelta

import pytest
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone
from dramatiq import Message
from django.views.debug import get_default_exception_reporter_filter

from config.log import JsonFormatter, RedactSecretsFilter, RequestIdFilter
from core import health
from payments.models import StripeEvent

pytestmark = pytest.mark.django_db


def closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def empty_queue(redis_broker):
    return redis_broker


# --- /healthz -----------------------------------------------------------------------------------


def test_healthz_ok(client, empty_queue):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "queue": "ok", "stripe_events": "ok"},
        "lag": {"queue_waiting": 0, "queue_oldest_seconds": None, "stripe_event_oldest_pending_seconds": None},
    }
    assert response["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response and not response.cookies  # no session, no CSRF cookie


def test_healthz_answers_a_load_balancer_over_http_under_any_host_name(client, empty_queue, settings):
    # The load balancer polls the instance's address over plain HTTP: neither ALLOWED_HOSTS
    # nor the HTTPS redirect may turn that into a 400 or a 301.
    settings.ALLOWED_HOSTS = ["packdesk.example.com"]
    settings.SECURE_SSL_REDIRECT = True

    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert client.get("/healthz/", HTTP_HOST="10.1.2.3").status_code == 200
    assert client.head("/healthz", HTTP_HOST="10.1.2.3").status_code == 200
    assert client.post("/healthz", HTTP_HOST="10.1.2.3").status_code == 405
    # ...while every other page still refuses the unknown host.
    assert client.get("/packs/", HTTP_HOST="10.1.2.3").status_code == 400


def test_healthz_fails_with_503_when_redis_is_down_and_names_no_host(client):
    port = closed_port()
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{port}/0"):
        started = time.monotonic()
        response = client.get("/healthz")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert body["checks"]["redis"] == "fail" and body["checks"]["database"] == "ok"
    assert "queue" not in body["checks"]  # not measured without Redis
    text = response.content.decode()
    assert str(port) not in text and "127.0.0.1" not in text and "refused" not in text.lower()
    assert elapsed < 3  # a refused connection fails fast (timeouts are 1 s)


def test_healthz_fails_with_503_when_the_database_is_down(client, monkeypatch, empty_queue):
    def database_is_down(*args, **kwargs):
        raise OperationalError('connection to server at "db.internal" (10.0.0.9), port 5432 failed')

    monkeypatch.setattr(health, "connection", type("Down", (), {"cursor": staticmethod(database_is_down)})())
    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail" and body["checks"]["database"] == "fail"
    assert "stripe_events" not in body["checks"]
    assert "db.internal" not in response.content.decode()


def test_healthz_is_degraded_when_a_job_has_waited_too_long(client, empty_queue, settings):
    settings.HEALTHZ_QUEUE_LAG_SECONDS = 300
    ten_minutes_ago = int(time.time() * 1000) - 600_000
    for age in (ten_minutes_ago, int(time.time() * 1000)):
        empty_queue.enqueue(Message(
            queue_name="default", actor_name="process_stripe_event", args=(0,), kwargs={}, options={},
            message_timestamp=age,
        ))

    response = client.get("/healthz")

    assert response.status_code == 200  # a backlog is the workers' problem: keep serving
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["queue"] == "degraded"
    assert body["lag"]["queue_waiting"] == 2
    assert 595 <= body["lag"]["queue_oldest_seconds"] < 700


def test_healthz_is_degraded_when_a_stripe_event_stays_pending(client, empty_queue, settings):
    settings.HEALTHZ_STRIPE_EVENT_LAG_SECONDS = 900
    StripeEvent.objects.create(event_id="evt_fresh", type="x", payload={})
    assert client.get("/healthz").json()["status"] == "ok"  # just arrived: its job is on the way

    StripeEvent.objects.create(
        event_id="evt_stuck", type="x", payload={}, received_at=timezone.now() - timedelta(hours=1)
    )
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded" and body["checks"]["stripe_events"] == "degraded"
    assert 3590 < body["lag"]["stripe_event_oldest_pending_seconds"] < 3700


def test_healthz_without_redis_is_the_demo_and_skips_it(client, settings):
    settings.REDIS_URL = ""
    body = client.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["checks"]["redis"] == body["checks"]["queue"] == "skipped"


def test_healthz_is_cheap(client, empty_queue, django_assert_max_num_queries):
    client.get("/healthz")  # connections opened
    with django_assert_max_num_queries(2):  # SELECT 1 and the oldest pending Stripe event
        started = time.monotonic()
        client.get("/healthz")
        elapsed = time.monotonic() - started
    assert elapsed < 0.25  # a few ms here; generous for a loaded CI machine


# --- Request id ---------------------------------------------------------------------------------


def test_every_response_carries_a_request_id(client):
    made = client.get("/packs/")["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert client.get("/packs/")["X-Request-ID"] != made  # one per request

    assert client.get("/packs/", HTTP_X_REQUEST_ID="lb-7f3a.2_b")["X-Request-ID"] == "lb-7f3a.2_b"


@pytest.mark.parametrize("hostile", ["a" * 65, "abc def", "x\r\nSet-Cookie: a=b", "<script>", "id;rm"])
def test_an_unusable_request_id_is_replaced(client, hostile):
    answered = client.get("/packs/", HTTP_X_REQUEST_ID=hostile)["X-Request-ID"]
    assert answered != hostile and len(answered) == 32


# --- Logs: secrets redacted, request id on every line, JSON on demand ---------------------------


@pytest.fixture
def console(settings):
    """The configured console handler, writing into a string for the test."""
    handler = next(h for h in logging.getLogger().handlers if h.name == "console")
    stream = io.StringIO()
    previous = handler.setStream(stream)
    yield stream
    handler.setStream(previous)


def test_a_logged_secret_is_redacted(console, settings):
    settings.STRIPE_SECRET_KEY = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
    settings.STRIPE_WEBHOOK_SECRET = "whsec_" + "Zx81kq0PLmB2ab"
    settings.SECRET_KEY = "a-long-django-secret-key-that-must-never-be-seen-0123456789"
    settings.DATABASE_URL = "postgres://packdesk:Db-Pa55word-9@db.internal:5432/packdesk"
    settings.REDIS_URL = "redis://:Redis-Pa55word-7@cache.internal:6379/0"
    log = logging.getLogger("packdesk.test")

    log.warning("calling Stripe with %s", settings.STRIPE_SECRET_KEY)
    log.warning("verifying with %s and signing with %s", settings.STRIPE_WEBHOOK_SECRET, settings.SECRET_KEY)
    log.error("cannot reach %s or %s", settings.DATABASE_URL, settings.REDIS_URL)
    log.warning("another key: rk_test_51HxYzAbCdEfGh1234 and sk_test_" + "abcdefgh12345678")
    try:
        raise RuntimeError(f"Stripe said no to {settings.STRIPE_SECRET_KEY}")
    except RuntimeError:
        log.exception("refused")
    log.info("GET /me/.eJxTKkktLlGyUlAqS8wpTtVRUCrOz0nVUcrMS8vPS1WyUsrMK0nNK1GyUsrOz8nJLFKyAgC9fQ:1tZ:abc/book/ 200")

    text = console.getvalue()
    for secret in ("4eC39HqLyjWDarjtT1zdp7dc", "Zx81kq0PLmB2ab", "must-never-be-seen", "Db-Pa55word-9",
                   "Redis-Pa55word-7", "rk_test_51HxYzAbCdEfGh1234", "abcdefgh12345678", "eJxTKkktLlGyUlAqS8w"):
        assert secret not in text
    assert text.count("[redacted]") >= 9
    assert "postgres://packdesk:[redacted]@db.internal:5432/packdesk" in text  # still says which database
    assert "GET /me/[redacted]/book/ 200" in text
    assert "RuntimeError: Stripe said no to [redacted]" in text  # the traceback too


def test_the_portal_link_request_page_is_not_mistaken_for_a_token(console):
    logging.getLogger("packdesk.test").info("GET /me/link/ 200")
    assert "GET /me/link/ 200" in console.getvalue()


def test_every_line_has_the_request_id_in_text_format(console, client):
    logging.getLogger("packdesk.test").info("outside any request")
    client.get("/packs/", HTTP_X_REQUEST_ID="req-text-1")  # no lines of its own; the id ends with it
    assert "[-] outside any request" in console.getvalue()

    from core.middleware import _request_id

    token = _request_id.set("req-text-2")
    try:
        logging.getLogger("packdesk.test").info("inside")
    finally:
        _request_id.reset(token)
    assert "[req-text-2] inside" in console.getvalue()


def test_json_lines_carry_the_request_id_and_the_audit_fields():
    from core.audit_log import audit
    from core.middleware import _request_id

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactSecretsFilter())
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger("packdesk.audit"), logging.getLogger("packdesk.json-test")]
    for log in loggers:
        log.addHandler(handler)
    token = _request_id.set("req-json-1")
    try:
        audit("ledger.entry", entry_id=7, amount=-1, kind="used")
        loggers[1].warning("plain %s", "words")
    finally:
        _request_id.reset(token)
        for log in loggers:
            log.removeHandler(handler)

    entry, plain = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (entry["event"], entry["entry_id"], entry["amount"], entry["kind"]) == ("ledger.entry", 7, -1, "used")
    assert entry["request_id"] == "req-json-1" and entry["logger"] == "packdesk.audit"
    assert (plain["message"], plain["level"], plain["request_id"]) == ("plain words", "WARNING", "req-json-1")
    assert set(plain) == {"time", "level", "logger", "request_id", "message"}


def test_production_logs_json_by_default():
    import subprocess
    import sys

    from tests.test_config import ROOT, production_env

    env = {**production_env(), "PATH": "/usr/bin:/bin"}
    code = "import django; django.setup(); import logging; logging.getLogger('x').warning('hello')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "config.production"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["message"], line["level"], line["request_id"]) == ("hello", "WARNING", "-")


def test_error_reports_hide_passwords_inside_url_settings(settings):
    settings.DATABASE_URL = "postgres://packdesk:Db-Pa55word-9@db.internal:5432/packdesk"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "redis://:Redis-Pa55word-7@cache.internal:6379/0"}}
    safe = get_default_exception_reporter_filter().get_safe_settings()
    text = repr(safe)
    assert "Db-Pa55word-9" not in text and "Redis-Pa55word-7" not in text
    assert safe["DATABASE_URL"] == "postgres://packdesk:[redacted]@db.internal:5432/packdesk"
