"""People: clients and staff members. (Sessions and bookings arrive with the front-desk work.)"""
from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from simple_history.models import HistoricalRecords


class Client(models.Model):
    name = models.CharField(max_length=200)
    email = models.EmailField(max_length=254)
    phone = models.CharField(max_length=40, blank=True)
    notes = models.TextField(blank=True)
    archived = models.BooleanField(
        default=False, help_text="Hidden from daily lists; credits owed are unaffected."
    )
    # Set by the client from the link in every reminder email (core.optout_views); honoured by
    # core.emails.email_send for every client nudge. Transactional emails still go.
    nudges_opt_out = models.BooleanField(
        default=False, help_text="The client asked for no reminder emails (booking, expiry, next pack)."
    )
    nudges_opted_out_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["name", "id"]
        # Loading a file of clients (core.imports) is a manager's or finance's task, not the desk's.
        permissions = [("import_client", "Can import clients from a file")]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                name="client_email_unique_ci",
                violation_error_message="A client with this email already exists.",
            ),
        ]
        indexes = [
            models.Index(Lower("name"), name="client_name_lower_idx"),
            # The client list's default order: without it every page sorts all clients.
            models.Index(fields=["name", "id"], name="client_name_id_idx"),
        ]

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


class BusinessSettings(models.Model):
    """The one row of settings of the business this installation serves."""

    name = models.CharField(max_length=200, default="My studio")
    prepaid_only = models.BooleanField(
        default=False,
        help_text="Refuse to book a client before their pack is paid (no selling on the spot).",
    )
    # One switch per NudgeKind (field name: f"nudge_{kind}"), read by core.emails.nudge_enabled.
    nudge_booking_reminder = models.BooleanField(
        default=True, help_text="Email a client 24 hours after a purchase when nothing is booked yet.",
    )
    nudge_expiry_reminder = models.BooleanField(
        default=True, help_text="Email a client 7 days before their credits expire while some remain.",
    )
    nudge_next_pack = models.BooleanField(
        default=True, help_text="Ask a client \"ready for another pack?\" when their last credit is used.",
    )
    nudge_staff_credits_issued = models.BooleanField(
        default=True, help_text="Tell the staff member (email and admin notification) when credits are issued.",
    )
    invoice_days_until_due = models.PositiveSmallIntegerField(
        default=14, validators=[MinValueValidator(1), MaxValueValidator(365)],
        help_text="Invoices (manual, late, and recurring plans paid by invoice) are due this many days after issue.",
    )

    history = HistoricalRecords()

    class Meta:
        verbose_name = verbose_name_plural = "business settings"
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="business_settings_single_row")]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def current(cls) -> "BusinessSettings":
        return cls.objects.get_or_create(pk=1)[0]


class Weekday(models.IntegerChoices):
    MONDAY = 0, "Monday"
    TUESDAY = 1, "Tuesday"
    WEDNESDAY = 2, "Wednesday"
    THURSDAY = 3, "Thursday"
    FRIDAY = 4, "Friday"
    SATURDAY = 5, "Saturday"
    SUNDAY = 6, "Sunday"


class WorkingHours(models.Model):
    """A weekly slot in which a staff member works, in the business's local time."""

    staff_member = models.ForeignKey(StaffMember, on_delete=models.CASCADE, related_name="working_hours")
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    starts = models.TimeField()
    ends = models.TimeField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["staff_member", "weekday", "starts"]
        verbose_name_plural = "working hours"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends__gt=models.F("starts")), name="working_hours_end_after_start",
                violation_error_message="Working hours must end after they start.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.starts:%H:%M}–{self.ends:%H:%M}"


class TimeOff(models.Model):
    staff_member = models.ForeignKey(StaffMember, on_delete=models.CASCADE, related_name="time_off")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    reason = models.CharField(max_length=200, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-starts_at"]
        verbose_name_plural = "time off"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="time_off_end_after_start",
                violation_error_message="Time off must end after it starts.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.staff_member} off {self.starts_at:%d %b %H:%M}–{self.ends_at:%d %b %H:%M}"


class Session(models.Model):
    """A scheduled activity: a private appointment (capacity 1) or a class."""

    session_type = models.ForeignKey("catalog.SessionType", on_delete=models.PROTECT, related_name="sessions")
    staff_member = models.ForeignKey(StaffMember, on_delete=models.PROTECT, related_name="sessions")
    starts_at = models.DateTimeField(db_index=True)
    duration_minutes = models.PositiveIntegerField()
    # Stored, not computed, so overlap checks and the PostgreSQL exclusion constraint use an index.
    ends_at = models.DateTimeField()
    capacity = models.PositiveIntegerField(default=1)
    outside_hours_reason = models.CharField(
        max_length=200, blank=True,
        help_text="Why this session is outside the staff member's working hours (required then).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["starts_at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(capacity__gte=1), name="session_capacity_min"),
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")), name="session_end_after_start"
            ),
        ]
        indexes = [models.Index(fields=["staff_member", "starts_at"], name="session_staff_start")]

    def __str__(self) -> str:
        from django.utils import timezone

        return f"{self.session_type} with {self.staff_member}, {timezone.localtime(self.starts_at):%a %d %b %H:%M}"


class BookingStatus(models.TextChoices):
    BOOKED = "booked", "Booked"
    ATTENDED = "attended", "Attended"
    CANCELLED = "cancelled", "Cancelled"
    LATE_CANCELLED = "late_cancelled", "Late-cancelled"
    NO_SHOW = "no_show", "No-show"


