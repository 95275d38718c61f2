"""Roles: the groups hold exactly core.roles.ROLES, and each role can and cannot do what it should.

Every registered admin list and add page is opened as each role and as nobody; what each may
open is derived from the role table, then a hand-written table pins the facts that matter most.
"""
from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import RequestFactory
from django.urls import reverse
from django.utils import timezone

from catalog.models import CreditPack
from core.bookings import FORFEIT, booking_cancel, booking_create
from core.exceptions import PermissionRefused
from core.models import BookingStatus, Client
from core.roles import (
    FINANCE,
    FRONT_DESK,
    MANAGER,
    ROLES,
    UnknownPermission,
    adjust_limit_for,
    adjust_refusal,
    migration_sync_roles,
    sync_roles,
)
from core.sessions import session_create
from ledger.models import ClientBalance, EntryKind, LedgerEntry
from payments.services import purchase_create
from tests.test_admin import admin_url, pack_post

# Models every role must be tested against; the front-desk helper adds sessions, bookings and
# payments to the admin, and the loop below covers them as soon as they are registered.
REQUIRED_ADMIN_MODELS = {
    "auth.User", "auth.Group", "core.Client", "core.StaffMember", "catalog.Category",
    "catalog.SessionType", "catalog.CreditPack", "catalog.PackCreditLine", "catalog.PackStaffPrice",
    "ledger.LedgerEntry", "ledger.CreditGrant", "ledger.ClientBalance", "payments.Purchase",
}


def group_permissions(name: str) -> set[str]:
    return {
        f"{p.content_type.app_label}.{p.codename}"
        for p in Group.objects.get(name=name).permissions.select_related("content_type")
    }


@pytest.fixture
def roles(db):
    sync_roles()


