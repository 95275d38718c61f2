"""Nudges: the reminders a client (or staff member) gets at most once, chosen set-based.

Each kind is one query that finds what is due (no Python loop over all rows), read in batches
by id. Every candidate is then sent in its own short transaction: its subject row is locked with
SKIP LOCKED (a concurrent run skips it instead of waiting), the same filter is checked again
under the lock, and core.emails.email_send writes the EmailLog whose unique dedupe_key proves
the nudge went out once. The email itself leaves after commit (email_send's job).

Windows are in the business's time zone (settings.TIME_ZONE):
- booking reminder: 24 elapsed hours after payment (across a DST change that is 23 or 25 hours
  on the wall clock), and never for purchases paid more than 7 days ago, so a new install or
  a long outage does not email history;
- expiry reminder: from the same wall-clock moment 7 calendar days before the expiry;
- next pack and the staff note: for the last 7 days of entries and issued credits.

A kind switched off in BusinessSettings is not selected at all, and opted-out clients are
filtered in the query, so neither leaves rows behind; email_send checks both again at send time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import (
    CharField, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Sum, Value,
)
from django.db.models.functions import Cast, Coalesce, Concat
from django.urls import reverse
from django.utils import timezone

from core.emails import email_send, nudge_enabled
from core.models import Booking, EmailLog, NudgeKind, StaffNotification
from ledger.models import ClientBalance, CreditGrant, EntryKind, GrantState, LedgerEntry
from payments.models import Purchase, PurchaseStatus

logger = logging.getLogger(__name__)

BOOKING_REMINDER_AFTER = timedelta(hours=24)
BOOKING_REMINDER_MAX_AGE = timedelta(days=7)
EXPIRY_REMINDER_DAYS = 7
NEXT_PACK_LOOKBACK = timedelta(days=7)
STAFF_NOTE_LOOKBACK = timedelta(days=7)
BATCH_SIZE = 500

KEY_PREFIX = {
    NudgeKind.BOOKING_REMINDER: "nudge:booking_reminder:purchase:",
    NudgeKind.EXPIRY_REMINDER: "nudge:expiry_reminder:grant:",
    NudgeKind.NEXT_PACK: "nudge:next_pack:grant:",
    NudgeKind.STAFF_CREDITS_ISSUED: "nudge:staff_credits_issued:purchase:",
}


def nudge_key(kind: str, pk: int) -> str:
    return f"{KEY_PREFIX[kind]}{pk}"


def _logged(kind: str, ref: str = "pk") -> Exists:
    """EmailLog already holds this nudge's key (NOT EXISTS in SQL, on its unique index)."""
    key = Concat(Value(KEY_PREFIX[kind]), Cast(OuterRef(ref), CharField()), output_field=CharField())
    return Exists(EmailLog.objects.filter(dedupe_key=key))


