"""People: clients and staff members. (Sessions and bookings arrive with the front-desk work.)"""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from simple_history.models import HistoricalRecords


class Client(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(max_length=254)
    phone = models.CharField(max_length=40, blank=True)
    notes = models.TextField(blank=True)
    archived = models.BooleanField(
        default=False, help_text="Hidden from daily lists; credits owed are unaffected."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                name="client_email_unique_ci",
                violation_error_message="A client with this email already exists.",
            ),
        ]
        indexes = [models.Index(Lower("name"), name="client_name_lower_idx")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"

    def save(self, *args, **kwargs):
        # Stored lower-cased so lookups and the unique constraint agree on "the same email".
        self.email = (self.email or "").strip().lower()
        super().save(*args, **kwargs)


class StaffMember(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_member"
    )
    display_name = models.CharField(max_length=200)
    session_types = models.ManyToManyField(
        "catalog.SessionType", blank=True, related_name="staff_members",
        help_text="Session types this staff member delivers.",
    )
    active = models.BooleanField(default=True)

    history = HistoricalRecords(m2m_fields=[session_types])

    class Meta:
        ordering = ["display_name", "id"]

    def __str__(self) -> str:
        return self.display_name
