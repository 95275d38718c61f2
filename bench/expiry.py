"""The expiry sweep: every due grant expired, one Expired entry each.

Measured: ledger.services.credits_expire_due, which works in batches (LEDGER_EXPIRY_BATCH_SIZE
grants per transaction, locking balances then grants) so bookings never wait long behind it.
Baseline: the same three set-based statements (insert the entries, lower the balances, close
the grants) over all due grants in one transaction without locks or batches, on a fresh copy
of the same data. Each grant-holding client also keeps one live grant the sweep must skip.
"""
from __future__ import annotations

import time
from datetime import timedelta

from bench.common import (
    Result,
    analyze,
    assert_ledger_ok,
    insert_select,
    log,
    raw_connection,
    reset_database,
)
from bench.seed import seed_adjusted_credits, seed_clients

DUE_PER_CLIENT = 4
_PLAN_SQL = """
SELECT c.id, %(session_type)s::bigint, 1 + (c.id + k) %% 10, %(issued)s::timestamptz,
       CASE WHEN k < %(due)s THEN %(past)s::timestamptz - k * interval '1 hour'
            ELSE %(future)s::timestamptz END,
       k
FROM core_client c CROSS JOIN generate_series(0, %(per_client)s - 1) AS k
WHERE c.id BETWEEN %(first)s AND %(last)s
"""
# The same statements as ledger.services' sweep, over every due grant at once.
_EXPIRED_ENTRY_EXPRS = {
    "client_id": "g.client_id", "session_type_id": "g.session_type_id", "grant_id": "g.id",
    "kind": "'expired'", "amount": "-g.remaining",
    "balance_after": "b.balance - SUM(g.remaining) OVER (PARTITION BY g.client_id, "
                     "g.session_type_id ORDER BY g.id "
                     "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)",
    "actor_id": "NULL", "note": "'Expired unused'", "source": "'expiry'",
    "purchase_id": "g.purchase_id", "reverses_id": "NULL", "idempotency_key": "'expire:' || g.id",
    "created_at": "%(now)s",
}
_EXPIRED_ENTRY_FROM = """
    FROM ledger_creditgrant g
    JOIN ledger_clientbalance b
      ON b.client_id = g.client_id AND b.session_type_id = g.session_type_id
    WHERE g.state = 'active' AND g.expires_at <= %(now)s
    ORDER BY g.client_id, g.session_type_id, g.id
"""
_BALANCES_SQL = """
    UPDATE ledger_clientbalance SET balance = ledger_clientbalance.balance - s.total,
                                    updated_at = %(now)s
    FROM (SELECT client_id, session_type_id, SUM(remaining) AS total
          FROM ledger_creditgrant WHERE state = 'active' AND expires_at <= %(now)s
          GROUP BY client_id, session_type_id) s
    WHERE ledger_clientbalance.client_id = s.client_id
      AND ledger_clientbalance.session_type_id = s.session_type_id AND s.total <> 0
"""
_GRANTS_SQL = """
    UPDATE ledger_creditgrant SET state = 'expired', remaining = 0
    WHERE state = 'active' AND expires_at <= %(now)s
"""


def _baseline_statements(now) -> list[tuple[str, dict]]:
    from ledger.models import LedgerEntry

    return [
        insert_select(LedgerEntry, _EXPIRED_ENTRY_EXPRS, _EXPIRED_ENTRY_FROM, {"now": now}),
        (_BALANCES_SQL, {"now": now}),
        (_GRANTS_SQL, {"now": now}),  # last: its row count is the number of grants expired
    ]


def _seed(grants: int, total: int, actor, *, fresh: bool) -> None:
    """`grants` due among `total` grants: each client holds DUE_PER_CLIENT due ones and the
    rest still valid, so the sweep must find the due rows among many that are not.
    Fresh: on new clients. Otherwise on the clients there (the population), in a session type of
    its own, counting the grants there towards `total`."""
    from django.utils import timezone

    from catalog.models import Category, SessionType
    from core.models import Client
    from ledger.models import CreditGrant

    now = timezone.now()
    clients = max(1, grants // DUE_PER_CLIENT)
    if fresh:
        per_client = max(DUE_PER_CLIENT + 1, total // clients)
        ids = seed_clients(clients, actor_id=actor.pk, now=now - timedelta(days=200))
    else:
        per_client = max(DUE_PER_CLIENT + 1, (total - CreditGrant.objects.count()) // clients)
        ids = list(Client.objects.order_by("pk").values_list("pk", flat=True)[:clients])
        if len(ids) < clients or ids[-1] - ids[0] != clients - 1:
            raise SystemExit(f"bench: expiry needs {clients} clients with consecutive ids")
    # Names of its own: with --population, other measurements' catalogues are still there.
    category = Category.objects.create(name="Expiry bench classes")
    reformer = SessionType.objects.create(name="Expiring class", category=category)
    seed_adjusted_credits(
        _PLAN_SQL,
        {"session_type": reformer.pk, "issued": now - timedelta(days=100), "due": DUE_PER_CLIENT,
         "per_client": per_client, "first": ids[0], "last": ids[-1],
         "past": now - timedelta(days=1), "future": now + timedelta(days=30)},
        actor_id=actor.pk, note="Bench: credits about to expire",
    )
    analyze()


def _due_count(now) -> int:
    from ledger.models import CreditGrant, GrantState

    return CreditGrant.objects.filter(state=GrantState.ACTIVE, expires_at__lte=now).count()


def run(*, grants: int, total: int, actor, fresh: bool = True) -> list[Result]:
    """fresh: each sweep on a database of its own (TRUNCATE, seed). Otherwise (--population)
    the due grants are seeded once on top of what is there; the baseline runs first in a
    transaction that is rolled back (then VACUUM clears what it left), then the service."""
    from django.conf import settings
    from django.utils import timezone

    from ledger.models import CreditGrant
    from ledger.services import credits_expire_due

    timings = {}
    for kind in ("sql", "service"):
        if fresh or kind == "sql":
            if fresh:
                reset_database()
            log(f"expiry: seeding {grants} due among {total} grants (set-based)"
                + (f" for the {kind} sweep" if fresh else ""))
            started = time.monotonic()
            _seed(grants, total, actor, fresh=fresh)
            log(f"expiry: seeded in {time.monotonic() - started:.0f}s; "
                f"{CreditGrant.objects.count()} grants in all")
            assert_ledger_ok("expiry seed")
        now = timezone.now()
        due = _due_count(now)
        started = time.perf_counter()
        if kind == "service":
            expired = credits_expire_due(now=now)
        else:
            statements = _baseline_statements(now)
            with raw_connection() as conn, conn.cursor() as cur:
                for sql, params in statements:
                    cur.execute(sql, params)
                expired = cur.rowcount
                if not fresh:
                    conn.rollback()
        timings[kind] = time.perf_counter() - started
        left = _due_count(now)
        if expired != due or left != (due if kind == "sql" and not fresh else 0):
            raise SystemExit(f"bench: {kind} sweep expired {expired} of {due} due grants, "
                             f"{left} still due")
        if kind == "sql" and not fresh:
            analyze()  # VACUUM: the service must not pay for the baseline's dead rows
        else:
            assert_ledger_ok(f"expiry ({kind})")
    log(f"expiry: service batch size {settings.LEDGER_EXPIRY_BATCH_SIZE}")
    return [Result(f"expire_due_{due}_of_{CreditGrant.objects.count()}", timings["service"], "s", timings["sql"])]
