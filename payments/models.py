"""Money: purchases (payments, Stripe, invoices and refunds build on these)."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone
from simple_history.models import HistoricalRecords

from catalog.models import RecurringCollection


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
    # Empty for an add-on sold at its own price (the snapshot names it; it issues no credits).
    pack = models.ForeignKey(
        "catalog.CreditPack", on_delete=models.PROTECT, null=True, blank=True, related_name="purchases"
    )
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
    # A cycle of a recurring plan: one purchase per billing cycle, paid (or not) on its own.
    subscription = models.ForeignKey(
        "payments.Subscription", on_delete=models.PROTECT, null=True, blank=True, related_name="cycles"
    )
    cycle_number = models.PositiveIntegerField(null=True, blank=True)
    # The billing cycle this purchase pays for: renewal credits count their validity from its start.
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)

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
            models.UniqueConstraint(
                fields=["subscription", "cycle_number"], name="purchase_cycle_once",
                condition=Q(subscription__isnull=False),
            ),
            models.CheckConstraint(
                condition=Q(subscription__isnull=True)
                | Q(cycle_number__isnull=False, period_start__isnull=False, period_end__gt=models.F("period_start")),
                name="purchase_cycle_complete",
            ),
        ]

    def __str__(self) -> str:
        cycle = f" (cycle {self.cycle_number})" if self.cycle_number else ""
        return f"#{self.pk} {self.snapshot.get('name', '')}{cycle} for {self.client.name}"


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


# --- Recurring plans ------------------------------------------------------------------------


class SubscriptionStatus(models.TextChoices):
    PENDING = "pending", "Awaiting first payment"
    TRIALING = "trialing", "Free trial"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Payment failed"
    PAUSED = "paused", "Paused"
    CANCELLED = "cancelled", "Cancelled"


class Subscription(models.Model):
    """A client's recurring pack: the agreement. Each billing cycle is a Purchase (its `cycles`),
    paid on its own, which issues that cycle's credits from this plan's snapshot."""

    client = models.ForeignKey("core.Client", on_delete=models.PROTECT, related_name="subscriptions")
    pack = models.ForeignKey("catalog.CreditPack", on_delete=models.PROTECT, related_name="subscriptions")
    staff_member = models.ForeignKey(
        "core.StaffMember", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    collection = models.CharField(max_length=12, choices=RecurringCollection.choices)
    status = models.CharField(
        max_length=10, choices=SubscriptionStatus.choices, default=SubscriptionStatus.PENDING
    )
    price = models.DecimalField(
        max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))],
        help_text="Charged each cycle.",
    )
    currency = models.CharField(max_length=3)
    # The pack when the plan was bought: every cycle is issued from this, never the live pack.
    snapshot = models.JSONField()
    minimum_commitment = models.PositiveIntegerField(
        default=0, help_text="Payments the client must make before they may cancel."
    )
    # Empty: paid cycles wait, without credits, until the plan is activated (delayed activation).
    activated_at = models.DateTimeField(null=True, blank=True)
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=300, blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    stripe_subscription_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_checkout_session_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "recurring plan"
        constraints = [
            models.CheckConstraint(condition=Q(price__gte=0), name="subscription_price_not_negative"),
            models.CheckConstraint(
                condition=~Q(status="paused") | Q(paused_at__isnull=False, paused_until__isnull=False),
                name="subscription_paused_has_dates",
            ),
            models.CheckConstraint(
                condition=~Q(status="cancelled") | Q(cancelled_at__isnull=False),
                name="subscription_cancelled_has_date",
            ),
        ]

    def __str__(self) -> str:
        return f"Plan #{self.pk} {self.snapshot.get('name', '')} for {self.client.name}"


# --- Invoices -----------------------------------------------------------------------------


class InvoiceKind(models.TextChoices):
    STRIPE = "stripe", "Stripe (emailed, paid online)"
    OFFLINE = "offline", "Offline (paid by cash or transfer)"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    OPEN = "open", "Open"
    PAID = "paid", "Paid"
    VOID = "void", "Void"
    UNCOLLECTIBLE = "uncollectible", "Uncollectible"


class Invoice(models.Model):
    """A bill for one purchase: a manual or late invoice, or a recurring plan's cycle."""

    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=10, choices=InvoiceKind.choices)
    # Stripe's invoice number, or ours (PD-000042) for an offline invoice.
    number = models.CharField(max_length=64, blank=True, db_index=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=15, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    due_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    error = models.TextField(blank=True, help_text="Why Stripe refused it, when it did.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gte=0), name="invoice_amount_not_negative"),
            # One bill at a time: a second open invoice for the same purchase could be paid twice.
            models.UniqueConstraint(
                fields=["purchase"], name="invoice_one_open_per_purchase",
                condition=Q(status__in=["draft", "open"]),
                violation_error_message="This purchase already has an open invoice.",
            ),
            models.CheckConstraint(
                condition=Q(kind="offline", stripe_invoice_id__isnull=True) | Q(kind="stripe"),
                name="invoice_offline_not_in_stripe",
            ),
        ]

    def __str__(self) -> str:
        return f"Invoice {self.number or '#' + str(self.pk)} ({self.get_status_display().lower()})"


# --- Reconciliation -------------------------------------------------------------------------


class ReconciliationStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class ReconciliationRun(models.Model):
    """Stripe's balance transactions for a period, matched against our payments and refunds."""

    period_start = models.DateTimeField()
    period_end = models.DateTimeField(help_text="Exclusive.")
    status = models.CharField(
        max_length=10, choices=ReconciliationStatus.choices, default=ReconciliationStatus.RUNNING
    )
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="Empty: the daily scheduled run.",
    )
    transactions = models.PositiveIntegerField(default=0)
    mismatches = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(period_end__gt=models.F("period_start")), name="reconciliation_period_order"
            ),
        ]

    def __str__(self) -> str:
        return f"Reconciliation #{self.pk} {self.period_start:%Y-%m-%d}–{self.period_end:%Y-%m-%d}"


