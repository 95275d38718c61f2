"""Reads for the client's own page (/me/<token>/): their credits, bookings and open sessions.

Every query is scoped to one client and runs a fixed number of times per page, whatever the
number of bookings, grants or sessions. A booking group (a main booking and its add-ons, seed
003) is one visit on the page: add-on bookings are listed inside their main booking.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.utils import timezone

from core.models import PLACE_HOLDING, Booking, BookingStatus, Client, Session
from ledger.models import CreditGrant, GrantState
from ledger.selectors import Balance, balances_for_client

BOOKING_HORIZON = timedelta(weeks=4)
PAST_SHOWN = 20  # the page is for what comes next; the full history is at the front desk


@dataclass
class PackOffer:
    session_type: str
    packs: list[tuple[int, str]]  # (pack id, pack name) on the public page


@dataclass
class PlanRow:
    """One recurring plan as the client sees it (payments.Subscription, annotated)."""

    plan: object
    made: int
    remaining: int
    next_payment: str
    pay_url: str = ""
    may_cancel: bool = False


@dataclass
class Visit:
    """A booking group as the client sees it: the main booking, its extras, what they may do."""

    booking: Booking
    paid_with: str
    extras: list[tuple[Booking, str]] = field(default_factory=list)  # (add-on booking, how it is paid)
    in_time: bool = True  # still inside the free cancellation window
    may_add: bool = False  # an add-on is linked to this session type and not in the group yet


@dataclass
class ClientPage:
    balances: list[Balance]
    upcoming: list[Visit]
    past: list[Visit]
    offers: list[PackOffer] = field(default_factory=list)
    plans: list[PlanRow] = field(default_factory=list)


_BOOKING_RELATED = (
    "session__session_type", "session__staff_member", "used_entry__grant__purchase", "purchase", "add_on_type",
)


def _bookings(client: Client) -> QuerySet[Booking]:
    # The used entry's grant's purchase carries the snapshot that names the pack a visit used;
    # an add-on sold at its price has no entry, its own purchase says what is owed.
    return Booking.objects.filter(client=client).select_related(*_BOOKING_RELATED)


def _groups(client: Client) -> QuerySet[Booking]:
    """Main bookings with their add-ons (one more query per list, whatever its length).

    An add-on cancelled in time left no trace worth showing; a late-cancelled one used a credit.
    """
    extras = (
        Booking.objects.exclude(status=BookingStatus.CANCELLED)
        .select_related(*_BOOKING_RELATED).order_by("session__starts_at", "id")
    )
    return _bookings(client).filter(main_booking__isnull=True).prefetch_related(
        Prefetch("add_ons", queryset=extras, to_attr="extras")
    )


def credit_label(booking: Booking) -> str:
    """Which credit paid for a visit, in the client's words (the pack as it was bought)."""
    entry = booking.used_entry
    if entry is None:
        return "No credit needed"
    purchase = entry.grant.purchase
    if purchase is None:
        return "Credit added by the studio"
    name = (purchase.snapshot or {}).get("name") or "your pack"
    return f"1 credit from {name}" if not entry.grant.unlimited else f"Membership: {name}"


def paid_with(booking: Booking) -> str:
    """credit_label, or for an add-on sold at its own price what is owed (seed 003)."""
    purchase = booking.purchase
    if booking.used_entry_id is None and purchase is not None and (purchase.snapshot or {}).get("add_on"):
        from payments.models import PurchaseStatus
        from payments.public_views import money  # payments builds on core; imported late

        price = money(purchase.price, purchase.currency)
        if purchase.status == PurchaseStatus.PAID:
            return f"{price}, paid"
        if purchase.status == PurchaseStatus.PENDING:
            return f"{price} to pay at your visit"
        return f"{price}, {purchase.get_status_display().lower()}"
    return credit_label(booking)


def add_on_types_for(session_type_ids) -> dict[int, set[int]]:
    """Base session type id -> ids of the add-ons (not archived) linked to it, in one query."""
    from catalog.models import SessionType

    links = SessionType.add_on_for.through.objects.filter(
        to_sessiontype_id__in=set(session_type_ids), from_sessiontype__archived=False,
    ).values_list("to_sessiontype_id", "from_sessiontype_id")
    found: dict[int, set[int]] = {}
    for base_id, add_on_id in links:
        found.setdefault(base_id, set()).add(add_on_id)
    return found


