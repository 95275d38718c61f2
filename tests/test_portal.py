"""The client's own page (/me/<token>/): links, isolation between clients, booking and cancelling."""
from __future__ import annotations

import threading
import types
from datetime import timedelta

import pytest
from django.core import signing
from django.db import connection
from django.test import Client as HttpClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.bookings import booking_create
from core.models import Booking, BookingStatus, Client
from core.portal_tokens import SALT, _fingerprint, portal_token_for
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from ledger.templatetags.credits import last_usable_day

pytestmark = pytest.mark.django_db


@pytest.fixture
def new_session(staff_user, coach):
    counter = {"n": 0}

    def make(session_type, *, hours=48, capacity=1, staff=None):
        counter["n"] += 1  # a minute apart at least, so the staff member is never double-booked
        return session_create(
            session_type=session_type, staff_member=staff or coach, actor=staff_user, capacity=capacity,
            starts_at=timezone.now() + timedelta(hours=hours, minutes=90 * counter["n"]),
            outside_hours_reason="tests run at any hour",
        )

    return make


def url(client, rest=""):
    return f"/me/{portal_token_for(client)}/{rest}"


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


# --- The link -----------------------------------------------------------------------------------


def test_the_page_shows_credits_with_their_last_usable_day(client, client_a, massage, make_pack, sell, coach):
    purchase = sell(client_a, make_pack([(massage, False, 6)], name="Six massages"))
    response = client.get(url(client_a))
    body = response.content.decode()
    day = last_usable_day(purchase.grants.get().expires_at)
    assert response.status_code == 200
    assert "Massage 60" in body and '<span class="credits-left">6</span>' in body
    assert f"usable until end of {day:%-d %B %Y}" in body
    assert 'href="/packs/"' in body and "Book a session" in body
    assert response["Cache-Control"].startswith("max-age=0") and response["X-Robots-Tag"] == "noindex"


def test_an_expired_link_gets_a_clear_page_with_a_way_to_ask_for_a_new_one(client, client_a, monkeypatch, settings):
    # Signed 31 days ago, valid for 30.
    settings.PORTAL_LINK_MAX_AGE = 30 * 24 * 3600
    past = timezone.now().timestamp() - 31 * 24 * 3600
    monkeypatch.setattr(signing, "time", types.SimpleNamespace(time=lambda: past))
    token = portal_token_for(client_a)
    monkeypatch.undo()
    response = client.get(f"/me/{token}/")
    assert response.status_code == 410
    assert "This link has expired" in response.content.decode()
    assert 'href="/me/link/"' in response.content.decode()
    assert "Ada" not in response.content.decode()


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-3] + ("A" if t[-3] != "A" else "B") + t[-2:],  # one character of the signature
    lambda t: "x" + t[1:],  # one character of the payload
    lambda t: "garbage",
    lambda t: t + "extra",
])
def test_a_tampered_link_is_refused_with_403_and_the_new_link_page(client, client_a, mangle):
    response = client.get(f"/me/{mangle(portal_token_for(client_a))}/")
    assert response.status_code == 403
    body = response.content.decode()
    assert "This link is not valid" in body and 'href="/me/link/"' in body and "Ada" not in body


def test_another_clients_id_signed_with_the_wrong_fingerprint_is_refused(client, client_a, client_b):
    # Even with our secret, swapping B's id into A's payload fails: the fingerprint is A's email.
    forged = signing.dumps({"c": client_b.pk, "f": _fingerprint(client_a)}, salt=SALT, compress=True)
    response = client.get(f"/me/{forged}/")
    assert response.status_code == 403 and "Grace" not in response.content.decode()


def test_changing_the_email_invalidates_old_links(client, client_a):
    token = portal_token_for(client_a)
    client_a.email = "ada.new@example.com"
    client_a.save()
    assert client.get(f"/me/{token}/").status_code == 403
    assert client.get(url(client_a)).status_code == 200


