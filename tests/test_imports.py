"""Imports of clients and opening balances: a file imports whole or not at all, errors name the
row and the column, opening balances enter the ledger as Issued (source Import) once per row.

Driven through the admin's import view as people use it (upload → preview → confirm) and at the
resource and service level, on the real database.
"""
from __future__ import annotations

import re
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest
import tablib
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils import timezone

from catalog.validity import expiry_for
from core.imports import ClientImportResource, OpeningBalanceResource
from core.models import Client
from core.roles import FINANCE, FRONT_DESK, MANAGER, sync_roles
from ledger.imports import credits_import_opening
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, EntryKind, EntrySource, LedgerEntry
from tests.test_admin import page_text

CLIENTS_IMPORT = "admin:core_client_import"
CLIENTS_CONFIRM = "admin:core_client_process_import"
BALANCES_IMPORT = "admin:ledger_creditgrant_import"
BALANCES_CONFIRM = "admin:ledger_creditgrant_process_import"


@pytest.fixture
def make_member(db):
    sync_roles()

    def make(role: str):
        user = get_user_model().objects.create_user(
            f"{role.lower().replace(' ', '-')}-{uuid.uuid4().hex[:6]}", password="pw-role-123", is_staff=True,
        )
        user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def finance(make_member):
    return make_member(FINANCE)


def upload(client, url_name: str, text: str, name: str = "file.csv"):
    """Step 1: the dry-run preview."""
    return client.post(reverse(url_name), {
        "format": "0", "import_file": SimpleUploadedFile(name, text.encode(), "text/csv"),
    })


def confirm(client, url_name: str, preview):
    """Step 2: the preview's confirm button, with the form the preview rendered."""
    form = preview.context["confirm_form"]
    return client.post(reverse(url_name), {name: form.initial.get(name, "") for name in form.fields})


def import_file(client, kind: str, text: str):
    preview = upload(client, CLIENTS_IMPORT if kind == "clients" else BALANCES_IMPORT, text)
    assert preview.status_code == 200
    assert preview.context.get("confirm_form") is not None, page_text(preview)
    done = confirm(client, CLIENTS_CONFIRM if kind == "clients" else BALANCES_CONFIRM, preview)
    assert done.status_code == 302, page_text(done)
    return preview, done


def invalid_rows(response) -> dict[int, dict[str, list[str]]]:
    return {row.number: row.error_dict for row in response.context["result"].invalid_rows}


def balance(client, session_type) -> int:
    row = ClientBalance.objects.filter(client=client, session_type=session_type).first()
    return row.balance if row else 0


def end_of_local_day(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min))


def dataset(text: str) -> tablib.Dataset:
    return tablib.Dataset().load(text, format="csv")


# --- Clients ------------------------------------------------------------------------------

GOOD_CLIENTS = (
    "Name,E-mail,Phone,Notes\n"
    "Mary Somerville,Mary@Example.com,07700 900001,Prefers mornings\n"
    "Emmy Noether,emmy@example.com,,\n"
    "Alan Turing,alan@example.com,07700 900003,\n"
)


def test_a_good_client_file_is_previewed_then_imported_by_the_importer(admin_client, admin_user):
    preview = upload(admin_client, CLIENTS_IMPORT, GOOD_CLIENTS)

    assert [row.import_type for row in preview.context["result"].rows] == ["new", "new", "new"]
    assert not Client.objects.exists()  # the preview is a dry run

    confirm(admin_client, CLIENTS_CONFIRM, preview)

    mary = Client.objects.get(email="mary@example.com")
    assert (mary.name, mary.phone, mary.notes) == ("Mary Somerville", "07700 900001", "Prefers mornings")
    assert Client.objects.count() == 3
    assert mary.history.get().history_user == admin_user  # written by core.services.client_create


