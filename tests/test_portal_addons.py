"""Add-ons on the client's own page (/me/<token>/bookings/<id>/extras/...), seed 003.

The rules are core.addons' (tested in tests/test_addons.py); these tests prove the page offers
them, explains refusals in the client's words, keeps one client out of another's bookings and
changes nothing on GET, a refusal or a forged request.

The massage sits at 10:00 three days ahead (the business's time zone), so the slot right after
it, 11:00–11:30, is inside the coach's working hours whatever the clock says.
"""
from __future__ import annotations

import threading
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client as HttpClient
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from catalog.models import IntakeForm, IntakeQuestion, SessionType
from core.bookings import booking_create, booking_mark_attended
from core.models import Booking, BookingStatus, BusinessSettings, IntakeResponse, Session
from core.portal_tokens import portal_token_for
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from payments.models import Purchase, PurchaseStatus

pytestmark = pytest.mark.django_db

PREGNANT = "Hot stones are not suitable during pregnancy."


def local(days: int, hour: int, minute: int = 0) -> datetime:
    day = timezone.localdate() + timedelta(days=days)
    return timezone.make_aware(datetime.combine(day, time(hour, minute)))


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def counts() -> dict:
    """Everything adding an extra writes: a refusal leaves all of it as it was."""
    return {
        "sessions": Session.objects.count(), "bookings": Booking.objects.count(),
        "purchases": Purchase.objects.count(), "responses": IntakeResponse.objects.count(),
        "entries": LedgerEntry.objects.count(),
    }


@pytest.fixture(autouse=True)
def ledger_balances_after_each_test(db):
    yield
    result = ledger_check()
    assert result.ok, result.problems


@pytest.fixture
def screening(db):
    form = IntakeForm.objects.create(name="Hot stones screening", intro="A few questions before hot stones.")
    IntakeQuestion.objects.create(form=form, position=1, text="Are you pregnant?", blocks_on_yes=True,
                                  block_reason=PREGNANT)
    IntakeQuestion.objects.create(form=form, position=2, text="Do you have any skin conditions?")
    IntakeQuestion.objects.create(form=form, position=3, text="Anything else we should know?", kind="text",
                                  required=False)
    return form


@pytest.fixture
def hot_stones(db, category, massage, screening, diary):
    add_on = SessionType.objects.create(
        name="Hot stones", category=category, duration_minutes=30, price=Decimal("25.00"), currency="GBP",
        intake_form=screening,
    )
    add_on.add_on_for.add(massage)
    diary.session_types.add(add_on)
    return add_on


@pytest.fixture
def book(diary, massage, staff_user, make_pack, sell):
    """Book a client on a massage with the coach (selling them massage credits first)."""
    pack = make_pack([(massage, False, 10)], name="Ten massages")

    def make(client, starts_at=None, *, session_type=massage, paid_at=None):
        if not client.grants.filter(session_type=session_type).exists():
            sell(client, pack if session_type == massage else make_pack([(session_type, False, 10)]),
                 paid_at=paid_at or timezone.now() - timedelta(days=10))
        session = session_create(
            session_type=session_type, staff_member=diary, starts_at=starts_at or local(3, 10), actor=staff_user,
            outside_hours_reason="tests",
        )
        return booking_create(client=client, session=session, actor=staff_user)

    return make


@pytest.fixture
def main(client_a, book, hot_stones):
    return book(client_a)


def url(client, name: str, *args) -> str:
    return reverse(f"portal:{name}", args=[portal_token_for(client), *args])


def home(client) -> str:
    return url(client, "home")


def tail(path: str) -> str:
    """A page's link without the token, which is signed anew (with a new timestamp) on each page."""
    return "/" + path.split("/", 3)[3]


def question_ids(form) -> list[str]:
    return [str(pk) for pk in form.questions.order_by("position").values_list("pk", flat=True)]