def _visit(booking: Booking, *, now=None, linked: dict[int, set[int]] | None = None) -> Visit:
    from core.bookings import cancellation_deadline

    extras = getattr(booking, "extras", [])
    visit = Visit(booking=booking, paid_with=paid_with(booking), extras=[(e, paid_with(e)) for e in extras])
    if now is not None:
        visit.in_time = now <= cancellation_deadline(booking.session)
    if linked is not None:
        # What core.addons.addon_options would offer, without asking it once per booking: a
        # linked add-on not yet held in the group. The extras page asks the service itself.
        held = {e.add_on_type_id for e in extras if e.status in PLACE_HOLDING}
        visit.may_add = bool(linked.get(booking.session.session_type_id, set()) - held)
    return visit


def _offers(balances: list[Balance]) -> list[PackOffer]:
    """Packs on the public page that give a credit for a session type the client has none of."""
    from payments.public_views import packs_on_sale  # payments builds on core; imported late

    held = {b.session_type_id for b in balances if b.credits > 0 or b.unlimited}
    offers: dict[int, PackOffer] = {}
    for pack in packs_on_sale():
        for line in pack.credit_lines.all():
            if line.session_type_id in held:
                continue
            offer = offers.setdefault(line.session_type_id, PackOffer(line.session_type.name, []))
            offer.packs.append((pack.pk, pack.name))
    return sorted(offers.values(), key=lambda o: o.session_type)


def client_page(client: Client) -> ClientPage:
    now = timezone.now()
    balances = balances_for_client(client.pk)
    upcoming = list(
        _groups(client).filter(status=BookingStatus.BOOKED, session__starts_at__gt=now)
        .order_by("session__starts_at", "id")
    )
    # Past visits and late cancellations: both used a credit. In-time cancellations gave it back.
    past = list(
        _groups(client).exclude(status=BookingStatus.CANCELLED)
        .exclude(status=BookingStatus.BOOKED, session__starts_at__gt=now)
        .order_by("-session__starts_at", "-id")[:PAST_SHOWN]
    )
    # core.addons offers nothing to an archived client: neither does the page.
    linked = {}
    if upcoming and not client.archived:
        linked = add_on_types_for(b.session.session_type_id for b in upcoming)
    return ClientPage(
        balances=balances, upcoming=[_visit(b, now=now, linked=linked) for b in upcoming],
        past=[_visit(b) for b in past], offers=_offers(balances), plans=plan_rows(client),
    )


# A cancelled plan stays on the page this long, so the client sees their cancellation went through.
CANCELLED_SHOWN = timedelta(days=60)


def _plans(client: Client):
    """The client's plans, with everything the page says about them, in one query."""
    from payments.models import Invoice, InvoiceStatus, Subscription, SubscriptionStatus
    from payments.recurrence import with_latest_cycle  # payments builds on core; imported late

    pay_url = Invoice.objects.filter(
        purchase_id=OuterRef("latest_id"), status=InvoiceStatus.OPEN
    ).exclude(hosted_invoice_url="").values("hosted_invoice_url")[:1]
    recent = Q(cancelled_at__gte=timezone.now() - CANCELLED_SHOWN)
    plans = Subscription.objects.filter(client=client).filter(~Q(status=SubscriptionStatus.CANCELLED) | recent)
    return (
        with_latest_cycle(plans)
        .annotate(pay_url=Subquery(pay_url))
        .order_by("-created_at", "-pk")
    )


def plan_of(client: Client, plan_id: int):
    """The client's own plan, or None: asked by client AND id, so another's is never found."""
    return _plans(client).filter(pk=plan_id).first()


def plan_row(plan) -> PlanRow:
    from payments.subscriptions import client_may_cancel, payments_remaining

    return PlanRow(
        plan=plan, made=plan.made, remaining=payments_remaining(plan, plan.made),
        next_payment=_next_payment(plan), pay_url=plan.pay_url or "",
        may_cancel=client_may_cancel(plan, plan.made),
    )


def plan_rows(client: Client) -> list[PlanRow]:
    return [plan_row(plan) for plan in _plans(client)]


def _day(value) -> str:
    return f"{timezone.localtime(value):%-d %B %Y}"