def test_a_client_file_with_one_bad_row_imports_nothing_and_names_row_and_column(admin_client, client_a):
    text = GOOD_CLIENTS + "Bad Row,not-an-email,,\n"

    preview = upload(admin_client, CLIENTS_IMPORT, text)

    assert preview.context.get("confirm_form") is None  # no way to confirm
    assert list(invalid_rows(preview)) == [4]
    assert invalid_rows(preview)[4]["email"] == ["Enter a valid email address."]
    text_shown = page_text(preview)
    assert "Enter a valid email address." in text_shown and "not-an-email" in text_shown
    assert list(Client.objects.values_list("email", flat=True)) == ["ada@example.com"]


def test_the_client_resource_itself_imports_nothing_when_a_row_is_wrong(db, client_a):
    result = ClientImportResource().import_data(dataset(GOOD_CLIENTS + ",nameless@example.com,,\n"), dry_run=False)

    assert result.has_validation_errors()
    assert invalid_rows_of(result) == {4: {"name": ["This field cannot be blank."]}}
    assert list(Client.objects.values_list("email", flat=True)) == ["ada@example.com"]


def invalid_rows_of(result):
    return {row.number: row.error_dict for row in result.invalid_rows}


def test_the_same_email_twice_in_a_file_is_an_error_on_both_rows(admin_client):
    text = "name,email\nAda One,ada@example.com\nGrace,grace@example.com\nAda Two,ADA@example.com \n"

    preview = upload(admin_client, CLIENTS_IMPORT, text)

    errors = invalid_rows(preview)
    assert errors[1]["email"] == ["ada@example.com is also in row 3: put each client in the file once."]
    assert errors[3]["email"] == ["ada@example.com is also in row 1: put each client in the file once."]
    assert 2 not in errors
    assert not Client.objects.exists()


def test_an_existing_email_updates_that_client_with_the_non_blank_cells(admin_client, client_a, client_b):
    client_a.phone = "07700 900100"
    client_a.save()
    text = "name,email,phone,notes\nAda King,ADA@example.com,,VIP\nGrace Hopper,grace@example.com,,\n"

    preview, _ = import_file(admin_client, "clients", text)

    assert [row.import_type for row in preview.context["result"].rows] == ["update", "skip"]
    client_a.refresh_from_db()
    assert (client_a.name, client_a.phone, client_a.notes) == ("Ada King", "07700 900100", "VIP")
    assert Client.objects.count() == 2


def test_a_file_without_an_email_column_names_the_column_on_each_row(admin_client):
    preview = upload(admin_client, CLIENTS_IMPORT, "name,phone\nNo Email,0770\n")

    assert invalid_rows(preview) == {1: {"email": ["The file has no “email” column."]}}
    assert not Client.objects.exists()


# --- Opening balances ---------------------------------------------------------------------


@pytest.fixture
def people(db, client_a, client_b, massage, physio):
    return client_a, client_b, massage, physio


def good_balances(days_ahead: int = 60) -> str:
    expires = timezone.localdate() + timedelta(days=days_ahead)
    return (
        "Client email,Session type,Credits,Expires on,Value,Currency\n"
        f"ADA@example.com,massage 60,10,{expires.isoformat()},450.00,\n"
        f"ada@example.com,Physio,3,{expires:%d/%m/%Y},,\n"
        "grace@example.com,Massage 60,5,,200,EUR\n"
    )


def test_a_good_balance_file_enters_the_ledger_as_issued_imports(admin_client, admin_user, people):
    ada, grace, massage, physio = people
    before = timezone.now()

    preview, done = import_file(admin_client, "balances", good_balances())

    assert LedgerEntry.objects.count() == 3  # the preview's dry run left nothing behind
    assert "Opening balances imported: 3 new" in page_text(admin_client.get(done["Location"]))
    assert (balance(ada, massage), balance(ada, physio), balance(grace, massage)) == (10, 3, 5)
    for entry in LedgerEntry.objects.all():
        assert (entry.kind, entry.source, entry.actor) == (EntryKind.ISSUED, EntrySource.IMPORT, admin_user)
        assert entry.idempotency_key.startswith("import:opening:")
        assert "file.csv, row" in entry.note
    expires = end_of_local_day(timezone.localdate() + timedelta(days=60))
    ada_massage = CreditGrant.objects.get(client=ada, session_type=massage)
    assert (ada_massage.source, ada_massage.purchase, ada_massage.expires_at) == (EntrySource.IMPORT, None, expires)
    assert (ada_massage.opening_value, ada_massage.opening_currency) == (Decimal("450.00"), "GBP")
    assert CreditGrant.objects.get(client=ada, session_type=physio).opening_value is None
    grace_grant = CreditGrant.objects.get(client=grace)
    assert (grace_grant.opening_value, grace_grant.opening_currency) == (Decimal("200"), "EUR")
    # No expiry in the file: twelve months from the import, to the end of that local day.
    assert grace_grant.expires_at == expiry_for(grace_grant.created_at, 12, "months")
    assert grace_grant.created_at >= before
    assert ledger_check().ok