def form_data(form, *answers: str) -> dict[str, str]:
    """POST data answering the form's questions in order."""
    return {f"q-{qid}": answer for qid, answer in zip(question_ids(form), answers)}


# --- Offered only where the rules allow ---------------------------------------------------------


def test_an_extra_is_offered_for_upcoming_bookings_of_a_linked_session_type_only(
    client, client_a, book, main, physio, massage, staff_user, hot_stones,
):
    physio_booking = book(client_a, local(4, 10), session_type=physio)
    past = book(client_a, timezone.now() - timedelta(hours=2))
    booking_mark_attended(booking=past, actor=staff_user)

    body = client.get(home(client_a)).content.decode()
    extras_link = url(client_a, "extras", main.pk)
    assert body.count("Add an extra") == 1 and tail(extras_link) in body
    assert tail(url(client_a, "extras", physio_booking.pk)) not in body
    assert tail(url(client_a, "extras", past.pk)) not in body

    page = client.get(extras_link).content.decode()
    assert "Hot stones" in page and "30 min" in page and "11:00–11:30" in page
    assert "£25.00, pay at your visit" in page and "You answer a few health questions first." in page
    assert tail(url(client_a, "extra_add", main.pk, hot_stones.pk)) in page

    # A started session and a session type with no extras: the page says so, no form is offered.
    started = client.get(url(client_a, "extras", past.pk))
    assert "This booking is attended: extras can&#x27;t be added to it." in started.content.decode()
    assert tail(url(client_a, "extra_add", past.pk, hot_stones.pk)) not in started.content.decode()
    assert "There are no extras to add to this session." in client.get(
        url(client_a, "extras", physio_booking.pk)).content.decode()
    refused = client.get(url(client_a, "extra_add", past.pk, hot_stones.pk))
    assert refused.status_code == 409 and "extras can&#x27;t be added" in refused.content.decode()
    assert client.get(url(client_a, "extra_add", physio_booking.pk, hot_stones.pk)).status_code == 404


def test_once_added_the_extra_is_no_longer_offered_for_that_booking(client, client_a, main, screening, hot_stones):
    client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    body = client.get(home(client_a)).content.decode()
    assert "Add an extra" not in body and "+ Hot stones" in body
    again = client.get(url(client_a, "extra_add", main.pk, hot_stones.pk))
    assert again.status_code == 409 and "Hot stones is already part of this booking." in again.content.decode()


# --- One client never sees or changes another's -------------------------------------------------


def test_another_clients_booking_is_not_found_and_nothing_changes(
    client, client_a, client_b, main, screening, hot_stones, book,
):
    book(client_b, local(5, 10))
    before = counts()
    for path in (url(client_b, "extras", main.pk), url(client_b, "extra_add", main.pk, hot_stones.pk)):
        response = client.get(path)
        assert response.status_code == 404 and "We could not find this booking." in response.content.decode()
        assert "Ada" not in response.content.decode()
    posted = client.post(url(client_b, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    assert posted.status_code == 404
    assert counts() == before and not main.add_ons.exists()
    for bad in ("abc", "99999999", "1" * 20):
        assert client.get(url(client_a, "extras", bad)).status_code == 404
        assert client.post(url(client_a, "extra_add", bad, hot_stones.pk)).status_code == 404
    assert client.post(url(client_a, "extra_add", main.pk, "99999999")).status_code == 404
    assert counts() == before


def test_an_extras_own_booking_takes_no_extras(client, client_a, main, screening, hot_stones):
    client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    extra = main.add_ons.get()
    assert client.get(url(client_a, "extras", extra.pk)).status_code == 404


# --- The intake form ----------------------------------------------------------------------------


def test_the_form_shows_the_intro_questions_and_what_it_costs(client, client_a, main, hot_stones, screening):
    response = client.get(url(client_a, "extra_add", main.pk, hot_stones.pk))
    body = response.content.decode()
    assert response.status_code == 200
    assert "A few questions before hot stones." in body
    pregnant, skin, note = question_ids(screening)
    assert body.count(f'name="q-{pregnant}"') == 2 and body.count(f'name="q-{skin}"') == 2  # yes and no
    assert f'<textarea name="q-{note}"' in body and "(optional)" in body
    assert "£25.00, pay at your visit" in body and "Add Hot stones" in body
    assert counts()["bookings"] == 1  # a GET adds nothing


def test_a_blocking_answer_adds_nothing_and_shows_the_reason(client, client_a, main, hot_stones, screening):
    before = counts()
    response = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk),
                           form_data(screening, "yes", "no", "First trimester"))
    body = response.content.decode()
    assert response.status_code == 409
    assert PREGNANT in body and "Nothing was added and your answers were not kept." in body
    assert "Massage 60" in body and "stays booked as it was" in body
    assert counts() == before and not main.add_ons.exists()
    main.refresh_from_db()
    assert main.status == BookingStatus.BOOKED


