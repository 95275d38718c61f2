"""Seed data for the measurements.

Clients are inserted set-based (with the history row client_create writes). Credits come
either from real purchases through payments.services / ledger.services, or, where the
volume makes that too slow, from set-based SQL that writes exactly the rows credits_adjust
would write for a positive adjustment (grant, Adjusted entry, cached balance); every
measurement runs ledger_check afterwards to prove those rows are consistent.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db import connection, transaction

from bench.common import insert_select, log

FIRST_NAMES = [
    "Ada", "Alan", "Amara", "Ben", "Carla", "Chen", "Dara", "David", "Elena", "Emeka", "Fatima",
    "Finn", "Grace", "Hana", "Hugo", "Ines", "Isaac", "Jade", "Jonas", "Kai", "Kemi", "Lena",
    "Leo", "Maya", "Mateo", "Nadia", "Noah", "Olga", "Omar", "Priya", "Quinn", "Rosa", "Ravi",
    "Sara", "Sam", "Tariq", "Tess", "Uma", "Victor", "Wen", "Xavier", "Yara", "Yusuf", "Zoe",
    "Anna", "Bruno", "Clara", "Diego", "Eva", "Felix", "Gita", "Hiro", "Ivy",
]
LAST_NAMES = [
    "Adams", "Baker", "Bianchi", "Brown", "Byrne", "Campbell", "Chen", "Clarke", "Costa",
    "Davies", "Diaz", "Dubois", "Evans", "Fischer", "Garcia", "Green", "Hall", "Hopper",
    "Hughes", "Ivanova", "Jackson", "Jones", "Kaur", "Khan", "Kowalski", "Lee", "Lopez",
    "Lovelace", "Martin", "Meyer", "Moreau", "Murphy", "Nakamura", "Nguyen", "Novak", "Okafor",
    "O'Brien", "Patel", "Rossi", "Santos", "Schmidt", "Silva", "Singh", "Smith", "Sousa",
    "Tanaka", "Taylor", "Thomas", "Turner", "Walker", "Wang", "White", "Wilson", "Wood",
    "Wright", "Yilmaz", "Young", "Zhang", "Ahmed", "Berg", "Novak-Lee",
]
SEARCH_TERM = "hopper"  # one surname among 61: what a front desk types to find a client

_CLIENT_EXPRS = {
    "name": "(%(first)s::text[])[1 + i %% %(nfirst)s] || ' ' "
            "|| (%(last)s::text[])[1 + (i / %(nfirst)s) %% %(nlast)s]",
    "email": "'client' || i || '@example.com'",
    "phone": "'07700 ' || lpad((i %% 1000000)::text, 6, '0')",
    "notes": "''",
    "archived": "i %% 50 = 0",
    "created_at": "%(now)s::timestamptz",
}


def seed_clients(n: int, *, actor_id: int, now: datetime) -> list[int]:
    """n clients after any already there (numbered on from the highest id, so names and emails
    stay unique when a measurement seeds on top of the --population); returns their ids."""
    from core.models import Client

    history = Client.history.model
    columns = [f.column for f in Client._meta.concrete_fields]
    # What client_create's history row holds: a copy of the row, "created", by the actor.
    history_exprs = {
        **{c: c for c in columns},
        "history_date": "created_at", "history_change_reason": "NULL", "history_type": "'+'",
        "history_user_id": "%(actor)s",
    }
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM core_client")
        (before,) = cursor.fetchone()
        cursor.execute(*insert_select(
            Client, _CLIENT_EXPRS,
            "FROM generate_series(%(before)s + 1, %(before)s + %(n)s) AS i ORDER BY i",
            {"first": FIRST_NAMES, "nfirst": len(FIRST_NAMES), "last": LAST_NAMES,
             "nlast": len(LAST_NAMES), "now": now, "n": n, "before": before},
        ))
        cursor.execute(*insert_select(
            history, history_exprs, "FROM core_client WHERE id > %(before)s ORDER BY id",
            {"actor": actor_id, "before": before},
        ))
        cursor.execute("SELECT id FROM core_client WHERE id > %s ORDER BY id", [before])
        return [row[0] for row in cursor.fetchall()]


def seed_catalog(actor, *, credits: int):
    """Two session types and a published pack of `credits` credits for the first one."""
    from catalog.models import Category, SessionType
    from catalog.services import pack_create
    from catalog.validation import LineData

    category = Category.objects.create(name="Classes")
    reformer = SessionType.objects.create(
        name="Reformer class", category=category, duration_minutes=50
    )
    physio = SessionType.objects.create(name="Physio", category=category, duration_minutes=45)
    pack = pack_create(
        actor=actor, lines=[LineData(reformer, credits=credits)],
        name=f"{credits} reformer classes", category=category, price=Decimal("180.00"),
        currency="GBP", published=True, sell_online=True, validity_amount=3,
        validity_unit="months", valid_from="payment",
    )
    return reformer, physio, pack


def sell_pack_to_all(pack, actor, client_ids: list[int], *, chunk: int = 500) -> int:
    """One paid purchase per client of `client_ids`, through the real services (chunked
    transactions only so the seed does not wait for a WAL flush per purchase)."""
    from core.models import Client
    from payments.services import purchase_create, purchase_mark_paid

    ids = sorted(client_ids)
    for start in range(0, len(ids), chunk):
        with transaction.atomic():
            for client in Client.objects.filter(pk__in=ids[start:start + chunk]).order_by("pk"):
                purchase = purchase_create(client=client, pack=pack, actor=actor)
                purchase_mark_paid(purchase=purchase, actor=actor)
        if (start // chunk) % 4 == 3:
            log(f"  sold {min(start + chunk, len(ids))}/{len(ids)} packs")
    return len(ids)


# The rows credits_adjust(amount=+q, reason=note, expires_at=...) writes at `created_at`.
_GRANT_EXPRS = {
    "client_id": "client_id", "session_type_id": "session_type_id", "purchase_id": "NULL",
    "source": "'adjustment'", "unlimited": "false", "quantity": "quantity",
    "remaining": "quantity", "state": "'active'", "valid_from": "created_at",
    "expires_at": "expires_at", "valid_from_rule": "'payment'", "validity_amount": "12",
    "validity_unit": "'months'", "all_staff": "true", "created_at": "created_at",
}
_ENTRY_EXPRS = {
    "client_id": "client_id", "session_type_id": "session_type_id", "grant_id": "id",
    "kind": "'adjusted'", "amount": "quantity",
    "balance_after": "SUM(quantity) OVER (PARTITION BY client_id, session_type_id ORDER BY id "
                     "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)",
    "actor_id": "%(actor)s", "note": "%(note)s", "source": "'adjustment'", "purchase_id": "NULL",
    "reverses_id": "NULL", "idempotency_key": "'adjust:' || gen_random_uuid()",
    "created_at": "created_at",
}
_BALANCE_EXPRS = {
    "client_id": "client_id", "session_type_id": "session_type_id",
    "balance": "SUM(quantity)", "updated_at": "MAX(created_at)",
}


def seed_adjusted_credits(plan_sql: str, params: dict, *, actor_id: int, note: str) -> None:
    """Grants from `plan_sql` rows (client_id, session_type_id, quantity, created_at,
    expires_at, ord), shaped as positive adjustments, for (client, session type) pairs that
    hold no credits yet (a pair that does already has its balance row: the insert fails)."""
    from ledger.models import ClientBalance, CreditGrant, LedgerEntry

    plan = (f"FROM ({plan_sql}) AS plan (client_id, session_type_id, quantity, created_at, "
            "expires_at, ord) ORDER BY client_id, session_type_id, ord")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM ledger_creditgrant")
        (before,) = cursor.fetchone()
        cursor.execute(*insert_select(CreditGrant, _GRANT_EXPRS, plan, params))
        cursor.execute(*insert_select(
            LedgerEntry, _ENTRY_EXPRS, "FROM ledger_creditgrant WHERE id > %(before)s ORDER BY id",
            {"actor": actor_id, "note": note, "before": before},
        ))
        cursor.execute(*insert_select(
            ClientBalance, _BALANCE_EXPRS,
            "FROM ledger_creditgrant WHERE id > %(before)s GROUP BY client_id, session_type_id "
            "ORDER BY client_id, session_type_id", {"before": before},
        ))