def _usable_now(now: datetime) -> Q:
    return Q(state=GrantState.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


# --- selections: one query each, evaluated batch by batch ----------------------------------

def booking_reminders_due(now: datetime) -> QuerySet[Purchase]:
    """Paid 24 h to 7 days ago, credits from it left, no booking since payment, not sent yet."""
    credits_left = (
        CreditGrant.objects.filter(_usable_now(now), purchase=OuterRef("pk"), remaining__gt=0)
        .values("purchase").annotate(n=Sum("remaining")).values("n")
    )
    booked_since = Booking.objects.filter(
        Q(client=OuterRef("client_id"), created_at__gte=OuterRef("paid_at")) | Q(purchase=OuterRef("pk"))
    )
    return (
        Purchase.objects.filter(
            status=PurchaseStatus.PAID,
            paid_at__lte=now - BOOKING_REMINDER_AFTER,
            paid_at__gt=now - BOOKING_REMINDER_MAX_AGE,
            client__nudges_opt_out=False,
        )
        .annotate(credits_left=Coalesce(Subquery(credits_left, output_field=IntegerField()), 0))
        .filter(credits_left__gt=0)
        .exclude(Exists(booked_since))
        .exclude(_logged(NudgeKind.BOOKING_REMINDER))
    )


def expiry_reminders_due(now: datetime) -> QuerySet[CreditGrant]:
    """Active grants with credits left that expire within 7 local calendar days, not sent yet."""
    # Aware + timedelta keeps the wall clock (zoneinfo): "7 days before" means the same local
    # time a week earlier, even across a DST change (168 h ± 1 h).
    horizon = timezone.localtime(now) + timedelta(days=EXPIRY_REMINDER_DAYS)
    return (
        CreditGrant.objects.filter(
            state=GrantState.ACTIVE, remaining__gt=0,
            expires_at__gt=now, expires_at__lte=horizon,
            client__nudges_opt_out=False,
        )
        .exclude(_logged(NudgeKind.EXPIRY_REMINDER))
    )


def next_pack_due(now: datetime) -> QuerySet[CreditGrant]:
    """Grants whose last credit was used recently, leaving the client none of that type now."""
    last_used = LedgerEntry.objects.filter(
        grant=OuterRef("pk"), kind=EntryKind.USED, balance_after=0,
        created_at__gt=now - NEXT_PACK_LOOKBACK, created_at__lte=now,
    )
    has_balance = ClientBalance.objects.filter(
        client=OuterRef("client_id"), session_type=OuterRef("session_type_id"), balance__gt=0
    )
    # A membership (unlimited) moves 0 credits: its uses leave balance 0 but nothing ran out.
    has_unlimited = CreditGrant.objects.filter(
        _usable_now(now), client=OuterRef("client_id"), session_type=OuterRef("session_type_id"),
        unlimited=True,
    )
    return (
        CreditGrant.objects.filter(
            Exists(last_used), unlimited=False, remaining=0, client__nudges_opt_out=False
        )
        .exclude(Exists(has_balance))
        .exclude(Exists(has_unlimited))
        .exclude(_logged(NudgeKind.NEXT_PACK))
    )


def staff_notes_due(now: datetime) -> QuerySet[Purchase]:
    """Purchases with a staff member whose credits were issued in the last 7 days, not noted yet."""
    issued = CreditGrant.objects.filter(
        purchase=OuterRef("pk"), reservation=False, created_at__gt=now - STAFF_NOTE_LOOKBACK,
        created_at__lte=now,
    )
    noted = StaffNotification.objects.filter(
        dedupe_key=Concat(
            Value(KEY_PREFIX[NudgeKind.STAFF_CREDITS_ISSUED]), Cast(OuterRef("pk"), CharField()),
            output_field=CharField(),
        )
    )
    # Due while either half is missing: the admin note, or the email (when there is an address).
    email_due = ~Q(staff_member__user__email="") & ~Q(_logged(NudgeKind.STAFF_CREDITS_ISSUED))
    return Purchase.objects.filter(
        Exists(issued), Q(~Exists(noted)) | email_due,
        staff_member__isnull=False, staff_member__active=True,
    )


# --- sending: one short transaction per candidate ---------------------------------------------

@dataclass
class NudgeRun:
    sent: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{k}: {n}" for k, n in sorted(self.sent.items())) or "nothing due"


def _each_locked(due: QuerySet, send) -> int:
    """Walk `due` by id in batches; lock each candidate (skipping busy ones), re-check, send."""
    sent, after_id = 0, 0
    while True:
        ids = list(due.filter(pk__gt=after_id).order_by("pk").values_list("pk", flat=True)[:BATCH_SIZE])
        for pk in ids:
            with transaction.atomic():
                # Re-run the same filter under the row lock: a concurrent run that got here first
                # has committed its EmailLog, so the row no longer matches.
                row = due.filter(pk=pk).select_for_update(skip_locked=True, of=("self",)).first()
                if row is not None and send(row):
                    sent += 1
        if len(ids) < BATCH_SIZE:
            return sent
        after_id = ids[-1]


def _last_day(expires_at: datetime) -> date:
    """The last local day the credits can be used: expires_at is the midnight that ends it."""
    return (timezone.localtime(expires_at) - timedelta(microseconds=1)).date()


def _pack_name(grant: CreditGrant) -> str:
    return grant.purchase.snapshot.get("name", "") if grant.purchase_id else ""


def _send_booking_reminder(purchase: Purchase) -> bool:
    client = purchase.client
    return email_send(
        to=client.email, template="booking_reminder", client=client, related=purchase,
        dedupe_key=nudge_key(NudgeKind.BOOKING_REMINDER, purchase.pk),
        nudge_kind=NudgeKind.BOOKING_REMINDER,
        context={"credits_left": purchase.credits_left, "pack_name": purchase.snapshot.get("name", "")},
    ) is not None


def _send_expiry_reminder(grant: CreditGrant) -> bool:
    client = grant.client
    return email_send(
        to=client.email, template="expiry_reminder", client=client, related=grant,
        dedupe_key=nudge_key(NudgeKind.EXPIRY_REMINDER, grant.pk),
        nudge_kind=NudgeKind.EXPIRY_REMINDER,
        context={"credits_left": grant.remaining, "session_type_name": grant.session_type.name,
                 "last_day": _last_day(grant.expires_at)},
    ) is not None


def _send_next_pack(grant: CreditGrant) -> bool:
    client = grant.client
    return email_send(
        to=client.email, template="next_pack", client=client, related=grant,
        dedupe_key=nudge_key(NudgeKind.NEXT_PACK, grant.pk), nudge_kind=NudgeKind.NEXT_PACK,
        context={"pack_name": _pack_name(grant), "session_type_name": grant.session_type.name,
                 "packs_url": settings.PUBLIC_BASE_URL + reverse("public:pack_list")},
    ) is not None


def _send_staff_note(purchase: Purchase) -> bool:
    staff = purchase.staff_member
    client = purchase.client
    pack_name = purchase.snapshot.get("name", "")
    credits = sum(
        g.quantity or 0 for g in CreditGrant.objects.filter(purchase=purchase, source="purchase")
    )
    plural = "s" if credits != 1 else ""
    text = f"{client.name} was issued {credits} credit{plural} ({pack_name}, purchase #{purchase.pk})."
    key = nudge_key(NudgeKind.STAFF_CREDITS_ISSUED, purchase.pk)
    # Same key as the email's: the purchase row is locked, so get_or_create cannot race itself.
    StaffNotification.objects.get_or_create(
        dedupe_key=key,
        defaults={"staff_member": staff, "text": text, "related_type": "purchase", "related_id": purchase.pk},
    )
    if staff.user.email and not EmailLog.objects.filter(dedupe_key=key).exists():
        email_send(
            to=staff.user.email, template="staff_credits_issued", related=purchase,
            dedupe_key=key,
            nudge_kind=NudgeKind.STAFF_CREDITS_ISSUED,
            context={"staff_name": staff.display_name, "client_name": client.name,
                     "credits": credits, "pack_name": pack_name,
                     "admin_url": settings.PUBLIC_BASE_URL
                     + reverse("admin:payments_purchase_change", args=[purchase.pk])},
        )
    return True


def nudges_send_due(*, now: datetime | None = None) -> NudgeRun:
    """Send every client nudge that is due. Safe to run twice or concurrently."""
    now = now or timezone.now()
    run = NudgeRun()
    plan = [
        (NudgeKind.BOOKING_REMINDER, booking_reminders_due, _send_booking_reminder, ("client",)),
        (NudgeKind.EXPIRY_REMINDER, expiry_reminders_due, _send_expiry_reminder, ("client", "session_type")),
        (NudgeKind.NEXT_PACK, next_pack_due, _send_next_pack, ("client", "session_type", "purchase")),
    ]
    for kind, select, send, related in plan:
        if not nudge_enabled(kind):
            continue
        count = _each_locked(select(now).select_related(*related), send)
        if count:
            run.sent[kind] = count
    return run


def staff_notes_send_due(*, now: datetime | None = None) -> int:
    """Tell each purchase's staff member that its credits were issued (email + admin note)."""
    if not nudge_enabled(NudgeKind.STAFF_CREDITS_ISSUED):
        return 0
    now = now or timezone.now()
    due = staff_notes_due(now).select_related("client", "staff_member__user")
    return _each_locked(due, _send_staff_note)