def test_non_blocking_answers_are_stored_with_the_extra(client, client_a, main, hot_stones, screening):
    response = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk),
                           form_data(screening, "no", "yes", "Eczema on my left arm"))
    assert response.status_code == 303 and response["Location"].endswith(f"#booking-{main.pk}")
    extra = main.add_ons.get()
    assert extra.add_on_type == hot_stones and extra.client == client_a and extra.booked_by is None
    assert (extra.session.starts_at, extra.session.ends_at) == (local(3, 11), local(3, 11, 30))
    intake = extra.intake
    assert intake.form == screening and intake.submitted_by is None
    assert [(a["text"], a["answer"]) for a in intake.answers] == [
        ("Are you pregnant?", "no"), ("Do you have any skin conditions?", "yes"),
        ("Anything else we should know?", "Eczema on my left arm"),
    ]
    page = client.get(response["Location"].split("#")[0])
    body = page.content.decode()
    assert "Added Hot stones (11:00–11:30) to your Massage 60. £25.00 to pay at your visit." in body
    group = body.split(f'id="booking-{main.pk}"')[1].split('class="visit"')[0]
    assert f'id="extra-{extra.pk}"' in group and "+ Hot stones" in group
    assert "11:00–11:30 · £25.00 to pay at your visit" in group


def test_missing_required_answers_are_shown_under_each_question(client, client_a, main, hot_stones, screening):
    before = counts()
    pregnant, skin, note = question_ids(screening)
    response = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), {f"q-{note}": "Hello"})
    body = response.content.decode()
    assert response.status_code == 400
    assert "Please answer the questions marked below." in body
    for qid in (pregnant, skin):
        fieldset = body.split(f'id="question-{qid}"')[1].split("</fieldset>")[0]
        assert 'aria-invalid="true"' in fieldset and "Please answer this question." in fieldset
    note_field = body.split(f'id="question-{note}"')[1].split("</fieldset>")[0]
    assert "Please answer" not in note_field and ">Hello</textarea>" in note_field  # kept, not retyped
    # A forged answer is no answer either; the service's words are shown.
    forged = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "maybe", "no"))
    assert forged.status_code == 400 and "Answer yes or no." in forged.content.decode()
    assert counts() == before


# --- Paid with a credit, or at its price --------------------------------------------------------


def test_an_extra_uses_the_clients_own_credit_when_they_have_one(
    client, client_a, main, hot_stones, screening, make_pack, sell,
):
    sell(client_a, make_pack([(hot_stones, False, 3)], name="Three hot stones"))
    page = client.get(url(client_a, "extras", main.pk)).content.decode()
    assert "Uses 1 of your Hot stones credits" in page and "pay at your visit" not in page
    response = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"),
                           follow=True)
    extra = main.add_ons.get()
    assert extra.used_entry.kind == EntryKind.USED and extra.purchase is None
    assert balance(client_a, hot_stones) == 2 and not Purchase.objects.filter(pack__isnull=True).exists()
    body = response.content.decode()
    assert "One credit was used." in body and "1 credit from Three hot stones" in body


