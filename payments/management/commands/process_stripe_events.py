from django.core.management.base import BaseCommand, CommandError

from payments.events import SWEEP_MIN_AGE_SECONDS, stripe_events_process_pending


class Command(BaseCommand):
    help = (
        "Process stored Stripe events the queue has not done: pending ones, and failed ones with "
        "attempts left (the same sweep as the process_pending_stripe_events job). "
        "Exits non-zero when any still fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--min-age", type=int, default=SWEEP_MIN_AGE_SECONDS, metavar="SECONDS",
            help="Leave events younger than this to the queue (default %(default)s; 0 takes all).",
        )
        parser.add_argument("--limit", type=int, default=1000, help="At most this many events (default %(default)s).")

    def handle(self, *args, min_age, limit, **options):
        if min_age < 0 or limit < 1:
            raise CommandError("--min-age must be 0 or more and --limit 1 or more.")
        result = stripe_events_process_pending(min_age_seconds=min_age, limit=limit)
        for failure in result.failed:
            self.stderr.write(f"failed {failure}")
        self.stdout.write(f"Stripe events: {result}")
        if result.failed:
            raise CommandError(f"{len(result.failed)} Stripe event(s) failed; see their errors in the admin.")
