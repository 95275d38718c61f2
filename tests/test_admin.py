"""The admin through the test client: every page renders, packs are refused with clear errors,
the client page shows credits, and credits move only through audited adjustments."""
from __future__ import annotations

import html
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from catalog.models import CreditPack, IntakeForm, IntakeQuestion, SessionType
from core.bookings import booking_create
from core.models import BusinessSettings, Client, EmailLog, StaffNotification
from core.sessions import session_create
from ledger.models import ClientBalance, CreditGrant, EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.invoices import invoice_issue_offline
from payments.models import (
    Payment,
    Purchase,
    PurchaseStatus,
    ReconciliationLine,
    ReconciliationRun,
    StripeEvent,
)
from payments.refunds import refund_create
from payments.services import payment_record, purchase_create
from payments.subscriptions import subscription_create
from reports.models import ReportExport


OUR_APPS = {"core", "catalog", "ledger", "payments", "reports", "auth"}


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def balance_of(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


@pytest.fixture
def populated(db, client_a, client_b, massage, physio, coach, make_pack, sell, staff_user):
    """One row of every registered model, so every change page has something to show."""
    pack = make_pack([(massage, False, 10)], staff_prices=[(coach, Decimal("350.00"))])
    sell(client_a, pack)
    credits_adjust(client=client_a, session_type=physio, amount=2, reason="welcome gift", actor=staff_user)
    Group.objects.get_or_create(name="Front desk")  # the roles migration may have made it
    session = session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        outside_hours_reason="opening week", actor=staff_user,
    )
    booking_create(client=client_a, session=session, actor=staff_user)
    paid = purchase_create(client=client_b, pack=pack, actor=staff_user)
    payment_record(purchase=paid, method="cash", amount=paid.price, actor=staff_user)
    refund_create(purchase=paid, amount=Decimal("30.00"), reason="goodwill", actor=staff_user)
    purchase_create(client=client_b, pack=pack, actor=staff_user)  # outstanding
    StripeEvent.objects.create(event_id="evt_admin_pages", type="customer.created", payload={})
    BusinessSettings.current()
    EmailLog.objects.create(recipient=client_a.email, template="booking_reminder", client=client_a, status="sent")
    StaffNotification.objects.create(staff_member=coach, text="Credits issued to Ada Lovelace")
    monthly = make_pack(
        [(massage, False, 4)], name="Monthly four", is_recurring=True, recurring_collection="invoice",
        billing_interval="month", recurs_when="pack_expires", minimum_commitment=3,
    )
    plan = subscription_create(client=client_b, pack=monthly, actor=staff_user)
    invoice_issue_offline(purchase=plan.cycles.get(), actor=staff_user)
    run = ReconciliationRun.objects.create(
        period_start=timezone.now() - timedelta(days=1), period_end=timezone.now(), status="done",
    )
    ReconciliationLine.objects.create(
        run=run, type="charge", source_id="ch_admin_pages", amount=1000, currency="gbp",
        mismatch="paid_no_credits", detail="no purchase of ours",
    )
    ReportExport.objects.create(kind="ledger", created_by=staff_user)
    screening = IntakeForm.objects.create(name="Hot stones screening")
    IntakeQuestion.objects.create(
        form=screening, text="Are you pregnant?", blocks_on_yes=True,
        block_reason="Hot stones are not suitable during pregnancy.",
    )
    return pack


# --- Every page ---------------------------------------------------------------------------


def test_every_changelist_add_and_change_page_renders(admin_client, populated):
    for model, model_admin in admin.site._registry.items():
        assert admin_client.get(admin_url(model, "changelist")).status_code == 200, model
        add = admin_client.get(admin_url(model, "add"))
        assert add.status_code == (200 if model_admin.has_add_permission(add.wsgi_request) else 403), model
        obj = model._default_manager.order_by("pk").first()
        if model._meta.app_label not in OUR_APPS and obj is None:
            continue  # a third-party list (dramatiq's tasks) that is empty in tests
        assert obj is not None, f"no {model.__name__} row to open"
        # follow: the outstanding payments list opens the purchase's own page.
        change = admin_client.get(admin_url(model, "change", obj.pk), follow=True)
        assert change.status_code == 200 and "/change/" in change.wsgi_request.path, model


