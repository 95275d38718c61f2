"""The SQL behind reports.valuation: what each grant is worth, its remaining value at a moment,
and the value each ledger entry moved. docs/reports.md states the rules in words.

Everything is set-based (CTEs and window functions) and counts integer minor units, so
PostgreSQL and SQLite agree and no money is ever a float. The few places where the two databases
spell things differently (epoch of a timestamp, exact integer division, reading the purchase's
snapshot lines) are in `dialect()`, switched on connection.vendor.
"""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone

from django.conf import settings
from django.db import connection

from catalog.validation import ZERO_DECIMAL_CURRENCIES
from reports.filters import ReportFilters

OPENING_BALANCE = "Opening balance"
ADJUSTMENT = "Adjustment"
EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def epoch_us(moment: datetime) -> int:
    """Microseconds since 1970, exactly (integer arithmetic, no float seconds)."""
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def dialect() -> dict[str, str]:
    """The only SQL that differs between PostgreSQL (tests, production) and SQLite (the demo).

    PostgreSQL computes in NUMERIC, so value × microseconds cannot overflow and the rounding is
    exact; SQLite has 64-bit integers only, which is plenty for the demo's data.
    """
    if connection.vendor == "postgresql":
        return {
            # These queries carry long CASE expressions: PostgreSQL's JIT, triggered by the
            # planner's cost estimate, spent 17 s compiling them for a 15 ms query. Off, for
            # this transaction only.
            "prepare": "SET LOCAL jit = off",
            "epoch_us": "(EXTRACT(EPOCH FROM {x}) * 1000000)",
            # round-half-up(a / b) for a >= 0, b > 0, exactly: floor((2a + b) / 2b).
            "rhu": "div(2 * CAST({a} AS numeric) + ({b}), 2 * CAST({b} AS numeric))",
            "lines": "CROSS JOIN LATERAL jsonb_array_elements(p.snapshot -> 'lines') "
                     "WITH ORDINALITY AS l(line, line_no)",
            "line_no": "l.line_no",
            "line_type": "CAST(l.line ->> 'session_type_id' AS bigint)",
            "line_credits": "COALESCE(CAST(l.line ->> 'credits' AS integer), 0)",
            "line_unlimited": "COALESCE(CAST(l.line ->> 'unlimited' AS boolean), false)",
            "name": "p.snapshot ->> 'name'",
        }
    return {
        "prepare": "",
        "epoch_us": "CAST(ROUND((julianday({x}) - 2440587.5) * 86400000000.0) AS INTEGER)",
        "rhu": "CAST((2 * ({a}) + ({b})) / (2 * ({b})) AS INTEGER)",
        "lines": "JOIN json_each(p.snapshot, '$.lines') AS l",
        "line_no": "(l.key + 1)",
        "line_type": "json_extract(l.value, '$.session_type_id')",
        "line_credits": "COALESCE(json_extract(l.value, '$.credits'), 0)",
        "line_unlimited": "COALESCE(json_extract(l.value, '$.unlimited'), 0)",
        "name": "json_extract(p.snapshot, '$.name')",
    }


def _minor_factor(column: str) -> str:
    # A constant list of ISO codes, so it is safe to inline.
    codes = ", ".join(f"'{code}'" for code in sorted(ZERO_DECIMAL_CURRENCIES))
    return f"(CASE WHEN UPPER({column}) IN ({codes}) THEN 1 ELSE 100 END)"


def scope_where(filters: ReportFilters | None, *, staff_on_purchase: bool = True) -> tuple[str, dict]:
    """Which grants count: a predicate on the grant alone, so a report filtered by it still ties
    out (every entry of a grant is in, or none is). Staff is the purchase's staff member here;
    the redemptions report filters by the session's staff member instead (staff_on_purchase=False)."""
    parts, params = ["1 = 1"], {}
    if filters is None:
        return parts[0], params
    if filters.session_type_id is not None:
        parts.append("g.session_type_id = %(f_type)s")
        params["f_type"] = filters.session_type_id
    if filters.category_id is not None:
        parts.append("st.category_id = %(f_category)s")
        params["f_category"] = filters.category_id
    if filters.pack_id is not None:
        parts.append("p.pack_id = %(f_pack)s")
        params["f_pack"] = filters.pack_id
    if filters.staff_member_id is not None and staff_on_purchase:
        parts.append("p.staff_member_id = %(f_staff)s")
        params["f_staff"] = filters.staff_member_id
    return " AND ".join(parts), params


