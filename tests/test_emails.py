"""core.emails: every email is templated, logged, sent after commit and at most once per key;
reminders honour the business's switches and the client's opt-out (link in every client email)."""
from __future__ import annotations

import re
import threading

import pytest
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connections, transaction

from core.emails import email_send, optout_token_for, optout_url
from core.models import BusinessSettings, Client, EmailLog, EmailStatus, NudgeKind, StaffNotification
from core.portal_link import portal_link_send
from core.portal_tokens import client_from_token

BASE = "https://packs.example.com"


class FailingBackend(BaseEmailBackend):
    """A mail server that refuses everything."""

    def send_messages(self, email_messages):
        raise ConnectionRefusedError("mail server down")


@pytest.fixture(autouse=True)
def site(settings):
    settings.PUBLIC_BASE_URL = BASE
    settings.BUSINESS_NAME = "Studio Nine"


def reminder(client, **extra):
    kwargs = dict(
        to=client.email, template="booking_reminder", context={"credits_left": 6, "pack_name": "Six massages"},
        client=client, related=("purchase", 41), nudge_kind=NudgeKind.BOOKING_REMINDER,
    )
    kwargs.update(extra)
    return email_send(**kwargs)


def portal_token_in(body: str) -> str:
    match = re.search(rf"{BASE}/me/(?!opt-out/)([^/\s\"<]+)/", body)
    assert match, body
    return match.group(1)


# --- Sending -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_client_email_goes_once_after_commit_with_text_html_link_and_opt_out(
    client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        log = reminder(client_a, dedupe_key="booking_reminder:purchase:41")
        assert mailoutbox == []  # not before the commit

    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    html_body, mimetype = mail.alternatives[0]
    assert mail.to == ["ada@example.com"] and mimetype == "text/html"
    assert mail.subject == "You have 6 sessions ready to book with Studio Nine"
    for body in (mail.body, html_body):
        assert "Studio Nine" in body and "Ada Lovelace" in body and "6 sessions" in body
        assert client_from_token(portal_token_in(body)) == client_a  # "book your first" is one tap away
        assert f"{BASE}/me/opt-out/" in body
    assert mail.extra_headers["List-Unsubscribe"].startswith(f"<{BASE}/me/opt-out/")

    log.refresh_from_db()
    assert (log.status, log.subject, log.recipient, log.client, log.template) == (
        EmailStatus.SENT, mail.subject, "ada@example.com", client_a, "booking_reminder"
    )
    assert (log.related_type, log.related_id, log.nudge_kind) == ("purchase", 41, "booking_reminder")
    assert log.sent_at is not None and log.error == ""


@pytest.mark.django_db
def test_a_model_instance_names_what_the_email_is_about(
    client_a, massage, make_pack, sell, mailoutbox, django_capture_on_commit_callbacks
):
    purchase = sell(client_a, make_pack([(massage, False, 3)]))
    with django_capture_on_commit_callbacks(execute=True):
        log = reminder(client_a, related=purchase)
    assert (log.related_type, log.related_id) == ("purchase", purchase.pk)


