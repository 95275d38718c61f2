"""What is sold: session types, categories and credit packs."""
from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from simple_history.models import HistoricalRecords

MAX_CREDIT_LINES = 5
MAX_CREDITS_PER_LINE = 100


class Category(models.Model):
    name = models.CharField(max_length=100, unique=True)
    position = models.PositiveIntegerField(default=0)

    history = HistoricalRecords()

    class Meta:
        ordering = ["position", "name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class SessionType(models.Model):
    name = models.CharField(max_length=100, unique=True)
    category = models.ForeignKey(
        Category, on_delete=models.PROTECT, null=True, blank=True, related_name="session_types"
    )
    duration_minutes = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(5), MaxValueValidator(24 * 60)]
    )
    requires_credit = models.BooleanField(default=True)
    cancellation_window_hours = models.PositiveIntegerField(
        default=24, help_text="Cancelling at least this many hours before the start returns the credit."
    )
    archived = models.BooleanField(default=False)
    # Add-ons (seed 003): a session type that extends a booking of one of these base types,
    # right after it, with the same staff member. Empty: not an add-on.
    add_on_for = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="add_ons",
        help_text="Base session types this add-on can be added to. Leave empty unless it is an add-on.",
    )
    price = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="An add-on's price when the client has no credit for it. Empty: credit only.",
    )
    currency = models.CharField(max_length=3, default=settings.DEFAULT_CURRENCY)
    intake_form = models.ForeignKey(
        "catalog.IntakeForm", on_delete=models.PROTECT, null=True, blank=True, related_name="session_types",
        help_text="Questions the client answers before this add-on is added (a health screening).",
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(duration_minutes__gte=5), name="session_type_duration_min"
            ),
            models.CheckConstraint(
                condition=Q(price__isnull=True) | Q(price__gte=0), name="session_type_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ValidityUnit(models.TextChoices):
    DAYS = "days", "days"
    WEEKS = "weeks", "weeks"
    MONTHS = "months", "months"


class ValidFrom(models.TextChoices):
    PAYMENT = "payment", "date of payment / activation"
    BOOKING = "booking", "date of first booking"
    FIRST_SESSION = "first_session", "date of the first session booked"


class RestrictTo(models.TextChoices):
    ANYONE = "anyone", "anyone"
    NEW_JOINERS = "new_joiners", "new joiners (no previous bookings)"
    ACTIVE_MEMBERS = "active_members", "active members (previous bookings)"


class BillingInterval(models.TextChoices):
    WEEK = "week", "week"
    MONTH = "month", "month"
    YEAR = "year", "year"


class RecursWhen(models.TextChoices):
    NO_CREDITS_REMAIN = "no_credits_remain", "no credits remain"
    PACK_EXPIRES = "pack_expires", "pack expires"


class RecurringCollection(models.TextChoices):
    AUTO_DEBIT = "auto_debit", "auto-debit: the card is charged each billing period (Stripe subscription)"
    INVOICE = "invoice", "invoice: emailed each time the pack recurs (see 'recurs when')"


class CreditPack(models.Model):
    name = models.CharField(max_length=120, help_text="Public name, unique.")
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="packs")
    price = models.DecimalField(
        max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))]
    )
    currency = models.CharField(max_length=3, default=settings.DEFAULT_CURRENCY)
    sell_online = models.BooleanField(default=False, help_text="Shown on the public page.")
    published = models.BooleanField(default=False)
    restrict_to = models.CharField(
        max_length=20, choices=RestrictTo.choices, default=RestrictTo.ANYONE
    )
    all_staff = models.BooleanField(
        default=True, help_text="Usable with every staff member; otherwise only those listed."
    )
    validity_amount = models.PositiveIntegerField(default=3)
    validity_unit = models.CharField(
        max_length=10, choices=ValidityUnit.choices, default=ValidityUnit.MONTHS
    )
    valid_from = models.CharField(
        max_length=20, choices=ValidFrom.choices, default=ValidFrom.PAYMENT
    )
    is_recurring = models.BooleanField(default=False)
    recurring_collection = models.CharField(
        "collection", max_length=12, choices=RecurringCollection.choices, blank=True,
        help_text="How a recurring pack is paid each cycle.",
    )
    billing_interval = models.CharField(
        max_length=10, choices=BillingInterval.choices, blank=True
    )
    billing_interval_count = models.PositiveIntegerField(default=1)
    recurs_when = models.CharField(max_length=20, choices=RecursWhen.choices, blank=True)
    minimum_commitment = models.PositiveIntegerField(
        default=0, help_text="Payments the client must make before they may cancel."
    )
    free_trial_days = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["category__position", "name"]
        constraints = [
            models.UniqueConstraint(
                Lower("name"), name="pack_name_unique_ci",
                violation_error_message="A credit pack with this name already exists.",
            ),
            models.CheckConstraint(condition=Q(price__gte=0), name="pack_price_not_negative"),
            models.CheckConstraint(
                condition=Q(validity_amount__gte=1), name="pack_validity_at_least_one"
            ),
            models.CheckConstraint(
                condition=Q(is_recurring=False) | ~Q(billing_interval=""),
                name="pack_recurring_needs_interval",
            ),
            models.CheckConstraint(
                condition=Q(billing_interval_count__gte=1), name="pack_interval_count_min"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def validate_constraints(self, exclude=None):
        # Django reports an expression constraint (the case-insensitive name) as a form-wide
        # error; the person fixes it in the name field, so that is where it belongs.
        try:
            super().validate_constraints(exclude=exclude)
        except ValidationError as exc:
            errors = exc.update_error_dict({})
            taken = next(c for c in self._meta.constraints if c.name == "pack_name_unique_ci")
            general = errors.pop(NON_FIELD_ERRORS, [])
            for error in general:
                field = "name" if error.message == taken.violation_error_message else NON_FIELD_ERRORS
                errors.setdefault(field, []).append(error)
            raise ValidationError(errors) from exc


class PackCreditLine(models.Model):
    pack = models.ForeignKey(CreditPack, on_delete=models.CASCADE, related_name="credit_lines")
    session_type = models.ForeignKey(SessionType, on_delete=models.PROTECT, related_name="+")
    unlimited = models.BooleanField(
        default=False, help_text="Any number of bookings inside the validity window."
    )
    credits = models.PositiveIntegerField(
        null=True, blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CREDITS_PER_LINE)],
    )
    # Optional per-line expiry rule; blank means the pack's validity.
    validity_amount = models.PositiveIntegerField(null=True, blank=True)
    validity_unit = models.CharField(
        max_length=10, choices=ValidityUnit.choices, blank=True
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ["pack", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["pack", "session_type"], name="pack_line_session_type_once",
                violation_error_message="Each session type may appear once in a pack.",
            ),
            # A CHECK passes when it evaluates to NULL, so "not null" is spelled out: without it
            # a line with no credits and no unlimited tick, or with a unit but no amount, got in.
            models.CheckConstraint(
                condition=(
                    Q(unlimited=True, credits__isnull=True)
                    | Q(
                        unlimited=False, credits__isnull=False,
                        credits__gte=1, credits__lte=MAX_CREDITS_PER_LINE,
                    )
                ),
                name="pack_line_credits_range_or_unlimited",
                violation_error_message=(
                    f"Credits must be 1–{MAX_CREDITS_PER_LINE}, or empty when the line is unlimited."
                ),
            ),
            models.CheckConstraint(
                condition=(
                    Q(validity_amount__isnull=True, validity_unit="")
                    | Q(validity_amount__isnull=False, validity_amount__gte=1) & ~Q(validity_unit="")
                ),
                name="pack_line_validity_complete",
                violation_error_message="Give both the validity amount (1 or more) and unit, or neither.",
            ),
        ]

    def __str__(self) -> str:
        amount = "unlimited" if self.unlimited else f"{self.credits} ×"
        return f"{amount} {self.session_type}"


