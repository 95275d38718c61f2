"""Every change to a client's credits. Nothing else writes grants, entries or balances.

Locking protocol (one order everywhere, so two writers never deadlock):
  1. the ClientBalance rows of the (client, session type) pairs involved, in primary-key order;
  2. then the CreditGrant rows, in primary-key order.
The balance row is the lock that serialises changes to one balance, which is what keeps every
entry's balance_after equal to the running sum of the entries before it.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from catalog.models import SessionType, ValidFrom
from catalog.validity import expiry_for
from core.models import Client, StaffMember
from ledger.exceptions import (
    InvalidAdjustment,
    InvalidReturn,
    InvalidVoid,
    NoCreditAvailable,
    PurchaseNotPaid,
)
from ledger.models import (
    ClientBalance,
    CreditGrant,
    EntryKind,
    EntrySource,
    GrantState,
    LedgerEntry,
)
from payments.models import Purchase, PurchaseStatus

ADJUSTMENT_VALIDITY_MONTHS = 12


def _lock_balances(pairs: set[tuple[int, int]]) -> dict[tuple[int, int], ClientBalance]:
    """Lock the balance rows of these (client, session type) pairs in primary-key order,
    creating any that do not exist yet."""
    if not pairs:
        return {}
    condition = Q()
    for client_id, session_type_id in pairs:
        condition |= Q(client_id=client_id, session_type_id=session_type_id)
    locked = ClientBalance.objects.select_for_update().filter(condition).order_by("pk")
    rows = {(row.client_id, row.session_type_id): row for row in locked}
    if len(rows) < len(pairs):
        # First credit of a session type for this client: insert (a concurrent first insert is
        # fine), then lock the whole set again in key order. Only here, so the common path does
        # not spend an INSERT and a sequence value on every redemption.
        ClientBalance.objects.bulk_create(
            [ClientBalance(client_id=c, session_type_id=s) for c, s in sorted(pairs - rows.keys())],
            ignore_conflicts=True,
        )
        rows = {(row.client_id, row.session_type_id): row for row in locked.all()}
    return rows


def _lock_balance(client_id: int, session_type_id: int) -> ClientBalance:
    return _lock_balances({(client_id, session_type_id)})[(client_id, session_type_id)]


def _write_entry(
    *, balance: ClientBalance, grant: CreditGrant, kind: str, amount: int, actor, note: str,
    source: str, key: str, reverses: LedgerEntry | None = None, at: datetime | None = None,
    booking_id: int | None = None, refund_id: int | None = None,
) -> LedgerEntry:
    """Move a locked balance by `amount` and record why, in the same transaction."""
    at = at or timezone.now()
    if amount:
        ClientBalance.objects.filter(pk=balance.pk).update(balance=F("balance") + amount, updated_at=at)
        balance.balance += amount
    return LedgerEntry.objects.create(
        client_id=balance.client_id, session_type_id=balance.session_type_id, grant=grant,
        kind=kind, amount=amount, balance_after=balance.balance, actor=actor, note=note,
        source=source, purchase_id=grant.purchase_id, reverses=reverses, idempotency_key=key,
        created_at=at, booking_id=booking_id, refund_id=refund_id,
    )


def _set_remaining(grant: CreditGrant, delta: int, **fields) -> None:
    CreditGrant.objects.filter(pk=grant.pk).update(remaining=F("remaining") + delta, **fields)
    grant.remaining += delta
    for name, value in fields.items():
        setattr(grant, name, value)


def _expire_now(
    *, balance: ClientBalance, grant: CreditGrant, key_prefix: str, at: datetime, note: str,
) -> None:
    """A grant whose window already closed: its credits expire in the same transaction."""
    amount = -grant.remaining
    _set_remaining(grant, amount, state=GrantState.EXPIRED)
    _write_entry(
        balance=balance, grant=grant, kind=EntryKind.EXPIRED, amount=amount, actor=None,
        note=note, source=EntrySource.EXPIRY, key=f"{key_prefix}:expired", at=at,
    )


@dataclass(frozen=True)
class GrantSpec:
    session_type_id: int
    unlimited: bool
    quantity: int | None
    validity_amount: int
    validity_unit: str
    valid_from_rule: str


def _issue_grant(
    *, balance: ClientBalance, client_id: int, spec: GrantSpec, purchase_id: int | None,
    source: str, all_staff: bool, staff_ids: list[int], window_start: datetime | None,
    expires_at: datetime | None = None, actor, note: str, key: str, kind: str = EntryKind.ISSUED,
    now: datetime, reservation: bool = False,
) -> CreditGrant:
    if window_start is not None and expires_at is None:
        expires_at = expiry_for(window_start, spec.validity_amount, spec.validity_unit)
    grant = CreditGrant.objects.create(
        client_id=client_id, session_type_id=spec.session_type_id, purchase_id=purchase_id,
        source=source, unlimited=spec.unlimited,
        quantity=None if spec.unlimited else spec.quantity,
        remaining=0 if spec.unlimited else spec.quantity,
        valid_from=window_start, expires_at=expires_at, valid_from_rule=spec.valid_from_rule,
        validity_amount=spec.validity_amount, validity_unit=spec.validity_unit,
        all_staff=all_staff, created_at=now, reservation=reservation,
    )
    if staff_ids:
        grant.allowed_staff.set(staff_ids)
    _write_entry(
        balance=balance, grant=grant, kind=kind, amount=grant.remaining, actor=actor,
        note=note, source=source, key=key, at=now,
    )
    if expires_at is not None and expires_at <= now:
        _expire_now(
            balance=balance, grant=grant, key_prefix=key, at=now,
            note="Expired on issue: the validity ended before the credit was given.",
        )
    return grant


def _line_spec(snap: dict, line: dict, quantity: int | None = None, unlimited: bool | None = None) -> GrantSpec:
    return GrantSpec(
        session_type_id=line["session_type_id"],
        unlimited=line["unlimited"] if unlimited is None else unlimited,
        quantity=line["credits"] if quantity is None else quantity,
        validity_amount=line["validity_amount"], validity_unit=line["validity_unit"],
        valid_from_rule=snap["valid_from"],
    )


def _issue_note(snap: dict, purchase: Purchase) -> str:
    if purchase.cycle_number:
        start = timezone.localtime(purchase.period_start)
        return f"{snap['name']} (purchase #{purchase.pk}, cycle {purchase.cycle_number} from {start:%d %b %Y})"
    return f"{snap['name']} (purchase #{purchase.pk})"


@transaction.atomic
def credits_issue_for_purchase(
    *, purchase: Purchase, actor, activated_at: datetime | None = None,
    source: str = EntrySource.PURCHASE,
) -> list[CreditGrant]:
    """Issue the credits a paid purchase bought, from its snapshot. Idempotent per purchase.

    Validity counted "from payment" starts at `activated_at` (delayed activation) or the payment.
    A cycle of a recurring plan counts from its billing-cycle start instead, even when paid late
    or activated later (seed 002), issues its later cycles as Renewal, and issues nothing while
    its plan waits for activation (the plan's activation issues every paid cycle then).
    A credit already reserved for a booking sold on the spot counts towards its line.
    """
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if purchase.subscription_id is not None:
        if purchase.subscription.activated_at is None:
            return []
        if purchase.cycle_number and purchase.cycle_number > 1:
            source = EntrySource.RENEWAL
    grants = CreditGrant.objects.filter(purchase=purchase, source=source)
    existing = list(grants.filter(reservation=False).order_by("pk"))
    if existing:
        return existing
    if purchase.status != PurchaseStatus.PAID:
        raise PurchaseNotPaid(
            f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}: "
            "credits are issued only once it is paid."
        )
    reserved = {
        g.session_type_id: g for g in CreditGrant.objects.filter(purchase=purchase, reservation=True)
    }
    snap = purchase.snapshot
    now = timezone.now()
    start = purchase.period_start or activated_at or purchase.paid_at
    staff_ids = [] if snap["all_staff"] else [row["staff_member_id"] for row in snap["staff"]]
    balances = _lock_balances({(purchase.client_id, line["session_type_id"]) for line in snap["lines"]})
    issued = []
    for number, line in enumerate(snap["lines"], start=1):
        quantity = line["credits"]
        if line["session_type_id"] in reserved and not line["unlimited"]:
            quantity -= 1
            if quantity == 0:
                continue
        spec = _line_spec(snap, line, quantity=quantity)
        issued.append(_issue_grant(
            balance=balances[(purchase.client_id, spec.session_type_id)],
            client_id=purchase.client_id, spec=spec, purchase_id=purchase.pk, source=source,
            all_staff=snap["all_staff"], staff_ids=staff_ids,
            window_start=start if spec.valid_from_rule == ValidFrom.PAYMENT else None,
            actor=actor, note=_issue_note(snap, purchase),
            key=f"{source}:{purchase.pk}:line:{number}", now=now,
        ))
    return issued


@transaction.atomic
def credits_reserve_for_purchase(
    *, purchase: Purchase, session_type: SessionType, actor, at: datetime | None = None,
) -> CreditGrant:
    """Issue one credit of an unpaid purchase to hold a booking made before payment.

    The purchase's other credits are released when it is paid (credits_issue_for_purchase).
    `at` is the booked session's start: a walk-in sold a pack after their session began still
    gets a credit valid for it.
    """
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if purchase.status not in (PurchaseStatus.PENDING, PurchaseStatus.PAID):
        raise PurchaseNotPaid(f"Purchase #{purchase.pk} is {purchase.get_status_display().lower()}.")
    existing = CreditGrant.objects.filter(
        purchase=purchase, session_type=session_type, reservation=True
    ).first()
    if existing is not None:
        return existing
    snap = purchase.snapshot
    number, line = next(
        ((n, l) for n, l in enumerate(snap["lines"], start=1) if l["session_type_id"] == session_type.pk),
        (None, None),
    )
    if line is None:
        raise NoCreditAvailable(f"{snap['name']} has no {session_type} credits.")
    spec = _line_spec(snap, line, quantity=1, unlimited=False)
    now = timezone.now()
    return _issue_grant(
        balance=_lock_balance(purchase.client_id, session_type.pk), client_id=purchase.client_id,
        spec=spec, purchase_id=purchase.pk, source=EntrySource.PURCHASE,
        all_staff=snap["all_staff"],
        staff_ids=[] if snap["all_staff"] else [row["staff_member_id"] for row in snap["staff"]],
        window_start=min(now, at or now) if spec.valid_from_rule == ValidFrom.PAYMENT else None,
        actor=actor, note=f"{snap['name']}: 1 credit held for a booking until purchase #{purchase.pk} is paid",
        key=f"purchase:{purchase.pk}:line:{number}:reserve", now=now, reservation=True,
    )


def _usable_grants(client_id: int, session_type_id: int, staff_id: int | None, at: datetime, now: datetime):
    staff_ok = Q(all_staff=True)
    if staff_id is not None:
        staff_ok |= Exists(
            CreditGrant.allowed_staff.through.objects.filter(
                creditgrant_id=OuterRef("pk"), staffmember_id=staff_id
            )
        )
    return (
        CreditGrant.objects.select_for_update(of=("self",))
        .filter(client_id=client_id, session_type_id=session_type_id, state=GrantState.ACTIVE)
        .filter(Q(unlimited=True) | Q(remaining__gt=0))
        .filter(staff_ok)
        .filter(Q(valid_from__isnull=True) | Q(valid_from__lte=at))
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=at) & Q(expires_at__gt=now))
        .order_by(F("expires_at").asc(nulls_last=True), "pk")
    )


def _explain_no_credit(client_id: int, session_type: SessionType, at: datetime) -> str:
    grants = CreditGrant.objects.filter(client_id=client_id, session_type=session_type)
    if not grants.exists():
        return f"No credit: the client holds no {session_type} credits."
    if not grants.filter(state=GrantState.ACTIVE).filter(Q(unlimited=True) | Q(remaining__gt=0)).exists():
        return f"No credit: all of the client's {session_type} credits are used, expired or voided."
    return (
        f"No credit: none of the client's {session_type} credits can be used with this staff "
        f"member on {timezone.localtime(at):%d %b %Y %H:%M} (outside their validity or staff)."
    )


@transaction.atomic
def credit_redeem(
    *, client: Client, session_type: SessionType, at: datetime, actor,
    staff_member: StaffMember | None = None, note: str = "", idempotency_key: str | None = None,
    source: str = EntrySource.BOOKING, booking_id: int | None = None,
) -> LedgerEntry:
    """Use one credit for a session of `session_type` starting `at`.

    Picks the usable grant that expires soonest; a grant whose window has not started yet
    (validity from first booking / first session) opens its window now.
    """
    if idempotency_key:
        done = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if done is not None:
            return done
    now = timezone.now()
    balance = _lock_balance(client.pk, session_type.pk)
    if idempotency_key:
        # The same request may have committed while this one waited for the lock.
        done = LedgerEntry.objects.filter(idempotency_key=idempotency_key).first()
        if done is not None:
            return done
    staff_id = staff_member.pk if staff_member else None
    for grant in _usable_grants(client.pk, session_type.pk, staff_id, at, now):
        window = {}
        if grant.valid_from is None:
            start = now if grant.valid_from_rule == ValidFrom.BOOKING else at
            start = min(start, at)  # a window opened by booking must contain the session
            window = {
                "valid_from": start,
                "expires_at": expiry_for(start, grant.validity_amount, grant.validity_unit),
            }
            if not at < window["expires_at"]:
                continue
        amount = 0 if grant.unlimited else -1
        _set_remaining(grant, amount, **window)
        return _write_entry(
            balance=balance, grant=grant, kind=EntryKind.USED, amount=amount, actor=actor,
            note=note, source=source, key=idempotency_key or f"use:{uuid.uuid4()}", at=now,
            booking_id=booking_id,
        )
    raise NoCreditAvailable(_explain_no_credit(client.pk, session_type, at))


@transaction.atomic
def credit_return(*, used_entry: LedgerEntry, actor, note: str, source: str = EntrySource.BOOKING) -> LedgerEntry:
    """Give back the credit a Used entry took, to the grant it came from. Once per use."""
    if used_entry.kind != EntryKind.USED:
        raise InvalidReturn("Only a used credit can be returned.")
    key = f"return:{used_entry.pk}"
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    now = timezone.now()
    balance = _lock_balance(used_entry.client_id, used_entry.session_type_id)
    # A concurrent return of the same use (a double click) may have committed while we waited.
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    grant = CreditGrant.objects.select_for_update().get(pk=used_entry.grant_id)
    amount = -used_entry.amount
    _set_remaining(grant, amount)
    entry = _write_entry(
        balance=balance, grant=grant, kind=EntryKind.RETURNED, amount=amount, actor=actor,
        note=note, source=source, key=key, reverses=used_entry, at=now,
        booking_id=used_entry.booking_id,
    )
    # The credit comes back to a grant that has since closed: it closes again at once, visibly.
    # A voided grant stays voided (an unlimited one moves nothing, so needs no entry at all).
    if grant.state == GrantState.VOIDED:
        if amount:
            _set_remaining(grant, -amount)
            _write_entry(
                balance=balance, grant=grant, kind=EntryKind.VOIDED, amount=-amount, actor=actor,
                note="Returned to a voided grant", source=source, key=f"{key}:voided", at=now,
            )
    elif grant.state == GrantState.EXPIRED or (grant.expires_at and grant.expires_at <= now):
        if grant.remaining or grant.state != GrantState.EXPIRED:
            _expire_now(
                balance=balance, grant=grant, key_prefix=key, at=now,
                note="Returned after the credit's validity ended, so it expires again at once.",
            )
    return entry


@transaction.atomic
def credit_forfeit(*, used_entry: LedgerEntry, actor, note: str) -> LedgerEntry:
    """Record that a used credit stays used (late cancel, no-show). Moves nothing; once per use."""
    if used_entry.kind != EntryKind.USED:
        raise InvalidReturn("Only a used credit can be forfeited.")
    key = f"forfeit:{used_entry.pk}"
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    balance = _lock_balance(used_entry.client_id, used_entry.session_type_id)
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    if LedgerEntry.objects.filter(idempotency_key=f"return:{used_entry.pk}").exists():
        raise InvalidReturn("This credit was already returned, so it cannot be forfeited.")
    return _write_entry(
        balance=balance, grant=used_entry.grant, kind=EntryKind.FORFEITED, amount=0, actor=actor,
        note=note, source=EntrySource.BOOKING, key=key, reverses=used_entry,
        booking_id=used_entry.booking_id,
    )


@transaction.atomic
def grant_void(
    *, grant: CreditGrant, actor, note: str, quantity: int | None = None,
    source: str = EntrySource.REFUND, idempotency_key: str | None = None,
    refund_id: int | None = None,
) -> LedgerEntry:
    """Void unused credits of a grant (all, or `quantity` of them), e.g. on a refund
    (`refund_id` links the entry to that refund)."""
    if not note.strip():
        raise InvalidVoid("Give a reason for voiding credits.")
    key = idempotency_key or f"void:{uuid.uuid4()}"
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    now = timezone.now()
    balance = _lock_balance(grant.client_id, grant.session_type_id)
    # The same request may have committed while this one waited for the lock.
    done = LedgerEntry.objects.filter(idempotency_key=key).first()
    if done is not None:
        return done
    grant = CreditGrant.objects.select_for_update().get(pk=grant.pk)
    if grant.state != GrantState.ACTIVE:
        raise InvalidVoid(f"This grant is already {grant.get_state_display().lower()}.")
    if quantity is None:
        quantity = grant.remaining
    if quantity < 0 or quantity > grant.remaining:
        raise InvalidVoid(f"Cannot void {quantity} credits: {grant.remaining} remain on this grant.")
    if grant.unlimited:
        quantity = 0
    fields = {"state": GrantState.VOIDED} if quantity == grant.remaining else {}
    _set_remaining(grant, -quantity, **fields)
    return _write_entry(
        balance=balance, grant=grant, kind=EntryKind.VOIDED, amount=-quantity, actor=actor,
        note=note, source=source, key=key, at=now, refund_id=refund_id,
    )


@transaction.atomic
def credits_adjust(
    *, client: Client, session_type: SessionType, amount: int, reason: str, actor,
    expires_at: datetime | None = None, idempotency_key: str | None = None,
) -> list[LedgerEntry]:
    """Add (a new grant) or remove (soonest-expiring first) credits, with a mandatory reason."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidAdjustment("Give a reason for the adjustment: it is kept in the ledger.")
    if not isinstance(amount, int) or amount == 0:
        raise InvalidAdjustment("The adjustment must be a whole number of credits other than 0.")
    if abs(amount) > 1000:
        raise InvalidAdjustment("Adjust at most 1000 credits at a time.")
    key = idempotency_key or f"adjust:{uuid.uuid4()}"
    done = LedgerEntry.objects.filter(
        Q(idempotency_key=key) | Q(idempotency_key__startswith=f"{key}:")
    ).order_by("pk")
    if done.exists():
        return list(done)
    now = timezone.now()
    balance = _lock_balance(client.pk, session_type.pk)
    # The same request may have committed while this one waited for the lock.
    if done.exists():
        return list(done)
    if amount > 0:
        if expires_at is not None and expires_at <= now:
            raise InvalidAdjustment("The expiry of added credits must be in the future.")
        spec = GrantSpec(
            session_type_id=session_type.pk, unlimited=False, quantity=amount,
            validity_amount=ADJUSTMENT_VALIDITY_MONTHS, validity_unit="months",
            valid_from_rule=ValidFrom.PAYMENT,
        )
        grant = _issue_grant(
            balance=balance, client_id=client.pk, spec=spec, purchase_id=None,
            source=EntrySource.ADJUSTMENT, all_staff=True, staff_ids=[], window_start=now,
            expires_at=expires_at, actor=actor, note=reason, key=key, kind=EntryKind.ADJUSTED,
            now=now,
        )
        return list(grant.entries.order_by("pk"))
    to_remove = -amount
    grants = list(
        CreditGrant.objects.select_for_update()
        .filter(client=client, session_type=session_type, state=GrantState.ACTIVE, remaining__gt=0)
        .order_by(F("expires_at").asc(nulls_last=True), "pk")
    )
    available = sum(g.remaining for g in grants)
    if available < to_remove:
        raise InvalidAdjustment(
            f"Cannot remove {to_remove} {session_type} credits: the client has {available}."
        )
    entries = []
    for number, grant in enumerate(grants, start=1):
        if not to_remove:
            break
        take = min(grant.remaining, to_remove)
        to_remove -= take
        _set_remaining(grant, -take)
        entries.append(_write_entry(
            balance=balance, grant=grant, kind=EntryKind.ADJUSTED, amount=-take, actor=actor,
            note=reason, source=EntrySource.ADJUSTMENT, key=f"{key}:{number}", at=now,
        ))
    return entries


# The set-based expiry sweep lives in its own module; it is a ledger service all the same.
from ledger.expiry import credits_expire_due  # noqa: E402,F401
