"""Logging: a request id on every line, secrets redacted, JSON lines in production.

Wired in settings.LOGGING on the console handler, so every line that handler writes (ours,
Django's, dramatiq's, the Stripe SDK's) passes through both filters.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone
from functools import lru_cache
from urllib.parse import urlsplit

from django.views.debug import SafeExceptionReporterFilter

REDACTED = "[redacted]"

# Secrets recognisable by their shape, wherever they come from (another key pasted in an error).
_PATTERNS = [
    re.compile(r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"),  # Stripe secret / restricted keys
    re.compile(r"\bwhsec_[A-Za-z0-9_]{8,}"),  # Stripe webhook signing secrets
]
# user:password@ in a URL (DATABASE_URL, REDIS_URL, an SMTP URL): keep the user, drop the password.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?P<tail>@)", re.I)
# A client's personal link (/me/<token>/, /me/opt-out/<token>/) opens their page: it is a password.
_PORTAL_TOKEN = re.compile(r"(?P<head>/me/(?:opt-out/)?)(?!link/|opt-out/)[^/\s\"'?]+")

# Shorter values (a demo password, an empty setting) would redact ordinary words.
_MIN_SECRET_LENGTH = 8


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def known_secrets() -> tuple[str, ...]:
    """The secret values this process holds, read from settings each time (tests change them)."""
    from django.conf import settings

    if not settings.configured:
        return ()
    values = [
        getattr(settings, "SECRET_KEY", ""), getattr(settings, "STRIPE_SECRET_KEY", ""),
        getattr(settings, "STRIPE_WEBHOOK_SECRET", ""), getattr(settings, "EMAIL_HOST_PASSWORD", ""),
        *getattr(settings, "SECRET_KEY_FALLBACKS", ()),
        _url_password(getattr(settings, "DATABASE_URL", "") or ""),
        _url_password(getattr(settings, "REDIS_URL", "") or ""),
    ]
    return tuple(sorted({v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH}))


@lru_cache(maxsize=8)
def _literal_pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    if not secrets:
        return None
    # Longest first, so a secret that contains another is replaced whole.
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


def redact(text: str) -> str:
    literal = _literal_pattern(known_secrets())
    if literal is not None:
        text = literal.sub(REDACTED, text)
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<tail>", text)
    return _PORTAL_TOKEN.sub(rf"\g<head>{REDACTED}", text)


class RedactSecretsFilter(logging.Filter):
    """Replaces secrets in the message, the traceback and any string extra with [redacted]."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name in _extra_names(record):
            value = record.__dict__[name]
            if isinstance(value, str):
                record.__dict__[name] = redact(str(value))
            elif isinstance(value, dict):
                record.__dict__[name] = {k: redact(str(v)) if isinstance(v, str) else v for k, v in value.items()}
        return True


class RequestIdFilter(logging.Filter):
    """Adds request_id (the HTTP request's, or the job's) to every record; "-" outside both."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            from core.middleware import current_request_id

            record.request_id = current_request_id() or "-"
        return True


_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


def _extra_names(record: logging.LogRecord) -> list[str]:
    return [name for name in record.__dict__ if name not in _STANDARD]


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    Hand-written rather than python-json-logger: a dozen lines, and the one shape we need
    (the audit lines' fields at the top level, next to time, level, logger and request id).
    """

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or "-",
            "message": record.getMessage(),
        }
        for name in _extra_names(record):
            value = record.__dict__[name]
            if name == "audit" and isinstance(value, dict):
                line.update({k: v for k, v in value.items() if k not in line})
            elif name not in line:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str, ensure_ascii=False)


class ExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error page and error reports hide settings named like secrets; this also hides
    the password inside any URL-valued setting (DATABASE_URL, REDIS_URL, CACHES' LOCATION...)."""

    def cleanse_setting(self, key, value):
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            text = str(value)  # may be a lazy object standing in for a string
            redacted = redact(text)
            return redacted if redacted != text else value
        return value