class MismatchKind(models.TextChoices):
    PAID_NO_CREDITS = "paid_no_credits", "Paid in Stripe, no credits issued"
    CREDITS_NO_PAYMENT = "credits_no_payment", "Credits issued without a settled payment"
    AMOUNT_DIFFERS = "amount_differs", "Amount or currency differs"
    REFUND_MISSING = "refund_missing", "Refund in Stripe, not in our ledger"
    NOT_IN_STRIPE = "not_in_stripe", "Ours, not in Stripe"


class Resolution(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"
    EXPLAINED = "explained", "Explained"


class ReconciliationLine(models.Model):
    """One Stripe balance transaction (matched or not), or one record of ours Stripe lacks."""

    run = models.ForeignKey(ReconciliationRun, on_delete=models.CASCADE, related_name="lines")
    balance_transaction_id = models.CharField(max_length=255, blank=True)
    type = models.CharField(max_length=40, help_text="Stripe's type (charge, refund, payout…) or 'ours'.")
    source_id = models.CharField(max_length=255, blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    # Stripe's figures, in minor units of `currency`.
    amount = models.BigIntegerField(null=True, blank=True)
    fee = models.BigIntegerField(null=True, blank=True)
    net = models.BigIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    refund = models.ForeignKey(Refund, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    our_amount = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    our_currency = models.CharField(max_length=3, blank=True)
    mismatch = models.CharField(max_length=20, choices=MismatchKind.choices, blank=True)
    detail = models.TextField(blank=True)
    resolution = models.CharField(max_length=10, choices=Resolution.choices, default=Resolution.OPEN)
    resolution_note = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["run", "occurred_at", "id"]
        indexes = [models.Index(fields=["run", "mismatch"], name="reconciliation_line_mismatch")]

    def __str__(self) -> str:
        return f"{self.type} {self.source_id or self.balance_transaction_id}"
