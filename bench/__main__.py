"""python -m bench [--quick] [--population CLIENTS:ENTRIES] [--only redeem,changelist,...] [sizes...]

Needs DATABASE_URL naming a PostgreSQL database the bench may empty (TRUNCATE) at will.
--population 100000:5000000 runs every measurement on one business of that size (bench/population.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from bench.common import (
    bench_user,
    emit,
    guard_database,
    is_postgres_url,
    log,
    reset_database,
    setup_django,
)

MEASUREMENTS = ("redeem", "changelist", "expiry", "webhooks", "export", "faults")
# (default, --quick) per size option
SIZES = {
    "clients": (10_000, 500),
    "workers": (4, 4),
    "redemptions": (8_000, 400),
    "warmup": (50, 10),
    "changelist_clients": (50_000, 2_000),
    "requests": (20, 5),
    "expiry_grants": (200_000, 4_000),
    "expiry_total": (1_000_000, 20_000),
    "webhook_events": (2_000, 200),
    "webhook_clients": (8, 8),
    "export_entries": (1_000_000, 20_000),
    "export_repeats": (3, 1),
}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke run of every step")
    parser.add_argument("--only", default=",".join(MEASUREMENTS),
                        help=f"comma-separated subset of {', '.join(MEASUREMENTS)}")
    parser.add_argument("--seed", type=int, default=20240521, help="random seed for client picks")
    parser.add_argument(
        "--allow-wipe", action="store_true",
        help="truncate the app tables even if they hold data the bench did not make",
    )
    parser.add_argument(
        "--population", default="", metavar="CLIENTS:ENTRIES",
        help="seed one business of CLIENTS clients and ENTRIES ledger entries first, and run "
             "every measurement on it (e.g. 100000:5000000; the export then reads the most "
             "recent days holding --export-entries of its entries)",
    )
    parser.add_argument("--keep", action="store_true",
                        help="leave the last measurement's data in place (to inspect it)")
    helps = {
        "clients": "clients with a paid pack, for redeem (default 10000)",
        "workers": "concurrent worker processes, for redeem (default 4)",
        "redemptions": "measured redemptions over all workers, per phase (default 8000)",
        "warmup": "unmeasured redemptions per worker before the start (default 50)",
        "changelist_clients": "clients with balances, for the changelist (default 50000)",
        "requests": "timed requests per changelist page (default 20)",
        "expiry_grants": "due grants for the expiry sweep (default 200000)",
        "expiry_total": "all grants, due or not, for the expiry sweep (default 1000000)",
        "webhook_events": "signed events posted to the webhook, for webhooks (default 2000)",
        "webhook_clients": "concurrent client threads posting them (default 8)",
        "export_entries": "ledger entries exported to CSV, for export (default 1000000)",
        "export_repeats": "timed runs of each export (median; default 3)",
    }
    for name, text in helps.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=text)
    args = parser.parse_args(argv)
    for name, (default, quick) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else default)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    if args.population:
        from bench.population import parse

        try:
            args.population = parse(args.population)
        except ValueError as error:
            parser.error(str(error))
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    if args.workers < 1 or args.redemptions < args.workers:
        parser.error("need at least one worker and one redemption per worker")
    if args.webhook_clients < 1 or args.webhook_events < 1:
        parser.error("need at least one webhook client and one event")
    if args.export_entries < 20 or args.export_repeats < 1:
        parser.error("need at least 20 ledger entries (one client's grants and uses) and one run to export")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not is_postgres_url(os.environ.get("DATABASE_URL", "")):
        print("bench: refusing to run: DATABASE_URL must be a postgres:// URL (the bench "
              "measures PostgreSQL locking and truncates the app tables).", file=sys.stderr)
        return 2
    setup_django()
    import logging

    from django.core.management import call_command

    # One audit line per ledger entry and webhook would bury the figures (and cost time).
    logging.getLogger("packdesk.audit").setLevel(logging.WARNING)

    call_command("migrate", interactive=False, verbosity=0)
    guard_database(allow_wipe=args.allow_wipe)
    started = time.monotonic()
    load = os.getloadavg()[0]
    log(f"{os.cpu_count()} cores, load average {load:.2f}"
        + (": other work is running, expect noisy figures" if load > 0.5 else ""))

    population = args.population
    if population:
        from bench.population import describe, seed_population

        reset_database()
        seed_population(*population, actor=bench_user())

    def start(name: str) -> None:
        # Alone, a measurement gets a database of its own; on the population, what is there.
        if population:
            log(f"{name}: on {describe()}")
        else:
            reset_database()

    # On the population the read-only pages and the export go first, on the business as seeded.
    order = ("changelist", "export", "redeem", "webhooks", "expiry") if population else (
        "redeem", "changelist", "expiry", "webhooks", "export")
    for name in (m for m in order if m in args.only):
        if name == "redeem":
            from bench import redeem

            start(name)
            results = redeem.run(
                clients=args.clients, workers=args.workers, redemptions=args.redemptions,
                warmup=args.warmup, actor=bench_user(), seed=args.seed,
            )
        elif name == "changelist":
            from bench import changelist

            start(name)
            results = changelist.run(clients=args.changelist_clients, requests=args.requests,
                                     actor=bench_user(), seed=not population)
        elif name == "expiry":
            from bench import expiry

            if population:
                start(name)
            results = expiry.run(grants=args.expiry_grants, total=args.expiry_total,
                                 actor=bench_user(), fresh=not population)
        elif name == "webhooks":
            from bench import webhooks

            start(name)
            results = webhooks.run(events=args.webhook_events, clients=args.webhook_clients,
                                   actor=bench_user())
        else:
            from bench import export

            if population:
                start(name)
            results = export.run(entries=args.export_entries, repeats=args.export_repeats,
                                 actor=bench_user(), seed=not population)
        for result in results:
            emit(result)
    faults_failed = 0
    if "faults" in args.only:
        # Pass/fail, not a figure: on throwaway servers of its own (bench/faults.py).
        from bench import faults

        faults_failed = faults.run(faults.BENCH_SCENARIOS)
    if not args.keep:
        reset_database()
    log(f"done in {time.monotonic() - started:.0f}s, load average {os.getloadavg()[0]:.2f}"
        + ("" if args.keep else "; app tables emptied"))
    return 1 if faults_failed else 0


if __name__ == "__main__":
    sys.exit(main())
