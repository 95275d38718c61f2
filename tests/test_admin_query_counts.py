"""Every admin list runs the same number of queries at 10 rows and at 500 rows."""
from __future__ import annotations

import itertools
import uuid
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django_dramatiq.models import Task
from dramatiq import Message

from catalog.models import Category, CreditPack, PackCreditLine, PackStaffPrice, SessionType
from catalog.services import pack_snapshot
from core.models import Client, StaffMember
from ledger.models import ClientBalance, CreditGrant, LedgerEntry
from ledger.services import credits_adjust
from payments.models import Purchase

SMALL, LARGE = 10, 500
_serial = itertools.count()


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix} {next(_serial)}" for _ in range(n)]


def _users(n: int):
    return get_user_model().objects.bulk_create(
        get_user_model()(username=name.replace(" ", "-"), email=f"{name.replace(' ', '.')}@example.com")
        for name in _names("user", n)
    )


def _clients(n: int) -> list[Client]:
    return Client.objects.bulk_create(
        Client(name=name, email=f"{name.replace(' ', '.')}@example.com", phone="0123")
        for name in _names("client", n)
    )


def _packs(world, n: int) -> list[CreditPack]:
    return CreditPack.objects.bulk_create(
        CreditPack(name=name, category=world["category"], price=Decimal("100.00"), published=True)
        for name in _names("pack", n)
    )


def add_clients_with_credits(world, n: int) -> None:
    """Clients holding credits, through the ledger service: a grant, an entry and a balance each."""
    for client in _clients(n):
        credits_adjust(
            client=client, session_type=world["massage"], amount=3, reason="opening balance",
            actor=world["user"],
        )


def add_categories(world, n: int) -> None:
    Category.objects.bulk_create(Category(name=name) for name in _names("category", n))


def add_session_types(world, n: int) -> None:
    SessionType.objects.bulk_create(
        SessionType(name=name, category=world["category"]) for name in _names("type", n)
    )


def add_packs_with_lines(world, n: int) -> None:
    PackCreditLine.objects.bulk_create(
        PackCreditLine(pack=pack, session_type=world["massage"], credits=5) for pack in _packs(world, n)
    )


def add_packs_with_staff_prices(world, n: int) -> None:
    PackStaffPrice.objects.bulk_create(
        PackStaffPrice(pack=pack, staff_member=world["coach"], price=Decimal("90.00"))
        for pack in _packs(world, n)
    )


def add_staff_members(world, n: int) -> None:
    members = StaffMember.objects.bulk_create(
        StaffMember(user=user, display_name=user.username) for user in _users(n)
    )
    through = StaffMember.session_types.through
    through.objects.bulk_create(
        through(staffmember_id=m.pk, sessiontype_id=world["massage"].pk) for m in members
    )


def add_purchases(world, n: int) -> None:
    snapshot = pack_snapshot(world["pack"])
    Purchase.objects.bulk_create(
        Purchase(
            client=client, pack=world["pack"], price=world["pack"].price, currency="GBP",
            snapshot=snapshot, created_by=world["user"],
        )
        for client in _clients(n)
    )


def add_users(world, n: int) -> None:
    _users(n)


def add_groups(world, n: int) -> None:
    Group.objects.bulk_create(Group(name=name) for name in _names("group", n))


def add_tasks(world, n: int) -> None:
    Task.tasks.bulk_create(
        Task(
            id=uuid.uuid4(), actor_name="expire_credits", queue_name="default",
            message_data=Message(
                queue_name="default", actor_name="expire_credits", args=(), kwargs={}, options={}
            ).encode(),
        )
        for _ in range(n)
    )


# Each registered model: how to add rows, and the queries its list runs (measured): session,
# user, count, the page of rows, plus one per related-model filter. None depends on the rows.
LISTS = {
    Client: (add_clients_with_credits, 5),
    StaffMember: (add_staff_members, 6),
    Category: (add_categories, 5),
    SessionType: (add_session_types, 6),
    CreditPack: (add_packs_with_lines, 6),
    PackCreditLine: (add_packs_with_lines, 6),
    PackStaffPrice: (add_packs_with_staff_prices, 5),
    Purchase: (add_purchases, 6),
    LedgerEntry: (add_clients_with_credits, 5),
    CreditGrant: (add_clients_with_credits, 5),
    ClientBalance: (add_clients_with_credits, 6),
    get_user_model(): (add_users, 6),
    Group: (add_groups, 5),
    Task: (add_tasks, 7),
}


@pytest.fixture
def world(db, category, massage, coach, staff_user, make_pack):
    return {
        "category": category, "massage": massage, "coach": coach, "user": staff_user,
        "pack": make_pack([(massage, False, 10)]),
    }


def test_every_registered_list_is_measured():
    assert set(admin.site._registry) == set(LISTS)


def _load(admin_client, url: str, budget: int, django_assert_max_num_queries):
    with django_assert_max_num_queries(budget), CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url)
    assert response.status_code == 200
    return response, len(captured)


@pytest.mark.parametrize("model", list(LISTS), ids=lambda m: m._meta.label)
def test_list_query_count_does_not_grow_with_rows(admin_client, world, model, django_assert_max_num_queries):
    add_rows, budget = LISTS[model]
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")

    add_rows(world, SMALL)
    small, small_queries = _load(admin_client, url, budget, django_assert_max_num_queries)
    add_rows(world, LARGE - SMALL)
    large, large_queries = _load(admin_client, url, budget, django_assert_max_num_queries)

    assert small.context["cl"].result_count >= SMALL
    # More rows than one page holds, so the paginator is part of what is measured.
    assert large.context["cl"].result_count >= LARGE > large.context["cl"].list_per_page
    assert len(large.context["cl"].result_list) == large.context["cl"].list_per_page
    assert small_queries == large_queries, (small_queries, large_queries)
