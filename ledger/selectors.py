"""Reads of credits: balances for one client, for many clients, and their ledger."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import (
    BooleanField,
    Exists,
    F,
    IntegerField,
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


def balances_for_clients(client_ids: list[int]) -> dict[int, list[Balance]]:
    """Balances per session type for many clients, in one query whatever their number."""
    now = timezone.now()
    live = CreditGrant.objects.filter(
        client_id=OuterRef("client_id"), session_type_id=OuterRef("session_type_id"), state=GrantState.ACTIVE,
    ).filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
    first = lambda grants: grants.order_by("expires_at").values("expires_at")[:1]  # noqa: E731
    rows = (
        ClientBalance.objects.filter(client_id__in=client_ids)
        .annotate(
            next_expiry=Subquery(first(live.filter(remaining__gt=0, expires_at__isnull=False))),
            unlimited_until=Subquery(
                live.filter(unlimited=True, expires_at__isnull=False).order_by("-expires_at").values("expires_at")[:1]
            ),
            has_unlimited=Exists(live.filter(unlimited=True)),
            session_type_name=F("session_type__name"),
        )
        .filter(Q(balance__gt=0) | Q(has_unlimited=True))
        .order_by("client_id", "session_type__name")
    )
    result: dict[int, list[Balance]] = {cid: [] for cid in client_ids}
    for row in rows:
        result[row.client_id].append(Balance(
            session_type_id=row.session_type_id, session_type=row.session_type_name,
            credits=row.balance, next_expiry=row.next_expiry,
            unlimited=row.has_unlimited, unlimited_until=row.unlimited_until,
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
