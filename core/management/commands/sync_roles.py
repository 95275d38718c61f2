"""Give the role groups exactly the permissions defined in core.roles (safe to run again)."""
from django.core.management.base import BaseCommand, CommandError

from core.roles import UnknownPermission, sync_roles


class Command(BaseCommand):
    help = "Create or update the Front desk, Manager and Finance groups from core.roles."

    def handle(self, *args, **options):
        try:
            counts = sync_roles()
        except UnknownPermission as exc:
            raise CommandError(str(exc)) from exc
        for group, count in counts.items():
            self.stdout.write(f"{group}: {count} permissions")
        self.stdout.write(self.style.SUCCESS("Roles are in sync."))
