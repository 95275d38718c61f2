"""Sending a client their personal link: by email from /me/link/ (never saying whether the email is
a client's, rate-limited), from the client admin, and on the purchase success page."""
import html
import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client as HttpClient
from django.test.utils import CaptureQueriesContext
from django.utils.html import strip_tags

from core.models import Client
from core.portal_link import portal_link_send
from core.portal_tokens import client_from_token, portal_token_for, portal_url
from payments.models import Purchase, PurchaseChannel
from payments.services import purchase_create, purchase_mark_paid
from tests.frontdesk import make_user

pytestmark = pytest.mark.django_db

LINK_URL = "/me/link/"


@pytest.fixture(autouse=True)
def clean_limits(settings):
    # The rate limits live in the shared cache; every test starts with none counted.
    settings.PUBLIC_BASE_URL = "https://packs.example.com"
    settings.BUSINESS_NAME = "Studio Nine"
    cache.clear()
    yield
    cache.clear()


def text(response) -> str:
    return html.unescape(response.content.decode())


def ask(http, email, ip="203.0.113.7", **extra):
    return http.post(LINK_URL, {"email": email}, REMOTE_ADDR=ip, **extra)


def token_in(body: str) -> str:
    match = re.search(r"https://packs\.example\.com/me/([^/\s\"<]+)/", body)
    assert match, body
    return match.group(1)


# --- /me/link/ ----------------------------------------------------------------------------------


def test_the_form_is_a_plain_page_with_an_email_field(client):
    response = client.get(LINK_URL)
    assert response.status_code == 200
    page = text(response)
    assert 'name="email"' in page and "csrfmiddlewaretoken" in page and "Studio Nine" in page


def test_a_known_email_gets_one_email_with_a_working_link_in_text_and_html(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks, settings
):
    settings.PORTAL_LINK_MAX_AGE = 14 * 24 * 3600
    with django_capture_on_commit_callbacks(execute=True):
        response = ask(client, "ada@example.com")

    assert response.status_code == 200
    assert "If ada@example.com is on file with us, we have sent a personal link" in strip_tags(text(response))
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert mail.to == ["ada@example.com"]
    assert "Studio Nine" in mail.subject
    assert "Ada Lovelace" in mail.body and "Studio Nine" in mail.body and "14 days" in mail.body
    html_body, mimetype = mail.alternatives[0]
    assert mimetype == "text/html"
    assert "Studio Nine" in html_body and "14 days" in html_body
    assert client_from_token(token_in(mail.body)) == client_a
    assert client_from_token(token_in(html_body)) == client_a
    # The link opens the client's own page.
    assert client.get(f"/me/{token_in(mail.body)}/").status_code == 200


def test_the_email_is_matched_in_any_case_and_an_archived_client_still_gets_it(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks
):
    Client.objects.filter(pk=client_a.pk).update(archived=True)
    with django_capture_on_commit_callbacks(execute=True):
        response = ask(client, "  ADA@Example.COM ")
    assert response.status_code == 200
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]
    assert client_from_token(token_in(mailoutbox[0].body)) == client_a