def test_the_new_link_path_is_never_taken_for_a_token():
    from django.urls import resolve

    from core import portal_views

    # Whatever order the patterns are in, "link" is not a token: /me/link/ is the new-link page's.
    assert resolve("/me/link/").func is not portal_views.home
    assert resolve("/me/links/").func is portal_views.home


# --- One client never sees or changes another's -------------------------------------------------


def test_another_clients_token_never_shows_or_changes_their_bookings(
    client, client_a, client_b, massage, make_pack, sell, new_session, staff_user,
):
    pack = make_pack([(massage, False, 5)])
    sell(client_a, pack), sell(client_b, pack)
    session = new_session(massage, capacity=4)
    late_session = new_session(massage, hours=1)
    a_booking = booking_create(client=client_a, session=session, actor=staff_user)
    a_late = booking_create(client=client_a, session=late_session, actor=staff_user)
    entries = LedgerEntry.objects.count()

    home = client.get(url(client_b)).content.decode()
    assert "Ada" not in home and f"booking-{a_booking.pk}" not in home
    for booking in (a_booking, a_late):
        assert client.get(url(client_b, f"bookings/{booking.pk}/cancel/")).status_code == 404
        assert client.post(url(client_b, f"bookings/{booking.pk}/cancel/"),
                           {"expected": "late"}).status_code == 404
    # Booking a session with B's token books B (the session id names a class, not a client).
    assert client.post(url(client_b, f"book/{session.pk}/")).status_code == 303
    a_booking.refresh_from_db(), a_late.refresh_from_db()
    assert a_booking.status == a_late.status == BookingStatus.BOOKED
    assert balance(client_a, massage) == 3
    assert list(LedgerEntry.objects.filter(id__gt=0).order_by("id")[entries:].values_list("client_id", "kind")) == [
        (client_b.pk, EntryKind.USED)
    ]
    for bad in ("bookings/abc/cancel/", "bookings/99999999/cancel/", "book/abc/", "book/99999999/"):
        method = client.post if bad.startswith("book/") else client.get
        assert method(url(client_b, bad)).status_code == 404


# --- Booking and cancelling: the front desk's rules ----------------------------------------------


def test_book_lists_only_sessions_with_a_place_and_a_usable_credit(
    client, client_a, client_b, massage, physio, make_pack, sell, new_session, staff_user,
):
    sell(client_a, make_pack([(massage, False, 2)]))
    sell(client_b, make_pack([(massage, False, 2)]))
    open_one = new_session(massage)
    full = new_session(massage)
    booking_create(client=client_b, session=full, actor=staff_user)
    mine = new_session(massage, capacity=3)
    booking_create(client=client_a, session=mine, actor=staff_user)
    no_credit = new_session(physio)
    too_far = new_session(massage, hours=24 * 30)
    body = client.get(url(client_a, "book/")).content.decode()
    assert f"session-{open_one.pk}" in body
    for hidden in (full, mine, no_credit, too_far):
        assert f"session-{hidden.pk}" not in body
    assert f"session-{open_one.pk}" not in client.get(url(client_a, f"book/?session_type={physio.pk}")).content.decode()
    assert client.get(url(client_a, "book/?session_type=x&staff=')")).status_code == 200


def test_booking_uses_one_credit_through_the_ledger(client, client_a, massage, make_pack, sell, new_session):
    sell(client_a, make_pack([(massage, False, 3)]))
    session = new_session(massage)
    response = client.post(url(client_a, f"book/{session.pk}/"), follow=True)
    booking = Booking.objects.get(client=client_a)
    assert booking.session == session and booking.used_entry.kind == EntryKind.USED
    assert booking.booked_by is None  # the client, not a staff member
    assert balance(client_a, massage) == 2
    assert "Booked:" in response.content.decode() and f"booking-{booking.pk}" in response.content.decode()
    assert ledger_check().ok


