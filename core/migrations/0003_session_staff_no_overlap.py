"""A staff member cannot be in two sessions at once: PostgreSQL refuses overlapping rows.

The service layer checks the same rule under a row lock on every database (SQLite demo
included); this constraint is the last line if anything ever bypasses it.
"""
from django.db import migrations

FORWARD = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE core_session ADD CONSTRAINT session_staff_no_overlap
    EXCLUDE USING gist (staff_member_id WITH =, tstzrange(starts_at, ends_at) WITH &&);
"""
REVERSE = "ALTER TABLE core_session DROP CONSTRAINT IF EXISTS session_staff_no_overlap;"


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def reverse(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REVERSE, params=None)


class Migration(migrations.Migration):
    dependencies = [("core", "0002_sessions_and_bookings")]
    operations = [migrations.RunPython(forward, reverse)]
