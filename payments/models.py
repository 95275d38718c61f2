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


class PurchaseChannel(models.TextChoices):
    DESK = "desk", "At the desk"
    ONLINE = "online", "Online"


class PaymentMethod(models.TextChoices):
    CASH = "cash", "Cash"
    CARD_TERMINAL = "card_terminal", "Card terminal"
    BANK_TRANSFER = "bank_transfer", "Bank transfer"
    STRIPE = "stripe", "Stripe"


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
    channel = models.CharField(max_length=10, choices=PurchaseChannel.choices, default=PurchaseChannel.DESK)
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
    # Online purchases: the Checkout Session (its id is the unguessable key of the success page).
    stripe_checkout_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    refunded_amount = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0"))
    disputed = models.BooleanField(default=False, help_text="The client disputed the card payment.")

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="purchase_status_created")]
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="purchase_price_not_negative"),
            models.CheckConstraint(
                condition=~Q(status="paid") | Q(paid_at__isnull=False),
                name="purchase_paid_has_date",
            ),
            models.CheckConstraint(
                condition=Q(refunded_amount__gte=0) & Q(refunded_amount__lte=models.F("price")),
                name="purchase_refund_within_price",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.snapshot.get('name', '')} for {self.client.name}"


class Payment(models.Model):
    """Money received for a purchase: at the desk (cash, card terminal, transfer) or via Stripe."""

    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="payments")
    method = models.CharField(max_length=20, choices=PaymentMethod.choices)
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=200, blank=True, help_text="Receipt, terminal or transfer reference.")
    received_at = models.DateTimeField(default=timezone.now)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="payment_amount_not_negative"),
            # A purchase is paid once; a second payment would be money to refund, not more credits.
            models.UniqueConstraint(fields=["purchase"], name="payment_once_per_purchase"),
        ]

    def __str__(self) -> str:
        return f"{self.get_method_display()} {self.amount} {self.currency} for purchase #{self.purchase_id}"


class RefundStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class Refund(models.Model):
    """Money given back for a purchase: through Stripe, or recorded for a desk payment."""

    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="refunds")
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))])
    currency = models.CharField(max_length=3)
    method = models.CharField(max_length=20, choices=PaymentMethod.choices)
    status = models.CharField(max_length=10, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    reason = models.CharField(max_length=300, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True, help_text="When its credits were voided.")

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]

    def __str__(self) -> str:
        return f"Refund {self.amount} {self.currency} of purchase #{self.purchase_id}"


class StripeEventStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    FAILED = "failed", "Failed"


class StripeEvent(models.Model):
    """A verified webhook event, stored before anything acts on it (unique by Stripe's id)."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    livemode = models.BooleanField(default=False)
    payload = models.JSONField()
    status = models.CharField(
        max_length=10, choices=StripeEventStatus.choices, default=StripeEventStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["status", "received_at"], name="stripe_event_status")]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class LocalStripeObject(models.Model):
    """Stripe's side, kept locally when no Stripe account is configured (the demo) and in tests:
    the real stripe SDK talks to payments.stripe_double, which answers from these rows."""

    object_id = models.CharField(max_length=255, unique=True)
    object_type = models.CharField(max_length=100)
    data = models.JSONField()
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "local test-mode Stripe object"

    def __str__(self) -> str:
        return self.object_id


class OutstandingPurchase(Purchase):
    """Desk purchases still to be paid: finance's list to chase (payments.selectors)."""

    class Meta:
        proxy = True
        verbose_name = "outstanding payment"
        verbose_name_plural = "outstanding payments"