def test_a_full_session_is_refused_with_the_front_desks_words(
    client, client_a, client_b, massage, make_pack, sell, new_session, staff_user,
):
    pack = make_pack([(massage, False, 3)])
    sell(client_a, pack), sell(client_b, pack)
    session = new_session(massage)
    booking_create(client=client_b, session=session, actor=staff_user)
    response = client.post(url(client_a, f"book/{session.pk}/"))
    assert response.status_code == 409
    assert "This session is full (1 of 1 places taken)." in response.content.decode()
    assert balance(client_a, massage) == 3 and not Booking.objects.filter(client=client_a).exists()


def test_no_credit_is_refused_with_the_ledgers_words(client, client_a, massage, new_session):
    session = new_session(massage)
    response = client.post(url(client_a, f"book/{session.pk}/"))
    assert response.status_code == 409
    assert "No credit: the client holds no Massage 60 credits." in response.content.decode()
    assert not Booking.objects.exists() and not LedgerEntry.objects.exists()


def test_a_started_session_cannot_be_booked(client, client_a, massage, make_pack, sell, new_session):
    sell(client_a, make_pack([(massage, False, 3)]))
    session = new_session(massage)
    session.starts_at = timezone.now() - timedelta(minutes=5)
    session.save()
    response = client.post(url(client_a, f"book/{session.pk}/"))
    assert response.status_code == 409 and "already started" in response.content.decode()
    assert not Booking.objects.exists()


def test_a_client_without_credits_sees_the_packs_that_would_give_one(
    client, client_a, massage, physio, make_pack, sell,
):
    sell(client_a, make_pack([(massage, False, 3)], sell_online=False))
    physio_pack = make_pack([(physio, False, 5)], name="Five physio")
    make_pack([(physio, False, 5)], name="Hidden physio", sell_online=False)
    body = client.get(url(client_a)).content.decode()
    assert "No Physio credits yet?" in body and f'href="/packs/#pack-{physio_pack.pk}"' in body
    assert "Hidden physio" not in body and "No Massage 60 credits" not in body


def test_cancelling_in_time_returns_the_credit(client, client_a, massage, make_pack, sell, new_session):
    sell(client_a, make_pack([(massage, False, 3)]))
    client.post(url(client_a, f"book/{new_session(massage).pk}/"))
    booking = Booking.objects.get()
    page = client.get(url(client_a, f"bookings/{booking.pk}/cancel/")).content.decode()
    assert "your credit comes back" in page
    response = client.post(url(client_a, f"bookings/{booking.pk}/cancel/"), {"expected": "in_time"}, follow=True)
    booking.refresh_from_db()
    assert booking.status == BookingStatus.CANCELLED and balance(client_a, massage) == 3
    assert "your credit is back" in response.content.decode()
    # A second cancel (a double click) changes nothing and says why.
    again = client.post(url(client_a, f"bookings/{booking.pk}/cancel/"), {"expected": "in_time"})
    assert again.status_code == 409 and "already cancelled" in again.content.decode()
    assert balance(client_a, massage) == 3 and ledger_check().ok


def test_a_late_cancel_warns_plainly_then_forfeits_the_credit(
    client, client_a, massage, make_pack, sell, new_session,
):
    sell(client_a, make_pack([(massage, False, 3)]))
    session = new_session(massage, hours=1)  # starts within the 24-hour window
    client.post(url(client_a, f"book/{session.pk}/"))
    booking = Booking.objects.get()
    page = client.get(url(client_a, f"bookings/{booking.pk}/cancel/")).content.decode()
    assert "you lose the credit" in page and "Cancel anyway and lose the credit" in page
    assert "your credit comes back" not in page
    client.post(url(client_a, f"bookings/{booking.pk}/cancel/"), {"expected": "late"})
    booking.refresh_from_db()
    assert booking.status == BookingStatus.LATE_CANCELLED and balance(client_a, massage) == 2
    assert LedgerEntry.objects.filter(kind=EntryKind.FORFEITED, booking=booking).exists()