def test_a_balance_file_with_one_bad_row_imports_nothing_and_names_row_and_column(admin_client, people):
    yesterday = timezone.localdate() - timedelta(days=1)
    text = good_balances() + (
        "nobody@example.com,Massage 60,4,,,\n"
        "grace@example.com,Yoga,2,,,\n"
        f"grace@example.com,Physio,0,{yesterday.isoformat()},12.345,\n"
    )

    preview = upload(admin_client, BALANCES_IMPORT, text)

    assert preview.context.get("confirm_form") is None
    errors = invalid_rows(preview)
    assert sorted(errors) == [4, 5, 6]
    assert errors[4] == {"client_email": ["No client has the email nobody@example.com: import or add the client first."]}
    assert errors[5] == {"session_type": ["No session type is called “Yoga” (there are: Massage 60, Physio)."]}
    assert set(errors[6]) == {"credits", "expires_on", "value"}
    assert errors[6]["credits"] == ["Give from 1 to 1000 credits, not 0."]
    assert "is in the past" in errors[6]["expires_on"][0]
    assert errors[6]["value"] == ["GBP amounts have at most 2 decimal places."]
    # The page as people see it: each error under its row, after the column's name.
    shown = re.sub(r"\s+", " ", page_text(preview))
    assert "client_email:</span> <ul> <li>No client has the email nobody@example.com" in shown
    assert "credits:</span> <ul> <li>Give from 1 to 1000 credits, not 0." in shown
    assert not LedgerEntry.objects.exists() and not CreditGrant.objects.exists()


def test_the_balance_resource_itself_imports_nothing_when_a_row_is_wrong(people, admin_user):
    text = good_balances() + "grace@example.com,Physio,ten,,,\n"

    result = OpeningBalanceResource().import_data(dataset(text), dry_run=False, user=admin_user)

    assert invalid_rows_of(result) == {4: {"credits": ["“ten” is not a whole number of credits."]}}
    assert not LedgerEntry.objects.exists() and not ClientBalance.objects.filter(balance__gt=0).exists()


def test_confirming_the_same_balance_file_twice_adds_the_credits_once(admin_client, people):
    ada, grace, massage, physio = people
    import_file(admin_client, "balances", good_balances())

    again = upload(admin_client, BALANCES_IMPORT, good_balances())
    assert [row.import_type for row in again.context["result"].rows] == ["skip", "skip", "skip"]
    confirm(admin_client, BALANCES_CONFIRM, again)

    assert (balance(ada, massage), balance(ada, physio), balance(grace, massage)) == (10, 3, 5)
    assert LedgerEntry.objects.count() == 3


def test_a_reordered_file_with_a_row_added_imports_only_the_new_row(admin_client, people):
    ada, grace, massage, physio = people
    import_file(admin_client, "balances", good_balances())
    header, *rows = good_balances().splitlines()
    grown = "\n".join([header, *reversed(rows), "grace@example.com,Physio,2,,,"]) + "\n"

    preview, _ = import_file(admin_client, "balances", grown)

    assert [row.import_type for row in preview.context["result"].rows] == ["skip", "skip", "skip", "new"]
    assert (balance(ada, massage), balance(grace, massage), balance(grace, physio)) == (10, 5, 2)
    assert ledger_check().ok