def test_without_a_credit_the_extra_is_sold_at_its_price_to_pay_at_the_visit(
    client, client_a, main, hot_stones, screening,
):
    client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    extra = main.add_ons.get()
    purchase = extra.purchase
    assert extra.used_entry is None and purchase.pack is None and purchase.client == client_a
    assert (purchase.status, purchase.price, purchase.currency) == (PurchaseStatus.PENDING, Decimal("25.00"), "GBP")
    assert purchase.snapshot["add_on"] is True and purchase.snapshot["name"] == "Add-on: Hot stones"
    assert balance(client_a, hot_stones) == 0


def test_prepaid_only_refuses_an_extra_at_its_price_on_the_page(client, client_a, main, hot_stones, screening):
    settings = BusinessSettings.current()
    settings.prepaid_only = True
    settings.save()
    before = counts()
    page = client.get(url(client_a, "extras", main.pk)).content.decode()
    assert "Not available: Add-ons are booked here only with a credit" in page
    assert tail(url(client_a, "extra_add", main.pk, hot_stones.pk)) not in page
    response = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    assert response.status_code == 409 and "only with a credit" in response.content.decode()
    assert counts() == before


# --- The diary: the staff member must be free right after -------------------------------------


def test_when_the_staff_member_is_busy_after_the_session_the_reason_and_a_way_back(
    client, client_a, client_b, main, book, hot_stones, screening,
):
    book(client_b, local(3, 11))  # the coach's next client, straight after Ada's massage
    page = client.get(url(client_a, "extras", main.pk)).content.decode()
    assert "Not available: Coach Carter has another session right after this one." in page
    assert tail(url(client_a, "extra_add", main.pk, hot_stones.pk)) not in page
    before = counts()
    shown = client.get(url(client_a, "extra_add", main.pk, hot_stones.pk))
    posted = client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    for response in (shown, posted):
        body = response.content.decode()
        assert response.status_code == 409 and "Coach Carter has another session right after this one." in body
        assert "Nothing was added." in body and tail(url(client_a, "extras", main.pk)) in body
    assert counts() == before


# --- Double submits, CSRF, POST only -------------------------------------------------------------


