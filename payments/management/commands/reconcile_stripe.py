from datetime import date, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from payments.exceptions import PaymentError
from payments.models import ReconciliationStatus
from payments.reconciliation import period_of_days, reconciliation_run


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD).")


class Command(BaseCommand):
    help = (
        "Reconcile Stripe's balance transactions with our payments and refunds for local days "
        "--from..--to (both included; default yesterday). Any length of period; exits non-zero "
        "when Stripe fails. The mismatches are listed and settled in the admin."
    )

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="first", type=_day, help="First day, YYYY-MM-DD (default yesterday).")
        parser.add_argument("--to", dest="last", type=_day, help="Last day, included (default: --from).")

    def handle(self, *args, first=None, last=None, **options):
        first = first or timezone.localdate() - timedelta(days=1)
        last = last or first
        if last < first:
            raise CommandError("--to must be on or after --from.")
        start, end = period_of_days(first, last)
        try:
            run = reconciliation_run(period_start=start, period_end=end, actor=None)
        except PaymentError as exc:
            raise CommandError(str(exc))
        if run.status == ReconciliationStatus.FAILED:
            raise CommandError(f"Reconciliation #{run.pk} failed: {run.error}")
        self.stdout.write(
            f"Reconciliation #{run.pk} {first:%Y-%m-%d}..{last:%Y-%m-%d}: {run.transactions} Stripe "
            f"transaction(s), {run.mismatches} mismatch(es)."
        )
