"""Money: purchases (payments, Stripe, invoices and refunds build on these)."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from simple_history.models import HistoricalRecords


class PurchaseStatus(models.TextChoices):
    PENDING = "pending", "Pending payment"
    PAID = "paid", "Paid"
    REFUNDED = "refunded", "Refunded"
    CANCELLED = "cancelled", "Cancelled"


class Purchase(models.Model):
    client = models.ForeignKey("core.Client", on_delete=models.PROTECT, related_name="purchases")
    pack = models.ForeignKey("catalog.CreditPack", on_delete=models.PROTECT, related_name="purchases")
    staff_member = models.ForeignKey(
        "core.StaffMember", on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="The staff member whose price applies, when the pack is priced per staff member.",
    )
    status = models.CharField(
        max_length=10, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING
    )
    price = models.DecimalField(
        max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )
    currency = models.CharField(max_length=3)
    # The pack's configuration when bought: credits are issued from this, never the live pack.
    snapshot = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="purchase_price_not_negative"),
            models.CheckConstraint(
                condition=~Q(status="paid") | Q(paid_at__isnull=False),
                name="purchase_paid_has_date",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.snapshot.get('name', '')} for client {self.client_id}"
