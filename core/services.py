"""Writes to people: clients and staff members."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from core.models import Client

CLIENT_FIELDS = ("name", "email", "phone", "notes", "archived")


@transaction.atomic
def client_create(*, actor, **fields) -> Client:
    unknown = set(fields) - set(CLIENT_FIELDS)
    if unknown:
        raise TypeError(f"unknown client fields: {sorted(unknown)}")
    client = Client(**fields)
    client.email = (client.email or "").strip().lower()
    client.full_clean()
    client._history_user = actor
    client.save()
    return client


@transaction.atomic
def client_update(*, client: Client, actor, **fields) -> Client:
    unknown = set(fields) - set(CLIENT_FIELDS)
    if unknown:
        raise TypeError(f"unknown client fields: {sorted(unknown)}")
    client = Client.objects.select_for_update().get(pk=client.pk)
    for name, value in fields.items():
        setattr(client, name, value)
    client.email = (client.email or "").strip().lower()
    if not client.name.strip():
        raise ValidationError({"name": ["Name is required."]})
    client.full_clean()
    client._history_user = actor
    client.save()
    return client


# The diary and bookings live in their own modules; their writes are services all the same.
from core.bookings import (  # noqa: E402,F401
    booking_cancel,
    booking_create,
    booking_mark_attended,
    booking_mark_no_show,
)
from core.sessions import session_create  # noqa: E402,F401
