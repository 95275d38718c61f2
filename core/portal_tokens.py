"""The client's personal link: a signed, expiring token instead of a password.

The token carries the client's id and a fingerprint of their email, signed with SECRET_KEY
(django.core.signing). Changing a client's email, or the secret, invalidates old links.
"""
from __future__ import annotations

import hashlib

from django.conf import settings
from django.core import signing

from core.models import Client

SALT = "packdesk.client-portal"


class PortalLinkError(Exception):
    """A link that cannot open a client's page; str() is shown to the client."""


class PortalLinkExpired(PortalLinkError):
    pass


class PortalLinkInvalid(PortalLinkError):
    pass


def _fingerprint(client: Client) -> str:
    return hashlib.sha256(f"{client.pk}:{client.email.lower()}".encode()).hexdigest()[:16]


def portal_token_for(client: Client) -> str:
    return signing.dumps({"c": client.pk, "f": _fingerprint(client)}, salt=SALT, compress=True)


def client_from_token(token: str) -> Client:
    """The client a token names, or PortalLinkExpired / PortalLinkInvalid."""
    try:
        data = signing.loads(token, salt=SALT, max_age=settings.PORTAL_LINK_MAX_AGE)
    except signing.SignatureExpired as exc:
        raise PortalLinkExpired("This link has expired. Ask for a new one below.") from exc
    except signing.BadSignature as exc:
        raise PortalLinkInvalid("This link is not valid. Ask for a new one below.") from exc
    client = Client.objects.filter(pk=data.get("c") if isinstance(data, dict) else None).first()
    if client is None or data.get("f") != _fingerprint(client):
        raise PortalLinkInvalid("This link is not valid. Ask for a new one below.")
    return client


def portal_url(client: Client) -> str:
    return f"{settings.PUBLIC_BASE_URL}/me/{portal_token_for(client)}/"
