from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.utils import DatabaseError
from django.utils import timezone

from ledger.exceptions import InvalidAdjustment, NoCreditAvailable, PurchaseNotPaid
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, GrantState, LedgerEntry
from ledger.selectors import balances_for_client
from ledger.services import (
    credit_redeem,
    credit_return,
    credits_adjust,
    credits_expire_due,
    credits_issue_for_purchase,
    grant_void,
)
from payments.services import purchase_create

pytestmark = pytest.mark.django_db


def balance(client, session_type):
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def test_paid_purchase_issues_credits_once(client_a, massage, make_pack, sell, staff_user):
    pack = make_pack([(massage, False, 10)])
    purchase = sell(client_a, pack)
    again = credits_issue_for_purchase(purchase=purchase, actor=staff_user)
    assert len(again) == 1
    assert balance(client_a, massage) == 10
    assert LedgerEntry.objects.filter(client=client_a, kind=EntryKind.ISSUED).count() == 1
    assert ledger_check().ok


def test_pending_purchase_issues_nothing(client_a, massage, make_pack, staff_user):
    pack = make_pack([(massage, False, 10)])
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
    with pytest.raises(PurchaseNotPaid, match="credits are issued only once it is paid"):
        credits_issue_for_purchase(purchase=purchase, actor=staff_user)
    assert balance(client_a, massage) == 0


def test_redeem_uses_soonest_expiring_grant(client_a, massage, make_pack, sell, staff_user, soon):
    long_pack = make_pack([(massage, False, 5)], validity_amount=6)
    short_pack = make_pack([(massage, False, 5)], validity_amount=1)
    long_grant = sell(client_a, long_pack).grants.get()
    short_grant = sell(client_a, short_pack).grants.get()
    entry = credit_redeem(client=client_a, session_type=massage, at=soon, actor=staff_user)
    assert entry.grant_id == short_grant.pk
    short_grant.refresh_from_db()
    long_grant.refresh_from_db()
    assert (short_grant.remaining, long_grant.remaining) == (4, 5)
    assert entry.balance_after == 9


def test_credit_of_one_type_never_pays_for_another(client_a, massage, physio, make_pack, sell, staff_user, soon):
    sell(client_a, make_pack([(massage, False, 3)]))
    with pytest.raises(NoCreditAvailable, match="holds no Physio credits"):
        credit_redeem(client=client_a, session_type=physio, at=soon, actor=staff_user)
    assert balance(client_a, massage) == 3


def test_return_gives_the_credit_back_once(client_a, massage, make_pack, sell, staff_user, soon):
    sell(client_a, make_pack([(massage, False, 2)]))
    used = credit_redeem(client=client_a, session_type=massage, at=soon, actor=staff_user)
    first = credit_return(used_entry=used, actor=staff_user, note="cancelled in time")
    second = credit_return(used_entry=used, actor=staff_user, note="double click")
    assert first.pk == second.pk
    assert balance(client_a, massage) == 2
    assert ledger_check().ok


def test_expire_due_writes_one_entry_per_grant_and_is_repeatable(client_a, client_b, massage, make_pack, sell, staff_user):
    pack = make_pack([(massage, False, 4)], validity_amount=1, validity_unit="days")
    g1 = sell(client_a, pack).grants.get()
    sell(client_b, pack)
    sell(client_a, make_pack([(massage, False, 2)]))
    later = timezone.now() + timedelta(days=3)
    assert credits_expire_due(now=later, batch_size=1) == 2
    assert credits_expire_due(now=later) == 0
    g1.refresh_from_db()
    assert (g1.state, g1.remaining) == (GrantState.EXPIRED, 0)
    assert balance(client_a, massage) == 2
    assert balance(client_b, massage) == 0
    assert LedgerEntry.objects.filter(kind=EntryKind.EXPIRED).count() == 2
    assert ledger_check().ok


def test_grant_already_past_expiry_is_issued_and_expired(client_a, massage, make_pack, sell, staff_user):
    pack = make_pack([(massage, False, 3)], validity_amount=2, validity_unit="days")
    purchase = sell(client_a, pack, paid_at=timezone.now() - timedelta(days=10))
    kinds = list(LedgerEntry.objects.filter(purchase=purchase).order_by("id").values_list("kind", "amount"))
    assert kinds == [(EntryKind.ISSUED, 3), (EntryKind.EXPIRED, -3)]
    assert balance(client_a, massage) == 0
    assert ledger_check().ok


def test_adjust_needs_reason_and_cannot_go_negative(client_a, massage, staff_user):
    with pytest.raises(InvalidAdjustment, match="reason"):
        credits_adjust(client=client_a, session_type=massage, amount=2, reason="  ", actor=staff_user)
    credits_adjust(client=client_a, session_type=massage, amount=2, reason="goodwill", actor=staff_user)
    with pytest.raises(InvalidAdjustment, match="the client has 2"):
        credits_adjust(client=client_a, session_type=massage, amount=-3, reason="typo", actor=staff_user)
    credits_adjust(client=client_a, session_type=massage, amount=-2, reason="typo", actor=staff_user)
    assert balance(client_a, massage) == 0
    assert ledger_check().ok


def test_void_and_balances_selector(client_a, massage, physio, make_pack, sell, staff_user):
    purchase = sell(client_a, make_pack([(massage, False, 5), (physio, True, None)]))
    massage_grant = purchase.grants.get(session_type=massage)
    grant_void(grant=massage_grant, actor=staff_user, note="refund of 2", quantity=2)
    rows = {b.session_type: b for b in balances_for_client(client_a.pk)}
    assert rows["Massage 60"].credits == 3
    assert rows["Physio"].unlimited and rows["Physio"].unlimited_until is not None
    assert ledger_check().ok


def test_entries_cannot_be_changed_or_deleted(client_a, massage, make_pack, sell):
    sell(client_a, make_pack([(massage, False, 5)]))
    entry = LedgerEntry.objects.get()
    entry.amount = 50
    with pytest.raises(PermissionError):
        entry.save()
    with pytest.raises(PermissionError):
        entry.delete()
    with pytest.raises(PermissionError):
        LedgerEntry.objects.filter(pk=entry.pk).update(amount=50)
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE ledger_ledgerentry SET amount = 50")
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM ledger_ledgerentry")
    assert LedgerEntry.objects.get().amount == 5


def test_ledger_check_command_reports_a_broken_balance(client_a, massage, make_pack, sell, capsys):
    sell(client_a, make_pack([(massage, False, 5)]))
    call_command("ledger_check")
    assert "ledger ok: 1 clients, 1 entries" in capsys.readouterr().out
    ClientBalance.objects.filter(client=client_a).update(balance=4)
    with pytest.raises(Exception, match="ledger check failed"):
        call_command("ledger_check")
    assert "Ada Lovelace" in capsys.readouterr().err


def test_balances_for_many_clients_take_one_query(
    client_a, client_b, massage, physio, make_pack, sell, django_assert_num_queries
):
    from ledger.selectors import balances_for_clients

    sell(client_a, make_pack([(massage, False, 5), (physio, True, None)]))
    sell(client_b, make_pack([(massage, False, 3)]))
    with django_assert_num_queries(1):
        balances = balances_for_clients([client_a.pk, client_b.pk])
    assert [(b.session_type, b.credits, b.unlimited) for b in balances[client_a.pk]] == [
        ("Massage 60", 5, False), ("Physio", 0, True),
    ]
    assert [(b.session_type, b.credits) for b in balances[client_b.pk]] == [("Massage 60", 3)]
    assert balances[client_a.pk][0].next_expiry is not None
