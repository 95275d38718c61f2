"""Add-ons (seed 003): every rule of attaching one to a booking, paying for it, its intake form,
and what cancelling the booking group does. Services are tested directly (core.addons).

The main session sits at 10:00–11:00 on a day ahead, in the business's time zone, so the slot
right after it (from 11:00) is on the same day whatever the clock says when the tests run.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from catalog.models import IntakeForm, IntakeQuestion, SessionType
from core.addons import CREDIT, PORTAL, PRICE, addon_attach, addon_options
from core.bookings import (
    booking_cancel,
    booking_create,
)
from core.exceptions import AddOnBlocked, AddOnRefused, AddOnUnavailable, IntakeIncomplete
from core.models import (
    Booking,
    BusinessSettings,
    IntakeResponse,
    Session,
    TimeOff,
    WorkingHours,
)
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.models import Purchase, PurchaseStatus
from payments.selectors import outstanding_purchases
from payments.services import payment_record

pytestmark = pytest.mark.django_db

PREGNANT = "Hot stones are not suitable during pregnancy."


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def local(days: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time `days` ahead in the business's time zone."""
    day = timezone.localdate() + timedelta(days=days)
    return timezone.make_aware(datetime.combine(day, time(hour, minute)))


def counts() -> dict:
    """What an add-on writes: a refusal must leave every one of these as it was."""
    return {
        "sessions": Session.objects.count(), "bookings": Booking.objects.count(),
        "purchases": Purchase.objects.count(), "responses": IntakeResponse.objects.count(),
        "entries": LedgerEntry.objects.count(),
    }


@pytest.fixture(autouse=True)
def ledger_balances_after_each_scenario(db):
    yield
    result = ledger_check()
    assert result.ok, result.problems


# --- The catalogue: a massage, and add-ons that extend it ---------------------------------------


@pytest.fixture
def screening(db):
    form = IntakeForm.objects.create(name="Hot stones screening", intro="A few questions first.")
    IntakeQuestion.objects.create(
        form=form, position=1, text="Are you pregnant?", blocks_on_yes=True, block_reason=PREGNANT,
    )
    IntakeQuestion.objects.create(form=form, position=2, text="Do you bruise easily?")
    IntakeQuestion.objects.create(form=form, position=3, text="Anything else we should know?", kind="text", required=False)
    return form


@pytest.fixture
def hot_stones(db, category, massage, screening):
    """Sold at its price (or paid with its own credit), after the screening form."""
    add_on = SessionType.objects.create(
        name="Hot stones", category=category, duration_minutes=30, price=Decimal("25.00"), currency="GBP",
        intake_form=screening,
    )
    add_on.add_on_for.add(massage)
    return add_on


@pytest.fixture
def scrub(db, category, massage):
    """Credit only: no price, no form."""
    add_on = SessionType.objects.create(name="Scrub", category=category, duration_minutes=15)
    add_on.add_on_for.add(massage)
    return add_on


@pytest.fixture
def staff(diary, hot_stones, scrub):
    """The coach works all day, every day, and gives both add-ons."""
    diary.session_types.add(hot_stones, scrub)
    return diary


def answers(form: IntakeForm, **by_position) -> dict[str, str]:
    """Answers keyed by question id; "no" to every yes/no question unless given by position."""
    result = {}
    for question in form.questions.all():
        value = by_position.get(f"q{question.position}", "no" if question.kind == "yes_no" else "")
        result[str(question.pk)] = value
    return result


@pytest.fixture
def massage_credits(client_a, make_pack, sell, massage):
    # Paid ten days ago, so a session that already started is inside the credits' window.
    return sell(client_a, make_pack([(massage, False, 10)]), paid_at=timezone.now() - timedelta(days=10))


@pytest.fixture
def stone_credits(client_a, make_pack, sell, hot_stones):
    return sell(client_a, make_pack([(hot_stones, False, 5)]))


@pytest.fixture
def scrub_credits(client_a, make_pack, sell, scrub):
    return sell(client_a, make_pack([(scrub, False, 5)]))


@pytest.fixture
def book_main(staff, massage, massage_credits, staff_user):
    def make(client, starts_at=None, *, staff_member=None):
        session = session_create(
            session_type=massage, staff_member=staff_member or staff, starts_at=starts_at or local(3, 10),
            actor=staff_user, outside_hours_reason="tests",
        )
        return booking_create(client=client, session=session, actor=staff_user)

    return make


@pytest.fixture
def main(client_a, book_main):
    """Ada's massage with the coach, 10:00–11:00 three days ahead, paid with a credit."""
    return book_main(client_a)