def test_a_double_submit_adds_one_extra_and_says_so_calmly(client, client_a, main, hot_stones, screening):
    path = url(client_a, "extra_add", main.pk, hot_stones.pk)
    first = client.post(path, form_data(screening, "no", "no"))
    second = client.post(path, form_data(screening, "no", "no"), follow=True)
    assert first.status_code == 303 and second.redirect_chain[0][1] == 303
    assert "Hot stones is already part of this booking." in second.content.decode()
    assert main.add_ons.count() == 1 and Purchase.objects.filter(pack__isnull=True).count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_submits_at_once_add_one_extra(client_a, book, hot_stones, screening):
    main = book(client_a)
    path = url(client_a, "extra_add", main.pk, hot_stones.pk)
    data = form_data(screening, "no", "no")
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def submit() -> None:
        try:
            http = HttpClient()
            barrier.wait()
            statuses.append(http.post(path, data).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [303, 303]  # the second one lands on the page showing the extra
    assert Booking.objects.filter(main_booking=main, status=BookingStatus.BOOKED).count() == 1
    assert Session.objects.filter(session_type=hot_stones).count() == 1


def test_posts_need_the_csrf_token_and_gets_change_nothing(client_a, main, hot_stones, screening):
    # (The extras list is GET only; its POST is refused whatever the token.)
    before = counts()
    strict = HttpClient(enforce_csrf_checks=True)
    path = url(client_a, "extra_add", main.pk, hot_stones.pk)
    assert strict.post(path, form_data(screening, "no", "no")).status_code == 403
    assert strict.get(path).status_code == 200
    assert HttpClient().post(url(client_a, "extras", main.pk)).status_code == 405
    assert counts() == before


# --- Cancelling ---------------------------------------------------------------------------------


def test_cancelling_the_booking_from_the_page_cancels_its_extra(
    client, client_a, main, hot_stones, screening, make_pack, sell,
):
    sell(client_a, make_pack([(hot_stones, False, 3)]))
    client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    extra = main.add_ons.get()
    page = client.get(url(client_a, "cancel", main.pk)).content.decode()
    assert "+ Hot stones" in page and "Your extras are cancelled with it" in page
    response = client.post(url(client_a, "cancel", main.pk), {"expected": "in_time"}, follow=True)
    main.refresh_from_db(), extra.refresh_from_db()
    assert main.status == extra.status == BookingStatus.CANCELLED
    assert balance(client_a, hot_stones) == 3  # the extra's credit came back with the massage's
    assert not Session.objects.filter(session_type=hot_stones).exists()  # the coach's time is free again
    body = response.content.decode()
    assert "your credit is back. Cancelled with it: Hot stones." in body
    assert "Nothing booked yet." in body


def test_an_extra_can_be_removed_on_its_own(client, client_a, main, hot_stones, screening):
    client.post(url(client_a, "extra_add", main.pk, hot_stones.pk), form_data(screening, "no", "no"))
    extra = main.add_ons.get()
    page = client.get(url(client_a, "cancel", extra.pk)).content.decode()
    assert "Remove this extra?" in page and "An extra to your Massage 60, which stays booked." in page
    assert "Nothing to pay: its price is cancelled with it." in page
    response = client.post(url(client_a, "cancel", extra.pk), {"expected": "in_time"}, follow=True)
    main.refresh_from_db(), extra.refresh_from_db()
    assert main.status == BookingStatus.BOOKED and extra.status == BookingStatus.CANCELLED
    assert extra.purchase.status == PurchaseStatus.CANCELLED
    assert "Removed: Hot stones with Coach Carter" in response.content.decode()
    assert "; nothing to pay for it." in response.content.decode()
    # Offered again, as the coach is free again.
    assert tail(url(client_a, "extras", main.pk)) in response.content.decode()


# --- Fixed query counts ------------------------------------------------------------------------


def test_the_pages_run_a_fixed_number_of_queries(client, client_a, book, hot_stones, screening, category, diary):
    def queries(path: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(path).status_code == 200
        return len(ctx.captured_queries)

    first = book(client_a, local(3, 10))
    client.post(url(client_a, "extra_add", first.pk, hot_stones.pk), form_data(screening, "no", "no"))
    second = book(client_a, local(3, 14))  # no extra yet: one option, a three-question form
    home_one = queries(home(client_a))
    extras_one = queries(url(client_a, "extras", second.pk))
    form_one = queries(url(client_a, "extra_add", second.pk, hot_stones.pk))

    for day in (4, 5, 6):
        booking = book(client_a, local(day, 10))
        client.post(url(client_a, "extra_add", booking.pk, hot_stones.pk), form_data(screening, "no", "no"))
    for n in range(3):
        more = SessionType.objects.create(name=f"Extra {n}", category=category, duration_minutes=15,
                                          price=Decimal("5"), intake_form=screening)
        more.add_on_for.add(first.session.session_type)
        diary.session_types.add(more)
    for n in range(4):
        IntakeQuestion.objects.create(form=screening, position=10 + n, text=f"Question {n}?", required=False)
    assert Booking.objects.filter(main_booking__isnull=False).count() == 4
    assert queries(home(client_a)) == home_one
    page = client.get(url(client_a, "extras", second.pk)).content.decode()
    assert page.count('class="option"') == 4
    assert queries(url(client_a, "extras", second.pk)) == extras_one
    assert client.get(url(client_a, "extra_add", second.pk, hot_stones.pk)).content.decode().count("<fieldset") == 7
    assert queries(url(client_a, "extra_add", second.pk, hot_stones.pk)) == form_one
