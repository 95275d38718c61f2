"""Exported CSV never hands a spreadsheet a formula typed by a client (CSV injection)."""
import csv
import io

import pytest

from ledger.services import credits_adjust
from reports.csv_safe import safe_cell
from reports.filters import ReportFilters
from reports.ledger_export import write_ledger_csv


@pytest.mark.parametrize("typed, written", [
    ("=HYPERLINK(\"http://evil\")", "'=HYPERLINK(\"http://evil\")"),
    ("+44 7700", "'+44 7700"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tcmd", "'\tcmd"),
    ("-3", "-3"),  # a negative amount stays a number
    ("-12.50", "-12.50"),
    ("Ada Lovelace", "Ada Lovelace"),
    (7, 7),
])
def test_a_formula_becomes_text_and_numbers_stay_numbers(typed, written):
    assert safe_cell(typed) == written


@pytest.mark.django_db
def test_the_ledger_export_writes_a_typed_formula_as_text(client_a, massage, staff_user):
    client_a.name = "=cmd|' /C calc'!A0"
    client_a.save(update_fields=["name"])
    credits_adjust(client=client_a, session_type=massage, amount=2, reason="@note from desk", actor=staff_user)

    out = io.StringIO()
    assert write_ledger_csv(out, ReportFilters()) == 1
    row = list(csv.DictReader(io.StringIO(out.getvalue())))[0]
    assert row["client"] == "'=cmd|' /C calc'!A0"
    assert row["note"] == "'@note from desk"
    assert row["amount"] == "2"