def attach(main, add_on_type, actor, **kwargs):
    if add_on_type.intake_form_id and "answers" not in kwargs:
        kwargs["answers"] = answers(add_on_type.intake_form)
    return addon_attach(booking=main, add_on_type=add_on_type, actor=actor, **kwargs)


# --- Options --------------------------------------------------------------------------------------


def test_options_are_the_linked_add_ons_right_after_the_session(
    main, hot_stones, scrub, scrub_credits, physio, category, staff, screening
):
    elsewhere = SessionType.objects.create(name="Cupping", category=category, duration_minutes=20, price=Decimal("9"))
    elsewhere.add_on_for.add(physio)  # an add-on for another base type
    retired = SessionType.objects.create(name="Old wrap", category=category, archived=True, price=Decimal("5"))
    retired.add_on_for.add(main.session.session_type)

    options = {o.session_type.name: o for o in addon_options(main)}

    assert set(options) == {"Hot stones", "Scrub"}
    stones, scrubbing = options["Hot stones"], options["Scrub"]
    assert (stones.starts_at, stones.ends_at) == (local(3, 11), local(3, 11, 30))
    assert (scrubbing.starts_at, scrubbing.ends_at) == (local(3, 11), local(3, 11, 15))
    assert (stones.available, stones.reason, stones.pays_with) == (True, "", PRICE)
    assert (stones.price, stones.currency, stones.intake_form) == (Decimal("25.00"), "GBP", screening)
    assert (scrubbing.available, scrubbing.pays_with, scrubbing.intake_form) == (True, CREDIT, None)


def test_options_prefer_a_credit_and_explain_a_credit_only_add_on_without_one(main, hot_stones, scrub, stone_credits):
    options = {o.session_type.name: o for o in addon_options(main)}
    assert options["Hot stones"].pays_with == CREDIT
    assert options["Scrub"].available is False
    assert options["Scrub"].reason == "No Scrub credit to use, and Scrub is not sold on its own (it has no price)."


def test_options_cost_a_fixed_number_of_queries(main, category, staff, hot_stones, scrub):
    def measure() -> int:
        with CaptureQueriesContext(connection) as captured:
            addon_options(main)
        return len(captured)

    few = measure()
    for n in range(6):
        extra = SessionType.objects.create(name=f"Extra {n}", category=category, duration_minutes=10 + n, price=Decimal("5"))
        extra.add_on_for.add(main.session.session_type)
        staff.session_types.add(extra)
    assert len(addon_options(main)) == 8
    assert measure() == few


# --- Upcoming only; linked only; once per group ------------------------------------------------


def test_no_add_on_once_the_session_has_started(client_a, book_main, scrub, scrub_credits):
    started = book_main(client_a, timezone.now() - timedelta(minutes=10))
    before = counts()

    assert addon_options(started) == []
    with pytest.raises(AddOnRefused, match="has started or is over"):
        attach(started, scrub, None)
    assert counts() == before


def test_the_upcoming_rule_uses_the_moment_given(main, scrub, scrub_credits, staff_user):
    after_start = local(3, 10, 1)
    assert addon_options(main, now=after_start) == []
    with pytest.raises(AddOnRefused, match="has started or is over"):
        attach(main, scrub, staff_user, now=after_start)


def test_no_add_on_to_a_cancelled_booking(main, scrub, scrub_credits, staff_user):
    booking_cancel(booking=main, actor=staff_user)
    assert addon_options(main) == []
    with pytest.raises(AddOnRefused, match="This booking is cancelled"):
        attach(main, scrub, staff_user)


def test_an_add_on_must_be_linked_to_the_booked_session_type(main, category, staff, staff_user, physio):
    cupping = SessionType.objects.create(name="Cupping", category=category, duration_minutes=20, price=Decimal("9"))
    cupping.add_on_for.add(physio)
    staff.session_types.add(cupping)
    before = counts()
    with pytest.raises(AddOnRefused, match="Cupping is not an add-on for Massage 60"):
        attach(main, cupping, staff_user)
    assert counts() == before


def test_an_add_on_cannot_be_added_twice_to_one_booking(main, scrub, scrub_credits, staff_user):
    attach(main, scrub, staff_user)
    before = counts()
    with pytest.raises(AddOnRefused, match="Scrub is already part of this booking"):
        attach(main, scrub, staff_user)
    assert counts() == before
    assert [o.session_type.name for o in addon_options(main)] == ["Hot stones"]


def test_no_add_on_to_an_add_on(main, scrub, scrub_credits, hot_stones, staff_user):
    added = attach(main, scrub, staff_user)
    with pytest.raises(AddOnRefused, match="itself an add-on"):
        attach(added, hot_stones, staff_user)