def _next_payment(plan) -> str:
    """What comes next for this plan, in the client's words."""
    from payments.models import PurchaseStatus, SubscriptionStatus
    from payments.recurrence import next_cycle_at

    amount = f"{plan.price} {plan.currency}"
    if plan.status == SubscriptionStatus.CANCELLED:
        return f"Cancelled on {_day(plan.cancelled_at)}: no more payments."
    if plan.status == SubscriptionStatus.PAUSED:
        return f"Paused until {_day(plan.paused_until)}."
    if plan.status == SubscriptionStatus.TRIALING:
        return f"Free trial until {_day(plan.trial_ends_at)}; then {amount}."
    if plan.latest_status == PurchaseStatus.PENDING:
        return f"Payment of {amount} due now (payment {plan.latest_number})."
    if plan.collection == "auto_debit":
        if plan.current_period_end is None:
            return "Waiting for your card details."
        return f"Next payment of {amount} on {_day(plan.current_period_end)}, charged to your card."
    at = next_cycle_at(plan) if plan.latest_id else None
    return f"Next payment of {amount} around {_day(at)}." if at else f"Next payment: {amount}."


def _usable_credit(client: Client) -> Exists:
    """A grant of this client that the ledger could redeem for the outer session.

    Mirrors ledger.services._usable_grants: active, credits left or unlimited, staff allowed,
    inside the window at the session's start (or a window that opens on first use).
    """
    staff_ok = Q(all_staff=True) | Exists(
        CreditGrant.allowed_staff.through.objects.filter(
            creditgrant_id=OuterRef("pk"), staffmember_id=OuterRef(OuterRef("staff_member_id"))
        )
    )
    return Exists(
        CreditGrant.objects.filter(
            client=client, session_type_id=OuterRef("session_type_id"), state=GrantState.ACTIVE,
        )
        .filter(Q(unlimited=True) | Q(remaining__gt=0))
        .filter(staff_ok)
        .filter(Q(valid_from__isnull=True) | Q(valid_from__lte=OuterRef("starts_at")))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=OuterRef("starts_at")))
    )


def open_sessions(client: Client) -> QuerySet[Session]:
    """Sessions in the next four weeks with a place left that this client could pay for."""
    now = timezone.now()
    mine = Booking.objects.filter(session_id=OuterRef("pk"), client=client, status__in=PLACE_HOLDING)
    return (
        Session.objects.filter(starts_at__gt=now, starts_at__lte=now + BOOKING_HORIZON, staff_member__active=True)
        .annotate(taken=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING)))
        .annotate(places_left=F("capacity") - F("taken"))
        .filter(places_left__gt=0)
        .filter(_usable_credit(client))
        .exclude(Exists(mine))
        .select_related("session_type", "staff_member")
        .order_by("starts_at", "id")
    )


@dataclass
class BookPage:
    sessions: list[Session]
    session_types: list[tuple[int, str]]
    staff: list[tuple[int, str]]


def book_page(client: Client, *, session_type_id: int | None, staff_id: int | None) -> BookPage:
    """Open sessions, filtered; the filter choices come from the unfiltered list (two queries)."""
    base = open_sessions(client)
    choices = list(
        base.values_list("session_type_id", "session_type__name", "staff_member_id", "staff_member__display_name")
    )
    sessions = base
    if session_type_id:
        sessions = sessions.filter(session_type_id=session_type_id)
    if staff_id:
        sessions = sessions.filter(staff_member_id=staff_id)
    return BookPage(
        sessions=list(sessions),
        session_types=sorted({(t, n) for t, n, _, _ in choices}, key=lambda c: c[1]),
        staff=sorted({(s, n) for _, _, s, n in choices}, key=lambda c: c[1]),
    )


def booking_of(client: Client, booking_id: int) -> Booking | None:
    """The client's own booking, or None: asked by client AND id, so another's is never found.

    With its add-ons (as .extras) and, for an add-on, its main booking's session: the cancel and
    extras pages say what happens to the rest of the group.
    """
    extras = Booking.objects.filter(status__in=PLACE_HOLDING).select_related(*_BOOKING_RELATED).order_by(
        "session__starts_at", "id"
    )
    return (
        _bookings(client).filter(pk=booking_id)
        .select_related("main_booking__session__session_type")
        .prefetch_related(Prefetch("add_ons", queryset=extras, to_attr="extras"))
        .first()
    )
