"""Create the role groups (Front desk, Manager, Finance) with their permissions (core.roles)."""
from django.db import migrations

from core.roles import migration_sync_roles


class Migration(migrations.Migration):

    # Every model whose permissions a role holds must exist first.
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("core", "0004_booking_permissions"),
        ("catalog", "0002_initial"),
        ("ledger", "0003_bookings_forfeit_reservation"),
        ("payments", "0003_outstanding_purchase"),
    ]

    operations = [
        # Going back leaves the groups: they may have members, and re-running the sync fixes them.
        migrations.RunPython(migration_sync_roles, migrations.RunPython.noop),
    ]
