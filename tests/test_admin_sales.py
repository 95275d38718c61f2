"""The admin, continued from tests/test_admin.py: adjusting credits, the read-only ledger, selling and
recording payments, the client form, import and export."""
from __future__ import annotations

from decimal import Decimal

from django.urls import reverse

from core.models import Client
from ledger.models import ClientBalance, CreditGrant, EntryKind, LedgerEntry
from ledger.services import credits_adjust
from payments.models import (
    Payment,
    Purchase,
    PurchaseStatus,
)
from payments.services import purchase_create
from tests.test_admin import (  # noqa: F401 - fixtures (and helpers) shared with tests/test_admin.py
    admin_url,  # noqa: F401, F811
    balance_of,  # noqa: F401, F811
    busy_client,  # noqa: F401, F811
    page_text,  # noqa: F401, F811
    populated,  # noqa: F401, F811
    six_types,  # noqa: F401, F811
)

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