def f_at(d: dict, x_us: str) -> str:
    """An unlimited grant's value at epoch-microseconds `x_us` inside its window:
    V × (expires − x) / (expires − valid_from), clamped to [0, V], rounded half up."""
    length = "(gu.e_us - gu.s_us)"
    left = f"(CASE WHEN gu.e_us - {x_us} < 0 THEN 0 WHEN gu.e_us - {x_us} > {length} " \
           f"THEN {length} ELSE gu.e_us - {x_us} END)"
    prorated = d["rhu"].format(a=f"gu.v * {left}", b=length)
    return f"(CASE WHEN gu.e_us <= gu.s_us THEN (CASE WHEN {x_us} >= gu.e_us THEN 0 ELSE gu.v END) " \
           f"ELSE {prorated} END)"


def counted_r(d: dict, remaining: str) -> str:
    """A counted grant's remaining value: round-half-up(V × remaining / quantity)."""
    return d["rhu"].format(a=f"gv.v * ({remaining})", b="NULLIF(gv.quantity, 0)")


def unlimited_r(d: dict, t: str, t_us: str) -> str:
    """An unlimited grant's remaining value at moment `t` (entries strictly before t count)."""
    return (
        f"(CASE WHEN gu.issue_at >= {t} THEN 0 WHEN gu.closed_at < {t} THEN 0 "
        f"WHEN gu.known_at < {t} THEN {f_at(d, t_us)} ELSE gu.v END)"
    )


def recognised(d: dict) -> str:
    """An unlimited grant's time recognition in [t1, t2): from V (window known inside the
    range: the elapsed part goes at once) or its value at t1, down to its value at t2 or when it
    closed (voided or expired: that entry takes what is left)."""
    closing = d["epoch_us"].format(x="gu.closed_at")
    return (
        "(CASE WHEN gu.known_at IS NULL OR gu.known_at >= %(t2)s OR gu.closed_at < %(t1)s THEN 0 "
        f"ELSE (CASE WHEN gu.known_at >= %(t1)s THEN gu.v ELSE {f_at(d, '%(t1_us)s')} END) "
        f"- (CASE WHEN gu.closed_at < %(t2)s THEN {f_at(d, closing)} ELSE {f_at(d, '%(t2_us)s')} END) END)"
    )


