"""Concurrent writers on one client's credits, on PostgreSQL: real threads, one connection each."""

import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from core.models import Client
from ledger.exceptions import NoCreditAvailable
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, GrantState, LedgerEntry
from ledger.services import credit_redeem, credit_return, credits_expire_due

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]



def run_together(*calls, timeout=30):
    """Start every call at the same instant, each in its own thread with its own connection.

    Returns one ("ok", value) or ("error", exception) per call, in call order.
    """
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def worker(index, call):
        try:
            barrier.wait(timeout=timeout)
            results[index] = ("ok", call())
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which names it
            results[index] = ("error", exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a writer is still waiting: deadlock?"
    return results


def balance(client, session_type):
    return ClientBalance.objects.get(client=client, session_type=session_type).balance


def assert_ledger_ok(capsys=None):
    result = ledger_check()
    assert result.ok, result.problems
    if capsys is not None:
        call_command("ledger_check")
        assert capsys.readouterr().out.splitlines()[-1].startswith("ledger ok: ")


def test_twenty_concurrent_redeems_of_five_credits(
    client_a, massage, make_pack, sell, staff_user, capsys
):
    grant = sell(client_a, make_pack([(massage, False, 5)])).grants.get()
    at = timezone.now() + timedelta(days=1)

    results = run_together(
        *[
            lambda: credit_redeem(client=client_a, session_type=massage, at=at, actor=staff_user)
            for _ in range(20)
        ]
    )

    used = [value for status, value in results if status == "ok"]
    refused = [value for status, value in results if status == "error"]
    assert len(used) == 5
    assert len(refused) == 15
    for exc in refused:
        assert isinstance(exc, NoCreditAvailable), repr(exc)
        assert str(exc).startswith("No credit")
        assert "used, expired or voided" in str(exc)
    # Each success saw the balance the one before it left: no two read the same credit.
    assert sorted(entry.balance_after for entry in used) == [0, 1, 2, 3, 4]
    assert balance(client_a, massage) == 0
    grant.refresh_from_db()
    assert grant.remaining == 0
    assert LedgerEntry.objects.filter(grant=grant, kind=EntryKind.USED).count() == 5
    assert_ledger_ok(capsys)


def test_concurrent_returns_of_one_use_return_it_once(
    client_a, massage, make_pack, sell, staff_user, capsys
):
    grant = sell(client_a, make_pack([(massage, False, 3)])).grants.get()
    used = credit_redeem(
        client=client_a,
        session_type=massage,
        at=timezone.now() + timedelta(days=1),
        actor=staff_user,
    )

    results = run_together(
        *[
            lambda: credit_return(used_entry=used, actor=staff_user, note="cancelled in time")
            for _ in range(10)
        ]
    )

    errors = [value for status, value in results if status == "error"]
    assert not errors, (
        f"concurrent returns of one use must all answer with the one return: {errors!r}"
    )
    returned = LedgerEntry.objects.filter(kind=EntryKind.RETURNED, reverses=used)
    assert returned.count() == 1
    assert {value.pk for _, value in results} == {returned.get().pk}
    assert balance(client_a, massage) == 3
    grant.refresh_from_db()
    assert grant.remaining == 3
    assert_ledger_ok(capsys)


def test_concurrent_redeems_with_one_idempotency_key_use_one_credit(
    client_a, massage, make_pack, sell, staff_user
):
    sell(client_a, make_pack([(massage, False, 5)]))
    at = timezone.now() + timedelta(days=1)

    results = run_together(
        *[
            lambda: credit_redeem(
                client=client_a,
                session_type=massage,
                at=at,
                actor=staff_user,
                idempotency_key="booking:42",
            )
            for _ in range(10)
        ]
    )

    errors = [value for status, value in results if status == "error"]
    assert not errors, f"a retried booking must get the first answer back: {errors!r}"
    entry = LedgerEntry.objects.get(kind=EntryKind.USED)
    assert {value.pk for _, value in results} == {entry.pk}
    assert balance(client_a, massage) == 4
    assert_ledger_ok()


def test_expiry_sweep_racing_redemptions_never_uses_an_expired_credit(
    massage, make_pack, sell, staff_user, capsys
):
    short_pack = make_pack([(massage, False, 5)], validity_amount=1, validity_unit="days")
    long_pack = make_pack([(massage, False, 3)], validity_amount=3, validity_unit="months")
    sweep_at = timezone.now() + timedelta(days=3)  # after the short grants' end, before the long
    at = timezone.now() + timedelta(hours=1)  # inside both windows
    outcomes = []
    for round_ in range(4):
        # Other clients' due grants around the racer's, swept in batches of two, so that the sweep
        # reaches the racer's grant early in some rounds and late in others.
        others = [
            Client.objects.create(name=f"Other {round_}-{n}", email=f"o{round_}-{n}@example.com")
            for n in range(6)
        ]
        for other in others[: round_ * 2]:
            sell(other, short_pack)
        client = Client.objects.create(name=f"Racer {round_}", email=f"racer{round_}@example.com")
        short = sell(client, short_pack).grants.get()
        long = sell(client, long_pack).grants.get()
        for other in others[round_ * 2 :]:
            sell(other, short_pack)

        results = run_together(
            lambda: credits_expire_due(now=sweep_at, batch_size=2),
            *[
                lambda c=client: credit_redeem(
                    client=c, session_type=massage, at=at, actor=staff_user
                )
                for _ in range(10)
            ],
        )

        sweep, redeems = results[0], results[1:]
        assert sweep == ("ok", 7), sweep
        used = [value for status, value in redeems if status == "ok"]
        for status, value in redeems:
            if status == "error":
                assert isinstance(value, NoCreditAvailable), repr(value)
        short.refresh_from_db()
        long.refresh_from_db()
        assert (short.state, short.remaining) == (GrantState.EXPIRED, 0)
        assert long.state == GrantState.ACTIVE
        short_used = [e for e in used if e.grant_id == short.pk]
        long_used = [e for e in used if e.grant_id == long.pk]
        assert len(short_used) + len(long_used) == len(used)
        expired = LedgerEntry.objects.get(grant=short, kind=EntryKind.EXPIRED)
        # Each credit of the short grant was either used (before its expiry) or expired, not both.
        assert len(short_used) - expired.amount == 5
        assert all(e.pk < expired.pk for e in short_used)
        assert long.remaining == 3 - len(long_used)
        if len(short_used) < 5:  # the long grant is touched only once the short one is gone
            assert all(e.pk > expired.pk for e in long_used)
        # Nobody was refused while a usable credit remained.
        assert len(used) == len(short_used) + 3
        assert balance(client, massage) == long.remaining
        outcomes.append(len(short_used))

    print("short-grant credits used before the sweep, per round:", outcomes)
    due = CreditGrant.objects.filter(state=GrantState.ACTIVE, expires_at__lte=sweep_at)
    assert not due.exists()
    assert_ledger_ok(capsys)
