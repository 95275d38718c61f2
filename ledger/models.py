"""Credits: grants, the append-only ledger and the cached balance it proves."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from catalog.models import ValidFrom, ValidityUnit


class EntryKind(models.TextChoices):
    ISSUED = "issued", "Issued"
    USED = "used", "Used"
    RETURNED = "returned", "Returned"
    VOIDED = "voided", "Voided"
    EXPIRED = "expired", "Expired"
    ADJUSTED = "adjusted", "Adjusted"
    # A late cancel or no-show keeps the used credit: recorded, moving nothing.
    FORFEITED = "forfeited", "Forfeited"


class EntrySource(models.TextChoices):
    PURCHASE = "purchase", "Purchase"
    RENEWAL = "renewal", "Renewal"
    BOOKING = "booking", "Booking"
    REFUND = "refund", "Refund"
    ADJUSTMENT = "adjustment", "Adjustment"
    EXPIRY = "expiry", "Expiry"
    IMPORT = "import", "Import"


class GrantState(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRED = "expired", "Expired"
    VOIDED = "voided", "Voided"


class CreditGrant(models.Model):
    """Credits of one session type given to a client by one purchase line (or adjustment)."""

    client = models.ForeignKey("core.Client", on_delete=models.PROTECT, related_name="grants")
    session_type = models.ForeignKey(
        "catalog.SessionType", on_delete=models.PROTECT, related_name="grants"
    )
    purchase = models.ForeignKey(
        "payments.Purchase", on_delete=models.PROTECT, null=True, blank=True, related_name="grants"
    )
    source = models.CharField(max_length=20, choices=EntrySource.choices)
    # One credit issued before payment to hold a booking sold on the spot; the rest of the
    # purchase's credits follow when it is paid.
    reservation = models.BooleanField(default=False)
    unlimited = models.BooleanField(default=False)
    # Credits issued; null for an unlimited grant (a membership window).
    quantity = models.PositiveIntegerField(null=True, blank=True)
    remaining = models.IntegerField(default=0)
    state = models.CharField(max_length=10, choices=GrantState.choices, default=GrantState.ACTIVE)
    # Null until the first booking / first session when the rule counts from it.
    valid_from = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    valid_from_rule = models.CharField(
        max_length=20, choices=ValidFrom.choices, default=ValidFrom.PAYMENT
    )
    validity_amount = models.PositiveIntegerField()
    validity_unit = models.CharField(max_length=10, choices=ValidityUnit.choices)
    all_staff = models.BooleanField(default=True)
    allowed_staff = models.ManyToManyField("core.StaffMember", blank=True, related_name="+")
    # The money a grant without a purchase stands for: an imported opening balance carries the
    # value the business was paid for it (reports' deferred revenue). Purchased grants take
    # their value from the purchase's price (reports.valuation); adjustments are worth nothing.
    opening_value = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    opening_currency = models.CharField(max_length=3, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.CheckConstraint(condition=Q(remaining__gte=0), name="grant_remaining_not_negative"),
            models.CheckConstraint(
                condition=(
                    Q(unlimited=True, quantity__isnull=True, remaining=0)
                    | Q(unlimited=False, quantity__isnull=False)
                ),
                name="grant_quantity_or_unlimited",
            ),
            models.CheckConstraint(
                condition=Q(valid_from__isnull=True) | Q(expires_at__isnull=False),
                name="grant_window_complete",
            ),
            models.CheckConstraint(
                condition=Q(validity_amount__gte=1), name="grant_validity_at_least_one"
            ),
            models.CheckConstraint(
                condition=Q(opening_value__isnull=True) | Q(opening_value__gte=0, purchase__isnull=True)
                & ~Q(opening_currency=""),
                name="grant_opening_value_only_without_purchase",
            ),
        ]
        indexes = [
            models.Index(fields=["client", "session_type", "state"], name="grant_client_type_state"),
            models.Index(
                fields=["expires_at"], name="grant_active_expiry",
                condition=Q(state="active"),
            ),
            # Memberships only, so tiny. The client list's "has a membership" EXISTS otherwise
            # made PostgreSQL hash every grant once per page: 84 ms at 1,000,000 grants, 0.7 ms
            # with it (`make bench`, docs/performance.md).
            models.Index(
                fields=["client"], name="grant_live_unlimited",
                condition=Q(state="active", unlimited=True),
            ),
        ]

    def __str__(self) -> str:
        what = "unlimited" if self.unlimited else f"{self.remaining}/{self.quantity}"
        return f"#{self.pk} {self.session_type} {what}"


class LedgerEntryQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise PermissionError("Ledger entries are append-only: write a correcting entry instead.")

    def delete(self):
        raise PermissionError("Ledger entries are append-only: write a correcting entry instead.")


class LedgerEntry(models.Model):
    """One change to a client's balance of one session type. Never updated or deleted."""

    client = models.ForeignKey("core.Client", on_delete=models.PROTECT, related_name="ledger_entries")
    session_type = models.ForeignKey(
        "catalog.SessionType", on_delete=models.PROTECT, related_name="ledger_entries"
    )
    grant = models.ForeignKey(CreditGrant, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=10, choices=EntryKind.choices)
    amount = models.IntegerField(help_text="Change in credits (unlimited grants move 0).")
    balance_after = models.IntegerField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True,
        related_name="+", help_text="Empty: the system.",
    )
    note = models.TextField(blank=True)
    source = models.CharField(max_length=20, choices=EntrySource.choices)
    purchase = models.ForeignKey(
        "payments.Purchase", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    booking = models.ForeignKey(
        "core.Booking", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_entries"
    )
    refund = models.ForeignKey(
        "payments.Refund", on_delete=models.PROTECT, null=True, blank=True, related_name="ledger_entries"
    )
    # The entry this one reverses (a return points at its use).
    reverses = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    idempotency_key = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = LedgerEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            models.CheckConstraint(condition=Q(balance_after__gte=0), name="entry_balance_not_negative"),
            models.CheckConstraint(
                condition=(
                    Q(kind="issued", amount__gte=0)
                    | Q(kind="used", amount__lte=0)
                    | Q(kind="returned", amount__gte=0)
                    | Q(kind="voided", amount__lte=0)
                    | Q(kind="expired", amount__lte=0)
                    | Q(kind="adjusted")
                    | Q(kind="forfeited", amount=0)
                ),
                name="entry_amount_sign_matches_kind",
            ),
        ]
        indexes = [
            models.Index(fields=["client", "session_type", "id"], name="entry_client_type_id"),
            models.Index(fields=["grant", "kind"], name="entry_grant_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount:+d} {self.session_type_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise PermissionError("Ledger entries are append-only: write a correcting entry instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("Ledger entries are append-only: write a correcting entry instead.")


class ClientBalance(models.Model):
    """Cached sum of a client's entries for one session type; written with every entry.

    Its row is also the lock that serialises every change to that balance.
    """

    client = models.ForeignKey("core.Client", on_delete=models.PROTECT, related_name="balances")
    session_type = models.ForeignKey("catalog.SessionType", on_delete=models.PROTECT, related_name="+")
    balance = models.IntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["client", "session_type"], name="balance_client_type_once"),
            models.CheckConstraint(condition=Q(balance__gte=0), name="balance_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.client_id}/{self.session_type_id}: {self.balance}"
