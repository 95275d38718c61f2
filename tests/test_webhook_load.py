"""Load: 1,000 signed events posted concurrently to a running server while the queue is down.

Issue 4's proof: 8 clients post 1,000 signed Stripe events, with duplicates and out-of-order
pairs, to a real threaded server on PostgreSQL while Redis is unreachable. Every delivery must
be acknowledged and stored once, and nothing processed. Then the queue comes back: the operator
runs `manage.py process_stripe_events` while the periodic sweep runs too, and every purchase is
paid and credited exactly once.
"""
from __future__ import annotations

import http.client
import io
import json
import random
import threading
import time
from collections import Counter
from decimal import Decimal
from urllib.parse import urlsplit

import dramatiq
import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.db.models import Count, Sum
from dramatiq.brokers.redis import RedisBroker

from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from payments import stripe_double
from payments.checkout import checkout_start
from payments.events import stripe_events_process_pending
from payments.models import Payment, Purchase, PurchaseStatus, StripeEvent, StripeEventStatus
from payments.tasks import process_stripe_event

CLIENT_THREADS = 8
CLIENTS = 50  # several purchases each, so processing contends on the same balances
CARD = 500  # paid at once: one checkout.session.completed each
RACING_DUPLICATES = 100  # of those, delivered twice at the same moment from two clients
LATE_DUPLICATES = 100  # and delivered again later (Stripe retrying)
DELAYED_PAID = 125  # bank debit that settles: async_payment_succeeded posted before completed
DELAYED_FAILED = 25  # bank debit that fails: async_payment_failed posted before completed
EVENTS = CARD + RACING_DUPLICATES + LATE_DUPLICATES + 2 * (DELAYED_PAID + DELAYED_FAILED)
DISTINCT = CARD + 2 * (DELAYED_PAID + DELAYED_FAILED)
CREDITS_PER_PACK = 10 + 5  # massage + physio


@pytest.fixture(autouse=True)
def stripe_test_mode(settings):
    settings.STRIPE_TEST_DOUBLE = True
    settings.STRIPE_WEBHOOK_SECRET = "whsec_packdesk_load_tests"
    settings.STRIPE_WEBHOOK_TOLERANCE = 300