def test_pages_carry_the_unfold_theme(admin_client, client_a, populated):
    for url in (admin_url(client_a, "change", client_a.pk), admin_url(CreditPack, "add")):
        text = page_text(admin_client.get(url))
        assert "unfold/css/styles.css" in text
        assert 'name="csrfmiddlewaretoken"' in text


# --- Credit pack form ---------------------------------------------------------------------


def pack_post(category, lines, *, staff=(), **overrides) -> dict:
    """The add form as a browser would post it; booleans are sent only when ticked."""
    data = {
        "name": "Ten massages", "description": "", "category": category.pk, "price": "300.00",
        "currency": "GBP", "published": "on", "sell_online": "on", "restrict_to": "anyone",
        "all_staff": "on", "validity_amount": "3", "validity_unit": "months",
        "valid_from": "payment", "billing_interval": "", "billing_interval_count": "1",
        "recurs_when": "", "recurring_collection": "", "minimum_commitment": "0", "free_trial_days": "0",
        "credit_lines-TOTAL_FORMS": str(len(lines)), "credit_lines-INITIAL_FORMS": "0",
        "credit_lines-MIN_NUM_FORMS": "0", "credit_lines-MAX_NUM_FORMS": "5",
        "staff_prices-TOTAL_FORMS": str(len(staff)), "staff_prices-INITIAL_FORMS": "0",
        "staff_prices-MIN_NUM_FORMS": "0", "staff_prices-MAX_NUM_FORMS": "1000",
    }
    for number, (session_type, credits, unlimited) in enumerate(lines):
        data[f"credit_lines-{number}-session_type"] = session_type.pk
        data[f"credit_lines-{number}-credits"] = "" if credits is None else str(credits)
        data[f"credit_lines-{number}-validity_amount"] = ""
        data[f"credit_lines-{number}-validity_unit"] = ""
        if unlimited:
            data[f"credit_lines-{number}-unlimited"] = "on"
    for number, (member, price) in enumerate(staff):
        data[f"staff_prices-{number}-staff_member"] = member.pk
        data[f"staff_prices-{number}-price"] = "" if price is None else str(price)
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.fixture
def six_types(db, category):
    return [SessionType.objects.create(name=f"Class {n}", category=category) for n in range(6)]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("six lines", "a pack has at most 5 session types (6 given)"),
        ("duplicate session type", "each session type may appear once in a pack"),
        ("credits 0", "credits must be between 1 and 100, or tick unlimited"),
        ("credits 101", "credits must be between 1 and 100, or tick unlimited"),
        ("unlimited with credits", "credits must be empty when the line is unlimited"),
        ("validity 0", "Validity must be at least 1 months (a day or more)."),
        ("recurring without interval", "A recurring pack needs a billing interval (week, month or year)."),
        ("no lines", "a pack needs at least one session type"),
        ("staff subset without staff", "list at least one staff member"),
    ],
)
def test_pack_admin_refuses_invalid_packs(admin_client, category, massage, physio, six_types, case, expected):
    lines = [(massage, 10, False)]
    overrides = {}
    if case == "six lines":
        lines = [(t, 5, False) for t in six_types]
    elif case == "duplicate session type":
        lines = [(massage, 5, False), (massage, 3, False)]
    elif case == "credits 0":
        lines = [(massage, 0, False)]
    elif case == "credits 101":
        lines = [(massage, 101, False)]
    elif case == "unlimited with credits":
        lines = [(massage, 10, True)]
    elif case == "validity 0":
        overrides = {"validity_amount": "0"}
    elif case == "recurring without interval":
        overrides = {"is_recurring": "on", "recurs_when": "pack_expires"}
    elif case == "no lines":
        lines = []
    elif case == "staff subset without staff":
        overrides = {"all_staff": None}

    response = admin_client.post(admin_url(CreditPack, "add"), pack_post(category, lines, **overrides))

    assert response.status_code == 200
    assert expected in page_text(response)
    assert not CreditPack.objects.exists()


