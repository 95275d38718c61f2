"""Send a client their personal link (core.portal_tokens) by email.

Used by the admin ("Send personal link") and by the client asking for a new link at /me/link/.
It goes through core.emails like every email, with the log row written only once the surrounding
transaction commits (email_send_on_commit): nothing is logged or sent for work that is rolled
back, and the /me/link/ request does the same database work whether or not the address is a client's.
"""
from __future__ import annotations

import logging

from django.conf import settings

from core.emails import email_send_on_commit
from core.models import Client
from core.portal_tokens import portal_url

logger = logging.getLogger(__name__)


def portal_link_send(*, client: Client, actor=None) -> None:
    """Email the client a fresh personal link. Archived clients get it too: their credits still count."""
    email_send_on_commit(
        to=client.email, template="portal_link", client=client,
        context={
            "url": portal_url(client),
            "valid_days": max(1, settings.PORTAL_LINK_MAX_AGE // 86400),
            # The link is the email's subject matter: the layout's own "open your page" would repeat it.
            "hide_portal_button": True,
        },
    )
    # The email log has no actor column: who asked is kept in the application log.
    logger.info("personal link queued for client %s (asked by %s)", client.pk, getattr(actor, "pk", None) or "the client")