def base_ctes(filters: ReportFilters | None, *, since: str, staff_on_purchase: bool = True) -> tuple[str, dict]:
    """WITH … gv (every grant in scope with its value V, currency, pack and session type names)
    and gu (unlimited grants: issue, window-known and closing moments).

    `since` names the parameter of the earliest moment the report looks at: grants with nothing
    left then and no entry since are left out before the expensive part (they are worth 0).
    """
    d = dialect()
    where, params = scope_where(filters, staff_on_purchase=staff_on_purchase)
    params.update(default_currency=settings.DEFAULT_CURRENCY, opening=OPENING_BALANCE, adjustment=ADJUSTMENT)
    sql = f"""
WITH g0 AS (
    SELECT g.id, g.purchase_id, g.session_type_id, st.name AS session_type, g.unlimited,
           g.quantity, g.remaining, g.reservation, g.source, g.valid_from_rule, g.valid_from,
           g.expires_at, g.opening_value, g.opening_currency,
           p.currency AS p_currency, {d['name']} AS p_name
    FROM ledger_creditgrant g
    JOIN catalog_sessiontype st ON st.id = g.session_type_id
    LEFT JOIN payments_purchase p ON p.id = g.purchase_id
    WHERE {where}
      AND (g.unlimited OR g.remaining <> 0 OR g.id IN (
          SELECT e.grant_id FROM ledger_ledgerentry e WHERE e.created_at >= %({since})s))
),
sp AS (SELECT DISTINCT purchase_id AS id FROM g0 WHERE purchase_id IS NOT NULL),
pl AS (
    SELECT p.id AS purchase_id, CAST(ROUND(p.price * {_minor_factor('p.currency')}) AS BIGINT) AS m,
           {d['line_no']} AS line_no, {d['line_type']} AS st_id, {d['line_credits']} AS credits,
           CASE WHEN {d['line_unlimited']} THEN 1 ELSE 0 END AS unl
    FROM payments_purchase p JOIN sp ON sp.id = p.id {d['lines']}
),
pt AS (
    SELECT purchase_id, MAX(m) AS m, SUM(CASE WHEN unl = 1 THEN 0 ELSE credits END) AS c,
           SUM(unl) AS u
    FROM pl GROUP BY purchase_id
),
-- Shares of the price: the counted part (if any) first, then each unlimited line.
pt2 AS (
    SELECT purchase_id, m, c, u + CASE WHEN c > 0 THEN 1 ELSE 0 END AS n
    FROM pt WHERE u > 0 OR c > 0
),
pt3 AS (
    SELECT purchase_id, m, c, n,
           CASE WHEN c > 0 THEN m / n + CASE WHEN m %% n > 0 THEN 1 ELSE 0 END ELSE 0 END AS mc
    FROM pt2
),
uv AS (
    SELECT pl.purchase_id, pl.st_id,
           pt3.m / pt3.n + CASE WHEN ROW_NUMBER() OVER (PARTITION BY pl.purchase_id ORDER BY pl.line_no)
               - 1 + CASE WHEN pt3.c > 0 THEN 1 ELSE 0 END < pt3.m %% pt3.n THEN 1 ELSE 0 END AS v
    FROM pl JOIN pt3 ON pt3.purchase_id = pl.purchase_id
    WHERE pl.unl = 1
),
res AS (
    SELECT DISTINCT r.purchase_id, r.session_type_id FROM ledger_creditgrant r
    JOIN sp ON sp.id = r.purchase_id WHERE r.reservation
),
-- Counted pieces: a credit held for a booking before payment, and the rest of its line.
pc AS (
    SELECT pl.purchase_id, pl.st_id, 1 AS res, 1 AS credits, 2 * pl.line_no AS ord
    FROM pl JOIN res ON res.purchase_id = pl.purchase_id AND res.session_type_id = pl.st_id
    WHERE pl.unl = 0
    UNION ALL
    SELECT pl.purchase_id, pl.st_id, 0, pl.credits - CASE WHEN res.purchase_id IS NULL THEN 0 ELSE 1 END,
           2 * pl.line_no + 1
    FROM pl LEFT JOIN res ON res.purchase_id = pl.purchase_id AND res.session_type_id = pl.st_id
    WHERE pl.unl = 0 AND pl.credits > CASE WHEN res.purchase_id IS NULL THEN 0 ELSE 1 END
),
pf AS (
    SELECT pc.purchase_id, pc.st_id, pc.res, pc.ord, pt3.mc,
           pt3.mc * pc.credits / pt3.c AS fl, pt3.mc * pc.credits %% pt3.c AS rm
    FROM pc JOIN pt3 ON pt3.purchase_id = pc.purchase_id
),
-- Largest remainder: the pieces with the biggest leftover fractions get the leftover units.
pv AS (
    SELECT purchase_id, st_id, res,
           fl + CASE WHEN ROW_NUMBER() OVER (PARTITION BY purchase_id ORDER BY rm DESC, ord)
                     <= mc - SUM(fl) OVER (PARTITION BY purchase_id) THEN 1 ELSE 0 END AS v
    FROM pf
),
gv AS (
    SELECT g0.*,
           CASE WHEN g0.purchase_id IS NULL
                     THEN COALESCE(CAST(ROUND(g0.opening_value * {_minor_factor('g0.opening_currency')}) AS BIGINT), 0)
                WHEN g0.unlimited THEN COALESCE(uv.v, 0)
                ELSE COALESCE(pv.v, 0) END AS v,
           COALESCE(g0.p_currency, NULLIF(g0.opening_currency, ''), %(default_currency)s) AS currency,
           CASE WHEN g0.purchase_id IS NOT NULL THEN g0.p_name
                WHEN g0.source = 'import' THEN %(opening)s ELSE %(adjustment)s END AS pack_name
    FROM g0
    LEFT JOIN uv ON g0.unlimited AND uv.purchase_id = g0.purchase_id AND uv.st_id = g0.session_type_id
    LEFT JOIN pv ON NOT g0.unlimited AND pv.purchase_id = g0.purchase_id
         AND pv.st_id = g0.session_type_id AND pv.res = CASE WHEN g0.reservation THEN 1 ELSE 0 END
),
ui AS (
    SELECT e.grant_id, MIN(e.created_at) AS issue_at,
           MIN(CASE WHEN e.kind = 'used' THEN e.created_at END) AS first_used,
           MIN(CASE WHEN e.kind IN ('voided', 'expired') THEN e.created_at END) AS closed_at,
           MIN(CASE WHEN e.kind IN ('voided', 'expired') THEN e.id END) AS closing_id
    FROM ledger_ledgerentry e
    WHERE e.grant_id IN (SELECT id FROM gv WHERE gv.unlimited)
    GROUP BY e.grant_id
),
-- When the window became known: at issue for "from payment", else at the use that opened it.
gu AS (
    SELECT gv.id, gv.v, ui.issue_at, ui.closed_at, ui.closing_id,
           CASE WHEN gv.valid_from IS NULL THEN NULL
                WHEN gv.valid_from_rule = 'payment' OR ui.first_used IS NULL THEN ui.issue_at
                ELSE ui.first_used END AS known_at,
           {d['epoch_us'].format(x='gv.valid_from')} AS s_us,
           {d['epoch_us'].format(x='gv.expires_at')} AS e_us
    FROM gv JOIN ui ON ui.grant_id = gv.id
)"""
    return sql, params


