"""Add-ons' intake forms and answers: sync the role groups."""
from django.db import migrations

from core.roles import migration_sync_roles


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0010_add_ons_intake"),
        ("catalog", "0004_add_ons_intake"),
        ("payments", "0006_add_ons_intake"),
    ]

    operations = [
        migrations.RunPython(migration_sync_roles, migrations.RunPython.noop),
    ]
