"""Add-ons in the admin (test client, real roles): the front desk adds one with its intake form,
the booking group on a booking's page, who may read intake answers, and the manager's catalogue
pages (add-on session types, intake forms with their questions)."""
from __future__ import annotations

import html
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import IntakeForm, IntakeQuestion, SessionType
from core.addons import addon_attach
from core.models import Booking, BookingStatus, Session
from core.roles import FINANCE, FRONT_DESK, MANAGER
from ledger.services import credits_adjust
from payments.models import PurchaseStatus
from tests.test_addons import PREGNANT, answers, counts, local
from tests.test_addons import (  # noqa: F401 - fixtures, used by name
    book_main,
    hot_stones,
    main,
    massage_credits,
    screening,
    scrub,
    staff,
    stone_credits,
)
from tests.test_roles import make_member, roles  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def add_on_url(booking, **query) -> str:
    url = reverse("admin:core_booking_add_add_on", args=[booking.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def booking_url(booking) -> str:
    return reverse("admin:core_booking_change", args=[booking.pk])


def intake_post(add_on_type, **by_position) -> dict:
    data = {"add_on": add_on_type.pk}
    for key, value in answers(add_on_type.intake_form, **by_position).items():
        data[f"q{key}"] = value
    return data


@pytest.fixture
def as_role(client, make_member):
    def login(role):
        user = make_member(role)
        client.force_login(user)
        return user

    return login


# --- The front desk adds an add-on ----------------------------------------------------------


def test_the_booking_page_offers_the_action_on_an_upcoming_booking(client, as_role, main):
    as_role(FRONT_DESK)
    page = page_text(client.get(booking_url(main)))
    assert add_on_url(main) in page
    assert "No add-ons." in page


def test_the_page_lists_the_add_ons_with_availability_and_payment(client, as_role, main, hot_stones, scrub):
    as_role(FRONT_DESK)

    page = page_text(client.get(add_on_url(main)))

    assert "Hot stones" in page and "25.00 GBP, to pay at the desk" in page
    assert "No Scrub credit to use, and Scrub is not sold on its own (it has no price)." in page
    assert f"?add_on={hot_stones.pk}" in page and f"?add_on={scrub.pk}" not in page  # only available ones


def test_the_chosen_add_on_shows_its_intake_form_as_fields(client, as_role, main, hot_stones, screening):
    as_role(FRONT_DESK)
    q1, q2, q3 = screening.questions.order_by("position")

    response = client.get(add_on_url(main, add_on=hot_stones.pk))

    page = page_text(response)
    assert "Hot stones screening" in page and "A few questions first." in page
    for question in (q1, q2, q3):
        assert question.text in page
    assert f'type="radio" name="q{q1.pk}" value="yes"' in page
    assert f'type="radio" name="q{q2.pk}" value="no"' in page
    assert f'name="q{q3.pk}"' in page and "<textarea" in page
    assert "Add Hot stones" in page


def test_missing_answers_are_shown_on_their_question_and_nothing_changes(client, as_role, main, hot_stones, screening):
    as_role(FRONT_DESK)
    q1, q2, _ = screening.questions.order_by("position")
    before = counts()

    response = client.post(add_on_url(main), {"add_on": hot_stones.pk, f"q{q1.pk}": "no"})

    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors[f"q{q2.pk}"] == ["Please answer this question."]
    assert f"q{q1.pk}" not in form.errors
    assert "Please answer the intake question marked." in page_text(response)
    assert counts() == before


def test_a_blocking_answer_shows_its_reason_plainly_and_nothing_changes(client, as_role, main, hot_stones):
    as_role(FRONT_DESK)
    before = counts()

    response = client.post(add_on_url(main), intake_post(hot_stones, q1="yes"))

    assert response.status_code == 200
    assert PREGNANT in page_text(response)
    assert list(response.context["form"].non_field_errors()) == [PREGNANT]
    assert counts() == before


def test_the_intake_form_round_trip_adds_the_add_on(client, as_role, main, hot_stones, screening, client_a):
    desk = as_role(FRONT_DESK)

    response = client.post(
        add_on_url(main), intake_post(hot_stones, q2="yes", q3="Sore shoulder"), follow=True,
    )

    add_on = Booking.objects.get(main_booking=main)
    assert response.redirect_chain[-1][0] == booking_url(main)
    page = page_text(response)
    assert "Hot stones added to Ada Lovelace's booking" in page and "Record payment now" in page
    assert (add_on.add_on_type, add_on.booked_by, add_on.status) == (hot_stones, desk, BookingStatus.BOOKED)
    assert add_on.purchase.status == PurchaseStatus.PENDING
    assert [a["answer"] for a in add_on.intake.answers] == ["no", "yes", "Sore shoulder"]
    assert add_on.intake.submitted_by == desk
    # The main booking's page shows its group: the add-on, its status and how it is paid.
    assert f"Sold at its price, 25.00 GBP (purchase #{add_on.purchase_id}, pending payment)" in page
    assert booking_url(add_on) in page
    # The add-on's page shows its main booking, and the answers to those who may read them.
    add_on_page = page_text(client.get(booking_url(add_on)))
    assert booking_url(main) in add_on_page and "Main booking" in add_on_page
    assert "Do you bruise easily?" in add_on_page and "Sore shoulder" in add_on_page
    assert f"entered by {desk}" in add_on_page


def test_a_refusal_from_the_service_is_shown_with_its_text(client, as_role, main, scrub, hot_stones, book_main, client_b, massage, staff_user):
    credits_adjust(client=client_b, session_type=massage, amount=1, reason="gift", actor=staff_user)
    book_main(client_b, local(3, 11))  # the coach is busy right after Ada's massage
    as_role(FRONT_DESK)
    before = counts()

    response = client.post(add_on_url(main), intake_post(hot_stones))

    assert "Coach Carter has another session right after this one." in page_text(response)
    assert counts() == before


def test_a_double_submit_adds_one_add_on_and_says_why(client, as_role, main, hot_stones, stone_credits):
    as_role(FRONT_DESK)
    client.post(add_on_url(main), intake_post(hot_stones))

    again = client.post(add_on_url(main), intake_post(hot_stones))

    assert "Hot stones is already part of this booking." in page_text(again)
    assert Booking.objects.filter(main_booking=main).count() == 1


def test_no_action_on_an_add_on_or_a_started_session(client, as_role, main, hot_stones, book_main, client_a, staff_user):
    as_role(FRONT_DESK)
    add_on = addon_attach(booking=main, add_on_type=hot_stones, actor=staff_user, answers=answers(hot_stones.intake_form))
    started = book_main(client_a, timezone.now() - timedelta(minutes=5))

    assert add_on_url(add_on) not in page_text(client.get(booking_url(add_on)))
    assert add_on_url(started) not in page_text(client.get(booking_url(started)))
    page = page_text(client.get(add_on_url(started)))
    assert "This session has started or is over: add-ons can be added only before it starts." in page


# --- Who may see and do what -------------------------------------------------------------------


def test_finance_cannot_read_intake_answers_or_add_add_ons(client, as_role, main, hot_stones, staff_user):
    add_on = addon_attach(
        booking=main, add_on_type=hot_stones, actor=staff_user,
        answers=answers(hot_stones.intake_form, q3="Recent surgery"),
    )
    as_role(FINANCE)

    page = page_text(client.get(booking_url(add_on)))

    assert "Hot stones" in page  # the group is there: money people see what was sold
    assert "Intake answers" not in page and "Recent surgery" not in page and "Are you pregnant?" not in page
    assert client.get(add_on_url(main)).status_code == 403
    assert add_on_url(main) not in page_text(client.get(booking_url(main)))


def test_a_manager_reads_intake_answers(client, as_role, main, hot_stones, staff_user):
    add_on = addon_attach(booking=main, add_on_type=hot_stones, actor=None, answers=answers(hot_stones.intake_form), channel="portal")
    as_role(MANAGER)
    page = page_text(client.get(booking_url(add_on)))
    assert "Intake answers" in page and "by the client on their page" in page


# --- The catalogue: intake forms and add-on session types (manager) ---------------------------


def form_post(name, questions) -> dict:
    data = {
        "name": name, "intro": "Before your treatment",
        "questions-TOTAL_FORMS": str(len(questions)), "questions-INITIAL_FORMS": "0",
        "questions-MIN_NUM_FORMS": "0", "questions-MAX_NUM_FORMS": "1000",
    }
    for n, (text, kind, blocks, reason) in enumerate(questions):
        data.update({
            f"questions-{n}-position": str(n + 1), f"questions-{n}-text": text, f"questions-{n}-kind": kind,
            f"questions-{n}-required": "on", f"questions-{n}-block_reason": reason,
        })
        if blocks:
            data[f"questions-{n}-blocks_on_yes"] = "on"
    return data


def test_a_manager_writes_an_intake_form_and_a_blocking_question_needs_a_reason(client, as_role):
    as_role(MANAGER)
    url = reverse("admin:catalog_intakeform_add")
    assert client.get(url).status_code == 200

    refused = client.post(url, form_post("Stones", [("Are you pregnant?", "yes_no", True, "")]))
    not_yes_no = client.post(url, form_post("Stones", [("Tell us more", "text", True, "Not suitable")]))

    assert "A blocking question needs the reason shown to the client" in page_text(refused)
    assert "Only a yes/no question can block an add-on" in page_text(not_yes_no)
    assert not IntakeForm.objects.exists()

    saved = client.post(url, form_post("Stones", [
        ("Are you pregnant?", "yes_no", True, PREGNANT), ("Any allergies?", "text", False, ""),
    ]))
    assert saved.status_code == 302
    form = IntakeForm.objects.get(name="Stones")
    assert list(form.questions.values_list("text", "blocks_on_yes", "block_reason")) == [
        ("Are you pregnant?", True, PREGNANT), ("Any allergies?", False, ""),
    ]
    assert "Stones" in page_text(client.get(reverse("admin:catalog_intakeform_changelist")))


def test_the_front_desk_reads_intake_forms_but_does_not_edit_them(client, as_role, screening):
    as_role(FRONT_DESK)
    assert client.get(reverse("admin:catalog_intakeform_change", args=[screening.pk])).status_code == 200
    assert client.get(reverse("admin:catalog_intakeform_add")).status_code == 403


def session_type_post(session_type, **overrides) -> dict:
    data = {
        "name": session_type.name, "category": session_type.category_id or "",
        "duration_minutes": session_type.duration_minutes, "requires_credit": "on",
        "cancellation_window_hours": session_type.cancellation_window_hours, "currency": "GBP",
        "price": "", "intake_form": "",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_add_on_rules_in_the_session_type_admin(client, as_role, massage, category, screening):
    as_role(MANAGER)
    stones = SessionType.objects.create(name="Stones", category=category, duration_minutes=30)
    url = reverse("admin:catalog_sessiontype_change", args=[stones.pk])

    itself = client.post(url, session_type_post(stones, add_on_for=[stones.pk, massage.pk]))
    priced_alone = client.post(url, session_type_post(stones, price="25.00"))
    bad_price = client.post(url, session_type_post(stones, add_on_for=[massage.pk], price="25.50", currency="JPY"))

    assert "An add-on cannot extend itself: remove Stones" in page_text(itself)
    assert "Only an add-on has a price of its own" in page_text(priced_alone)
    assert "Price can have at most 0 decimal places in JPY." in page_text(bad_price)
    stones.refresh_from_db()
    assert (stones.price, list(stones.add_on_for.all())) == (None, [])

    saved = client.post(url, session_type_post(
        stones, add_on_for=[massage.pk], price="25.00", intake_form=screening.pk,
    ))
    assert saved.status_code == 302
    stones.refresh_from_db()
    assert (stones.price, stones.intake_form, list(stones.add_on_for.all())) == (Decimal("25.00"), screening, [massage])

    chained = SessionType.objects.create(name="Stones plus", category=category, duration_minutes=10)
    response = client.post(
        reverse("admin:catalog_sessiontype_change", args=[chained.pk]),
        session_type_post(chained, add_on_for=[stones.pk]),
    )
    assert "Stones is itself an add-on: an add-on extends main session types only." in page_text(response)


# --- Query counts ---------------------------------------------------------------------------


def test_the_booking_list_costs_the_same_with_more_add_ons(
    client, as_role, book_main, hot_stones, scrub, client_a, staff, massage, staff_user, make_pack, sell,
):
    as_role(FRONT_DESK)
    credits_adjust(client=client_a, session_type=massage, amount=20, reason="many", actor=staff_user)
    credits_adjust(client=client_a, session_type=scrub, amount=20, reason="many", actor=staff_user)
    url = reverse("admin:core_booking_changelist")

    def add_group(day):
        main_booking = book_main(client_a, local(day, 10))
        addon_attach(booking=main_booking, add_on_type=scrub, actor=staff_user)
        addon_attach(booking=main_booking, add_on_type=hot_stones, actor=staff_user, answers=answers(hot_stones.intake_form))

    def measure() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    add_group(2)
    few = measure()
    for day in range(3, 9):
        add_group(day)
    assert Booking.objects.filter(main_booking__isnull=False).count() == 14
    assert measure() == few
    page = page_text(client.get(url))
    assert "Hot stones (add-on) with Coach Carter" in page and "Sold at its price, 25.00 GBP" in page


def test_the_add_on_page_costs_the_same_with_more_add_ons(client, as_role, main, category, staff, hot_stones):
    as_role(FRONT_DESK)

    def measure() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(add_on_url(main, add_on=hot_stones.pk)).status_code == 200
        return len(captured)

    few = measure()
    for n in range(5):
        extra = SessionType.objects.create(name=f"Extra {n}", category=category, duration_minutes=10, price=Decimal("5"))
        extra.add_on_for.add(main.session.session_type)
        staff.session_types.add(extra)
    assert measure() == few


def test_the_intake_form_list_costs_the_same_with_more_forms(client, as_role):
    as_role(MANAGER)
    url = reverse("admin:catalog_intakeform_changelist")

    def add_forms(n):
        start = IntakeForm.objects.count()
        for form in IntakeForm.objects.bulk_create(IntakeForm(name=f"Form {start + i}") for i in range(n)):
            IntakeQuestion.objects.create(form=form, text="Are you pregnant?", blocks_on_yes=True, block_reason="No.")

    def measure() -> int:
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        assert response.status_code == 200
        return len(captured)

    add_forms(3)
    few = measure()
    add_forms(120)
    assert measure() == few
    print("intake form list queries:", few)


# --- The group moves together ---------------------------------------------------------------


def test_cancelling_the_main_booking_at_the_desk_cancels_its_add_ons(
    client, as_role, main, hot_stones, stone_credits, client_a, staff_user
):
    add_on = addon_attach(booking=main, add_on_type=hot_stones, actor=staff_user, answers=answers(hot_stones.intake_form))
    as_role(FRONT_DESK)
    url = reverse("admin:core_booking_cancel_booking", args=[main.pk])

    page = page_text(client.get(url))
    assert "Its add-ons follow (Hot stones): cancelled under the same rule, freeing the staff member's time." in page
    response = client.post(url, {"outcome": "rule", "reason": "", "confirmed": "yes"}, follow=True)

    assert response.status_code == 200
    add_on.refresh_from_db()
    assert add_on.status == BookingStatus.CANCELLED
    assert not Session.objects.filter(session_type=hot_stones).exists()
    group = page_text(client.get(booking_url(main)))
    assert "time freed" in group


def test_the_register_marks_a_main_booking_and_its_add_on_once(
    client, as_role, book_main, client_a, scrub, staff_user, monkeypatch
):
    credits_adjust(client=client_a, session_type=scrub, amount=1, reason="gift", actor=staff_user)
    main = book_main(client_a, local(3, 10))
    add_on = addon_attach(booking=main, add_on_type=scrub, actor=staff_user)
    as_role(FRONT_DESK)
    after_the_visit = local(3, 12)
    monkeypatch.setattr(timezone, "now", lambda: after_the_visit)

    response = client.post(
        reverse("admin:core_booking_changelist") + "?when=all",
        {"action": "mark_attended_selected", "_selected_action": [main.pk, add_on.pk], "confirmed": "yes"},
        follow=True,
    )

    page = page_text(response)
    assert "2 booking(s) marked attended." in page and "only a booked one" not in page
    assert set(Booking.objects.values_list("status", flat=True)) == {BookingStatus.ATTENDED}