def entry_ctes(d: dict) -> str:
    """…, er (entries from t1), ga (per grant: credits moved from t1 and from t2), ev (each
    entry in [t1, t2) with the value it moved). Append to base_ctes(since='t1')."""
    rem_after = "w.rem_after"
    closing_value = f"-(CASE WHEN gu.known_at IS NOT NULL THEN {f_at(d, d['epoch_us'].format(x='w.created_at'))} ELSE gu.v END)"
    return f""",
er AS (
    SELECT e.id, e.grant_id, e.kind, e.source, e.amount, e.created_at, e.booking_id
    FROM ledger_ledgerentry e JOIN gv ON gv.id = e.grant_id
    WHERE e.created_at >= %(t1)s
),
ga AS (
    SELECT grant_id, SUM(amount) AS after1,
           SUM(CASE WHEN created_at >= %(t2)s THEN amount ELSE 0 END) AS after2
    FROM er GROUP BY grant_id
),
ew AS (
    SELECT er.*, gv.remaining - ga.after1
           + SUM(er.amount) OVER (PARTITION BY er.grant_id ORDER BY er.created_at, er.id
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rem_after
    FROM er JOIN gv ON gv.id = er.grant_id JOIN ga ON ga.grant_id = er.grant_id
    WHERE er.created_at < %(t2)s
),
ev AS (
    SELECT w.id, w.grant_id, w.kind, w.source, w.amount, w.booking_id,
           CASE WHEN gv.unlimited THEN
                CASE WHEN w.kind = 'issued' THEN gv.v
                     WHEN w.id = gu.closing_id THEN {closing_value}
                     ELSE 0 END
           ELSE {counted_r(d, rem_after)} - {counted_r(d, f'{rem_after} - w.amount')} END AS value
    FROM ew w JOIN gv ON gv.id = w.grant_id LEFT JOIN gu ON gu.id = w.grant_id
)"""


def range_params(t1: datetime, t2: datetime) -> dict:
    ops = connection.ops
    return {
        "t1": ops.adapt_datetimefield_value(t1), "t2": ops.adapt_datetimefield_value(t2),
        "t1_us": epoch_us(t1), "t2_us": epoch_us(t2),
    }