# --- The staff member must be free right after the main session --------------------------------


def test_attached_right_after_the_main_session_with_the_same_staff_member(main, scrub, scrub_credits, staff_user):
    add_on = attach(main, scrub, staff_user)

    assert (add_on.main_booking, add_on.add_on_type, add_on.client) == (main, scrub, main.client)
    assert add_on.session.staff_member_id == main.session.staff_member_id
    assert (add_on.session.session_type, add_on.session.starts_at) == (scrub, main.session.ends_at)
    assert add_on.session.ends_at == main.session.ends_at + timedelta(minutes=15)
    assert add_on.session.outside_hours_reason == ""
    assert list(main.add_ons.all()) == [add_on]


def test_refused_when_another_booking_follows(main, scrub, scrub_credits, client_b, book_main, massage, staff_user):
    credits_adjust(client=client_b, session_type=massage, amount=1, reason="gift", actor=staff_user)
    book_main(client_b, local(3, 11, 10))  # someone else's massage at 11:10, inside the scrub's slot
    before = counts()

    [option] = [o for o in addon_options(main) if o.session_type == scrub]
    assert (option.available, option.pays_with) == (False, None)
    assert option.reason == "Coach Carter has another session right after this one."
    with pytest.raises(AddOnUnavailable, match="Coach Carter has another session right after this one."):
        attach(main, scrub, staff_user)
    assert counts() == before


def test_refused_during_time_off(main, scrub, scrub_credits, staff, staff_user):
    TimeOff.objects.create(staff_member=staff, starts_at=local(3, 11), ends_at=local(3, 13), reason="dentist")
    before = counts()

    [option] = [o for o in addon_options(main) if o.session_type == scrub]
    assert (option.available, option.reason) == (False, "Coach Carter is off right after this session.")
    with pytest.raises(AddOnUnavailable, match="Coach Carter is off right after this session."):
        attach(main, scrub, staff_user)
    assert counts() == before


def test_refused_past_the_end_of_working_hours(client_a, book_main, hot_stones, stone_credits, staff_user, jo):
    jo.session_types.add(hot_stones)
    jo.working_hours.all().delete()
    weekday = local(3, 0).weekday()
    WorkingHours.objects.create(staff_member=jo, weekday=weekday, starts=time(9), ends=time(17, 15))
    late = book_main(client_a, local(3, 16, 15), staff_member=jo)  # 16:15–17:15: the day's last hour
    early = book_main(client_a, local(3, 10), staff_member=jo)
    before = counts()

    [option] = [o for o in addon_options(late) if o.session_type == hot_stones]
    assert (option.available, option.reason) == (False, "Hot stones would run past the end of Jo Lindqvist's working hours.")
    with pytest.raises(AddOnUnavailable, match="would run past the end of Jo Lindqvist's working hours"):
        attach(late, hot_stones, staff_user)
    assert counts() == before
    assert attach(early, hot_stones, staff_user).session.ends_at == local(3, 11, 30)


def test_refused_when_the_staff_member_does_not_give_the_add_on(main, category, staff_user):
    wrap = SessionType.objects.create(name="Wrap", category=category, duration_minutes=20, price=Decimal("9"))
    wrap.add_on_for.add(main.session.session_type)
    [option] = [o for o in addon_options(main) if o.session_type == wrap]
    assert option.reason == "Coach Carter does not offer Wrap."
    with pytest.raises(AddOnUnavailable, match="Coach Carter does not offer Wrap."):
        attach(main, wrap, staff_user)


# --- Paid by its own credit, or sold at its price -----------------------------------------------


def test_paid_with_its_own_credit(main, client_a, hot_stones, stone_credits, massage, staff_user):
    add_on = attach(main, hot_stones, staff_user)

    entry = add_on.used_entry
    assert (entry.kind, entry.amount, entry.session_type, entry.booking_id) == (EntryKind.USED, -1, hot_stones, add_on.pk)
    assert entry.grant.purchase == stone_credits
    assert (balance(client_a, hot_stones), balance(client_a, massage)) == (4, 9)
    assert add_on.purchase is None