@pytest.fixture
def make_member(roles):
    def make(role: str | None, username: str | None = None):
        user = get_user_model().objects.create_user(
            username or f"{(role or 'nobody').lower().replace(' ', '-')}-{uuid.uuid4().hex[:6]}",
            password="pw-role-123", is_staff=True,
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def desk(make_member):
    return make_member(FRONT_DESK)


@pytest.fixture
def manager(make_member):
    return make_member(MANAGER)


@pytest.fixture
def finance(make_member):
    return make_member(FINANCE)


def logged_in(client, user):
    client.force_login(user)
    return client


# --- The groups ---------------------------------------------------------------------------


def test_the_migrated_database_holds_the_roles_exactly(db):
    # No sync here: this is what core/0005_roles left in the test database.
    for name, permissions in ROLES.items():
        assert group_permissions(name) == set(permissions), name


def test_the_migration_creates_the_groups_with_historical_models(db):
    Group.objects.filter(name__in=ROLES).delete()
    state = MigrationLoader(connection).project_state(("core", "0005_roles"), at_end=True)

    migration_sync_roles(state.apps, SimpleNamespace(connection=connection))

    for name, permissions in ROLES.items():
        assert group_permissions(name) == set(permissions), name


def test_sync_is_idempotent_and_removes_what_the_table_does_not_grant(roles):
    stray = Permission.objects.get(codename="delete_creditpack")
    Group.objects.get(name=FRONT_DESK).permissions.add(stray)
    before = {name: group_permissions(name) for name in (MANAGER, FINANCE)}

    sync_roles()
    sync_roles()

    assert group_permissions(FRONT_DESK) == set(ROLES[FRONT_DESK])
    assert {name: group_permissions(name) for name in (MANAGER, FINANCE)} == before
    assert Group.objects.filter(name__in=ROLES).count() == 3


def test_sync_refuses_an_unknown_permission(roles, monkeypatch):
    monkeypatch.setitem(ROLES, FRONT_DESK, [*ROLES[FRONT_DESK], "core.fly_client"])
    with pytest.raises(UnknownPermission, match="core.fly_client"):
        sync_roles()
    assert "core.fly_client" not in group_permissions(FRONT_DESK)


def test_sync_roles_command(roles, capsys):
    Group.objects.get(name=FINANCE).permissions.clear()

    call_command("sync_roles")

    assert group_permissions(FINANCE) == set(ROLES[FINANCE])
    out = capsys.readouterr().out
    assert f"Finance: {len(set(ROLES[FINANCE]))} permissions" in out and "in sync" in out


# --- Every admin page, every role ----------------------------------------------------------


def outcome(response) -> str:
    if response.status_code == 403:
        return "refused"
    if response.status_code == 302 and reverse("admin:login") in response["Location"]:
        return "login"
    assert response.status_code in (200, 302), (response.status_code, response.request["PATH_INFO"])
    return "allowed"


def expected_access(role: str, model, model_admin, superuser) -> dict[str, str]:
    """What the role table says about a model's list and add pages, within what its admin allows."""
    granted = set(ROLES[role])
    opts = model._meta
    has = {action: f"{opts.app_label}.{action}_{opts.model_name}" in granted for action in ("view", "change", "add")}
    request = RequestFactory().get("/")
    request.user = superuser
    admin_lists = model_admin.has_view_or_change_permission(request)
    admin_adds = model_admin.has_add_permission(request)
    return {
        "changelist": "allowed" if admin_lists and (has["view"] or has["change"]) else "refused",
        "add": "allowed" if admin_adds and has["add"] else "refused",
    }


def test_every_admin_model_is_covered():
    registered = {model._meta.label for model in admin.site._registry}
    assert REQUIRED_ADMIN_MODELS <= registered


@pytest.mark.parametrize("role", [FRONT_DESK, MANAGER, FINANCE])
def test_each_role_opens_exactly_the_admin_pages_its_permissions_allow(client, make_member, admin_user, role):
    logged_in(client, make_member(role))
    mismatches = []
    for model, model_admin in admin.site._registry.items():
        expected = expected_access(role, model, model_admin, admin_user)
        for view in ("changelist", "add"):
            got = outcome(client.get(admin_url(model, view)))
            if got != expected[view]:
                mismatches.append(f"{model._meta.label} {view}: {got}, expected {expected[view]}")
    assert mismatches == []


def test_nobody_logged_in_is_sent_to_the_login_page(client, db):
    for model in admin.site._registry:
        for view in ("changelist", "add"):
            assert outcome(client.get(admin_url(model, view))) == "login", (model, view)
    assert outcome(client.get(reverse("admin:index"))) == "login"


def test_a_staff_login_without_a_role_sees_nothing(client, make_member):
    logged_in(client, make_member(None))
    for model in admin.site._registry:
        assert outcome(client.get(admin_url(model, "changelist"))) == "refused", model


def test_every_role_sees_the_dashboard(client, desk, manager, finance):
    for user in (desk, manager, finance):
        response = logged_in(client, user).get(reverse("admin:index"))
        assert response.status_code == 200
        assert response.context["dashboard"] is not None


# --- Key facts, by hand ------------------------------------------------------------------


@pytest.fixture
def pack(make_pack, massage, coach):
    return make_pack([(massage, False, 10)], staff_prices=[(coach, Decimal("350.00"))])


def pack_change_post(pack, price: str) -> dict:
    line, staff_price = pack.credit_lines.get(), pack.staff_prices.get()
    data = pack_post(pack.category, [], name=pack.name, price=price, all_staff=None)
    data.update({
        "credit_lines-TOTAL_FORMS": "1", "credit_lines-INITIAL_FORMS": "1",
        "credit_lines-0-id": line.pk, "credit_lines-0-pack": pack.pk,
        "credit_lines-0-session_type": line.session_type_id, "credit_lines-0-credits": "10",
        "credit_lines-0-validity_amount": "", "credit_lines-0-validity_unit": "",
        "staff_prices-TOTAL_FORMS": "1", "staff_prices-INITIAL_FORMS": "1",
        "staff_prices-0-id": staff_price.pk, "staff_prices-0-pack": pack.pk,
        "staff_prices-0-staff_member": staff_price.staff_member_id, "staff_prices-0-price": "400.00",
    })
    return data


def test_front_desk_sees_a_pack_but_cannot_change_its_price(client, desk, pack):
    logged_in(client, desk)
    assert client.get(admin_url(CreditPack, "change", pack.pk)).status_code == 200

    response = client.post(admin_url(CreditPack, "change", pack.pk), pack_change_post(pack, "1.00"))

    assert response.status_code == 403
    pack.refresh_from_db()
    assert pack.price == Decimal("300.00")
    assert pack.staff_prices.get().price == Decimal("350.00")


def test_manager_changes_a_pack_price_and_staff_price(client, manager, pack):
    response = logged_in(client, manager).post(
        admin_url(CreditPack, "change", pack.pk), pack_change_post(pack, "320.00")
    )

    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    pack.refresh_from_db()
    assert pack.price == Decimal("320.00")
    assert pack.staff_prices.get().price == Decimal("400.00")


def test_finance_cannot_change_a_client(client, finance, client_a):
    response = logged_in(client, finance).post(
        admin_url(Client, "change", client_a.pk),
        {"name": "Changed", "email": client_a.email, "phone": "", "notes": ""},
    )

    assert response.status_code == 403
    client_a.refresh_from_db()
    assert client_a.name == "Ada Lovelace"


def test_only_managers_and_finance_may_import_clients(client, finance, desk, db):
    # Loading a file of clients is a data migration, not desk work (tests/test_imports.py).
    csv = SimpleUploadedFile("clients.csv", b"name,email\nNew Client,new@example.com\n", content_type="text/csv")
    logged_in(client, desk)
    assert client.get("/admin/core/client/import/").status_code == 403
    assert client.post("/admin/core/client/import/", {"import_file": csv, "format": "0"}).status_code == 403
    assert not Client.objects.filter(email="new@example.com").exists()
    logged_in(client, finance)
    assert client.get("/admin/core/client/import/").status_code == 200


def test_front_desk_changes_a_client_but_cannot_delete_one(client, desk, client_a):
    logged_in(client, desk)
    changed = client.post(
        admin_url(Client, "change", client_a.pk),
        {"name": "Ada King", "email": client_a.email, "phone": "", "notes": ""},
    )
    assert changed.status_code == 302
    client_a.refresh_from_db()
    assert client_a.name == "Ada King"

    assert client.get(admin_url(Client, "delete", client_a.pk)).status_code == 403
    assert client.post(admin_url(Client, "delete", client_a.pk), {"post": "yes"}).status_code == 403
    assert Client.objects.filter(pk=client_a.pk).exists()


def test_only_managers_override_credit_rules(desk, manager, client_a, massage, coach, make_pack, sell):
    sell(client_a, make_pack([(massage, False, 10)]))
    session = session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=3),
        actor=manager, outside_hours_reason="test diary",
    )
    booking = booking_create(client=client_a, session=session, actor=desk)

    with pytest.raises(PermissionRefused):
        booking_cancel(booking=booking, actor=desk, override=FORFEIT, reason="no-show habit")
    assert booking.__class__.objects.get(pk=booking.pk).status == BookingStatus.BOOKED

    cancelled = booking_cancel(booking=booking, actor=manager, override=FORFEIT, reason="agreed with client")

    assert cancelled.status == BookingStatus.CANCELLED
    assert LedgerEntry.objects.filter(booking=booking, kind=EntryKind.FORFEITED).exists()
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 9


