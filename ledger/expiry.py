"""The expiry sweep: every grant whose window has closed gets one Expired entry, set-based.

Same lock order as every other ledger writer (ledger/services.py): balances, then grants.
"""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from core.audit_log import audit_on_commit
from ledger.models import ClientBalance, CreditGrant, GrantState

_EXPIRE_ENTRIES_SQL = """
INSERT INTO ledger_ledgerentry
    (client_id, session_type_id, grant_id, kind, amount, balance_after, actor_id, note,
     source, purchase_id, reverses_id, idempotency_key, created_at)
SELECT g.client_id, g.session_type_id, g.id, 'expired', -g.remaining,
       b.balance - SUM(g.remaining) OVER (
           PARTITION BY g.client_id, g.session_type_id ORDER BY g.id
           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
       NULL, 'Expired unused', 'expiry', g.purchase_id, NULL, 'expire:' || g.id, %s
FROM ledger_creditgrant g
JOIN ledger_clientbalance b
  ON b.client_id = g.client_id AND b.session_type_id = g.session_type_id
WHERE g.id IN ({ids})
ORDER BY g.client_id, g.session_type_id, g.id
"""
_EXPIRE_BALANCES_SQL = """
UPDATE ledger_clientbalance SET balance = ledger_clientbalance.balance - s.total, updated_at = %s
FROM (SELECT client_id, session_type_id, SUM(remaining) AS total
      FROM ledger_creditgrant WHERE id IN ({ids}) GROUP BY client_id, session_type_id) s
WHERE ledger_clientbalance.client_id = s.client_id
  AND ledger_clientbalance.session_type_id = s.session_type_id AND s.total <> 0
"""


def _expire_batch(now: datetime, batch_size: int, after_id: int) -> tuple[list[int], int]:
    """Expire one batch in one transaction; returns (candidate ids, grants expired)."""
    with transaction.atomic():
        due = CreditGrant.objects.filter(state=GrantState.ACTIVE, expires_at__lte=now)
        # Walk forward by id: without the cursor each batch would re-scan the rows just expired.
        candidates = list(
            due.filter(pk__gt=after_id).order_by("pk").values_list("pk", flat=True)[:batch_size]
        )
        if not candidates:
            return [], 0
        # Same lock order as every other writer: balances first, then grants.
        pairs = CreditGrant.objects.filter(pk__in=candidates).values("client_id", "session_type_id")
        list(
            ClientBalance.objects.select_for_update()
            .filter(Exists(pairs.filter(client_id=OuterRef("client_id"), session_type_id=OuterRef("session_type_id"))))
            .order_by("pk").values_list("pk", flat=True)
        )
        ids = list(
            due.filter(pk__in=candidates).select_for_update().order_by("pk").values_list("pk", flat=True)
        )
        if ids:
            placeholders = ", ".join(["%s"] * len(ids))
            with connection.cursor() as cursor:
                cursor.execute(_EXPIRE_ENTRIES_SQL.format(ids=placeholders), [now, *ids])
                cursor.execute(_EXPIRE_BALANCES_SQL.format(ids=placeholders), [now, *ids])
            CreditGrant.objects.filter(pk__in=ids).update(state=GrantState.EXPIRED, remaining=0)
            # The entries are written in SQL (no post_save), so the audit line is one per batch.
            audit_on_commit("ledger.expired", grants=len(ids), first_grant_id=ids[0], last_grant_id=ids[-1])
        return candidates, len(ids)


def credits_expire_due(*, now: datetime | None = None, batch_size: int | None = None) -> int:
    """Expire every grant whose window has closed: one Expired entry per grant, set-based.

    Works in batches, each its own short transaction, so bookings never wait long on its locks.
    Safe to run twice or concurrently: a grant expires once (state check under lock, unique key).
    """
    now = now or timezone.now()
    batch_size = batch_size or settings.LEDGER_EXPIRY_BATCH_SIZE
    total, after_id = 0, 0
    while True:
        candidates, expired = _expire_batch(now, batch_size, after_id)
        total += expired
        if len(candidates) < batch_size:
            return total
        after_id = candidates[-1]
