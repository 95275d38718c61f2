"""Add-ons (seed 003): a session type that extends an upcoming booking, right after it, with the
same staff member, paid by its own credit or sold at its price, after an intake form if it has one.

An add-on is a booking of its own (its own session, credit or purchase) that belongs to the main
booking's group (Booking.main_booking). A second add-on follows the first: each starts where the
group's last session ends, so "right after the main session" holds for the whole chain. Cancelling the main booking cancels the group
(core.bookings.booking_cancel); cancelling an add-on frees the staff member's time again.

Lock order: the main booking row, then the staff member row (the diary, as core.sessions does),
then the ledger's own order. Two requests for the same add-on queue on the main booking's row,
and the second finds the first's add-on; the database's unique constraint is the last line.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from catalog.models import IntakeForm, IntakeQuestion, QuestionKind, SessionType
from core.bookings import redeem_for_booking
from core.exceptions import (
    AddOnBlocked,
    AddOnRefused,
    AddOnUnavailable,
    IntakeIncomplete,
    StaffUnavailable,
)
from core.models import (
    PLACE_HOLDING,
    Booking,
    BookingStatus,
    BusinessSettings,
    IntakeResponse,
    Session,
    StaffMember,
    TimeOff,
    WorkingHours,
)
from core.sessions import session_create
from ledger.exceptions import NoCreditAvailable
from ledger.models import CreditGrant, GrantState

DESK, PORTAL = "desk", "portal"
CREDIT, PRICE = "credit", "price"
YES, NO = "yes", "no"
MAX_TEXT_ANSWER = 1000


@dataclass(frozen=True)
class AddOnOption:
    """One add-on the booking could take, and whether it can now (and if not, why not)."""

    session_type: SessionType
    starts_at: datetime
    ends_at: datetime
    available: bool
    reason: str  # why not, in plain words; empty when available
    pays_with: str | None  # "credit", "price", or None (refused, or no payment needed)
    price: Decimal | None
    currency: str
    intake_form: IntakeForm | None


# --- Reads --------------------------------------------------------------------------------------


def _main_booking(booking: Booking, *, lock: bool = False) -> Booking:
    rows = Booking.objects.select_related("client", "session__session_type", "session__staff_member")
    if lock:
        rows = rows.select_for_update(of=("self",))
    return rows.get(pk=booking.pk)


def _refusal_for_main(main: Booking, now: datetime) -> str:
    """Why this booking cannot take any add-on now, or ''."""
    if main.main_booking_id is not None:
        return "This booking is itself an add-on: add to the main booking instead."
    if main.status != BookingStatus.BOOKED:
        return f"This booking is {main.get_status_display().lower()}: add-ons go with a booked session only."
    if main.session.starts_at <= now:
        return "This session has started or is over: add-ons can be added only before it starts."
    if main.client.archived:
        return f"{main.client.name} is archived: unarchive the client first."
    return ""


def addon_refusal(booking: Booking, *, now: datetime | None = None) -> str:
    """Why this booking cannot take any add-on now ('' when it can, if any is offered)."""
    return _refusal_for_main(_main_booking(booking), now or timezone.now())


def _linked_add_on_types(main: Booking):
    return (
        SessionType.objects.filter(add_on_for=main.session.session_type_id, archived=False)
        .select_related("intake_form").prefetch_related("intake_form__questions").order_by("name", "pk")
    )


def _group_so_far(main: Booking) -> tuple[set[int], datetime]:
    """The add-on types already in the group, and where the next add-on starts: right after the
    main session, or after the last add-on already added (add-ons follow one another)."""
    rows = Booking.objects.filter(main_booking=main, status__in=PLACE_HOLDING).values_list(
        "add_on_type_id", "session__ends_at",
    )
    taken, start = set(), main.session.ends_at
    for add_on_type_id, ends_at in rows:
        taken.add(add_on_type_id)
        start = max(start, ends_at)
    return taken, start


class _Diary:
    """The staff member's diary around the slot right after the main session, read once.

    The same rules as core.sessions (staff_conflicts, within_working_hours), evaluated for every
    add-on at once, so a list of options costs a fixed number of queries. The write path still
    goes through core.sessions.session_create, which checks them again under the diary lock.
    """

    def __init__(self, staff: StaffMember, start: datetime, longest: int):
        self.staff, self.start = staff, start
        end = start + timedelta(minutes=longest)
        overlapping = Q(staff_member=staff, starts_at__lt=end, ends_at__gt=start)
        self.sessions = list(Session.objects.filter(overlapping).values_list("starts_at", "ends_at"))
        self.time_off = list(TimeOff.objects.filter(overlapping).values_list("starts_at", "ends_at"))
        self.hours = list(WorkingHours.objects.filter(staff_member=staff).values_list("weekday", "starts", "ends"))
        self.delivers = set(staff.session_types.values_list("pk", flat=True))

    def _covered(self, local_start: datetime, end_time: time) -> bool:
        return any(
            day == local_start.weekday() and starts <= local_start.time() and ends >= end_time
            for day, starts, ends in self.hours
        )

    def _within_hours(self, end: datetime) -> bool:
        local_start, local_end = timezone.localtime(self.start), timezone.localtime(end)
        if local_start.date() != local_end.date() and local_end.time() != time.min:
            return False  # crossing midnight is never within hours (core.sessions' rule)
        end_time = local_end.time() if local_end.date() == local_start.date() else time.max
        return self._covered(local_start, end_time)

    def refusal(self, add_on_type: SessionType) -> str:
        """Why the staff member cannot give this add-on right after the main session, or ''."""
        staff, start = self.staff, self.start
        end = start + timedelta(minutes=add_on_type.duration_minutes)
        if not staff.active:
            return f"{staff} is not taking bookings any more."
        if add_on_type.pk not in self.delivers:
            return f"{staff} does not offer {add_on_type}."
        if any(s < end and e > start for s, e in self.sessions):
            return f"{staff} has another session right after this one."
        if any(s < end and e > start for s, e in self.time_off):
            return f"{staff} is off right after this session."
        if not self._within_hours(end):
            if self._covered(timezone.localtime(start), timezone.localtime(start).time()):
                return f"{add_on_type} would run past the end of {staff}'s working hours."
            return f"{staff} is not working right after this session."
        return ""


def _types_with_usable_credit(main: Booking, type_ids: list[int], at: datetime, now: datetime) -> set[int]:
    """Add-on types the client holds a credit for that this staff member can take at `at`.

    The same filters as the ledger's redemption (ledger.services._usable_grants), without locks.
    """
    if not type_ids:
        return set()
    staff_id = main.session.staff_member_id
    allowed = CreditGrant.allowed_staff.through.objects.filter(creditgrant_id=OuterRef("pk"), staffmember_id=staff_id)
    grants = (
        CreditGrant.objects.filter(client_id=main.client_id, session_type_id__in=type_ids, state=GrantState.ACTIVE)
        .filter(Q(unlimited=True) | Q(remaining__gt=0))
        .filter(Q(all_staff=True) | Exists(allowed))
        .filter(Q(valid_from__isnull=True) | Q(valid_from__lte=at))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=at) & Q(expires_at__gt=now))
    )
    return set(grants.values_list("session_type_id", flat=True).distinct())


def _no_credit_no_price(add_on_type: SessionType) -> str:
    return f"No {add_on_type} credit to use, and {add_on_type} is not sold on its own (it has no price)."


PREPAID_ONLY = "Add-ons are booked here only with a credit: ask the studio to add {name} for you."


def addon_options(booking: Booking, *, now: datetime | None = None, channel: str = DESK) -> list[AddOnOption]:
    """The add-ons this booking can take, each with its slot, availability and how it is paid.

    Empty unless the booking is booked, its session upcoming and it is not itself an add-on.
    A fixed number of queries, however many add-ons are linked.
    """
    now = now or timezone.now()
    main = _main_booking(booking)
    if _refusal_for_main(main, now):
        return []
    taken, start = _group_so_far(main)
    types = [t for t in _linked_add_on_types(main) if t.pk not in taken]
    if not types:
        return []
    diary = _Diary(main.session.staff_member, start, max(t.duration_minutes for t in types))
    with_credit = _types_with_usable_credit(main, [t.pk for t in types if t.requires_credit], start, now)
    prepaid_only = None
    options = []
    for add_on_type in types:
        reason = diary.refusal(add_on_type)
        pays_with = None
        if add_on_type.requires_credit and add_on_type.pk in with_credit:
            pays_with = CREDIT
        elif add_on_type.price is not None:
            if channel == PORTAL and prepaid_only is None:
                prepaid_only = BusinessSettings.current().prepaid_only
            if channel == PORTAL and prepaid_only:
                reason = reason or PREPAID_ONLY.format(name=add_on_type)
            else:
                pays_with = PRICE
        elif add_on_type.requires_credit:
            reason = reason or _no_credit_no_price(add_on_type)
        options.append(AddOnOption(
            session_type=add_on_type, starts_at=start,
            ends_at=start + timedelta(minutes=add_on_type.duration_minutes),
            available=not reason, reason=reason, pays_with=pays_with if not reason else None,
            price=add_on_type.price, currency=add_on_type.currency, intake_form=add_on_type.intake_form,
        ))
    return options


# --- Intake -------------------------------------------------------------------------------------


def intake_check(form: IntakeForm | None, answers: dict[str, str] | None) -> list[dict]:
    """The answers as they will be stored, in the form's order; refuses before anything is written.

    A "yes" to a blocking question raises AddOnBlocked with that question's reason (the first
    one, in the form's order); otherwise missing or invalid answers raise IntakeIncomplete.
    """
    if form is None:
        return []
    answers = {str(key): value for key, value in (answers or {}).items()}
    questions: list[IntakeQuestion] = list(form.questions.all())
    questions.sort(key=lambda q: (q.position, q.pk))
    stored, errors = [], {}
    for question in questions:
        key = str(question.pk)
        raw = answers.get(key)
        value = raw.strip() if isinstance(raw, str) else ""
        if question.kind == QuestionKind.YES_NO:
            value = value.lower()
            if value and value not in (YES, NO):
                errors[key] = "Answer yes or no."
            elif value == YES and question.blocks_on_yes:
                raise AddOnBlocked(question.block_reason, question_id=question.pk)
        elif len(value) > MAX_TEXT_ANSWER:
            errors[key] = f"Keep the answer under {MAX_TEXT_ANSWER} characters."
        if not value and question.required and key not in errors:
            errors[key] = "Please answer this question."
        stored.append({
            "question_id": question.pk, "text": question.text, "kind": question.kind,
            "answer": value, "blocks_on_yes": question.blocks_on_yes,
        })
    if errors:
        raise IntakeIncomplete(errors)
    return stored


# --- Writes -------------------------------------------------------------------------------------


def _sell_at_price(*, add_on: Booking, add_on_type: SessionType, actor, channel: str):
    """A pending purchase of the add-on at its own price: it issues no credits when paid."""
    from payments.models import Purchase, PurchaseChannel  # payments builds on core; imported late

    if channel == PORTAL and BusinessSettings.current().prepaid_only:
        raise AddOnRefused(PREPAID_ONLY.format(name=add_on_type))
    purchase = Purchase(
        client=add_on.client, pack=None, staff_member=add_on.session.staff_member,
        price=add_on_type.price, currency=add_on_type.currency, created_by=actor,
        # Paid at the desk either way: an online pending purchase means a checkout in progress.
        channel=PurchaseChannel.DESK,
        snapshot={
            "name": f"Add-on: {add_on_type.name}", "lines": [], "add_on": True,
            "session_type_id": add_on_type.pk, "price": str(add_on_type.price),
            "currency": add_on_type.currency, "valid_from": "payment", "all_staff": True, "staff": [],
            "booking_id": add_on.pk, "taken_at": timezone.now().isoformat(),
        },
    )
    purchase._history_user = actor
    purchase.save()
    return purchase


def _pay(add_on: Booking, add_on_type: SessionType, *, actor, channel: str) -> None:
    """Its own credit if the client has one (the booking path), else its price, else refused."""
    if add_on_type.requires_credit:
        try:
            add_on.used_entry = redeem_for_booking(add_on, add_on.session, actor)
        except NoCreditAvailable as exc:
            if add_on_type.price is None:
                raise AddOnRefused(f"{exc} {add_on_type} is not sold on its own (it has no price).") from exc
        else:
            add_on.save(update_fields=["used_entry"])
            return
    if add_on_type.price is None:
        return  # needs no credit and costs nothing
    add_on.purchase = _sell_at_price(add_on=add_on, add_on_type=add_on_type, actor=actor, channel=channel)
    add_on.save(update_fields=["purchase"])


@transaction.atomic
def addon_attach(
    *, booking: Booking, add_on_type: SessionType, actor, answers: dict[str, str] | None = None,
    channel: str = DESK, now: datetime | None = None,
) -> Booking:
    """Add an add-on to an upcoming booking, right after it with the same staff member.

    Every rule is checked again here, under the main booking's lock; any refusal leaves nothing
    behind (no session, booking, purchase, ledger entry or intake response). Returns the add-on's
    booking.
    """
    if channel not in (DESK, PORTAL):
        raise ValueError(f"unknown channel {channel!r}")
    now = now or timezone.now()
    main = _main_booking(booking, lock=True)
    refusal = _refusal_for_main(main, now)
    if refusal:
        raise AddOnRefused(refusal)
    add_on_type = SessionType.objects.select_related("intake_form").filter(pk=add_on_type.pk).first()
    base = main.session.session_type
    if add_on_type is None or add_on_type.archived or not add_on_type.add_on_for.filter(pk=base.pk).exists():
        raise AddOnRefused(f"{add_on_type or 'This session type'} is not an add-on for {base}.")
    taken, start = _group_so_far(main)
    if add_on_type.pk in taken:
        raise AddOnRefused(f"{add_on_type} is already part of this booking.")
    answers_stored = intake_check(add_on_type.intake_form, answers)

    staff = StaffMember.objects.select_for_update().get(pk=main.session.staff_member_id)
    reason = _Diary(staff, start, add_on_type.duration_minutes).refusal(add_on_type)
    if reason:
        raise AddOnUnavailable(reason)
    try:
        with transaction.atomic():
            session = session_create(session_type=add_on_type, staff_member=staff, starts_at=start, actor=actor)
    except (StaffUnavailable, ValidationError) as exc:
        text = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise AddOnUnavailable(text) from exc

    add_on = Booking(
        client=main.client, session=session, booked_by=actor, main_booking=main, add_on_type=add_on_type,
    )
    add_on._history_user = actor
    try:
        with transaction.atomic():
            add_on.save()
    except IntegrityError as exc:  # the unique constraint, should the lock ever be bypassed
        raise AddOnRefused(f"{add_on_type} is already part of this booking.") from exc
    _pay(add_on, add_on_type, actor=actor, channel=channel)
    if add_on_type.intake_form is not None:
        IntakeResponse.objects.create(
            booking=add_on, form=add_on_type.intake_form, answers=answers_stored, submitted_at=timezone.now(),
            submitted_by=actor if channel == DESK else None,
        )
    return add_on


# --- Cancellation: used by core.bookings -------------------------------------------------------


def addon_release(add_on: Booking, *, actor) -> None:
    """After an add-on is cancelled: cancel its unpaid purchase and free the staff member's time.

    The add-on's own session is removed from the diary. Its (cancelled) booking is kept, with its
    ledger entries and intake answers, and now points at the main booking's session: the
    appointment it was part of. What was done is added to the booking's outcome note.
    """
    from payments.models import Purchase, PurchaseStatus  # payments builds on core; imported late

    if add_on.status in PLACE_HOLDING:
        raise AddOnRefused("Only a cancelled add-on gives its time back.")
    done = []
    if add_on.purchase_id is not None:
        purchase = Purchase.objects.select_for_update().get(pk=add_on.purchase_id)
        if purchase.status == PurchaseStatus.PENDING:
            purchase.status = PurchaseStatus.CANCELLED
            purchase._history_user = actor
            purchase._change_reason = f"Add-on booking #{add_on.pk} cancelled"
            purchase.save(update_fields=["status"])
            done.append(f"unpaid purchase #{purchase.pk} cancelled")
        elif purchase.status == PurchaseStatus.PAID:
            done.append(f"purchase #{purchase.pk} was paid: refund it if due")
    session_id = add_on.session_id
    main = Booking.objects.select_related("session__session_type", "session__staff_member").get(
        pk=add_on.main_booking_id
    )
    add_on.session = main.session
    freed = not Booking.objects.filter(session_id=session_id).exclude(pk=add_on.pk).exists()
    if freed:
        done.append("its time freed in the diary")
    if done:
        add_on.outcome_note = f"{add_on.outcome_note}; {', '.join(done)}"[:300]
    add_on._history_user = actor
    add_on.save(update_fields=["session", "outcome_note"])
    if freed:
        session = Session.objects.get(pk=session_id)
        session._history_user = actor
        session.delete()
