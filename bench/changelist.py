"""The client list in the admin at scale: /admin/core/client/ with every client holding credits.

Measured: GET of the changelist (default filter, first page) and of a search, through Django's
test client logged in as a superuser, in process (middleware, session, queries, templates; no
network). Query count from CaptureQueriesContext, time as the median of N requests after two
warm-up requests. Baseline: the page's data in one hand-written query (the first page of
clients by name with the sum of their balances, LEFT JOIN / GROUP BY), median of N runs.
Neither side counts the rows; the admin also runs two COUNT(*) for its paginator.

The client page (/admin/core/client/<id>/change/: balances, bookings, the first page of the
client's ledger, the edit form) is measured the same way, for the client of the latest ledger
entry (every population client has as many entries as the others). Baseline: the page's data in hand-written queries (the client, balances with their next
expiry, the ledger's count and first page, recent bookings).

With --population the pages are the population's and nothing is seeded here.
"""
from __future__ import annotations

import time

from bench.common import Result, analyze, assert_ledger_ok, log, median_ms, raw_connection
from bench.seed import SEARCH_TERM, seed_adjusted_credits, seed_clients

# Every client holds Reformer credits (1-10); every third also Physio; every seventh has a second
# Reformer grant, so a balance is often the sum of several grants.
_PLAN_SQL = """
SELECT c.id, t.session_type_id, 1 + (c.id + t.k) %% 10, %(now)s::timestamptz,
       %(expires)s::timestamptz, t.k
FROM core_client c
CROSS JOIN (VALUES (%(reformer)s::bigint, 0), (%(reformer)s::bigint, 1), (%(physio)s::bigint, 2))
    AS t (session_type_id, k)
WHERE t.k = 0 OR (t.k = 1 AND c.id %% 7 = 0) OR (t.k = 2 AND c.id %% 3 = 0)
"""
# The page first, then its balances: aggregating every client before the LIMIT would make a
# strawman baseline (~7x slower at 50,000 clients).
_PAGE_SQL = """
SELECT c.id, c.name, c.email, c.phone, c.archived, COALESCE(SUM(b.balance), 0) AS credits
FROM (SELECT id, name, email, phone, archived FROM core_client
      WHERE NOT archived {search}
      ORDER BY name, id LIMIT %(limit)s) c
LEFT JOIN ledger_clientbalance b ON b.client_id = c.id
GROUP BY c.id, c.name, c.email, c.phone, c.archived
ORDER BY c.name, c.id
"""


# What the client page shows, read by hand: five queries.
_CLIENT_PAGE_SQL = [
    """SELECT id, name, email, phone, notes, archived, nudges_opt_out, nudges_opted_out_at,
              created_at FROM core_client WHERE id = %(client)s""",
    """SELECT st.name, b.balance,
              (SELECT MIN(g.expires_at) FROM ledger_creditgrant g
               WHERE g.client_id = b.client_id AND g.session_type_id = b.session_type_id
                 AND g.state = 'active' AND g.remaining > 0 AND g.expires_at > now())
       FROM ledger_clientbalance b JOIN catalog_sessiontype st ON st.id = b.session_type_id
       WHERE b.client_id = %(client)s AND b.balance > 0 ORDER BY st.name""",
    "SELECT COUNT(*) FROM ledger_ledgerentry WHERE client_id = %(client)s",
    """SELECT e.id, e.created_at, st.name, e.kind, e.amount, e.balance_after, u.username,
              e.booking_id, e.purchase_id, e.source, e.note
       FROM ledger_ledgerentry e JOIN catalog_sessiontype st ON st.id = e.session_type_id
       LEFT JOIN auth_user u ON u.id = e.actor_id
       WHERE e.client_id = %(client)s ORDER BY e.id DESC LIMIT %(limit)s""",
    """SELECT b.id, b.status, s.starts_at, st.name
       FROM core_booking b JOIN core_session s ON s.id = b.session_id
       JOIN catalog_sessiontype st ON st.id = s.session_type_id
       WHERE b.client_id = %(client)s ORDER BY s.starts_at DESC, b.id DESC LIMIT 11""",
]


def _seed(clients: int, actor) -> None:
    from django.utils import timezone

    from catalog.models import Category, SessionType
    from catalog.validity import expiry_for

    now = timezone.now()
    seed_clients(clients, actor_id=actor.pk, now=now)
    category = Category.objects.create(name="Classes")
    reformer = SessionType.objects.create(name="Reformer class", category=category)
    physio = SessionType.objects.create(name="Physio", category=category, duration_minutes=45)
    seed_adjusted_credits(
        _PLAN_SQL,
        {"now": now, "expires": expiry_for(now, 12, "months"), "reformer": reformer.pk,
         "physio": physio.pk},
        actor_id=actor.pk, note="Bench: opening balance",
    )


