"""Redeem throughput: concurrent workers each using one credit at a time for random clients.

Measured: ledger.services.credit_redeem, one call per redemption, in worker processes (spawned,
so no GIL is shared and each has its own connection). Baseline: the same transaction written
by hand with psycopg (lock the balance row, lock the soonest-expiring usable grant, decrement
both, insert the Used entry, commit), same number of workers, in the same run, on clients
that still hold credits. Both phases start together behind a barrier, after a short warm-up.
"""
from __future__ import annotations

import multiprocessing
import queue
import random
import threading
import time
import traceback
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone as dt_timezone

from bench.common import (
    Result,
    analyze,
    assert_ledger_ok,
    log,
    raw_connection,
    setup_django,
    unnamed_defaults,
)

_LOCK_BALANCE_SQL = """
SELECT id FROM ledger_clientbalance WHERE client_id = %s AND session_type_id = %s FOR UPDATE
"""
_PICK_GRANT_SQL = """
SELECT id, purchase_id FROM ledger_creditgrant
WHERE client_id = %s AND session_type_id = %s AND state = 'active'
  AND (unlimited OR remaining > 0) AND all_staff
  AND (valid_from IS NULL OR valid_from <= %s)
  AND (expires_at IS NULL OR (expires_at > %s AND expires_at > %s))
ORDER BY expires_at NULLS LAST, id
LIMIT 1
FOR UPDATE
"""
_USE_GRANT_SQL = "UPDATE ledger_creditgrant SET remaining = remaining - 1 WHERE id = %s"
_USE_BALANCE_SQL = """
UPDATE ledger_clientbalance SET balance = balance - 1, updated_at = %s WHERE id = %s
RETURNING balance
"""
_ENTRY_COLUMNS = (
    "client_id", "session_type_id", "grant_id", "kind", "amount", "balance_after", "actor_id",
    "note", "source", "purchase_id", "reverses_id", "idempotency_key", "created_at",
)
SESSION_STARTS_IN = timedelta(hours=2)


def _service_redeemer(session_type_id: int, actor_id: int):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from catalog.models import SessionType
    from core.models import Client
    from ledger.services import credit_redeem

    session_type = SessionType.objects.get(pk=session_type_id)
    actor = get_user_model().objects.get(pk=actor_id)

    def redeem(client_id: int) -> None:
        # A booking already holds its client; the call itself is what is measured.
        credit_redeem(
            client=Client(pk=client_id), session_type=session_type,
            at=timezone.now() + SESSION_STARTS_IN, actor=actor,
        )

    return redeem


def _sql_redeemer(session_type_id: int, actor_id: int):
    from ledger.models import LedgerEntry

    extra = unnamed_defaults(LedgerEntry, _ENTRY_COLUMNS)
    columns = [*_ENTRY_COLUMNS, *extra]
    insert_entry = (
        f"INSERT INTO ledger_ledgerentry ({', '.join(columns)}) VALUES "
        f"(%s, %s, %s, 'used', -1, %s, %s, '', 'booking', %s, NULL, %s, %s"
        + ", %s" * len(extra) + ")"
    )
    conn = raw_connection()

    def redeem(client_id: int) -> None:
        now = datetime.now(dt_timezone.utc)
        at = now + SESSION_STARTS_IN
        with conn.cursor() as cur:
            cur.execute(_LOCK_BALANCE_SQL, (client_id, session_type_id))
            (balance_id,) = cur.fetchone()
            cur.execute(_PICK_GRANT_SQL, (client_id, session_type_id, at, at, now))
            row = cur.fetchone()
            if row is None:
                raise RuntimeError(f"baseline: client #{client_id} has no usable credit")
            grant_id, purchase_id = row
            cur.execute(_USE_GRANT_SQL, (grant_id,))
            cur.execute(_USE_BALANCE_SQL, (now, balance_id))
            (balance_after,) = cur.fetchone()
            cur.execute(insert_entry, (
                client_id, session_type_id, grant_id, balance_after, actor_id, purchase_id,
                f"use:{uuid.uuid4()}", now, *extra.values(),
            ))
        conn.commit()

    return redeem


def _worker(kind, index, plan, warmup, session_type_id, actor_id, barrier, results):
    try:
        setup_django()
        from django.db import connection

        connection.close()  # each worker measures on a connection of its own, opened on first use
        make = _service_redeemer if kind == "service" else _sql_redeemer
        redeem = make(session_type_id, actor_id)
        for client_id in plan[:warmup]:
            redeem(client_id)
        barrier.wait()
        latencies = []
        started, cpu = time.monotonic(), time.process_time()
        for client_id in plan[warmup:]:
            t0 = time.perf_counter()
            redeem(client_id)
            latencies.append(time.perf_counter() - t0)
        ended, cpu = time.monotonic(), time.process_time() - cpu
        results.put(("ok", index, started, ended, latencies, cpu))
    except BaseException:  # noqa: BLE001 - the parent reports it and fails the run
        results.put(("error", index, traceback.format_exc()))
        barrier.abort()


