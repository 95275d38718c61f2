"""50 bookings at once for one client holding 10 credits, from several processes: exactly 10 succeed.

tests/test_booking_races.py races threads of one process; here the writers are separate Python
processes (spawned, as gunicorn workers and dramatiq workers are separate processes), each with
its own PostgreSQL connections, booking distinct sessions of the same client at the same instant.
The only thing they share is the client's balance row, which the ledger locks: 10 bookings take
the 10 credits, the other 40 are refused with NoCreditAvailable, and nothing else goes wrong (no
deadlock, no serialization error, no booking left without its credit).

The data is committed (transaction=True) so the spawned processes see it. This module imports
only the standard library at the top: a spawned child imports it before Django is set up.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import traceback
from datetime import timedelta

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PROCESSES = 5
THREADS_PER_PROCESS = 10  # 50 bookings in flight at once
CREDITS = 10
TIMEOUT = 120


def database_url(settings_dict: dict) -> str:
    """The test database as a DATABASE_URL, for processes that read config.settings themselves."""
    auth = settings_dict.get("USER") or ""
    if settings_dict.get("PASSWORD"):
        auth += f":{settings_dict['PASSWORD']}"
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{settings_dict['NAME']}"


def _child(db_url: str, client_id: int, session_ids: list[int], actor_id: int, barrier, results) -> None:
    """One process: book its sessions, one thread each, all released by the shared barrier."""
    os.environ["DATABASE_URL"] = db_url  # before Django reads config.settings
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    try:
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.db import connection

        from core.bookings import booking_create
        from core.models import Client, Session

        assert connection.settings_dict["NAME"] == db_url.rsplit("/", 1)[1]
        client = Client.objects.get(pk=client_id)
        actor = get_user_model().objects.get(pk=actor_id)
        sessions = list(Session.objects.filter(pk__in=session_ids).order_by("pk"))
        connection.close()  # each thread opens its own connection
    except BaseException:  # noqa: BLE001 - the parent names it
        results.put(("setup failed", os.getpid(), None, traceback.format_exc(), 0.0))
        barrier.abort()
        return

    def book(session) -> None:
        from django.db import connection as thread_connection

        try:
            barrier.wait(timeout=TIMEOUT)
            started = time.time()
            booking = booking_create(client=client, session=session, actor=actor)
            results.put(("ok", os.getpid(), session.pk, booking.pk, started))
        except BaseException as exc:  # noqa: BLE001 - every outcome goes back to the parent
            results.put((type(exc).__name__, os.getpid(), session.pk, str(exc), time.time()))
        finally:
            thread_connection.close()

    threads = [threading.Thread(target=book, args=(session,)) for session in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)


def run_in_processes(db_url, client_id, session_ids, actor_id) -> list[tuple]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(session_ids))
    results = ctx.Queue()
    per_process = [session_ids[i::PROCESSES] for i in range(PROCESSES)]
    procs = [
        ctx.Process(target=_child, args=(db_url, client_id, ids, actor_id, barrier, results), name=f"booker-{i}")
        for i, ids in enumerate(per_process)
    ]
    for proc in procs:
        proc.start()
    reports, deadline = [], time.monotonic() + TIMEOUT * 2
    try:
        while len(reports) < len(session_ids) and time.monotonic() < deadline:
            try:
                report = results.get(timeout=5)
            except queue.Empty:
                if not any(proc.is_alive() for proc in procs):
                    break
                continue
            reports.append(report)
            assert report[0] != "setup failed", report[3]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # only our own children, by their handle
                proc.kill()
    assert not any(proc.exitcode for proc in procs), [proc.exitcode for proc in procs]
    return reports


def test_fifty_bookings_from_five_processes_use_exactly_the_ten_credits(
    client_a, massage, make_pack, sell, session_at, staff_user, soon
):
    from django.db import connection

    from core.models import Booking, BookingStatus
    from ledger.exceptions import NoCreditAvailable
    from ledger.integrity import ledger_check
    from ledger.models import ClientBalance, EntryKind, LedgerEntry

    grant = sell(client_a, make_pack([(massage, False, CREDITS)])).grants.get()
    # Fifty one-hour sessions two hours apart, all inside the pack's validity: one credit each.
    sessions = [session_at(soon + timedelta(hours=2 * n)) for n in range(PROCESSES * THREADS_PER_PROCESS)]

    started = time.monotonic()
    reports = run_in_processes(
        database_url(connection.settings_dict), client_a.pk, [s.pk for s in sessions], staff_user.pk,
    )
    elapsed = time.monotonic() - started

    assert len(reports) == len(sessions), f"{len(sessions) - len(reports)} bookings never answered: deadlock?"
    booked = [r for r in reports if r[0] == "ok"]
    refused = [r for r in reports if r[0] != "ok"]
    others = [r for r in refused if r[0] != NoCreditAvailable.__name__]
    assert others == [], f"only 'no credit' refusals are expected (no deadlock, no IntegrityError): {others}"
    assert (len(booked), len(refused)) == (CREDITS, len(sessions) - CREDITS)
    assert all(r[3].startswith("No credit") for r in refused), refused[0]
    assert len({r[1] for r in reports}) == PROCESSES, "every process booked"
    # Released together: all fifty calls started within a moment of each other.
    starts = [r[4] for r in booked]
    assert max(starts) - min(starts) < 5, starts

    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 0
    grant.refresh_from_db()
    assert grant.remaining == 0
    bookings = Booking.objects.filter(client=client_a)
    assert sorted(bookings.values_list("pk", flat=True)) == sorted(r[3] for r in booked)
    assert all(b.status == BookingStatus.BOOKED and b.used_entry_id for b in bookings)
    used = LedgerEntry.objects.filter(client=client_a, kind=EntryKind.USED)
    assert used.count() == CREDITS
    # Each booking saw the balance the one before it left: no two took the same credit.
    assert sorted(used.values_list("balance_after", flat=True)) == list(range(CREDITS))
    assert set(used.values_list("booking_id", flat=True)) == set(bookings.values_list("pk", flat=True))
    result = ledger_check()
    assert result.ok, result.problems
    print(f"50 bookings from {PROCESSES} processes in {elapsed:.1f}s: 10 booked, 40 refused")