@pytest.fixture
def queue_down(monkeypatch):
    """Redis unreachable: the webhook's send after commit raises as RedisBroker's would."""
    broker = dramatiq.get_broker()
    assert isinstance(broker, RedisBroker), "tests run against Redis, never the stub broker"
    broker.flush_all()

    def redis_is_down(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    monkeypatch.setattr(process_stripe_event, "send", redis_is_down)
    yield broker
    broker.flush_all()


def _buy(pack, n: int) -> Purchase:
    """What the public page does: a pending purchase and its Checkout Session in the double."""
    purchase, _url = checkout_start(
        pack_id=pack.pk, name=f"Load Client {n % CLIENTS}", email=f"load{n % CLIENTS}@example.com"
    )
    return purchase


def _event(purchase: Purchase, event_type: str) -> dict:
    session = stripe_double.load(purchase.stripe_checkout_session_id)
    return stripe_double.build_event(event_type, session)


def _plan(pack) -> tuple[list[list[dict]], dict[str, list[Purchase]]]:
    """Buy every purchase, let Stripe's side happen, and deal the events to the client threads.

    Returns one list of events per client thread, in the order that thread posts them.
    """
    purchases = {"card": [], "delayed_paid": [], "delayed_failed": []}
    # ("one" | "race", event) or ("pair", first, second): a pair goes to one thread, in order.
    units = []
    for n in range(CARD + DELAYED_PAID + DELAYED_FAILED):
        purchase = _buy(pack, n)
        session_id = purchase.stripe_checkout_session_id
        if n < CARD:
            stripe_double.complete_checkout(session_id)
            purchases["card"].append(purchase)
            kind = "race" if n < RACING_DUPLICATES else "one"
            units.append((kind, _event(purchase, "checkout.session.completed")))
            continue
        # A delayed method: the session completes unpaid, then the payment settles or fails.
        stripe_double.complete_checkout(session_id, paid=False)
        completed = _event(purchase, "checkout.session.completed")
        succeeded = n < CARD + DELAYED_PAID
        stripe_double.settle_async_payment(session_id, succeeded=succeeded)
        kind = "succeeded" if succeeded else "failed"
        purchases["delayed_paid" if succeeded else "delayed_failed"].append(purchase)
        # Out of order: the settlement arrives before the completion it follows.
        settled = _event(purchase, f"checkout.session.async_payment_{kind}")
        units.append(("pair", settled, completed))
    rng = random.Random(4)
    rng.shuffle(units)
    # Stripe retrying deliveries it already made, after the first wave.
    late = [unit[1] for unit in units if unit[0] in ("one", "race")][:LATE_DUPLICATES]
    units += [("one", event) for event in late]

    lanes: list[list[dict]] = [[] for _ in range(CLIENT_THREADS)]
    for unit in units:
        by_length = sorted(range(CLIENT_THREADS), key=lambda i: len(lanes[i]))
        if unit[0] == "race":  # the same event at about the same moment from two clients
            lanes[by_length[0]].append(unit[1])
            lanes[by_length[1]].append(unit[1])
        else:
            lanes[by_length[0]].extend(unit[1:])
    return lanes, purchases


def _post_all(url: str, lanes: list[list[dict]]) -> tuple[list[tuple[int, dict]], float]:
    """Each thread posts its events one after another, each freshly signed.

    One connection per delivery, as separate deliveries arrive: on a keep-alive connection the
    live server (no TCP_NODELAY) would stall ~40 ms per response on the client's delayed ACK.
    """
    target = urlsplit(url)
    results: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(lanes) + 1)

    def post(lane: list[dict]) -> None:
        mine = []
        try:
            start.wait()
            for event in lane:
                body = json.dumps(event)
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request("POST", "/stripe/webhook/", body=body, headers={
                        "Content-Type": "application/json",
                        "Stripe-Signature": stripe_double.sign(body),
                    })
                    response = conn.getresponse()
                    mine.append((response.status, json.loads(response.read() or b"{}")))
                finally:
                    conn.close()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
        finally:
            with lock:
                results.extend(mine)

    threads = [threading.Thread(target=post, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert not errors, errors
    return results, elapsed


def _sweep_alongside(result: dict) -> None:
    """The periodic sweep running at the same time as the operator's command."""
    try:
        result["sweep"] = stripe_events_process_pending(min_age_seconds=0, limit=DISTINCT)
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_1000_events_from_8_clients_with_the_queue_down_are_stored_once_then_credited_once(
    live_server, queue_down, make_pack, massage, physio, caplog
):
    pack = make_pack(
        [(massage, False, 10), (physio, False, 5)], price=Decimal("300.00"), currency="GBP"
    )
    setup_started = time.perf_counter()
    lanes, purchases = _plan(pack)
    setup = time.perf_counter() - setup_started
    assert sum(map(len, lanes)) == EVENTS == 1000

    responses, elapsed = _post_all(live_server.url, lanes)
    rate = EVENTS / elapsed
    print(f"\nwebhook load: setup {setup:.1f}s, "
          f"ingest {EVENTS} events in {elapsed:.2f}s = {rate:.0f} events/s")

    # Every delivery acknowledged; each event id stored once, however often and however it raced.
    assert Counter(status for status, _ in responses) == {200: EVENTS}
    duplicates = Counter(body["duplicate"] for _, body in responses)
    assert duplicates == {False: DISTINCT, True: EVENTS - DISTINCT}
    assert StripeEvent.objects.count() == DISTINCT
    assert StripeEvent.objects.values("event_id").distinct().count() == DISTINCT
    # The queue was down: nothing sent, nothing processed, nothing paid yet.
    assert set(StripeEvent.objects.values_list("status", flat=True)) == {StripeEventStatus.PENDING}
    assert caplog.text.count("job process_stripe_event not enqueued (broker unreachable)") == DISTINCT
    assert queue_down.client.hlen("dramatiq:default.msgs") == 0
    assert not Payment.objects.exists() and not LedgerEntry.objects.exists()

    # The queue is back: the operator's command and the periodic sweep overlap on the backlog.
    sweep: dict = {}
    alongside = threading.Thread(target=_sweep_alongside, args=(sweep,))
    alongside.start()
    out = io.StringIO()
    call_command("process_stripe_events", "--min-age", "0", "--limit", str(DISTINCT), stdout=out)
    alongside.join()
    assert "0 failed" in out.getvalue() and sweep["sweep"].failed == []

    statuses = Counter(StripeEvent.objects.values_list("status", flat=True))
    assert statuses == {StripeEventStatus.PROCESSED: DISTINCT}
    paid = purchases["card"] + purchases["delayed_paid"]
    failed = purchases["delayed_failed"]
    by_status = Counter(Purchase.objects.values_list("status", flat=True))
    assert by_status == {PurchaseStatus.PAID: len(paid), PurchaseStatus.CANCELLED: len(failed)}
    # One Stripe payment per paid purchase, with the PaymentIntent Stripe holds for it.
    payments = dict(Payment.objects.values_list("purchase_id").annotate(n=Count("id")))
    assert payments == {p.pk: 1 for p in paid}
    for purchase in paid:
        purchase.refresh_from_db()
        intent = stripe_double.load(purchase.stripe_checkout_session_id)["payment_intent"]
        assert purchase.stripe_payment_intent_id == intent
    # One Issued entry per credit line of each paid purchase, none for the failed payments.
    issued = LedgerEntry.objects.filter(kind=EntryKind.ISSUED)
    per_line = Counter(issued.values_list("purchase_id", "session_type_id"))
    assert per_line == {(p.pk, t.pk): 1 for p in paid for t in (massage, physio)}
    assert issued.aggregate(total=Sum("amount"))["total"] == len(paid) * CREDITS_PER_PACK
    assert LedgerEntry.objects.exclude(kind=EntryKind.ISSUED).count() == 0
    balances = ClientBalance.objects.aggregate(total=Sum("balance"))["total"]
    assert balances == len(paid) * CREDITS_PER_PACK
    assert ledger_check().ok