def test_pack_admin_error_names_the_field(admin_client, category, massage):
    response = admin_client.post(
        admin_url(CreditPack, "add"),
        pack_post(category, [(massage, 10, False)], validity_amount="0"),
    )
    assert "validity_amount" in response.context["adminform"].form.errors


def test_pack_admin_saves_a_valid_pack_with_history(admin_client, admin_user, category, massage, physio, coach):
    response = admin_client.post(
        admin_url(CreditPack, "add"),
        pack_post(
            category, [(massage, 10, False), (physio, None, True)],
            staff=[(coach, "350.00")], all_staff=None,
        ),
    )

    assert response.status_code == 302
    pack = CreditPack.objects.get(name="Ten massages")
    lines = {line.session_type: line for line in pack.credit_lines.all()}
    assert lines[massage].credits == 10 and not lines[massage].unlimited
    assert lines[physio].unlimited and lines[physio].credits is None
    assert [(p.staff_member, p.price) for p in pack.staff_prices.all()] == [(coach, Decimal("350.00"))]
    assert pack.all_staff is False
    assert pack.history.get().history_user == admin_user
    assert {h.history_user for h in lines[massage].history.all()} == {admin_user}
    history = admin_client.get(admin_url(CreditPack, "history", pack.pk))
    assert history.status_code == 200 and admin_user.username in page_text(history)


def test_pack_admin_edit_is_validated_against_the_new_values(admin_client, make_pack, category, massage, coach):
    pack = make_pack([(massage, False, 10)])
    line = pack.credit_lines.get()
    data = pack_post(category, [], name=pack.name, all_staff=None)
    data.update({
        "credit_lines-TOTAL_FORMS": "1", "credit_lines-INITIAL_FORMS": "1",
        "credit_lines-0-id": line.pk, "credit_lines-0-pack": pack.pk,
        "credit_lines-0-session_type": massage.pk, "credit_lines-0-credits": "10",
        "credit_lines-0-validity_amount": "", "credit_lines-0-validity_unit": "",
    })

    # Unticking "all staff" with nobody listed is refused, because the staff rows are checked
    # against the value being saved, not the stored one.
    response = admin_client.post(admin_url(CreditPack, "change", pack.pk), data)

    assert response.status_code == 200
    assert "list at least one staff member" in page_text(response)
    pack.refresh_from_db()
    assert pack.all_staff is True


# --- Session types ------------------------------------------------------------------------


