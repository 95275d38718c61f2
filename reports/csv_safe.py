"""CSV cells a spreadsheet must not run as formulas (OWASP "CSV injection").

A client who types "=HYPERLINK(...)" as their name would otherwise get a live formula in the
finance team's spreadsheet. A text cell starting with = + - @ or a tab / carriage return is
written with a leading apostrophe, which spreadsheets show as plain text; numbers (including
negative amounts) are left alone.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator

from django.db.models import CharField, Func

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def safe_cell(value):
    if isinstance(value, str) and value.startswith(TRIGGERS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def safe_row(row) -> list:
    return [safe_cell(value) for value in row]


class _Echo:
    """csv.writer writes to a file; this one hands each line back, for streaming (Django's docs)."""

    def write(self, value):
        return value


def csv_lines(rows: Iterable) -> Iterator[str]:
    """Each row as one safe CSV line, lazily: the body of a StreamingHttpResponse."""
    writer = csv.writer(_Echo())
    return (writer.writerow(safe_row(row)) for row in rows)


class SpreadsheetSafe(Func):
    """The same rule in SQL, for exports formatted by the database (reports.ledger_export):
    SUBSTR and || work on PostgreSQL and SQLite alike."""

    output_field = CharField()

    def as_sql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        marks = ", ".join(["%s"] * len(TRIGGERS))
        return (
            f"CASE WHEN SUBSTR({sql}, 1, 1) IN ({marks}) THEN %s || {sql} ELSE {sql} END",
            (*params, *TRIGGERS, "'", *params, *params),
        )
