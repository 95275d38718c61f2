"""/me/link/: a client asks for a new personal link by entering their email.

The answer never tells whether the email belongs to a client: known or not, the same lookup runs
and the same page comes back; only a known client (archived ones too) gets an email.
Rate-limited in the shared cache (Redis in production), counted per email and per IP whether or
not the email exists, so hitting a limit reveals nothing either. Over a limit the answer is a 429
"too many requests" page that names no client and sends nothing: an honest answer to the person
waiting for an email that will not come this hour, and no help to someone probing addresses.
"""
from __future__ import annotations

import hashlib

from django import forms
from django.conf import settings
from django.core.cache import cache
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from core.models import Client
from core.portal_link import portal_link_send

RATE_WINDOW = 3600  # seconds; the limits in settings are per this window


class LinkRequestForm(forms.Form):
    email = forms.EmailField(max_length=254, error_messages={
        "required": "Enter your email address.", "invalid": "Enter a valid email address, like you@example.com.",
    })


def client_ip(request: HttpRequest) -> str:
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        # Each trusted proxy appends the address it saw; entries further left are the client's to forge.
        hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
        if len(hops) >= proxies:
            return hops[-proxies][:64]
    return request.META.get("REMOTE_ADDR", "")[:64]


def _over_limit(key: str, limit: int) -> bool:
    """Count one request in a fixed one-hour window; atomic on Redis (INCR)."""
    cache.add(key, 0, RATE_WINDOW)
    try:
        count = cache.incr(key)
    except ValueError:  # the window ended between add and incr
        cache.set(key, 1, RATE_WINDOW)
        count = 1
    return count > limit


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    response = render(request, template, {"business_name": settings.BUSINESS_NAME, **context}, status=status)
    response["X-Robots-Tag"] = "noindex"
    return response


def _too_many(request: HttpRequest, form: LinkRequestForm) -> HttpResponse:
    response = _page(request, "portal/link_request.html", {
        "form": form, "values": {"email": str(form.data.get("email", ""))[:254]},
        "error": "Too many requests for a link. Please try again in an hour.",
    }, status=429)
    response["Retry-After"] = str(RATE_WINDOW)
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def link_request(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _page(request, "portal/link_request.html", {"form": LinkRequestForm(), "values": {}})

    form = LinkRequestForm(request.POST)
    # Every POST counts against the IP, bad input included: guessing costs the same either way.
    if _over_limit(f"portal-link:ip:{client_ip(request)}", settings.PORTAL_LINK_REQUESTS_PER_IP):
        return _too_many(request, form)
    if not form.is_valid():
        return _page(request, "portal/link_request.html", {
            "form": form, "values": {"email": str(form.data.get("email", ""))[:254]},
            "error": "Please check the email address you entered.",
        }, status=400)
    email = form.cleaned_data["email"].strip().lower()
    # Hashed: the cache holds no addresses, and any length of input makes a short key.
    email_key = hashlib.sha256(email.encode()).hexdigest()
    if _over_limit(f"portal-link:email:{email_key}", settings.PORTAL_LINK_REQUESTS_PER_EMAIL):
        return _too_many(request, form)

    # Emails are stored lower-cased; Lower() matches the unique index client_email_unique_ci.
    client = Client.objects.alias(email_lower=Lower("email")).filter(email_lower=email).first()
    if client is not None:
        portal_link_send(client=client, actor=None)
    return _page(request, "portal/link_sent.html", {"email": email})