class _LockWaitSampler(threading.Thread):
    """Samples pg_stat_activity while a phase runs: is any time lost waiting on row locks?"""

    _SQL = """
        SELECT COUNT(*) FILTER (WHERE wait_event_type = 'Lock'), COUNT(*)
        FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'
          AND pid <> pg_backend_pid()
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.samples = self.lock_waits = self.active = 0

    def run(self):
        with raw_connection() as conn:
            conn.autocommit = True
            while not self.stop.wait(0.02):
                waiting, active = conn.execute(self._SQL).fetchone()
                self.samples += 1
                self.lock_waits += waiting
                self.active += active


def _run_phase(kind, plans, warmup, session_type_id, actor_id):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(plans) + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, name=f"bench-{kind}-{i}",
            args=(kind, i, plan, warmup, session_type_id, actor_id, barrier, results),
        )
        for i, plan in enumerate(plans)
    ]
    for proc in procs:
        proc.start()
    sampler = _LockWaitSampler()
    try:
        barrier.wait(timeout=300)
        sampler.start()
    except Exception:  # noqa: BLE001 - a worker failed before the start; its report says why
        pass
    reports = []
    while len(reports) < len(procs):
        try:
            reports.append(results.get(timeout=5))
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs):
                raise SystemExit(f"bench: redeem {kind} workers exited without reporting") from None
    sampler.stop.set()
    sampler.join(timeout=5)
    if sampler.samples:
        log(f"redeem: {kind}: {sampler.samples} samples of pg_stat_activity, on average "
            f"{sampler.active / sampler.samples:.2f} active queries, "
            f"{sampler.lock_waits / sampler.samples:.3f} waiting on a lock")
    for proc in procs:
        proc.join(timeout=60)
    errors = [r for r in reports if r[0] == "error"]
    if errors:
        for _, index, text in errors:
            log(f"{kind} worker {index} failed:\n{text}")
        raise SystemExit(f"bench: redeem {kind} phase failed")
    started = min(r[2] for r in reports)
    ended = max(r[3] for r in reports)
    latencies = sorted(x for r in reports for x in r[4])
    cpu_ms = sum(r[5] for r in reports) / len(latencies) * 1000
    return len(latencies) / (ended - started), latencies, cpu_ms


def _plans(client_ids, *, workers, per_worker, warmup, seed):
    rng = random.Random(seed)
    return [[rng.choice(client_ids) for _ in range(warmup + per_worker)] for _ in range(workers)]


def _used_entries() -> int:
    from ledger.models import EntryKind, LedgerEntry

    return LedgerEntry.objects.filter(kind=EntryKind.USED).count()


def run(
    *, clients: int, workers: int, redemptions: int, warmup: int, actor, seed: int
) -> list[Result]:
    from django.utils import timezone

    from bench.seed import seed_catalog, seed_clients, sell_pack_to_all

    per_worker = redemptions // workers
    # Picks are made before the seed, as indexes into the seeded clients (mapped onto their
    # ids below): the pack's size depends on how often one client is picked.
    client_ids = list(range(clients))
    plans = {
        kind: _plans(client_ids, workers=workers, per_worker=per_worker, warmup=warmup,
                     seed=seed + n)
        for n, kind in enumerate(("service", "sql"))
    }
    picks = Counter(c for phase in plans.values() for plan in phase for c in plan)
    credits = max(10, max(picks.values()))  # every client can pay for every pick of both phases
    if credits > 100:
        raise SystemExit("bench: too many redemptions per client; raise --clients")

    log(f"redeem: seeding {clients} clients, each buying a pack of {credits} credits "
        "through the services")
    started = time.monotonic()
    seeded = seed_clients(clients, actor_id=actor.pk, now=timezone.now())
    plans = {kind: [[seeded[i] for i in plan] for plan in phase] for kind, phase in plans.items()}
    session_type, _, pack = seed_catalog(actor, credits=credits)
    sell_pack_to_all(pack, actor, seeded)
    analyze()
    log(f"redeem: seeded in {time.monotonic() - started:.0f}s")
    assert_ledger_ok("redeem seed")

    rates, lat, cpu = {}, {}, {}
    for kind in ("service", "sql"):
        before = _used_entries()
        log(f"redeem: {kind} phase, {workers} workers x {per_worker} redemptions")
        rates[kind], lat[kind], cpu[kind] = _run_phase(
            kind, plans[kind], warmup, session_type.pk, actor.pk
        )
        done = _used_entries() - before
        if done != workers * (warmup + per_worker):
            raise SystemExit(f"bench: {kind} phase wrote {done} Used entries, expected "
                             f"{workers * (warmup + per_worker)}")
    assert_ledger_ok("redeem")

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return [
        Result("redeem_throughput", round(rates["service"], 1), "redemptions/s",
               round(rates["sql"], 1)),
        Result("redeem_latency_p50", pct(lat["service"], 0.5), "ms", pct(lat["sql"], 0.5)),
        Result("redeem_latency_p95", pct(lat["service"], 0.95), "ms", pct(lat["sql"], 0.95)),
        # CPU of the worker process itself: the part other load on the machine cannot skew.
        Result("redeem_worker_cpu", cpu["service"], "ms/redemption", cpu["sql"]),
    ]
