"""Send a client their personal link (core.portal_tokens) by email.

Used by the admin ("Send personal link") and by the client asking for a new link at /me/link/.
The message is rendered now and handed to Django's email backend only after the surrounding
transaction commits: an email never goes out for work that is then rolled back.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string

from core.models import Client
from core.portal_tokens import portal_url

logger = logging.getLogger(__name__)


def portal_link_send(*, client: Client, actor=None) -> None:
    """Email the client a fresh personal link. Archived clients get it too: their credits still count."""
    context = {
        "business_name": settings.BUSINESS_NAME,
        "client_name": client.name,
        "url": portal_url(client),
        "valid_days": max(1, settings.PORTAL_LINK_MAX_AGE // 86400),
    }
    message = EmailMultiAlternatives(
        subject=f"Your personal link to {settings.BUSINESS_NAME}",
        body=render_to_string("email/portal_link.txt", context),
        to=[client.email],
    )
    message.attach_alternative(render_to_string("email/portal_link.html", context), "text/html")
    client_id = client.pk
    actor_id = getattr(actor, "pk", None)

    def send() -> None:
        message.send()
        # Who asked is kept here until issue 6's email log records every message.
        logger.info("personal link sent to client %s (asked by %s)", client_id, actor_id or "the client")

    # robust: a failing mail server is logged, never turned into a 500 for the person who asked.
    transaction.on_commit(send, robust=True)