def test_only_superusers_manage_logins(client, manager, desk):
    logged_in(client, manager)
    assert client.get(admin_url(get_user_model(), "changelist")).status_code == 200
    response = client.post(
        admin_url(get_user_model(), "change", manager.pk),
        {"username": manager.username, "is_staff": "on", "is_superuser": "on"},
    )
    assert response.status_code == 403
    manager.refresh_from_db()
    assert not manager.is_superuser
    assert client.get(admin_url(Group, "changelist")).status_code == 403


# --- Credit adjustments within a limit -----------------------------------------------------


def test_adjust_limits_by_role(desk, manager, finance, admin_user, settings):
    assert adjust_limit_for(desk) == 2
    assert adjust_limit_for(manager) is None
    assert adjust_limit_for(admin_user) is None
    assert adjust_limit_for(finance) == 0
    assert adjust_refusal(desk, -2) is None and adjust_refusal(manager, 50) is None
    assert "at most 2 credits" in adjust_refusal(desk, 3)
    assert "not allowed" in adjust_refusal(finance, 1)

    settings.FRONT_DESK_ADJUST_LIMIT = 5
    desk = get_user_model().objects.get(pk=desk.pk)  # permissions are cached per user object
    assert adjust_limit_for(desk) == 5


def adjust(client, user, client_a, massage, amount: int):
    logged_in(client, user)
    return client.post(
        reverse("admin:core_client_adjust_credits", args=[client_a.pk]),
        {"session_type": massage.pk, "amount": str(amount), "reason": "desk correction",
         "expires_on": "", "token": str(uuid.uuid4())},
    )


def test_front_desk_adjusts_credits_within_the_limit_only(client, desk, manager, finance, client_a, massage):
    refused = adjust(client, desk, client_a, massage, 3)
    assert refused.status_code == 200
    assert "at most 2 credits at a time" in refused.content.decode()
    assert not LedgerEntry.objects.filter(client=client_a).exists()

    assert adjust(client, desk, client_a, massage, 2).status_code == 302
    assert adjust(client, manager, client_a, massage, 10).status_code == 302
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 12

    assert adjust(client, finance, client_a, massage, 1).status_code == 403
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 12


def test_front_desk_and_finance_record_desk_payments_managers_do_not(
    client, desk, manager, finance, client_a, pack, staff_user,
):
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
    url = reverse("admin:payments_purchase_record_payment", args=[purchase.pk])
    for user, status in ((desk, 200), (finance, 200), (manager, 403)):
        assert logged_in(client, user).get(url).status_code == status, user.groups.get().name
