"""Finance refunds purchases and sees and retries Stripe webhook events; managers see refunds: sync the role groups."""
from django.db import migrations

from core.roles import migration_sync_roles


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0006_client_name_index"),
        ("ledger", "0004_entry_refund"),
        ("payments", "0004_stripe_refunds_events"),
    ]

    operations = [
        migrations.RunPython(migration_sync_roles, migrations.RunPython.noop),
    ]