def test_the_same_balance_twice_in_a_file_is_an_error_on_both_rows(admin_client, people):
    text = "client_email,session_type,credits\nada@example.com,Physio,2\nada@example.com,physio,2.0\n"

    preview = upload(admin_client, BALANCES_IMPORT, text)

    assert invalid_rows(preview) == {
        1: {"__all__": ["The same balance as row 2: put the total in one row."]},
        2: {"__all__": ["The same balance as row 1: put the total in one row."]},
    }
    assert not LedgerEntry.objects.exists()


def test_a_file_that_went_wrong_after_its_preview_imports_nothing(admin_client, people):
    ada, grace, massage, physio = people
    preview = upload(admin_client, BALANCES_IMPORT, good_balances())
    physio.archived = True  # meanwhile, in another tab
    physio.save()

    done = confirm(admin_client, BALANCES_CONFIRM, preview)

    assert done.status_code == 200
    shown = page_text(done)
    assert "Nothing was imported" in shown and "Physio is archived" in shown
    assert not LedgerEntry.objects.exists()


def test_zero_decimal_currencies_take_whole_values(people, admin_user):
    result = OpeningBalanceResource().import_data(
        dataset("client_email,session_type,credits,value,currency\nada@example.com,Physio,2,1500.50,jpy\n"),
        dry_run=False, user=admin_user,
    )
    assert invalid_rows_of(result) == {1: {"value": ["JPY amounts have at most 0 decimal places."]}}


# --- The service --------------------------------------------------------------------------


def test_the_service_issues_once_per_key(people, admin_user):
    ada, grace, massage, physio = people
    args = dict(client=ada, session_type=massage, credits=4, expires_at=None, value=Decimal("100.00"),
                currency=None, actor=admin_user, key="import:opening:test")

    first = credits_import_opening(**args)
    second = credits_import_opening(**{**args, "credits": 9})

    assert first.pk == second.pk
    assert balance(ada, massage) == 4
    assert (first.opening_value, first.opening_currency) == (Decimal("100.00"), "GBP")
    assert ledger_check().ok


def test_the_service_refuses_what_a_file_could_get_wrong(people, admin_user):
    ada, grace, massage, physio = people
    with pytest.raises(ValidationError) as refused:
        credits_import_opening(
            client=ada, session_type=massage, credits=1001, expires_at=timezone.now() - timedelta(hours=1),
            value=Decimal("-1"), currency="pounds", actor=admin_user, key="import:opening:bad",
        )
    assert set(refused.value.message_dict) == {"credits", "expires_at", "value", "currency"}
    assert not LedgerEntry.objects.exists()


# --- Who may import -----------------------------------------------------------------------


@pytest.mark.parametrize("role", [MANAGER, FINANCE])
def test_managers_and_finance_import_clients_and_balances(client, make_member, role, people):
    ada, grace, massage, physio = people
    client.force_login(make_member(role))

    assert "Import clients" in page_text(client.get(reverse("admin:core_client_changelist")))
    assert "Import opening balances" in page_text(client.get(reverse("admin:ledger_creditgrant_changelist")))
    assert "Columns: client_email, session_type, credits" in page_text(client.get(reverse(BALANCES_IMPORT)))
    import_file(client, "clients", "name,email\nMary Somerville,mary@example.com\n")
    import_file(client, "balances", "client_email,session_type,credits\nmary@example.com,Physio,6\n")

    assert balance(Client.objects.get(email="mary@example.com"), physio) == 6


def test_the_front_desk_cannot_import(client, make_member, people):
    client.force_login(make_member(FRONT_DESK))

    assert "Import clients" not in page_text(client.get(reverse("admin:core_client_changelist")))
    assert "Import opening balances" not in page_text(client.get(reverse("admin:ledger_creditgrant_changelist")))
    for url_name, text in ((CLIENTS_IMPORT, GOOD_CLIENTS), (BALANCES_IMPORT, good_balances())):
        assert client.get(reverse(url_name)).status_code == 403
        assert upload(client, url_name, text).status_code == 403
    assert client.post(reverse(BALANCES_CONFIRM), {"import_file_name": "x", "format": "0"}).status_code == 403
    assert Client.objects.count() == 2 and not LedgerEntry.objects.exists()
