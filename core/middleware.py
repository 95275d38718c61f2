"""Request-level plumbing: the health check, the request id, and the security headers.

The request id ties one request's log lines together, and follows the jobs it enqueues
(DramatiqRequestId), so a webhook's lines and its job's lines in the worker share one id.
"""
from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from dramatiq.middleware import Middleware as DramatiqMiddleware

REQUEST_ID_HEADER = "X-Request-ID"
# Taken from a proxy or a client as given only if it is short and harmless in a log line.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

_request_id: ContextVar[str | None] = ContextVar("packdesk_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request (or job) this code runs for; None outside both."""
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    if value and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return None


class HealthCheckMiddleware:
    """Answers /healthz first, before host validation, the HTTPS redirect, sessions and CSRF.

    A load balancer polls over plain HTTP with its own Host header (often an IP address);
    further down, ALLOWED_HOSTS would answer 400 and SECURE_SSL_REDIRECT a 301.
    """

    PATHS = frozenset({"/healthz", "/healthz/"})

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path_info in self.PATHS:
            from core.health import healthz

            return healthz(request)
        return self.get_response(request)


class RequestIdMiddleware:
    """Takes X-Request-ID from the proxy (when valid) or makes one; returns it in the response."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = valid_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.request_id = request_id
        token = _request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _request_id.reset(token)
        response[REQUEST_ID_HEADER] = request_id
        return response


class SecurityHeadersMiddleware:
    """Headers Django 5.2 does not set itself (it already sends Referrer-Policy,
    X-Content-Type-Options, X-Frame-Options and Cross-Origin-Opener-Policy)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.PERMISSIONS_POLICY:
            response.headers.setdefault("Permissions-Policy", settings.PERMISSIONS_POLICY)
        return response


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's middleware, with the admin on its own, looser policy.

    The public and portal pages get CONTENT_SECURITY_POLICY (strict: scripts and <style> only
    from this site or with the request's nonce). unfold's admin runs inline scripts and Alpine.js
    (which evaluates strings), so paths under ADMIN_CSP_PATH get ADMIN_CONTENT_SECURITY_POLICY:
    still no framing, no form posts or scripts from other sites, no plugins.
    """

    def get_policy_parts(self, request, response, report_only: bool = False) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        if (not report_only and parts.config is None
                and request.path_info.startswith(settings.ADMIN_CSP_PATH)):
            parts.config = settings.ADMIN_CONTENT_SECURITY_POLICY["DIRECTIVES"]
        return parts


class DramatiqRequestId(DramatiqMiddleware):
    """Carries the request id from the code that enqueues a job to the worker that runs it.

    A job sent outside any request (the scheduler, a shell) runs under its own message id.
    """

    OPTION = "request_id"

    def before_enqueue(self, broker, message, delay):
        request_id = current_request_id()
        if request_id and self.OPTION not in message.options:
            message.options[self.OPTION] = request_id

    def before_process_message(self, broker, message):
        request_id = valid_request_id(message.options.get(self.OPTION)) or message.message_id
        _request_id.set(request_id)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        _request_id.set(None)

    def after_skip_message(self, broker, message):
        _request_id.set(None)
