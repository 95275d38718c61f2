"""`python -m bench --population CLIENTS:ENTRIES`: every measurement on one business at scale.

Without it each measurement seeds a database of its own. With it the bench first seeds a
business of CLIENTS clients whose ledger holds ENTRIES entries (two years of history), then runs
the measurements on top of it without emptying anything in between: the client list and the
client page are that business's, the export reads a date range of its ledger, and redemption,
webhooks and the expiry sweep add their own clients and credits to it.

The seed is set-based. Each client holds GRANTS_PER_CLIENT grants over two session types, one
every ~72 days, each an Adjusted entry of CREDITS followed by uses 3 days apart; entries are
inserted in time order (so ids follow time as in a live ledger), each balance_after is a window
sum, and the cached balances are the grants' remaining credits. ledger_check proves the rows
consistent before anything is measured.
"""
from __future__ import annotations

import time
from datetime import timedelta

from bench.common import analyze, assert_ledger_ok, insert_select, log

GRANTS_PER_CLIENT = 10
CREDITS = 10
HISTORY_DAYS = 720  # the first grant's age; grants are HISTORY_DAYS / GRANTS_PER_CLIENT apart
VALID_DAYS = 900  # every population grant is still valid: the expiry sweep's due grants are its own

# Grant k of client c is made at `start + (k + c / n) * spacing`: every day holds entries of
# many clients, and one client's grants are far enough apart (72 days) that its uses (3 days
# apart) never interleave with the next grant's.
_GRANT_CREATED = ("%(start)s::timestamptz + (k + c.id::numeric / %(n)s) * %(spacing)s "
                  "* interval '1 second'")
_GRANT_FROM = ("FROM core_client c CROSS JOIN generate_series(0, %(per_client)s - 1) AS k "
               f"ORDER BY {_GRANT_CREATED}, c.id")
_GRANT_EXPRS = {
    "client_id": "c.id",
    "session_type_id": "CASE WHEN k %% 2 = 0 THEN %(first_type)s::bigint "
                       "ELSE %(second_type)s::bigint END",
    "purchase_id": "NULL", "source": "'adjustment'", "unlimited": "false",
    "quantity": "%(credits)s", "remaining": "%(credits)s - %(uses)s", "state": "'active'",
    "valid_from": _GRANT_CREATED,
    "expires_at": f"{_GRANT_CREATED} + %(valid_days)s * interval '1 day'",
    "valid_from_rule": "'payment'", "validity_amount": "12", "validity_unit": "'months'",
    "all_staff": "true", "opening_currency": "''",
    "created_at": _GRANT_CREATED,
}
_AMOUNT = "CASE WHEN s = 0 THEN g.quantity ELSE -1 END"
_ENTRY_CREATED = "g.created_at + s * interval '3 days'"
_ENTRY_FROM = ("FROM ledger_creditgrant g CROSS JOIN generate_series(0, %(uses)s) AS s "
               f"ORDER BY {_ENTRY_CREATED}, g.id, s")
_ENTRY_EXPRS = {
    "client_id": "g.client_id", "session_type_id": "g.session_type_id", "grant_id": "g.id",
    "kind": "CASE WHEN s = 0 THEN 'adjusted' ELSE 'used' END", "amount": _AMOUNT,
    "balance_after": f"SUM({_AMOUNT}) OVER (PARTITION BY g.client_id, g.session_type_id "
                     "ORDER BY g.id, s ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)",
    "actor_id": "CASE WHEN s = 0 THEN %(actor)s ELSE NULL END",
    # A comma and quotes, so the export and its COPY baseline both have to quote some fields.
    "note": "CASE WHEN s = 0 THEN 'Bench: pack bought at the desk, \"10 classes\"' "
            "ELSE 'Bench: session ' || s END",
    "source": "CASE WHEN s = 0 THEN 'adjustment' ELSE 'booking' END", "purchase_id": "NULL",
    "reverses_id": "NULL", "booking_id": "NULL", "refund_id": "NULL",
    "idempotency_key": "'population:' || g.id || ':' || s",
    "created_at": _ENTRY_CREATED,
}
_BALANCE_EXPRS = {
    "client_id": "client_id", "session_type_id": "session_type_id",
    "balance": "SUM(remaining)", "updated_at": "MAX(created_at)",
}


def parse(text: str) -> tuple[int, int]:
    """'100000:5000000' -> (clients, entries)."""
    clients, _, entries = text.partition(":")
    try:
        clients, entries = int(clients.replace("_", "")), int(entries.replace("_", ""))
    except ValueError:
        raise ValueError("--population takes CLIENTS:ENTRIES, e.g. 100000:5000000") from None
    if clients < 1 or entries < clients * GRANTS_PER_CLIENT * 2:
        raise ValueError(
            f"--population needs at least one client and {GRANTS_PER_CLIENT * 2} entries per "
            "client (each grant is an Adjusted entry and at least one use)"
        )
    return clients, entries


def seed_population(clients: int, entries: int, actor) -> int:
    """Seed the business on an empty database; returns the number of ledger entries."""
    from django.db import connection, transaction
    from django.utils import timezone

    from bench.seed import seed_clients
    from catalog.models import Category, SessionType
    from ledger.models import ClientBalance, CreditGrant, LedgerEntry

    uses = entries // (clients * GRANTS_PER_CLIENT) - 1
    if uses >= CREDITS:
        raise SystemExit(f"bench: at most {CREDITS * GRANTS_PER_CLIENT} entries per client")
    log(f"population: seeding {clients} clients and {clients * GRANTS_PER_CLIENT * (1 + uses)} "
        "ledger entries (set-based)")
    started = time.monotonic()
    now = timezone.now()
    seed_clients(clients, actor_id=actor.pk, now=now - timedelta(days=HISTORY_DAYS + 1))
    category = Category.objects.create(name="Studio")
    first = SessionType.objects.create(name="Mat pilates", category=category)
    second = SessionType.objects.create(name="Sports massage", category=category,
                                        duration_minutes=45)
    params = {
        "n": clients, "per_client": GRANTS_PER_CLIENT, "first_type": first.pk,
        "second_type": second.pk, "credits": CREDITS, "uses": uses, "actor": actor.pk,
        # Far enough back that the last grant's last use is not in the future.
        "start": now - timedelta(days=HISTORY_DAYS + 3 * uses + 1),
        "spacing": HISTORY_DAYS * 86400 // GRANTS_PER_CLIENT, "valid_days": VALID_DAYS,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(*insert_select(CreditGrant, _GRANT_EXPRS, _GRANT_FROM, params))
        log(f"population: {cursor.rowcount} grants in {time.monotonic() - started:.0f}s")
        cursor.execute(*insert_select(LedgerEntry, _ENTRY_EXPRS, _ENTRY_FROM, params))
        log(f"population: {cursor.rowcount} entries in {time.monotonic() - started:.0f}s")
        cursor.execute(*insert_select(
            ClientBalance, _BALANCE_EXPRS,
            "FROM ledger_creditgrant GROUP BY client_id, session_type_id "
            "ORDER BY client_id, session_type_id", {},
        ))
    analyze()
    total = LedgerEntry.objects.count()
    log(f"population: seeded in {time.monotonic() - started:.0f}s")
    assert_ledger_ok("population seed")
    return total


def describe() -> str:
    """What the database holds now, for the log line before each measurement."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COUNT(*) FROM core_client), (SELECT COUNT(*) FROM ledger_creditgrant),"
            " (SELECT COUNT(*) FROM ledger_ledgerentry)"
        )
        clients, grants, entries = cursor.fetchone()
    return f"{clients} clients, {grants} grants, {entries} ledger entries"