def test_a_window_that_closed_after_the_page_was_shown_asks_again(
    client, client_a, massage, make_pack, sell, new_session,
):
    sell(client_a, make_pack([(massage, False, 3)]))
    client.post(url(client_a, f"book/{new_session(massage, hours=1).pk}/"))
    booking = Booking.objects.get()
    # The page said "in time" (the form's hidden field); the window is closed now: nothing is lost unseen.
    response = client.post(url(client_a, f"bookings/{booking.pk}/cancel/"), {"expected": "in_time"})
    booking.refresh_from_db()
    assert response.status_code == 409 and "you lose the credit" in response.content.decode()
    assert booking.status == BookingStatus.BOOKED and balance(client_a, massage) == 2


def test_posts_need_the_csrf_token(client_a, massage, make_pack, sell, new_session):
    sell(client_a, make_pack([(massage, False, 3)]))
    strict = HttpClient(enforce_csrf_checks=True)
    assert strict.post(url(client_a, f"book/{new_session(massage).pk}/")).status_code == 403
    assert not Booking.objects.exists()


def test_the_page_runs_a_fixed_number_of_queries(client, client_a, massage, physio, make_pack, sell, new_session):
    sell(client_a, make_pack([(massage, False, 20)]))
    make_pack([(physio, False, 5)], name="Five physio")

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url(client_a)).status_code == 200
        return len(ctx.captured_queries)

    client.post(url(client_a, f"book/{new_session(massage).pk}/"))
    one = queries()
    for _ in range(9):
        client.post(url(client_a, f"book/{new_session(massage).pk}/"))
    assert Booking.objects.count() == 10
    assert queries() == one
    with CaptureQueriesContext(connection) as ctx:
        client.get(url(client_a, "book/"))
    book_queries = len(ctx.captured_queries)
    for _ in range(5):
        new_session(massage, capacity=3)
    with CaptureQueriesContext(connection) as ctx:
        client.get(url(client_a, "book/"))
    assert len(ctx.captured_queries) == book_queries


# --- Two clients race for the last place ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_clients_racing_for_the_last_place_one_wins(massage, make_pack, sell, new_session, staff_user):
    pack = make_pack([(massage, False, 2)])
    racers = [Client.objects.create(name=f"Racer {i}", email=f"racer{i}@example.com") for i in range(2)]
    early = Client.objects.create(name="Early bird", email="early@example.com")
    for c in (*racers, early):
        sell(c, pack)
    session = new_session(massage, capacity=2)
    booking_create(client=early, session=session, actor=staff_user)  # one place left
    barrier = threading.Barrier(2)
    results: dict[str, int] = {}
    urls = {c.name: url(c, f"book/{session.pk}/") for c in racers}

    def race(name: str) -> None:
        try:
            http = HttpClient()
            barrier.wait()
            results[name] = http.post(urls[name]).status_code
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(c.name,)) for c in racers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == [303, 409]
    assert Booking.objects.filter(session=session, status=BookingStatus.BOOKED).count() == 2
    assert sorted(balance(c, massage) for c in racers) == [1, 2]
    assert ledger_check().ok


def test_an_unlimited_pack_shows_its_window_and_books_without_counting(
    client, client_a, physio, make_pack, sell, new_session,
):
    sell(client_a, make_pack([(physio, True)], validity_amount=1, validity_unit="months",
                             valid_from="first_session"))
    assert "your window starts with your first session" in client.get(url(client_a)).content.decode()
    session = new_session(physio)
    response = client.post(url(client_a, f"book/{session.pk}/"), follow=True)
    body = response.content.decode()
    grant = client_a.grants.get()
    assert "Included in your membership." in body
    assert f"Unlimited until end of {last_usable_day(grant.expires_at):%-d %B %Y}" in body
    assert Booking.objects.get().used_entry.amount == 0
