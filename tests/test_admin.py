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
from core.models import BusinessSettings, EmailLog, StaffNotification
from core.sessions import session_create
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.invoices import invoice_issue_offline
from payments.models import (
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