# Bookings that hold a place in the session.
PLACE_HOLDING = (BookingStatus.BOOKED, BookingStatus.ATTENDED, BookingStatus.NO_SHOW)


class Booking(models.Model):
    client = models.ForeignKey(Client, on_delete=models.PROTECT, related_name="bookings")
    session = models.ForeignKey(Session, on_delete=models.PROTECT, related_name="bookings")
    status = models.CharField(max_length=20, choices=BookingStatus.choices, default=BookingStatus.BOOKED)
    # The Used entry that paid for this visit (empty when the session type needs no credit).
    used_entry = models.OneToOneField(
        "ledger.LedgerEntry", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # A pack sold on the spot to pay for this booking, still to be paid.
    purchase = models.ForeignKey(
        "payments.Purchase", on_delete=models.PROTECT, null=True, blank=True, related_name="bookings"
    )
    booked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True, help_text="When it was cancelled or marked.")
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    outcome_note = models.CharField(max_length=300, blank=True)
    # An add-on booking (seed 003) belongs to its main booking's group; add_on_type repeats its
    # session's type so the database can refuse the same add-on twice in one group.
    main_booking = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="add_ons"
    )
    add_on_type = models.ForeignKey(
        "catalog.SessionType", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )

    history = HistoricalRecords()

    class Meta:
        ordering = ["-session__starts_at", "-id"]
        permissions = [
            ("override_credit_rules", "Can choose whether a cancelled or missed booking's credit is returned"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "client"], condition=models.Q(status__in=PLACE_HOLDING),
                name="booking_client_once_per_session",
                violation_error_message="This client is already booked on this session.",
            ),
            models.UniqueConstraint(
                fields=["main_booking", "add_on_type"], condition=models.Q(status__in=PLACE_HOLDING),
                name="booking_add_on_once_per_group",
                violation_error_message="This add-on is already part of this booking.",
            ),
            models.CheckConstraint(
                condition=models.Q(main_booking__isnull=True, add_on_type__isnull=True)
                | models.Q(main_booking__isnull=False, add_on_type__isnull=False),
                name="booking_add_on_has_type",
            ),
        ]
        indexes = [models.Index(fields=["client", "status"], name="booking_client_status")]

    def __str__(self) -> str:
        return f"{self.client.name} — {self.session}"


# --- Notifications (issue 6): every email sent, and notes for staff in the admin -----------------


class NudgeKind(models.TextChoices):
    BOOKING_REMINDER = "booking_reminder", "Book your first session (24 hours after purchase)"
    EXPIRY_REMINDER = "expiry_reminder", "Credits expire in 7 days"
    NEXT_PACK = "next_pack", "Ready for another pack?"
    STAFF_CREDITS_ISSUED = "staff_credits_issued", "Credits issued (to the staff member)"


class EmailStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"


class EmailLog(models.Model):
    """One row per email the system meant to send (core.emails.email_send writes every one).

    dedupe_key is the at-most-once guarantee: the row is inserted in the same transaction as the
    work that asks for the email, and a second insert with the same key fails on the unique index,
    whoever runs it and however many times.
    """

    recipient = models.EmailField(max_length=254)
    template = models.CharField(max_length=100)
    subject = models.CharField(max_length=300, blank=True)
    client = models.ForeignKey(Client, on_delete=models.SET_NULL, null=True, blank=True, related_name="emails")
    # What the email is about: "purchase", "grant", "booking" and its id (no FK: any app's row).
    related_type = models.CharField(max_length=30, blank=True)
    related_id = models.BigIntegerField(null=True, blank=True)
    nudge_kind = models.CharField(max_length=30, choices=NudgeKind.choices, blank=True)
    dedupe_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    status = models.CharField(max_length=10, choices=EmailStatus.choices, default=EmailStatus.QUEUED)
    reason = models.CharField(max_length=200, blank=True, help_text="Why it was skipped.")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "email"
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="emaillog_created_idx"),
            models.Index(fields=["related_type", "related_id"], name="emaillog_related_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.template} to {self.recipient} ({self.status})"


class StaffNotification(models.Model):
    """A note for a staff member shown in the admin (credits issued to one of their clients...)."""

    staff_member = models.ForeignKey(StaffMember, on_delete=models.CASCADE, related_name="notifications")
    text = models.CharField(max_length=500)
    related_type = models.CharField(max_length=30, blank=True)
    related_id = models.BigIntegerField(null=True, blank=True)
    # Same at-most-once key as EmailLog's, for the admin note that goes with a staff email.
    dedupe_key = models.CharField(max_length=200, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["staff_member", "read_at"], name="staffnote_member_read_idx")]

    def __str__(self) -> str:
        return self.text


class IntakeResponse(models.Model):
    """A client's answers to an add-on's intake form, kept with the add-on booking they allowed.

    The questions are copied with the answers: the form may be edited later, the record may not.
    """

    booking = models.OneToOneField(Booking, on_delete=models.PROTECT, related_name="intake")
    form = models.ForeignKey("catalog.IntakeForm", on_delete=models.PROTECT, related_name="+")
    # [{"question_id", "text", "kind", "answer", "blocks_on_yes"}], in the form's order.
    answers = models.JSONField()
    submitted_at = models.DateTimeField(default=timezone.now)
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="Empty: the client, on their own page.",
    )

    def __str__(self) -> str:
        return f"{self.form} for booking #{self.booking_id}"
