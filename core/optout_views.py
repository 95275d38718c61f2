"""/me/opt-out/<token>/: the link at the bottom of every client email switches reminders off.

The token (core.emails.optout_token_for) names the client and never expires. A GET only shows
what will happen: mail scanners open links, and must not opt anyone out. The POST does it.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from core.emails import client_from_optout_token, nudges_opt_out


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    response = render(request, template, {"business_name": settings.BUSINESS_NAME, **context}, status=status)
    response["X-Robots-Tag"] = "noindex"
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def opt_out(request: HttpRequest, token: str) -> HttpResponse:
    client = client_from_optout_token(token)
    if client is None:
        return _page(request, "public/error.html", {
            "title": "We can't open this link",
            "message": "This link is not valid. Use the link at the bottom of one of our emails, "
                       "or reply to that email and we will stop the reminders for you.",
        }, status=400)
    if request.method == "POST":
        client = nudges_opt_out(client=client)
        return _page(request, "public/opt_out.html", {"client": client, "done": True})
    return _page(request, "public/opt_out.html", {"client": client, "done": client.nudges_opt_out})