def test_sold_at_its_price_without_a_credit(main, client_a, hot_stones, staff_user):
    add_on = attach(main, hot_stones, staff_user)

    purchase = add_on.purchase
    assert (purchase.status, purchase.pack, purchase.price, purchase.currency) == (
        PurchaseStatus.PENDING, None, Decimal("25.00"), "GBP",
    )
    assert purchase.snapshot["name"] == "Add-on: Hot stones"
    assert (purchase.snapshot["lines"], purchase.snapshot["add_on"], purchase.snapshot["session_type_id"]) == (
        [], True, hot_stones.pk,
    )
    assert add_on.used_entry is None and balance(client_a, hot_stones) == 0
    assert list(outstanding_purchases().filter(pk=purchase.pk)) == [purchase]

    payment_record(purchase=purchase, method="cash", amount=Decimal("25.00"), actor=staff_user)

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert not CreditGrant.objects.filter(purchase=purchase).exists()  # an add-on sale issues no credits
    assert balance(client_a, hot_stones) == 0
    assert not outstanding_purchases().filter(pk=purchase.pk).exists()


def test_refused_without_a_credit_or_a_price(main, scrub, staff_user):
    before = counts()
    with pytest.raises(AddOnRefused, match="Scrub is not sold on its own"):
        attach(main, scrub, staff_user)
    assert counts() == before


def test_prepaid_only_refuses_selling_on_the_client_page_but_not_at_the_desk(main, hot_stones, staff_user):
    settings = BusinessSettings.current()
    settings.prepaid_only = True
    settings.save()
    before = counts()

    [option] = [o for o in addon_options(main, channel=PORTAL) if o.session_type == hot_stones]
    assert (option.available, option.pays_with) == (False, None)
    with pytest.raises(AddOnRefused, match="only with a credit"):
        attach(main, hot_stones, None, channel=PORTAL)
    assert counts() == before

    assert attach(main, hot_stones, staff_user).purchase.status == PurchaseStatus.PENDING


def test_prepaid_only_still_lets_the_client_use_a_credit(main, hot_stones, stone_credits):
    BusinessSettings.objects.filter(pk=BusinessSettings.current().pk).update(prepaid_only=True)
    add_on = attach(main, hot_stones, None, channel=PORTAL)
    assert add_on.used_entry is not None and add_on.booked_by is None


# --- Intake form ----------------------------------------------------------------------------------


def test_a_blocking_answer_refuses_with_its_reason_and_stores_nothing(main, hot_stones, stone_credits, staff_user):
    before = counts()
    with pytest.raises(AddOnBlocked) as refused:
        attach(main, hot_stones, staff_user, answers=answers(hot_stones.intake_form, q1="yes"))
    assert str(refused.value) == PREGNANT
    assert refused.value.question_id == hot_stones.intake_form.questions.get(position=1).pk
    assert counts() == before
    assert balance(main.client, hot_stones) == 5


def test_non_blocking_answers_are_stored_with_the_booking(main, hot_stones, staff_user, screening):
    given = answers(screening, q2="yes", q3="  Mild eczema on the back.  ")
    add_on = attach(main, hot_stones, staff_user, answers=given)

    response = IntakeResponse.objects.get(booking=add_on)
    assert (response.form, response.submitted_by) == (screening, staff_user)
    assert response.answers == [
        {"question_id": q.pk, "text": q.text, "kind": q.kind, "answer": a, "blocks_on_yes": q.blocks_on_yes}
        for q, a in zip(screening.questions.order_by("position"), ["no", "yes", "Mild eczema on the back."])
    ]
    # The record keeps the questions as asked, whatever the form becomes.
    screening.questions.filter(position=2).update(text="Do you bruise?")
    assert IntakeResponse.objects.get(booking=add_on).answers[1]["text"] == "Do you bruise easily?"


def test_answers_from_the_client_page_have_no_staff_author(main, hot_stones):
    add_on = attach(main, hot_stones, None, channel=PORTAL)
    assert add_on.intake.submitted_by is None


def test_missing_or_invalid_answers_are_named_per_question(main, hot_stones, staff_user, screening):
    q1, q2, q3 = screening.questions.order_by("position")
    before = counts()
    with pytest.raises(IntakeIncomplete) as incomplete:
        attach(main, hot_stones, staff_user, answers={str(q1.pk): "maybe", str(q3.pk): "x" * 1001})
    assert incomplete.value.errors == {
        str(q1.pk): "Answer yes or no.", str(q2.pk): "Please answer this question.",
        str(q3.pk): "Keep the answer under 1000 characters.",
    }
    with pytest.raises(IntakeIncomplete) as incomplete:
        attach(main, hot_stones, staff_user, answers=None)
    assert set(incomplete.value.errors) == {str(q1.pk), str(q2.pk)}  # the text question is optional
    assert counts() == before


def test_a_blocking_answer_wins_over_missing_ones(main, hot_stones, staff_user, screening):
    q1 = screening.questions.get(position=1)
    with pytest.raises(AddOnBlocked, match=PREGNANT):
        attach(main, hot_stones, staff_user, answers={str(q1.pk): "YES"})
