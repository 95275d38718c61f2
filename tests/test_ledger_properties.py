"""Random sequences of issue / redeem / return / void / expire / adjust against a simple model.

The model keeps, per grant, what the services should have done (remaining, state, window) and
predicts which grant each redemption takes, or that none can. After every step the database must
agree with the model, and every ledger invariant must hold.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from catalog.models import ValidFrom
from catalog.services import pack_create
from catalog.validation import LineData, StaffPriceData
from catalog.validity import expiry_for
from core.models import Client, StaffMember
from ledger.exceptions import InvalidAdjustment, InvalidVoid, NoCreditAvailable
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, GrantState, LedgerEntry
from ledger.services import (
    ADJUSTMENT_VALIDITY_MONTHS,
    credit_redeem,
    credit_return,
    credits_adjust,
    credits_expire_due,
    grant_void,
)
from payments.services import purchase_create, purchase_mark_paid

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

CLIENTS = 3


@dataclass
class ModelGrant:
    pk: int
    client: int  # index into the world's clients
    type: int  # index into the world's session types
    unlimited: bool
    remaining: int
    state: str
    rule: str
    amount: int
    unit: str
    valid_from: object
    expires_at: object
    staff: frozenset  # staff member pks; empty means all staff


@dataclass
class ModelUse:
    entry_pk: int
    grant_pk: int
    amount: int
    returned_pk: int | None = None


class LedgerMachine(RuleBasedStateMachine):
    world: dict  # set by the test: clients, session types, staff, category, actor
    seen: Counter  # outcomes over the whole run, to prove the services were really exercised

    def __init__(self):
        super().__init__()
        # Each example starts from the same empty ledger and leaves nothing behind.
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.clock = timezone.now()  # the expiry sweep's simulated time; only moves forward
        self.grants: dict[int, ModelGrant] = {}
        self.uses: list[ModelUse] = []
        self.packs = 0

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    def event(self, name):
        self.seen[name] += 1

    # --- helpers -----------------------------------------------------------------------------

    def client(self, index):
        return self.world["clients"][index]

    def session_type(self, index):
        return self.world["types"][index]

    def expected_balance(self, client, type_):
        return sum(
            g.remaining for g in self.grants.values() if (g.client, g.type) == (client, type_)
        )

    def db_balance(self, client, type_):
        row = ClientBalance.objects.filter(
            client=self.client(client), session_type=self.session_type(type_)
        ).first()
        return row.balance if row else 0

    def sync_window(self, grant: ModelGrant):
        row = CreditGrant.objects.get(pk=grant.pk)
        grant.valid_from, grant.expires_at = row.valid_from, row.expires_at

    def predict_redeem(self, client, type_, staff_pk, at, now):
        """The grant credit_redeem should take, or None: soonest expiry first, unknown last."""
        usable = [
            g
            for g in self.grants.values()
            if (g.client, g.type) == (client, type_)
            and g.state == GrantState.ACTIVE
            and (g.unlimited or g.remaining > 0)
            and (not g.staff or staff_pk in g.staff)
            and (g.valid_from is None or g.valid_from <= at)
            and (g.expires_at is None or (g.expires_at > at and g.expires_at > now))
        ]
        usable.sort(key=lambda g: (g.expires_at is None, g.expires_at or at, g.pk))
        for g in usable:
            if g.valid_from is None:
                start = min(now if g.rule == ValidFrom.BOOKING else at, at)
                if not at < expiry_for(start, g.amount, g.unit):
                    continue
            return g
        return None

    # --- rules -------------------------------------------------------------------------------

    @rule(
        client=st.integers(0, CLIENTS - 1),
        lines=st.sampled_from([(0,), (1,), (0, 1), (1, 0)]),
        unlimited=st.lists(st.integers(0, 3).map(lambda n: n == 0), min_size=2, max_size=2),
        credits=st.lists(st.integers(1, 10), min_size=2, max_size=2),
        validity=st.tuples(st.integers(1, 10), st.sampled_from(["days", "weeks", "months"])),
        line_validity=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.just("days"))),
        valid_from=st.sampled_from(ValidFrom.values),
        restricted=st.integers(0, 3).map(lambda n: n == 0),
        paid_ago=st.integers(0, 60 * 24 * 40),  # minutes; some grants end before they are issued
    )
    def issue(
        self, client, lines, unlimited, credits, validity, line_validity, valid_from, restricted,
        paid_ago,
    ):
        self.packs += 1
        self.event("issue")
        staff = self.world["staff"][0]
        pack_lines = []
        for n, type_ in enumerate(lines):
            own = line_validity if n == 0 and line_validity else (None, "")
            pack_lines.append(LineData(
                self.session_type(type_), unlimited=unlimited[n],
                credits=None if unlimited[n] else credits[n],
                validity_amount=own[0], validity_unit=own[1],
            ))
        pack = pack_create(
            actor=self.world["actor"], lines=pack_lines,
            staff_prices=[StaffPriceData(staff, None)] if restricted else [],
            name=f"Pack {self.packs}", category=self.world["category"], price=Decimal("100.00"),
            currency="GBP", published=True, validity_amount=validity[0],
            validity_unit=validity[1], valid_from=valid_from, all_staff=not restricted,
        )
        paid_at = timezone.now() - timedelta(minutes=paid_ago)
        purchase = purchase_mark_paid(
            purchase=purchase_create(
                client=self.client(client), pack=pack, actor=self.world["actor"],
                staff_member=staff if restricted else None,
            ),
            actor=self.world["actor"], paid_at=paid_at,
        )
        now = timezone.now()
        rows = list(purchase.grants.order_by("pk"))
        assert len(rows) == len(lines)
        for row, type_, line in zip(rows, lines, pack_lines, strict=True):
            amount, unit = (
                (line.validity_amount, line.validity_unit) if line.validity_amount else validity
            )
            expected_window = (
                (paid_at, expiry_for(paid_at, amount, unit))
                if valid_from == ValidFrom.PAYMENT
                else (None, None)
            )
            assert (row.valid_from, row.expires_at) == expected_window
            assert row.session_type_id == self.session_type(type_).pk
            grant = ModelGrant(
                pk=row.pk, client=client, type=type_, unlimited=line.unlimited,
                remaining=0 if line.unlimited else line.credits, state=GrantState.ACTIVE,
                rule=valid_from, amount=amount, unit=unit, valid_from=row.valid_from,
                expires_at=row.expires_at,
                staff=frozenset([staff.pk]) if restricted else frozenset(),
            )
            if grant.expires_at is not None and grant.expires_at <= now:
                grant.remaining, grant.state = 0, GrantState.EXPIRED  # issued and expired at once
                self.event("issued and expired at once")
                kinds = list(row.entries.order_by("pk").values_list("kind", flat=True))
                assert kinds == [EntryKind.ISSUED, EntryKind.EXPIRED]
            self.grants[grant.pk] = grant

    @rule(
        data=st.data(),
        staff=st.sampled_from([None, None, None, 0, 1]),
        from_clock=st.booleans(),
        later=st.integers(1, 60 * 24 * 5),  # minutes after now, or after the sweep's clock
    )
    def redeem(self, data, staff, from_clock, later):
        # Mostly where the client holds something, so that uses are common; sometimes anywhere.
        held = sorted(
            {
                (g.client, g.type)
                for g in self.grants.values()
                if g.state == GrantState.ACTIVE and (g.unlimited or g.remaining)
            }
        )
        anywhere = st.tuples(st.integers(0, CLIENTS - 1), st.integers(0, 1))
        client, type_ = data.draw(
            st.one_of(st.sampled_from(held), st.sampled_from(held), anywhere) if held else anywhere
        )
        staff_member = None if staff is None else self.world["staff"][staff]
        now = timezone.now()
        at = (max(self.clock, now) if from_clock else now) + timedelta(minutes=later)
        expected = self.predict_redeem(client, type_, staff_member and staff_member.pk, at, now)
        before = self.db_balance(client, type_)
        try:
            entry = credit_redeem(
                client=self.client(client), session_type=self.session_type(type_), at=at,
                actor=self.world["actor"], staff_member=staff_member,
            )
        except NoCreditAvailable as exc:
            assert expected is None, f"refused ({exc}) although grant #{expected.pk} was usable"
            assert str(exc).startswith("No credit: ")
            assert self.db_balance(client, type_) == before
            self.event("redeem refused")
            return
        assert expected is not None, f"used grant #{entry.grant_id} although the model had none"
        self.event("redeem used " + ("an unlimited grant" if expected.unlimited else "a credit"))
        assert entry.grant_id == expected.pk
        assert (entry.kind, entry.amount) == (EntryKind.USED, 0 if expected.unlimited else -1)
        assert entry.balance_after == before + entry.amount
        expected.remaining += entry.amount
        if expected.valid_from is None:
            self.sync_window(expected)
            start = expected.valid_from
            assert (
                (start == at)
                if expected.rule == ValidFrom.FIRST_SESSION
                else (now <= start <= timezone.now())
            )
            assert expected.expires_at == expiry_for(start, expected.amount, expected.unit)
        self.uses.append(ModelUse(entry.pk, expected.pk, entry.amount))

    @precondition(lambda self: self.uses)
    @rule(data=st.data())
    def return_credit(self, data):
        pending = [u for u in self.uses if u.returned_pk is None]
        use = data.draw(
            st.sampled_from(pending)
            if pending and data.draw(st.integers(0, 3))
            else st.sampled_from(self.uses)
        )
        grant = self.grants[use.grant_pk]
        before = self.db_balance(grant.client, grant.type)
        now = timezone.now()
        self.event("return")
        entry = credit_return(
            used_entry=LedgerEntry.objects.get(pk=use.entry_pk),
            actor=self.world["actor"],
            note="cancelled",
        )
        if use.returned_pk is not None:  # a second return answers with the first, changing nothing
            assert entry.pk == use.returned_pk
            assert self.db_balance(grant.client, grant.type) == before
            return
        assert (entry.kind, entry.amount, entry.reverses_id) == (
            EntryKind.RETURNED,
            -use.amount,
            use.entry_pk,
        )
        use.returned_pk = entry.pk
        back = -use.amount
        grant.remaining += back
        # A credit that comes back to a closed grant closes again at once.
        self.event(f"return to a {grant.state} grant")
        if grant.state == GrantState.VOIDED:
            grant.remaining -= back
        elif grant.state == GrantState.EXPIRED or (grant.expires_at and grant.expires_at <= now):
            grant.remaining, grant.state = 0, GrantState.EXPIRED

    @precondition(lambda self: self.grants)
    @rule(data=st.data())
    def void(self, data):
        grant = data.draw(st.sampled_from(sorted(self.grants.values(), key=lambda g: g.pk)))
        quantity = data.draw(st.one_of(st.none(), st.integers(0, grant.remaining + 1)))
        row = CreditGrant.objects.get(pk=grant.pk)
        if grant.state != GrantState.ACTIVE or (
            quantity is not None and quantity > grant.remaining
        ):
            self.event("void refused")
            with pytest.raises(InvalidVoid):
                grant_void(grant=row, actor=self.world["actor"], note="refund", quantity=quantity)
            return
        entry = grant_void(grant=row, actor=self.world["actor"], note="refund", quantity=quantity)
        self.event("void")
        taken = 0 if grant.unlimited else (grant.remaining if quantity is None else quantity)
        assert (entry.kind, entry.amount) == (EntryKind.VOIDED, -taken)
        if taken == grant.remaining:
            grant.state = GrantState.VOIDED
        grant.remaining -= taken

    @rule(minutes=st.integers(1, 60 * 24 * 6), batch_size=st.integers(1, 4))
    def expire(self, minutes, batch_size):
        self.clock += timedelta(minutes=minutes)
        due = [
            g
            for g in self.grants.values()
            if g.state == GrantState.ACTIVE
            and g.expires_at is not None
            and g.expires_at <= self.clock
        ]
        assert credits_expire_due(now=self.clock, batch_size=batch_size) == len(due)
        self.event(f"sweep expired {min(len(due), 3)}{'+' if len(due) >= 3 else ''} grants")
        for g in due:
            g.remaining, g.state = 0, GrantState.EXPIRED
        assert credits_expire_due(now=self.clock) == 0

    @rule(
        client=st.integers(0, CLIENTS - 1),
        type_=st.integers(0, 1),
        amount=st.integers(-6, 6).filter(bool),
        expires_in=st.one_of(st.none(), st.integers(1, 60)),
    )
    def adjust(self, client, type_, amount, expires_in):
        expires_at = None if expires_in is None else timezone.now() + timedelta(days=expires_in)
        args = dict(
            client=self.client(client), session_type=self.session_type(type_), amount=amount,
            reason="count correction", actor=self.world["actor"], expires_at=expires_at,
        )
        self.event("adjust up" if amount > 0 else "adjust down")
        if amount > 0:
            before = timezone.now()
            entries = credits_adjust(**args)
            assert [(e.kind, e.amount) for e in entries] == [(EntryKind.ADJUSTED, amount)]
            row = entries[0].grant
            assert before <= row.valid_from <= timezone.now()
            assert row.expires_at == (
                expires_at or expiry_for(row.valid_from, ADJUSTMENT_VALIDITY_MONTHS, "months")
            )
            self.grants[row.pk] = ModelGrant(
                pk=row.pk, client=client, type=type_, unlimited=False, remaining=amount,
                state=GrantState.ACTIVE, rule=ValidFrom.PAYMENT, amount=row.validity_amount,
                unit=row.validity_unit, valid_from=row.valid_from, expires_at=row.expires_at,
                staff=frozenset(),
            )
            return
        holding = sorted(
            (
                g
                for g in self.grants.values()
                if (g.client, g.type) == (client, type_)
                and g.state == GrantState.ACTIVE
                and g.remaining > 0
            ),
            key=lambda g: (g.expires_at is None, g.expires_at or self.clock, g.pk),
        )
        available = sum(g.remaining for g in holding)
        if available < -amount:
            with pytest.raises(InvalidAdjustment, match=f"the client has {available}"):
                credits_adjust(**args)
            return
        entries = credits_adjust(**args)
        to_remove = -amount
        expected = []
        for g in holding:
            take = min(g.remaining, to_remove)
            if not take:
                break
            g.remaining -= take
            to_remove -= take
            expected.append((g.pk, -take))
        assert [(e.grant_id, e.amount) for e in entries] == expected

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def ledger_holds(self):
        result = ledger_check()
        assert result.ok, result.problems

    @invariant()
    def balances_match_grants_and_model(self):
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT b.client_id, b.session_type_id, b.balance,
                       COALESCE((SELECT SUM(g.remaining) FROM ledger_creditgrant g
                                 WHERE g.client_id = b.client_id
                                   AND g.session_type_id = b.session_type_id), 0)
                FROM ledger_clientbalance b
                """
            )
            cached = {(c, s): (balance, held) for c, s, balance, held in cursor.fetchall()}
        for (client_id, type_id), (balance, held) in cached.items():
            assert balance >= 0
            assert balance == held, (
                f"client {client_id} type {type_id}: balance {balance}, grants {held}"
            )
        for c in range(CLIENTS):
            for t in range(2):
                key = (self.client(c).pk, self.session_type(t).pk)
                assert cached.get(key, (0, 0))[0] == self.expected_balance(c, t)

    @invariant()
    def grants_match_model(self):
        rows = CreditGrant.objects.in_bulk(list(self.grants))
        for pk, grant in self.grants.items():
            row = rows[pk]
            assert (row.remaining, row.state) == (grant.remaining, grant.state), f"grant #{pk}"
            assert (row.valid_from, row.expires_at) == (grant.valid_from, grant.expires_at), (
                f"grant #{pk}"
            )


@pytest.fixture
def world(db, category, massage, physio, coach):
    other = StaffMember.objects.create(
        user=get_user_model().objects.create_user("other", "other@example.com", "pw-other-123"),
        display_name="Other Coach",
    )
    return {
        "clients": [
            Client.objects.create(name=f"Client {n}", email=f"c{n}@example.com")
            for n in range(CLIENTS)
        ],
        "types": [massage, physio],
        "staff": [coach, other],
        "category": category,
        "actor": get_user_model().objects.create_user("props", "props@example.com", "pw-props-123"),
    }


def test_random_ledger_operations_keep_every_invariant(world):
    LedgerMachine.world = world
    LedgerMachine.seen = Counter()
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=50, stateful_step_count=30, deadline=None, database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    seen = LedgerMachine.seen
    print(dict(sorted(seen.items())))
    for outcome in (
        "issue",
        "redeem used a credit",
        "redeem refused",
        "return",
        "void",
        "adjust down",
    ):
        assert seen[outcome] > 0, f"never happened: {outcome}"
    assert sum(
        n for name, n in seen.items() if name.startswith("sweep expired ") and "0" not in name
    )
