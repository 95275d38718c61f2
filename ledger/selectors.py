"""Reads of credits: balances for one client, for many clients, and their ledger."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import (
    BooleanField,
    Exists,
    IntegerField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone

from ledger.models import ClientBalance, CreditGrant, GrantState, LedgerEntry


@dataclass(frozen=True)
class Balance:
    session_type_id: int
    session_type: str
    credits: int
    next_expiry: datetime | None  # soonest expiry among grants with credits left
    unlimited: bool  # holds an active unlimited grant (membership window)
    unlimited_until: datetime | None


def _grant_stats(client_ids):
    now = timezone.now()
    live = CreditGrant.objects.filter(client_id__in=client_ids, state=GrantState.ACTIVE).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    return live.values("client_id", "session_type_id").annotate(
        next_expiry=Min("expires_at", filter=Q(remaining__gt=0)),
        unlimited_until=Max("expires_at", filter=Q(unlimited=True)),
        has_unlimited=Exists(
            CreditGrant.objects.filter(
                client_id=OuterRef("client_id"), session_type_id=OuterRef("session_type_id"),
                state=GrantState.ACTIVE, unlimited=True,
            ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        ),
    )


def balances_for_clients(client_ids: list[int]) -> dict[int, list[Balance]]:
    """Balances per session type for many clients, in two queries whatever their number."""
    rows = ClientBalance.objects.filter(client_id__in=client_ids).select_related("session_type")
    stats = {(s["client_id"], s["session_type_id"]): s for s in _grant_stats(client_ids)}
    result: dict[int, list[Balance]] = {cid: [] for cid in client_ids}
    seen = set()
    for row in rows.order_by("client_id", "session_type__name"):
        s = stats.get((row.client_id, row.session_type_id), {})
        seen.add((row.client_id, row.session_type_id))
        if row.balance == 0 and not s.get("has_unlimited"):
            continue
        result[row.client_id].append(Balance(
            session_type_id=row.session_type_id, session_type=row.session_type.name,
            credits=row.balance, next_expiry=s.get("next_expiry"),
            unlimited=bool(s.get("has_unlimited")), unlimited_until=s.get("unlimited_until"),
        ))
    return result


def balances_for_client(client_id: int) -> list[Balance]:
    return balances_for_clients([client_id])[client_id]


def with_credit_totals(clients: QuerySet) -> QuerySet:
    """Annotate a client queryset with total credits and membership flag, as subqueries."""
    total = (
        ClientBalance.objects.filter(client_id=OuterRef("pk"))
        .values("client_id").annotate(total=Sum("balance")).values("total")
    )
    unlimited = CreditGrant.objects.filter(
        client_id=OuterRef("pk"), state=GrantState.ACTIVE, unlimited=True
    )
    return clients.annotate(
        credits_total=Coalesce(Subquery(total, output_field=IntegerField()), Value(0)),
        has_unlimited=Exists(unlimited, output_field=BooleanField()),
    )


def ledger_for_client(
    client_id: int, *, session_type_id: int | None = None, kind: str | None = None
) -> QuerySet[LedgerEntry]:
    entries = LedgerEntry.objects.filter(client_id=client_id).select_related(
        "session_type", "actor", "purchase"
    )
    if session_type_id:
        entries = entries.filter(session_type_id=session_type_id)
    if kind:
        entries = entries.filter(kind=kind)
    return entries.order_by("-id")