@pytest.mark.django_db
def test_an_email_to_staff_has_no_client_links(coach, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        log = email_send(
            to="coach@example.com", template="staff_credits_issued", related=("grant", 7),
            context={"staff_name": "Coach Carter", "client_name": "Ada Lovelace", "credits": 6, "pack_name": "Six"},
            dedupe_key="staff_credits_issued:grant:7", nudge_kind=NudgeKind.STAFF_CREDITS_ISSUED,
        )
    assert log.status == EmailStatus.QUEUED  # the instance as returned; the row says sent
    mail = mailoutbox[0]
    assert mail.subject == "Credits issued: Ada Lovelace, Six"
    assert "Ada Lovelace now has 6 credits" in mail.body and "/me/" not in mail.body
    assert "List-Unsubscribe" not in mail.extra_headers
    assert EmailLog.objects.get().status == EmailStatus.SENT


@pytest.mark.django_db
def test_the_same_key_twice_sends_one_email_and_keeps_one_row(
    client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = reminder(client_a, dedupe_key="booking_reminder:purchase:41")
    with django_capture_on_commit_callbacks(execute=True):
        second = reminder(client_a, dedupe_key="booking_reminder:purchase:41")
        # The caller's transaction is still usable after the refused insert.
        assert Client.objects.filter(pk=client_a.pk).exists()
    assert first is not None and second is None
    assert len(mailoutbox) == 1
    assert EmailLog.objects.count() == 1


@pytest.mark.django_db
def test_without_a_key_each_call_is_its_own_email(client_a, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        reminder(client_a)
        reminder(client_a)
    assert len(mailoutbox) == 2 and EmailLog.objects.filter(status=EmailStatus.SENT).count() == 2


@pytest.mark.django_db
def test_a_rolled_back_transaction_sends_nothing_and_logs_nothing(
    client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError):
            with transaction.atomic():
                reminder(client_a, dedupe_key="booking_reminder:purchase:41")
                raise RuntimeError("the purchase failed")
    assert mailoutbox == [] and not EmailLog.objects.exists()
    # The key was never used: the retried work sends its email.
    with django_capture_on_commit_callbacks(execute=True):
        assert reminder(client_a, dedupe_key="booking_reminder:purchase:41") is not None
    assert len(mailoutbox) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_callers_with_one_key_send_one_email(mailoutbox):
    ada = Client.objects.create(name="Ada Lovelace", email="ada@example.com")
    threads_n = 6
    barrier = threading.Barrier(threads_n)
    results, errors = [], []

    def run():
        try:
            barrier.wait(timeout=10)
            results.append(reminder(ada, dedupe_key="booking_reminder:purchase:41"))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert errors == []
    assert len([r for r in results if r is not None]) == 1 and results.count(None) == threads_n - 1
    assert len(mailoutbox) == 1
    assert list(EmailLog.objects.values_list("status", flat=True)) == [EmailStatus.SENT]


# --- Switches and opt-outs ------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", list(NudgeKind))
def test_a_reminder_switched_off_by_the_business_is_logged_as_skipped_and_not_sent(
    client_a, kind, mailoutbox, django_capture_on_commit_callbacks
):
    BusinessSettings.objects.update_or_create(pk=1, defaults={f"nudge_{kind}": False})
    with django_capture_on_commit_callbacks(execute=True):
        log = reminder(client_a, nudge_kind=kind, dedupe_key=f"{kind}:x")
    assert mailoutbox == []
    assert log.status == EmailStatus.SKIPPED and "business settings" in log.reason
    # The key is used: a sweep running again adds nothing.
    with django_capture_on_commit_callbacks(execute=True):
        assert reminder(client_a, nudge_kind=kind, dedupe_key=f"{kind}:x") is None
    assert EmailLog.objects.count() == 1


@pytest.mark.django_db
def test_other_switches_leave_a_reminder_alone(client_a, mailoutbox, django_capture_on_commit_callbacks):
    BusinessSettings.objects.update_or_create(pk=1, defaults={"nudge_expiry_reminder": False, "nudge_next_pack": False})
    with django_capture_on_commit_callbacks(execute=True):
        reminder(client_a)
    assert len(mailoutbox) == 1


@pytest.mark.django_db
def test_an_opted_out_client_gets_no_reminders_but_still_gets_what_they_ask_for(
    client_a, mailoutbox, django_capture_on_commit_callbacks
):
    Client.objects.filter(pk=client_a.pk).update(nudges_opt_out=True)  # client_a itself is stale
    with django_capture_on_commit_callbacks(execute=True):
        log = reminder(client_a, dedupe_key="booking_reminder:purchase:41")
    assert mailoutbox == []
    assert log.status == EmailStatus.SKIPPED and "opted out" in log.reason

    with django_capture_on_commit_callbacks(execute=True):
        portal_link_send(client=client_a)
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]


@pytest.mark.django_db
def test_the_staff_note_ignores_a_clients_opt_out(client_a, mailoutbox, django_capture_on_commit_callbacks):
    Client.objects.filter(pk=client_a.pk).update(nudges_opt_out=True)
    with django_capture_on_commit_callbacks(execute=True):
        email_send(
            to="coach@example.com", template="staff_credits_issued", nudge_kind=NudgeKind.STAFF_CREDITS_ISSUED,
            context={"staff_name": "Coach", "client_name": client_a.name, "credits": 1}, related=("grant", 1),
        )
    assert [m.to for m in mailoutbox] == [["coach@example.com"]]


# --- The opt-out page ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_opt_out_link_in_an_email_asks_then_opts_out(
    client, client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        reminder(client_a)
    url = re.search(rf"{BASE}(/me/opt-out/[^/\s]+/)", mailoutbox[0].body).group(1)

    page = client.get(url)
    assert page.status_code == 200 and "Stop reminder emails?" in page.content.decode()
    assert 'method="post"' in page.content.decode() and "Studio Nine" in page.content.decode()
    client_a.refresh_from_db()
    assert client_a.nudges_opt_out is False  # a mail scanner opening the link changes nothing

    done = client.post(url)
    assert done.status_code == 200 and "No more reminder emails" in done.content.decode()
    client_a.refresh_from_db()
    assert client_a.nudges_opt_out is True and client_a.nudges_opted_out_at is not None
    first_at = client_a.nudges_opted_out_at
    assert client_a.history.first().nudges_opt_out is True  # the change is in the client's history

    # Again: still opted out, the first time kept; the page says so.
    assert client.post(url).status_code == 200
    assert "No more reminder emails" in client.get(url).content.decode()
    client_a.refresh_from_db()
    assert client_a.nudges_opted_out_at == first_at


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["nonsense", "eyJjIjoxfQ:bad-signature"])
def test_a_bad_opt_out_link_is_a_400_page_and_changes_nothing(client, client_a, token):
    for response in (client.get(f"/me/opt-out/{token}/"), client.post(f"/me/opt-out/{token}/")):
        assert response.status_code == 400 and "This link is not valid" in response.content.decode()
    client_a.refresh_from_db()
    assert client_a.nudges_opt_out is False


@pytest.mark.django_db
def test_a_token_for_another_purpose_does_not_opt_out(client, client_a):
    from core.portal_tokens import portal_token_for

    assert client.post(f"/me/opt-out/{portal_token_for(client_a)}/").status_code == 400
    assert optout_url(client_a) == f"{BASE}/me/opt-out/{optout_token_for(client_a)}/"


# --- Failures ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_failing_mail_server_is_recorded_and_never_raised(
    client_a, settings, django_capture_on_commit_callbacks, caplog
):
    settings.EMAIL_BACKEND = "tests.test_emails.FailingBackend"
    with django_capture_on_commit_callbacks(execute=True):
        log = reminder(client_a, dedupe_key="booking_reminder:purchase:41")
    log.refresh_from_db()
    assert log.status == EmailStatus.FAILED and log.sent_at is None
    assert "ConnectionRefusedError: mail server down" in log.error
    assert log.subject  # what would have gone, for whoever looks
    # The log line names the EmailLog row, never the client's address.
    failures = [r for r in caplog.records if r.name == "core.emails" and "failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == [f"email {log.pk} (booking_reminder) failed"]
    assert client_a.email not in caplog.text


@pytest.mark.django_db
def test_a_missing_template_is_a_failed_row_not_a_500(client_a, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        log = email_send(to=client_a.email, template="no_such_email", context={}, client=client_a)
    log.refresh_from_db()
    assert mailoutbox == [] and log.status == EmailStatus.FAILED and "TemplateDoesNotExist" in log.error


# --- The personal link goes through the same service ----------------------------------------------


@pytest.mark.django_db
def test_the_personal_link_email_is_logged(client_a, mailoutbox, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        portal_link_send(client=client_a)
    log = EmailLog.objects.get()
    assert (log.template, log.client, log.status, log.recipient) == ("portal_link", client_a, "sent", "ada@example.com")
    assert log.subject == mailoutbox[0].subject == "Your personal link to Studio Nine"
    assert f"{BASE}/me/opt-out/" in mailoutbox[0].body


@pytest.mark.django_db
def test_the_personal_link_logs_nothing_when_the_request_rolls_back(
    client_a, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            portal_link_send(client=client_a)
            raise RuntimeError
    assert mailoutbox == [] and not EmailLog.objects.exists()


# --- The admin ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_email_log_filters_by_status_and_is_read_only(admin_client, client_a, coach):
    EmailLog.objects.create(recipient="ada@example.com", template="booking_reminder", client=client_a, status="sent")
    EmailLog.objects.create(recipient="bad@example.com", template="next_pack", status="failed", error="refused")
    failed = admin_client.get("/admin/core/emaillog/", {"status__exact": "failed"})
    assert [log.recipient for log in failed.context["cl"].result_list] == ["bad@example.com"]
    assert admin_client.get("/admin/core/emaillog/add/").status_code == 403
    row = EmailLog.objects.get(status="failed")
    assert admin_client.post(f"/admin/core/emaillog/{row.pk}/delete/").status_code == 403

    StaffNotification.objects.create(staff_member=coach, text="Credits issued to Ada Lovelace")
    unread = admin_client.get("/admin/core/staffnotification/", {"read": "no"})
    assert "Credits issued to Ada Lovelace" in unread.content.decode()
    assert admin_client.get("/admin/core/staffnotification/", {"read": "yes"}).context["cl"].result_count == 0
