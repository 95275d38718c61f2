"""Proof that the ledger balances: every invariant as one set-based query."""
from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

# Each check returns (client_id, session_type_id, detail) rows that break an invariant.
CHECKS: dict[str, str] = {
    "balance_after chain": """
        SELECT client_id, session_type_id,
               'entry #' || id || ' says balance_after ' || balance_after
               || ' but the running sum is ' || running
        FROM (SELECT id, client_id, session_type_id, balance_after,
                     SUM(amount) OVER (PARTITION BY client_id, session_type_id ORDER BY id
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
              FROM ledger_ledgerentry) t
        WHERE balance_after <> running
    """,
    # Both sides as a UNION rather than a FULL OUTER JOIN, which older SQLite (demo) lacks.
    "cached balance": """
        SELECT client_id, session_type_id,
               'cached balance ' || SUM(cached) || ' but entries sum to ' || SUM(total)
        FROM (SELECT client_id, session_type_id, balance AS cached, 0 AS total
              FROM ledger_clientbalance
              UNION ALL
              SELECT client_id, session_type_id, 0, amount FROM ledger_ledgerentry) u
        GROUP BY client_id, session_type_id
        HAVING SUM(cached) <> SUM(total)
    """,
    "negative balance": """
        SELECT client_id, session_type_id, 'balance is ' || balance
        FROM ledger_clientbalance WHERE balance < 0
    """,
    "grant remaining": """
        SELECT g.client_id, g.session_type_id,
               'grant #' || g.id || ' has ' || g.remaining || ' remaining but its entries sum to '
               || COALESCE(e.total, 0)
        FROM ledger_creditgrant g
        LEFT JOIN (SELECT grant_id, SUM(amount) AS total FROM ledger_ledgerentry GROUP BY grant_id) e
          ON e.grant_id = g.id
        WHERE g.remaining < 0 OR g.remaining <> COALESCE(e.total, 0)
    """,
    "grant issued once": """
        SELECT g.client_id, g.session_type_id,
               'grant #' || g.id || ' has ' || COUNT(e.id) || ' issuing entries'
        FROM ledger_creditgrant g
        LEFT JOIN ledger_ledgerentry e
          ON e.grant_id = g.id AND (e.kind = 'issued' OR (e.kind = 'adjusted' AND g.source = 'adjustment'
                                                          AND e.amount > 0))
        GROUP BY g.id, g.client_id, g.session_type_id
        HAVING COUNT(e.id) <> 1
    """,
    "closed grant holds credits": """
        SELECT client_id, session_type_id,
               'grant #' || id || ' is ' || state || ' but still has ' || remaining || ' remaining'
        FROM ledger_creditgrant WHERE state <> 'active' AND remaining <> 0
    """,
    "entry matches grant": """
        SELECT e.client_id, e.session_type_id,
               'entry #' || e.id || ' names grant #' || g.id || ' of another client or session type'
        FROM ledger_ledgerentry e JOIN ledger_creditgrant g ON g.id = e.grant_id
        WHERE e.client_id <> g.client_id OR e.session_type_id <> g.session_type_id
    """,
}
MAX_REPORTED = 50


@dataclass
class LedgerCheckResult:
    clients: int
    entries: int
    problems: list[tuple[str, int, int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def ledger_check() -> LedgerCheckResult:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT COUNT(*) FROM core_client), (SELECT COUNT(*) FROM ledger_ledgerentry)"
        )
        clients, entries = cursor.fetchone()
        result = LedgerCheckResult(clients=clients, entries=entries)
        for name, sql in CHECKS.items():
            cursor.execute(f"SELECT * FROM ({sql}) q LIMIT {MAX_REPORTED}")
            for client_id, session_type_id, detail in cursor.fetchall():
                result.problems.append((name, client_id, session_type_id, detail))
    return result