class PackStaffPrice(models.Model):
    """A staff member the pack is limited to, with an optional price of their own."""

    pack = models.ForeignKey(CreditPack, on_delete=models.CASCADE, related_name="staff_prices")
    staff_member = models.ForeignKey("core.StaffMember", on_delete=models.PROTECT, related_name="+")
    price = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True,
        validators=[MinValueValidator(Decimal("0"))],
        help_text="Blank: the pack's price.",
    )

    history = HistoricalRecords()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["pack", "staff_member"], name="pack_staff_once",
                violation_error_message="Each staff member may appear once in a pack.",
            ),
            models.CheckConstraint(
                condition=Q(price__isnull=True) | Q(price__gte=0), name="pack_staff_price_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.staff_member} @ {self.price if self.price is not None else 'pack price'}"


# --- Intake forms (seed 003): questions asked before a sensitive add-on -------------------------


class IntakeForm(models.Model):
    name = models.CharField(max_length=120, unique=True)
    intro = models.TextField(blank=True, help_text="Shown above the questions.")

    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class QuestionKind(models.TextChoices):
    YES_NO = "yes_no", "Yes / no"
    TEXT = "text", "Free text"


class IntakeQuestion(models.Model):
    form = models.ForeignKey(IntakeForm, on_delete=models.CASCADE, related_name="questions")
    position = models.PositiveIntegerField(default=0)
    text = models.CharField(max_length=300)
    kind = models.CharField(max_length=10, choices=QuestionKind.choices, default=QuestionKind.YES_NO)
    required = models.BooleanField(default=True)
    # A contraindication: answering "yes" blocks the add-on, with this reason shown to the client.
    blocks_on_yes = models.BooleanField(
        default=False, help_text="A 'yes' is a contraindication: the add-on cannot be added.",
    )
    block_reason = models.CharField(
        max_length=300, blank=True,
        help_text="Shown when a 'yes' blocks the add-on, e.g. 'Hot stones are not suitable during pregnancy.'",
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ["form", "position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(blocks_on_yes=False) | Q(kind="yes_no") & ~Q(block_reason=""),
                name="intake_block_needs_yes_no_and_reason",
                violation_error_message="A blocking question must be a yes/no question with a reason to show.",
            ),
        ]

    def __str__(self) -> str:
        return self.text
