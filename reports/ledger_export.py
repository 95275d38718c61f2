"""The credit ledger as CSV, at any size: one joined query read through a server-side cursor.

Why a hand-written csv.writer and not a django-import-export resource: a resource builds a model
instance per row and resolves each related field in Python (a query, or a prefetch held in
memory), which is what the 5,000,000-entry ledger cannot afford. Here the database joins the
client, session type and actor, formats the local time, and hands back plain tuples a chunk at
a time; csv.writer (C code) writes each chunk. Memory stays at one chunk whatever the size;
`make bench` compares this with PostgreSQL's own COPY of the same query.
"""
from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import TextIO

from django.conf import settings
from django.db import connection
from django.db.models import CharField, F, Func, QuerySet, Value
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from ledger.models import LedgerEntry
from reports.csv_safe import SpreadsheetSafe
from reports.filters import ReportFilters

LEDGER_HEADER = (
    "entry_id", "date", "client_id", "client", "email", "session_type", "kind", "amount",
    "balance_after", "actor", "source", "grant_id", "purchase_id", "booking_id", "refund_id", "note",
)
_DATE_AT = LEDGER_HEADER.index("date")
LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"


class LocalTimeText(Func):
    """A timestamp as 'YYYY-MM-DD HH:MM:SS' in the business's time zone, formatted by PostgreSQL.

    Formatting in SQL keeps Python from building a datetime per row. Other databases (the
    SQLite demo) return the timestamp itself and `format_local` formats it in Python.
    """

    output_field = CharField()

    def as_postgresql(self, compiler, conn, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"to_char(timezone(%s, {sql}), 'YYYY-MM-DD HH24:MI:SS')", (settings.TIME_ZONE, *params)

    def as_sql(self, compiler, conn, **extra):
        return compiler.compile(self.source_expressions[0])


def formats_time_in_sql() -> bool:
    return connection.vendor == "postgresql"


def ledger_entries(filters: ReportFilters) -> QuerySet[LedgerEntry]:
    """Entries in the date range, narrowed by session type, category, pack (the grant's purchase's
    pack) and staff member (of the booked session: only booking entries have one)."""
    entries = LedgerEntry.objects.all()
    if filters.start_at:
        entries = entries.filter(created_at__gte=filters.start_at)
    if filters.end_at:
        entries = entries.filter(created_at__lt=filters.end_at)
    if filters.session_type_id:
        entries = entries.filter(session_type_id=filters.session_type_id)
    if filters.category_id:
        entries = entries.filter(session_type__category_id=filters.category_id)
    if filters.pack_id:
        entries = entries.filter(grant__purchase__pack_id=filters.pack_id)
    if filters.staff_member_id:
        entries = entries.filter(booking__session__staff_member_id=filters.staff_member_id)
    return entries


def ledger_rows(filters: ReportFilters) -> QuerySet:
    """The CSV's rows as tuples in LEDGER_HEADER order (oldest first, by id: the primary key index)."""
    return (
        ledger_entries(filters)
        .order_by("id")
        .values_list(
            # NULLIF: an empty text is written as an empty field, as PostgreSQL's COPY writes it
            # (COPY quotes an empty string), so `make bench` can compare the two files line by line.
            # SpreadsheetSafe: text people typed (names, notes) never becomes a live formula.
            "id", LocalTimeText("created_at"), "client_id", SpreadsheetSafe("client__name"),
            NullIf(SpreadsheetSafe("client__email"), Value(""), output_field=CharField()),
            SpreadsheetSafe("session_type__name"), "kind", "amount", "balance_after",
            Coalesce(F("actor__username"), Value("system"), output_field=CharField()),
            "source", "grant_id", "purchase_id", "booking_id", "refund_id",
            NullIf(SpreadsheetSafe("note"), Value(""), output_field=CharField()),
        )
    )


def format_local(rows: Iterable[tuple]) -> Iterator[tuple]:
    """The non-PostgreSQL fallback: the timestamp column formatted in local time here."""
    zone = timezone.get_current_timezone()
    for row in rows:
        row = list(row)
        moment = row[_DATE_AT]
        if isinstance(moment, str):  # SQLite hands back its stored UTC text
            moment = datetime.fromisoformat(moment).replace(tzinfo=UTC)
        row[_DATE_AT] = moment.astimezone(zone).strftime(LOCAL_FORMAT)
        yield tuple(row)


def ledger_preview_rows(filters: ReportFilters, limit: int = 50) -> list[tuple]:
    rows = list(ledger_rows(filters)[:limit])
    return rows if formats_time_in_sql() else list(format_local(rows))


def query_chunks(rows: QuerySet, chunk_size: int) -> Iterator[list[tuple]]:
    """Tuples of a values_list queryset, `chunk_size` at a time, from a server-side cursor.

    On PostgreSQL `.iterator(chunk_size)` declares a named cursor and fetches chunk by chunk, so
    neither Django nor psycopg holds more than one chunk. (Outside a transaction Django declares
    it WITH HOLD: PostgreSQL then keeps the result on its side, not in this process.)
    """
    iterator = rows.iterator(chunk_size=chunk_size)
    while chunk := list(islice(iterator, chunk_size)):
        yield chunk


def write_csv_chunks(
    out: TextIO, header: Iterable[str], chunks: Iterable[list[tuple]], *,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a header and then each chunk of rows; `progress(rows written so far)` after each chunk."""
    writer = csv.writer(out)
    writer.writerow(header)
    written = 0
    for chunk in chunks:
        writer.writerows(chunk)
        written += len(chunk)
        if progress is not None:
            progress(written)
    return written


def write_ledger_csv(
    out: TextIO, filters: ReportFilters, *,
    progress: Callable[[int], None] | None = None, chunk_size: int = 5000,
) -> int:
    """Write every ledger entry matching `filters` as CSV to `out`; returns the rows written.

    Bounded memory: one chunk of tuples at a time (see query_chunks). `progress` is called with
    the running row count after every chunk (the background export records it).
    """
    chunks = query_chunks(ledger_rows(filters), chunk_size)
    if not formats_time_in_sql():
        chunks = (list(format_local(chunk)) for chunk in chunks)
    return write_csv_chunks(out, LEDGER_HEADER, chunks, progress=progress)