def test_an_unknown_email_gets_the_same_page_and_no_email(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as known_queries:
        known = ask(client, "ada@example.com")
    mailoutbox.clear()
    with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as unknown_queries:
        unknown = ask(client, "nobody@example.com")

    assert unknown.status_code == known.status_code == 200
    # The pages differ only by the address the person typed in (and the per-response CSP nonce).
    def same(page, email):
        return re.sub(r'nonce="[^"]*"', 'nonce=""', text(page).replace(email, "X"))

    assert same(unknown, "nobody@example.com") == same(known, "ada@example.com")
    # The same work in the database either way: one lookup.
    assert len(unknown_queries) == len(known_queries) == 1
    assert mailoutbox == []


@pytest.mark.parametrize("email", ["", "not-an-email", "ada@", "a" * 250 + "@example.com"])
def test_a_bad_email_is_a_form_error_and_nothing_is_sent(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks, email
):
    with django_capture_on_commit_callbacks(execute=True):
        response = ask(client, email)
    assert response.status_code == 400
    assert 'aria-invalid="true"' in text(response)
    assert mailoutbox == []


def test_the_form_needs_a_csrf_token(client_a, mailoutbox, django_capture_on_commit_callbacks):
    http = HttpClient(enforce_csrf_checks=True)
    with django_capture_on_commit_callbacks(execute=True):
        refused = ask(http, "ada@example.com")
    assert refused.status_code == 403 and mailoutbox == []

    page = http.get(LINK_URL)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    with django_capture_on_commit_callbacks(execute=True):
        accepted = http.post(LINK_URL, {"email": "ada@example.com", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 200 and len(mailoutbox) == 1


def test_at_most_three_requests_per_email_an_hour_known_or_not(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks, settings
):
    with django_capture_on_commit_callbacks(execute=True):
        answers = [ask(client, "ada@example.com", ip=f"198.51.100.{i}").status_code for i in range(4)]
        unknown = [ask(client, "NOBODY@example.com", ip=f"198.51.100.{i}").status_code for i in range(4)]
    assert answers == unknown == [200, 200, 200, 429]
    assert len(mailoutbox) == 3

    with django_capture_on_commit_callbacks(execute=True):
        limited = ask(client, "Ada@Example.com", ip="198.51.100.99")  # another case is the same address
    assert limited.status_code == 429 and "Too many requests" in text(limited)
    assert limited["Retry-After"] == "3600"
    assert "ada@example.com is on file" not in strip_tags(text(limited)).lower()
    assert len(mailoutbox) == 3


def test_at_most_ten_requests_per_ip_an_hour(client, client_a, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        first_ten = [ask(client, f"someone{i}@example.com").status_code for i in range(9)]
        first_ten.append(ask(client, "ada@example.com").status_code)
        over = ask(client, "ada@example.com")
        bad_input_over = ask(client, "not-an-email")
        other_ip = ask(client, "ada@example.com", ip="192.0.2.44")
    assert first_ten == [200] * 10
    assert over.status_code == bad_input_over.status_code == 429
    assert other_ip.status_code == 200
    assert len(mailoutbox) == 2  # the 10th request and the other IP's


def test_behind_a_trusted_proxy_the_limit_counts_the_forwarded_address(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks, settings
):
    settings.TRUSTED_PROXY_COUNT = 1
    settings.PORTAL_LINK_REQUESTS_PER_IP = 1
    proxy = "10.0.0.1"
    first = ask(client, "x@example.com", ip=proxy, HTTP_X_FORWARDED_FOR="198.51.100.1")
    # A forged left-hand entry does not give a fresh address: the proxy's own entry is the last one.
    same = ask(client, "y@example.com", ip=proxy, HTTP_X_FORWARDED_FOR="1.2.3.4, 198.51.100.1")
    other = ask(client, "z@example.com", ip=proxy, HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert (first.status_code, same.status_code, other.status_code) == (200, 429, 200)


# --- The service --------------------------------------------------------------------------------


def test_the_email_leaves_only_after_the_transaction_commits(client_a, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        portal_link_send(client=client_a)
    assert mailoutbox == [] and len(callbacks) == 1
    callbacks[0]()
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]


# --- The admin ----------------------------------------------------------------------------------


def send_url(client_obj) -> str:
    return f"/admin/core/client/{client_obj.pk}/send-personal-link/"


def test_admin_sends_the_link_from_the_clients_page_after_confirming(
    admin_client, client_a, client_b, mailoutbox, django_capture_on_commit_callbacks
):
    change = admin_client.get(f"/admin/core/client/{client_a.pk}/change/")
    assert send_url(client_a) in change.content.decode()

    confirm = admin_client.get(send_url(client_a))
    assert confirm.status_code == 200 and "ada@example.com" in text(confirm)
    assert mailoutbox == []  # a GET sends nothing

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(send_url(client_a), follow=True)
    assert response.redirect_chain[-1][0] == f"/admin/core/client/{client_a.pk}/change/"
    assert "Personal link sent to Ada Lovelace" in text(response)
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]
    assert client_from_token(token_in(mailoutbox[0].body)) == client_a


def test_admin_bulk_action_sends_to_the_selected_clients_only(
    admin_client, client_a, client_b, mailoutbox, django_capture_on_commit_callbacks
):
    carol = Client.objects.create(name="Carol Shaw", email="carol@example.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/core/client/",
            {"action": "send_portal_link_selected", "_selected_action": [client_a.pk, carol.pk]},
            follow=True,
        )
    assert "Personal link sent to 2 client(s)." in text(response)
    assert sorted(m.to[0] for m in mailoutbox) == ["ada@example.com", "carol@example.com"]
    tokens = {m.to[0]: client_from_token(token_in(m.body)) for m in mailoutbox}
    assert tokens == {"ada@example.com": client_a, "carol@example.com": carol}


def test_admin_actions_need_the_change_client_permission(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks
):
    viewer = make_user("viewer", "core.view_client")
    client.force_login(viewer)
    assert send_url(client_a) not in client.get(f"/admin/core/client/{client_a.pk}/change/").content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.get(send_url(client_a)).status_code == 403
        assert client.post(send_url(client_a)).status_code == 403
        client.post("/admin/core/client/", {"action": "send_portal_link_selected", "_selected_action": [client_a.pk]})
    assert mailoutbox == []

    client.force_login(make_user("desk", "core.view_client", "core.change_client"))
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(send_url(client_a)).status_code == 302
        client.post("/admin/core/client/", {"action": "send_portal_link_selected", "_selected_action": [client_a.pk]})
    assert len(mailoutbox) == 2


# --- The purchase success page ------------------------------------------------------------------


def paid_online(client_obj, pack, staff_user, session_id: str) -> Purchase:
    purchase = purchase_create(client=client_obj, pack=pack, actor=staff_user, channel=PurchaseChannel.ONLINE)
    Purchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id=session_id)
    purchase.refresh_from_db()
    return purchase_mark_paid(purchase=purchase, actor=staff_user)


def test_the_success_page_links_to_its_own_clients_page_only(client, client_a, client_b, make_pack, massage, staff_user):
    pack = make_pack([(massage, False, 5)])
    paid_online(client_a, pack, staff_user, "cs_test_ada")
    paid_online(client_b, pack, staff_user, "cs_test_grace")

    page = text(client.get("/packs/success/?session_id=cs_test_ada"))

    assert portal_url(client_a) in page
    assert client_from_token(token_in(page)) == client_a
    assert portal_token_for(client_b) not in page
    other = text(client.get("/packs/success/?session_id=cs_test_grace"))
    assert client_from_token(token_in(other)) == client_b and portal_token_for(client_a) not in other


def test_a_payment_still_confirming_shows_no_link(client, client_a, make_pack, massage, staff_user):
    pack = make_pack([(massage, False, 5)])
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user, channel=PurchaseChannel.ONLINE)
    Purchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id="cs_test_pending")
    page = text(client.get("/packs/success/?session_id=cs_test_pending"))
    assert "Payment confirming" in page and "/me/" + portal_token_for(client_a) not in page
