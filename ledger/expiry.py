"""The expiry sweep: every grant whose window has closed gets one Expired entry, set-based.

Same lock order as every other ledger writer (ledger/services.py): balances, then grants.
"""
from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
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
  ON b.client_id = g.client_id AND b.session_type_id = g.session_type_id AND b.id IN ({balances})
WHERE g.id IN ({ids})
ORDER BY g.client_id, g.session_type_id, g.id
"""
_EXPIRE_BALANCES_SQL = """
UPDATE ledger_clientbalance SET balance = ledger_clientbalance.balance - s.total, updated_at = %s
FROM (SELECT client_id, session_type_id, SUM(remaining) AS total
      FROM ledger_creditgrant WHERE id IN ({ids}) GROUP BY client_id, session_type_id) s
WHERE ledger_clientbalance.id IN ({balances})
  AND ledger_clientbalance.client_id = s.client_id
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
        # Same lock order as every other writer: balances first, then grants. The balances are
        # found by their ids, through indexes: joining on (client, session type) made PostgreSQL
        # hash the whole balances table three times per batch, which at 300,000 balances cost
        # more than the batch's own work (`make bench`, docs/performance.md).
        pairs = set(CreditGrant.objects.filter(pk__in=candidates).values_list("client_id", "session_type_id"))
        clients = sorted({client_id for client_id, _ in pairs})
        types = sorted({session_type_id for _, session_type_id in pairs})
        balances = [
            pk for pk, client_id, session_type_id in ClientBalance.objects.select_for_update()
            .filter(client_id__in=clients, session_type_id__in=types)
            .order_by("pk").values_list("pk", "client_id", "session_type_id")
            # Locked too: a client's balances of the batch's other session types (harmless: the
            # same lock order, for the length of one batch).
            if (client_id, session_type_id) in pairs
        ]
        ids = list(
            due.filter(pk__in=candidates).select_for_update().order_by("pk").values_list("pk", flat=True)
        )
        if ids:
            # IN (NULL): no balance row matches (none can be missing: every grant has one).
            sql = {"ids": ", ".join(["%s"] * len(ids)), "balances": ", ".join(["%s"] * len(balances)) or "NULL"}
            with connection.cursor() as cursor:
                cursor.execute(_EXPIRE_ENTRIES_SQL.format(**sql), [now, *balances, *ids])
                cursor.execute(_EXPIRE_BALANCES_SQL.format(**sql), [now, *ids, *balances])
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
