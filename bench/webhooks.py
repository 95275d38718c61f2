"""Webhook ingest: signed checkout.session.completed events posted concurrently to a server.

Measured: events/s acknowledged by POST /stripe/webhook/ (verify the signature, store the event,
send its job to Redis after commit) on a threaded WSGI server in its own process, with 8 client
threads each on a keep-alive connection, each request freshly signed. No worker runs, so the
jobs pile up in Redis as they would while the worker is down.
Baseline: the same server, the same requests (bodies and headers) posted to a view that
answers "ok" (bench/urls.py), in the same run.
Afterwards the sweep processes every stored event and each purchase must be credited once.

`python -m bench.webhooks --serve` is the server process; run() starts and stops it.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

from bench.common import Result, assert_ledger_ok, log, setup_django

WEBHOOK_PATH = "/stripe/webhook/"
PING_PATH = "/bench/ping/"
CLIENT_POOL = 200  # purchases are spread over this many clients
CHUNK = 100  # purchases per seeding transaction (saves a WAL flush per purchase)
WARMUP_PER_CLIENT = 5  # untimed requests per client thread before each timed phase


def _seed(events: int, actor) -> list:
    """`events` online purchases, bought as the public page buys them and paid in the double;
    returns one checkout.session.completed event (JSON) per purchase."""
    from django.db import transaction

    from catalog.models import Category, SessionType
    from catalog.services import pack_create
    from catalog.validation import LineData
    from payments import stripe_double
    from payments.checkout import checkout_start

    # Names of its own: with --population, other measurements' catalogues are still there.
    category = Category.objects.create(name="Online classes")
    reformer = SessionType.objects.create(
        name="Online reformer class", category=category, duration_minutes=50
    )
    pack = pack_create(
        actor=actor, lines=[LineData(reformer, credits=10)], name="10 online reformer classes",
        category=category, price=Decimal("180.00"), currency="GBP", published=True,
        sell_online=True, validity_amount=3, validity_unit="months", valid_from="payment",
    )
    bodies = []
    for start in range(0, events, CHUNK):
        with transaction.atomic():
            for n in range(start, min(start + CHUNK, events)):
                purchase, _url = checkout_start(
                    pack_id=pack.pk, name=f"Bench Client {n % CLIENT_POOL}",
                    email=f"webhook{n % CLIENT_POOL}@example.com",
                )
                session = stripe_double.complete_checkout(purchase.stripe_checkout_session_id)
                event = stripe_double.build_event("checkout.session.completed", session)
                bodies.append(json.dumps(event))
        if (start // CHUNK) % 5 == 4:
            log(f"  bought {min(start + CHUNK, events)}/{events} packs online")
    return bodies


# --- The server process ----------------------------------------------------------------


def serve() -> None:
    """Run the site (plus /bench/ping/) on a threaded WSGI server; print the port, serve forever."""
    setup_django()
    from django.conf import settings
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

    settings.ROOT_URLCONF = "bench.urls"
    from config.wsgi import application  # production's WSGI entry point

    # No access log (after config.wsgi, whose django.setup() configures logging again): one
    # stderr line per request would be measured too.
    logging.getLogger("django.server").setLevel(logging.WARNING)

    class Server(ThreadedWSGIServer):
        def get_request(self):
            # As gunicorn does: without TCP_NODELAY the response's body, written after its
            # headers, waits for the client's delayed ACK, ~40 ms per keep-alive request.
            sock, address = super().get_request()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, address

    server = Server(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(application)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def _start_server(secret: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ)
    # The server must verify with the bench's secret, never reach real Stripe, and never run
    # jobs itself (the demo's in-process worker): the queue stays "down" while measured.
    env.update(STRIPE_WEBHOOK_SECRET=secret, STRIPE_SECRET_KEY="", PACKDESK_INPROCESS_WORKER="0")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.webhooks", "--serve"], env=env,
        cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline().strip()
    if not line.isdigit():
        process.kill()
        raise SystemExit(f"bench: the webhook server did not start (said {line!r})")
    return process, int(line)


# --- The clients -------------------------------------------------------------------------


def _post_concurrently(
    port: int, path: str, lanes: list[list[str]], *, warmup: list[list[str]]
) -> float:
    """Each thread posts its warm-up bodies, waits for all, then its lane; returns requests/s."""
    from payments import stripe_double

    barrier = threading.Barrier(len(lanes) + 1)
    errors: list[str] = []

    def post(conn: http.client.HTTPConnection, body: str) -> None:
        conn.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "Stripe-Signature": stripe_double.sign(body),
        })
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            errors.append(f"{path} answered {response.status}: {answer[:200]!r}")

    def client(lane: list[str], early: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for body in early:
                post(conn, body)
            barrier.wait()
            for body in lane:
                post(conn, body)
        except Exception as exc:  # reported below; the barrier must not hang the others
            errors.append(f"{type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=pair) for pair in zip(lanes, warmup)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"bench: {len(errors)} failed request(s), first: {errors[0]}")
    return sum(map(len, lanes)) / elapsed


def _deal(bodies: list[str], clients: int) -> list[list[str]]:
    return [bodies[i::clients] for i in range(clients)]


# --- Checks ------------------------------------------------------------------------------


def _check_stored(expected: int, queued_before: int | None, broker) -> None:
    from payments.models import StripeEvent, StripeEventStatus

    statuses = Counter(StripeEvent.objects.values_list("status", flat=True))
    if statuses != {StripeEventStatus.PENDING: expected}:
        raise SystemExit(
            f"bench: expected {expected} pending stored events, found {dict(statuses)}"
        )
    if queued_before is not None:
        queued = broker.client.hlen("dramatiq:default.msgs") - queued_before
        if queued != expected:
            raise SystemExit(f"bench: {expected} events stored but {queued} jobs queued in Redis")
        log(f"webhooks: {expected} events stored, {queued} jobs waiting in Redis (no worker)")


def _per_purchase(queryset) -> Counter:
    """How many purchases have 1, 2, ... rows in `queryset`."""
    from django.db.models import Count

    rows = queryset.values("purchase_id").annotate(n=Count("id"))
    return Counter(rows.values_list("n", flat=True))


def _process_and_check(expected: int, purchases_before: int) -> None:
    from ledger.models import EntryKind, LedgerEntry
    from payments.events import stripe_events_process_pending
    from payments.models import Payment, Purchase, PurchaseStatus

    events_logger = logging.getLogger("payments.events")
    level = events_logger.level
    events_logger.setLevel(logging.WARNING)  # one INFO line per event would bury the output
    started = time.perf_counter()
    try:
        result = stripe_events_process_pending(min_age_seconds=0, limit=expected)
    finally:
        events_logger.setLevel(level)
    elapsed = time.perf_counter() - started
    log(f"webhooks: sweep {result} in {elapsed:.1f}s "
        f"({expected / elapsed:.0f} events/s, one process)")
    if result.processed != expected or result.failed:
        first = (result.failed or ["-"])[0]
        raise SystemExit(f"bench: sweep gave {result}; first failure: {first}")
    # Only this measurement's purchases: with --population, others are in the database too.
    ours = {"purchase_id__gt": purchases_before}
    paid = Purchase.objects.filter(status=PurchaseStatus.PAID, pk__gt=purchases_before).count()
    payments = _per_purchase(Payment.objects.filter(**ours))
    issued = _per_purchase(LedgerEntry.objects.filter(kind=EntryKind.ISSUED, **ours))
    if paid != expected or payments != {1: expected} or issued != {1: expected}:
        raise SystemExit(
            f"bench: {paid} of {expected} purchases paid; payments per purchase {dict(payments)}, "
            f"issued entries per purchase {dict(issued)}"
        )
    assert_ledger_ok(
        f"webhooks ({expected} events processed, each purchase paid and credited once)"
    )


def run(*, events: int, clients: int, actor) -> list[Result]:
    import dramatiq
    from django.conf import settings
    from dramatiq.brokers.redis import RedisBroker

    if not settings.STRIPE_TEST_DOUBLE:
        raise SystemExit("bench: webhooks needs Stripe's test double: unset STRIPE_SECRET_KEY.")
    broker = dramatiq.get_broker()
    on_redis = isinstance(broker, RedisBroker)
    if on_redis:
        broker.flush_all()
    else:
        log("webhooks: no REDIS_URL: the server's jobs go to an in-memory stub broker")
    warmups = clients * WARMUP_PER_CLIENT
    log(f"webhooks: buying {events + warmups} packs online "
        "(checkout + payment in the Stripe double)")
    from django.db.models import Max

    from payments.models import Purchase

    purchases_before = Purchase.objects.aggregate(n=Max("pk"))["n"] or 0
    started = time.perf_counter()
    bodies = _seed(events + warmups, actor)
    log(f"webhooks: seeded in {time.perf_counter() - started:.0f}s")
    warm, timed = bodies[:warmups], bodies[warmups:]

    process, port = _start_server(settings.STRIPE_WEBHOOK_SECRET)
    try:
        log(f"webhooks: server on 127.0.0.1:{port}, {clients} client threads, keep-alive")
        lanes, warmup = _deal(timed, clients), _deal(warm, clients)
        # The baseline posts the very bodies the webhook gets next, to the trivial view.
        baseline = _post_concurrently(port, PING_PATH, lanes, warmup=warmup)
        queued_before = broker.client.hlen("dramatiq:default.msgs") if on_redis else None
        rate = _post_concurrently(port, WEBHOOK_PATH, lanes, warmup=warmup)
    finally:
        process.terminate()
        process.wait(timeout=30)
    _check_stored(len(bodies), queued_before, broker)
    if on_redis:
        broker.flush_all()  # the jobs no worker ran; the sweep below does their work
    _process_and_check(len(bodies), purchases_before)
    return [Result("webhook_ingest", rate, "events/s", baseline)]


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        raise SystemExit("usage: python -m bench.webhooks --serve (run by `python -m bench`)")
    serve()
