"""Ledger entries are append-only below the ORM too: the database refuses UPDATE and DELETE.

(TRUNCATE, used only by test teardown and a full reset, is not a row change and stays allowed.)
"""
from django.db import migrations

PG_FORWARD = """
CREATE OR REPLACE FUNCTION ledger_entry_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger entries are append-only (% refused)', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_entry_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_append_only();
"""
PG_REVERSE = """
DROP TRIGGER IF EXISTS ledger_entry_no_update_delete ON ledger_ledgerentry;
DROP FUNCTION IF EXISTS ledger_entry_append_only();
"""
SQLITE_FORWARD = [
    """CREATE TRIGGER ledger_entry_no_update BEFORE UPDATE ON ledger_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only (UPDATE refused)'); END;""",
    """CREATE TRIGGER ledger_entry_no_delete BEFORE DELETE ON ledger_ledgerentry
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only (DELETE refused)'); END;""",
]
SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS ledger_entry_no_update;",
    "DROP TRIGGER IF EXISTS ledger_entry_no_delete;",
]


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)


def reverse(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(PG_REVERSE, params=None)
    elif vendor == "sqlite":
        for statement in SQLITE_REVERSE:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]
    operations = [migrations.RunPython(forward, reverse)]
