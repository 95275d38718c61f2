from django.core.management.base import BaseCommand, CommandError

from core.models import Client
from ledger.integrity import ledger_check


class Command(BaseCommand):
    help = "Verify every ledger invariant; exits non-zero naming the client on any break."

    def handle(self, *args, **options):
        result = ledger_check()
        if result.ok:
            self.stdout.write(f"ledger ok: {result.clients} clients, {result.entries} entries")
            return
        names = dict(
            Client.objects.filter(pk__in={p[1] for p in result.problems}).values_list("pk", "name")
        )
        for check, client_id, session_type_id, detail in result.problems:
            self.stderr.write(
                f"ledger BROKEN [{check}] client {names.get(client_id, '?')} (#{client_id}), "
                f"session type #{session_type_id}: {detail}"
            )
        raise CommandError(f"ledger check failed: {len(result.problems)} problem(s) shown")