def _search_sql(search_fields) -> str:
    # The admin's icontains over each search field, as ILIKE.
    columns = [f.lstrip("^=@") for f in search_fields]
    return "AND (" + " OR ".join(f"{col} ILIKE %(q)s" for col in columns) + ")"


def run(*, clients: int, requests: int, actor, seed: bool = True) -> list[Result]:
    from django.conf import settings
    from django.contrib import admin
    from django.db import connection
    from django.test import Client as HttpClient
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from core.models import Client

    if seed:
        log(f"changelist: seeding {clients} clients with balances (set-based)")
        started = time.monotonic()
        _seed(clients, actor)
        analyze()
        log(f"changelist: seeded in {time.monotonic() - started:.0f}s")
        assert_ledger_ok("changelist seed")
    else:
        clients = Client.objects.count()

    model_admin = admin.site._registry[Client]
    per_page = model_admin.list_per_page
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    http = HttpClient()
    http.force_login(actor)
    url = reverse("admin:core_client_changelist")
    conn = raw_connection()

    def page_rows(search: str | None):
        sql = _PAGE_SQL.format(search=_search_sql(model_admin.search_fields) if search else "")
        with conn.cursor() as cur:
            cur.execute(sql, {"limit": per_page, "q": f"%{search}%"})
            rows = cur.fetchall()
        conn.commit()
        return rows

    results = []
    for label, search in ((f"client_changelist_{clients}", None),
                          (f"client_changelist_search_{clients}", SEARCH_TERM)):
        path = f"{url}?q={search}" if search else url
        expected = page_rows(search)

        def get(path=path, expected=expected):
            response = http.get(path)
            if response.status_code != 200:
                raise SystemExit(f"bench: GET {path} answered {response.status_code}")
            body = response.content.decode()
            # The page must show what the baseline reads: the first client and the last.
            for row in (expected[0], expected[-1]):
                if row[2] not in body:
                    raise SystemExit(f"bench: GET {path} does not show client {row[2]}")
            return response

        get()
        with CaptureQueriesContext(connection) as captured:
            get()
        # Read now: the log behind captured_queries is cleared by the next request.
        captured_queries = list(captured.captured_queries)
        page_ms = median_ms(get, repeat=requests)
        baseline_ms = median_ms(lambda search=search: page_rows(search), repeat=requests)
        results.append(Result(label, page_ms, "ms median", baseline_ms))
        queries_label = label.replace(f"_{clients}", "_queries")
        results.append(Result(queries_label, len(captured_queries), "queries", 1))
        for query in captured_queries:
            log(f"  {label} query {query['time']}s: {query['sql'][:400]}")
    results += _client_page(http, conn, requests)
    conn.close()
    return results


def _client_page(http, conn, requests: int) -> list[Result]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from core.admin import LEDGER_PAGE_SIZE
    from ledger.models import LedgerEntry

    with connection.cursor() as cursor:
        cursor.execute("SELECT client_id FROM ledger_ledgerentry ORDER BY id DESC LIMIT 1")
        (client_id,) = cursor.fetchone()
    entries = LedgerEntry.objects.filter(client_id=client_id).count()
    latest = LedgerEntry.objects.filter(client_id=client_id).order_by("-id").values_list("pk", flat=True)[0]
    path = reverse("admin:core_client_change", args=[client_id])
    log(f"client page: client #{client_id} with {entries} ledger entries")

    def get():
        response = http.get(path)
        if response.status_code != 200:
            raise SystemExit(f"bench: GET {path} answered {response.status_code}")
        if f'data-entry="{latest}"' not in response.content.decode():
            raise SystemExit(f"bench: GET {path} does not show the client's latest entry")
        return response

    def read_by_hand():
        with conn.cursor() as cur:
            for sql in _CLIENT_PAGE_SQL:
                cur.execute(sql, {"client": client_id, "limit": LEDGER_PAGE_SIZE})
                cur.fetchall()
        conn.commit()

    get()
    with CaptureQueriesContext(connection) as captured:
        get()
    queries = len(captured.captured_queries)
    page_ms = median_ms(get, repeat=requests)
    baseline_ms = median_ms(read_by_hand, repeat=requests)
    return [
        Result("client_page", page_ms, "ms median", baseline_ms),
        Result("client_page_queries", queries, "queries", len(_CLIENT_PAGE_SQL)),
    ]