def session_type_post(session_type, **changes) -> dict:
    data = {
        "name": session_type.name, "category": session_type.category_id or "",
        "duration_minutes": str(session_type.duration_minutes),
        "cancellation_window_hours": str(session_type.cancellation_window_hours),
        "requires_credit": "on",
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_session_type_archive_refused_when_a_published_pack_uses_it(admin_client, make_pack, massage):
    make_pack([(massage, False, 10)], name="Massage ten")

    response = admin_client.post(
        admin_url(SessionType, "change", massage.pk), session_type_post(massage, archived="on")
    )

    assert response.status_code == 200
    assert "Cannot archive: published packs use this session type (Massage ten)" in page_text(response)
    massage.refresh_from_db()
    assert massage.archived is False


def test_session_type_requires_credit_cannot_be_switched_off_while_packs_sell_it(admin_client, make_pack, massage):
    make_pack([(massage, False, 10)])

    response = admin_client.post(
        admin_url(SessionType, "change", massage.pk), session_type_post(massage, requires_credit=None)
    )

    assert response.status_code == 200
    assert "Cannot switch off 'requires a credit'" in page_text(response)
    massage.refresh_from_db()
    assert massage.requires_credit is True


def test_session_type_unused_can_be_archived(admin_client, physio):
    response = admin_client.post(
        admin_url(SessionType, "change", physio.pk), session_type_post(physio, archived="on")
    )
    assert response.status_code == 302
    physio.refresh_from_db()
    assert physio.archived is True


# --- Client page --------------------------------------------------------------------------


def test_client_list_shows_total_credits_and_hides_archived(admin_client, client_a, client_b, massage, staff_user):
    credits_adjust(client=client_a, session_type=massage, amount=4, reason="opening balance", actor=staff_user)
    client_b.archived = True
    client_b.save()

    response = admin_client.get(admin_url(client_a, "changelist"))
    shown = list(response.context["cl"].result_list)
    assert shown == [client_a] and shown[0].credits_total == 4

    everyone = admin_client.get(admin_url(client_a, "changelist"), {"archived": "all"})
    assert set(everyone.context["cl"].result_list) == {client_a, client_b}


@pytest.fixture
def busy_client(client_a, massage, physio, make_pack, sell, staff_user):
    """30 massage adjustments, one physio adjustment and a sold pack (an issued entry)."""
    for number in range(30):
        credits_adjust(client=client_a, session_type=massage, amount=1, reason=f"visit {number}", actor=staff_user)
    credits_adjust(client=client_a, session_type=physio, amount=2, reason="physio gift", actor=staff_user)
    sell(client_a, make_pack([(massage, False, 5)], name="Five massages"))
    return client_a


def test_client_page_shows_balances_per_session_type(admin_client, busy_client, massage, physio):
    response = admin_client.get(admin_url(busy_client, "change", busy_client.pk))

    assert response.status_code == 200
    balances = {b.session_type: b for b in response.context["balances"]}
    assert balances["Massage 60"].credits == 35 and balances["Physio"].credits == 2
    assert balances["Massage 60"].next_expiry is not None
    text = page_text(response)
    assert 'id="client-balances"' in text and "Adjust credits" in text


def test_client_ledger_is_paginated_newest_first(admin_client, busy_client):
    url = admin_url(busy_client, "change", busy_client.pk)
    newest = LedgerEntry.objects.filter(client=busy_client).order_by("-id")

    first = admin_client.get(url)
    second = admin_client.get(url, {"ledger_page": "2"})

    assert [e.pk for e in first.context["ledger_page"].object_list] == [e.pk for e in newest[:25]]
    assert [e.pk for e in second.context["ledger_page"].object_list] == [e.pk for e in newest[25:]]
    assert page_text(first).count('class="ledger-row"') == 25
    assert page_text(second).count('class="ledger-row"') == 7
    assert "ledger_page=2" in page_text(first)


def test_client_ledger_filters_by_session_type_and_kind(admin_client, busy_client, physio):
    url = admin_url(busy_client, "change", busy_client.pk)

    by_type = admin_client.get(url, {"ledger_type": physio.pk})
    by_kind = admin_client.get(url, {"ledger_kind": EntryKind.ISSUED})

    assert [e.note for e in by_type.context["ledger_page"].object_list] == ["physio gift"]
    issued = list(by_kind.context["ledger_page"].object_list)
    assert len(issued) == 1 and issued[0].kind == EntryKind.ISSUED
    assert page_text(by_kind).count('class="ledger-row"') == 1


# --- Adjust credits -----------------------------------------------------------------------


def adjust_url(client) -> str:
    return reverse("admin:core_client_adjust_credits", args=[client.pk])


def adjust_post(session_type, amount, reason, **extra) -> dict:
    data = {"session_type": session_type.pk, "amount": str(amount), "reason": reason,
            "expires_on": "", "token": "5f1c1c55-7a7b-4c1b-9e36-2f7d5f0b8a11"}
    data.update(extra)
    return data


def test_adjust_credits_page_renders_with_the_balances(admin_client, client_a, massage, staff_user):
    credits_adjust(client=client_a, session_type=massage, amount=3, reason="opening", actor=staff_user)
    response = admin_client.get(adjust_url(client_a))
    assert response.status_code == 200
    text = page_text(response)
    assert "Massage 60: 3" in text and 'name="reason"' in text


def test_adjust_credits_without_a_reason_is_refused(admin_client, client_a, massage):
    response = admin_client.post(adjust_url(client_a), adjust_post(massage, 3, "   "), follow=True)

    assert response.status_code == 200
    text = page_text(response)
    assert "The credits were not adjusted: correct the errors below." in text
    assert "This field is required." in text
    assert not LedgerEntry.objects.exists()


def test_adjust_credits_removing_more_than_held_shows_the_ledger_error(admin_client, client_a, massage, staff_user):
    credits_adjust(client=client_a, session_type=massage, amount=2, reason="opening", actor=staff_user)

    response = admin_client.post(adjust_url(client_a), adjust_post(massage, -5, "correction"))

    assert response.status_code == 200
    assert "Cannot remove 5 Massage 60 credits: the client has 2." in page_text(response)
    assert balance_of(client_a, massage) == 2
    assert LedgerEntry.objects.count() == 1


def test_adjust_credits_records_the_entry_with_the_staff_member(admin_client, admin_user, client_a, massage):
    response = admin_client.post(adjust_url(client_a), adjust_post(massage, 3, "goodwill", expires_on="2099-01-31"))

    assert response.status_code == 302
    assert response.url == admin_url(client_a, "change", client_a.pk)
    assert balance_of(client_a, massage) == 3
    entry = LedgerEntry.objects.get()
    assert (entry.kind, entry.amount, entry.actor, entry.note) == (EntryKind.ADJUSTED, 3, admin_user, "goodwill")
    assert entry.grant.expires_at.date().isoformat() == "2099-02-01"

    # The same submission twice (a double click) records one adjustment.
    admin_client.post(adjust_url(client_a), adjust_post(massage, 3, "goodwill", expires_on="2099-01-31"))
    assert balance_of(client_a, massage) == 3


def test_adjust_credits_is_csrf_protected(admin_user, client_a, massage):
    from django.test import Client as BrowserClient

    browser = BrowserClient(enforce_csrf_checks=True)
    browser.force_login(admin_user)

    assert browser.post(adjust_url(client_a), adjust_post(massage, 3, "no token")).status_code == 403
    assert not LedgerEntry.objects.exists()


def test_adjust_credits_needs_the_ledger_permission(client, staff_user, client_a, massage):
    from django.contrib.auth.models import Permission

    staff_user.user_permissions.add(Permission.objects.get(codename="view_client"))
    client.force_login(staff_user)

    assert client.get(admin_url(client_a, "change", client_a.pk)).status_code == 200
    assert client.post(adjust_url(client_a), adjust_post(massage, 3, "sneaky")).status_code == 403
    assert not LedgerEntry.objects.exists()


# --- Read-only ledger ---------------------------------------------------------------------


def test_ledger_rows_cannot_be_added_changed_or_deleted_in_the_admin(admin_client, populated):
    entry = LedgerEntry.objects.order_by("pk").first()
    for model, obj in ((LedgerEntry, entry), (CreditGrant, entry.grant), (ClientBalance, ClientBalance.objects.first())):
        assert admin_client.get(admin_url(model, "add")).status_code == 403
        assert admin_client.post(admin_url(model, "add"), {}).status_code == 403
        assert admin_client.get(admin_url(model, "delete", obj.pk)).status_code == 403
        assert admin_client.post(admin_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
        view = admin_client.get(admin_url(model, "change", obj.pk))
        assert view.status_code == 200 and view.context["has_change_permission"] is False
    entry.refresh_from_db()
    assert LedgerEntry.objects.filter(pk=entry.pk).exists()


# --- Purchases ----------------------------------------------------------------------------


def test_selling_a_pack_in_the_admin_then_recording_the_payment_issues_credits(admin_client, admin_user, client_a, massage, make_pack):
    pack = make_pack([(massage, False, 10)])

    sold = admin_client.post(admin_url(Purchase, "add"), {"client": client_a.pk, "pack": pack.pk})
    purchase = Purchase.objects.get()
    record_url = reverse("admin:payments_purchase_record_payment", args=[purchase.pk])
    # The desk goes straight on to take the money.
    assert sold.status_code == 302 and sold.url == record_url
    assert purchase.status == PurchaseStatus.PENDING
    assert purchase.price == Decimal("300.00") and purchase.created_by == admin_user
    form = admin_client.get(record_url)
    assert form.status_code == 200 and form.context["form"]["amount"].value() == Decimal("300.00")
    assert balance_of(client_a, massage) == 0

    done = admin_client.post(
        record_url, {"method": "card_terminal", "amount": "300.00", "reference": "slip 0042"}, follow=True,
    )

    assert "Card terminal payment of 300.00 GBP recorded" in page_text(done)
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    payment = Payment.objects.get(purchase=purchase)
    assert (payment.method, payment.amount, payment.reference, payment.recorded_by) == (
        "card_terminal", Decimal("300.00"), "slip 0042", admin_user,
    )
    assert balance_of(client_a, massage) == 10


def test_recording_a_different_amount_is_refused_with_the_services_text(admin_client, client_a, massage, make_pack, staff_user):
    purchase = purchase_create(client=client_a, pack=make_pack([(massage, False, 10)]), actor=staff_user)
    url = reverse("admin:payments_purchase_record_payment", args=[purchase.pk])

    response = admin_client.post(url, {"method": "cash", "amount": "250.00", "reference": ""})

    assert response.status_code == 200
    assert "The amount must be the purchase's price, 300.00 GBP (got 250.00)." in page_text(response)
    assert not Payment.objects.exists() and balance_of(client_a, massage) == 0


def test_selling_an_unpublished_pack_shows_the_error(admin_client, client_a, massage, make_pack):
    pack = make_pack([(massage, False, 10)], published=False, sell_online=False)

    response = admin_client.post(admin_url(Purchase, "add"), {"client": client_a.pk, "pack": pack.pk})

    assert response.status_code == 200
    assert f"{pack.name} is not published, so it cannot be sold." in page_text(response)
    assert not Purchase.objects.exists()


def test_recording_a_payment_for_a_cancelled_purchase_reports_the_error(admin_client, client_a, massage, make_pack, staff_user):
    purchase = purchase_create(client=client_a, pack=make_pack([(massage, False, 10)]), actor=staff_user)
    Purchase.objects.filter(pk=purchase.pk).update(status=PurchaseStatus.CANCELLED)
    url = reverse("admin:payments_purchase_record_payment", args=[purchase.pk])

    done = admin_client.post(url, {"method": "cash", "amount": "300.00"}, follow=True)

    assert f"Purchase #{purchase.pk} is cancelled: nothing to record." in page_text(done)
    assert not Payment.objects.exists() and balance_of(client_a, massage) == 0


def test_purchase_page_shows_the_snapshot_read_only(admin_client, populated, client_a):
    purchase = Purchase.objects.get(client=client_a)
    response = admin_client.get(admin_url(Purchase, "change", purchase.pk))
    text = page_text(response)
    assert response.context["has_change_permission"] is False
    assert "10 × Massage 60, valid 3 months" in text
    assert admin_client.get(admin_url(Purchase, "delete", purchase.pk)).status_code == 403


# --- Clients: form, import and export -----------------------------------------------------


def test_client_email_is_unique_whatever_its_case(admin_client, client_a):
    response = admin_client.post(
        admin_url(client_a, "add"), {"name": "Ada Again", "email": "ADA@Example.com", "phone": "", "notes": ""}
    )
    assert response.status_code == 200
    assert "A client with this email already exists." in page_text(response)


def test_client_import_with_a_bad_row_imports_nothing(admin_client, client_a):
    from django.core.files.uploadedfile import SimpleUploadedFile

    csv = b"name,email,phone,notes,archived\nNew Person,new@example.com,,,0\nNo Email,,,,0\n"
    response = admin_client.post(
        reverse("admin:core_client_import"),
        {"format": "0", "import_file": SimpleUploadedFile("clients.csv", csv, "text/csv")},
    )

    assert response.status_code == 200
    assert "This field cannot be blank." in page_text(response)
    assert list(Client.objects.values_list("email", flat=True)) == ["ada@example.com"]


def test_ledger_export_names_client_and_session_type(admin_client, populated, client_a):
    response = admin_client.post(reverse("admin:ledger_ledgerentry_export"), {"format": "0", "resource": "0"})

    assert response.status_code == 200
    rows = response.content.decode().splitlines()
    assert rows[0].startswith("id,created_at,client,client_name,client_email,session_type,kind")
    assert any("ada@example.com,Physio,adjusted,2,2,desk" in row for row in rows[1:])
