"""Every admin list runs the same number of queries at 10 rows and at 500 rows."""
from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_dramatiq.models import Task
from dramatiq import Message

from catalog.models import (
    Category,
    CreditPack,
    IntakeForm,
    IntakeQuestion,
    PackCreditLine,
    PackStaffPrice,
    SessionType,
)
from catalog.services import pack_snapshot
from core.bookings import booking_create
from core.models import Booking, BusinessSettings, Client, EmailLog, Session, StaffMember, StaffNotification
from core.sessions import session_create
from ledger.models import ClientBalance, CreditGrant, LedgerEntry
from ledger.services import credits_adjust
from reports.models import ReportExport
from payments.models import (
    Invoice,
    OutstandingPurchase,
    Payment,
    Purchase,
    ReconciliationLine,
    ReconciliationRun,
    Refund,
    StripeEvent,
    Subscription,
)

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


def add_invoices(world, n: int) -> None:
    add_purchases(world, n)
    Invoice.objects.bulk_create(
        Invoice(purchase=p, kind="offline", number=f"PD-{p.pk:06d}", amount=p.price, currency="GBP", status="open")
        for p in Purchase.objects.filter(invoices__isnull=True)
    )


def add_intake_forms(world, n: int) -> None:
    forms = IntakeForm.objects.bulk_create(IntakeForm(name=name) for name in _names("form", n))
    IntakeQuestion.objects.bulk_create(IntakeQuestion(form=form, text="Are you pregnant?") for form in forms)


def add_report_exports(world, n: int) -> None:
    ReportExport.objects.bulk_create(
        ReportExport(
            kind="ledger", status="done", rows_done=10, rows_total=10, file_name="packdesk_ledger.csv",
            file_path="export_0.csv", created_by=world["user"], finished_at=timezone.now(),
        )
        for _ in range(n)
    )


def add_subscriptions(world, n: int) -> None:
    """Invoice plans as the desk sells them: each with its first cycle open."""
    from catalog.services import pack_create
    from catalog.validation import LineData
    from payments.subscriptions import subscription_create

    if "plan_pack" not in world:
        world["plan_pack"] = pack_create(
            actor=world["user"], lines=[LineData(world["massage"], False, 4)], staff_prices=[],
            name="Monthly plan", category=world["category"], price=Decimal("100.00"), currency="GBP",
            published=True, is_recurring=True, billing_interval="month", recurs_when="pack_expires",
            recurring_collection="invoice", minimum_commitment=3,
        )
    for client in _clients(n):
        subscription_create(client=client, pack=world["plan_pack"], actor=world["user"])


def add_reconciliation_runs(world, n: int) -> None:
    start = timezone.now() - timedelta(days=1)
    runs = ReconciliationRun.objects.bulk_create(
        ReconciliationRun(
            period_start=start, period_end=start + timedelta(days=1), status="done",
            created_by=world["user"], transactions=1, mismatches=1,
        )
        for _ in range(n)
    )
    ReconciliationLine.objects.bulk_create(
        ReconciliationLine(
            run=run, type="charge", balance_transaction_id=f"txn_{run.pk}", amount=10000,
            currency="GBP", mismatch="paid_no_credits", resolved_by=world["user"],
        )
        for run in runs
    )


def add_sessions(world, n: int) -> None:
    """Upcoming sessions (the list opens on today and later), some with bookings to count."""
    start = timezone.now() + timedelta(days=1)
    offset = Session.objects.count()
    Session.objects.bulk_create(
        Session(
            session_type=world["massage"], staff_member=world["coach"], capacity=4, duration_minutes=60,
            starts_at=start + timedelta(hours=i), ends_at=start + timedelta(hours=i, minutes=60),
        )
        for i in range(offset, offset + n)
    )
    sessions = Session.objects.order_by("-pk")[:n]
    Booking.objects.bulk_create(
        Booking(session=session, client=client) for session, client in zip(sessions, _clients(n))
    )


def add_bookings(world, n: int) -> None:
    """Bookings through the service: half paid with a credit, half with a pack sold on the spot."""
    if "class" not in world:
        world["class"] = session_create(
            session_type=world["massage"], staff_member=world["coach"], capacity=2 * LARGE,
            starts_at=timezone.now() + timedelta(days=1), outside_hours_reason="big class", actor=world["user"],
        )
    for number, client in enumerate(_clients(n)):
        if number % 2:
            credits_adjust(client=client, session_type=world["massage"], amount=1, reason="gift", actor=world["user"])
            booking_create(client=client, session=world["class"], actor=world["user"])
        else:
            booking_create(client=client, session=world["class"], sell_pack=world["pack"], actor=world["user"])


def add_payments(world, n: int) -> None:
    before = set(Purchase.objects.values_list("pk", flat=True))
    add_purchases(world, n)
    Payment.objects.bulk_create(
        Payment(purchase=purchase, method="cash", amount=purchase.price, currency="GBP", recorded_by=world["user"])
        for purchase in Purchase.objects.exclude(pk__in=before)
    )


def add_refunds(world, n: int) -> None:
    before = set(Refund.objects.values_list("purchase_id", flat=True))
    add_payments(world, n)
    Refund.objects.bulk_create(
        Refund(purchase=purchase, amount=Decimal("10.00"), currency="GBP", method="cash", status="succeeded",
               reason="goodwill", created_by=world["user"])
        for purchase in Purchase.objects.filter(payments__isnull=False).exclude(pk__in=before)
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


def add_stripe_events(world, n: int) -> None:
    StripeEvent.objects.bulk_create(
        StripeEvent(event_id=f"evt_{next(_serial)}", type="checkout.session.completed", payload={}, last_error="x")
        for _ in range(n)
    )


def add_email_logs(world, n: int) -> None:
    clients = _clients(n)
    EmailLog.objects.bulk_create(
        EmailLog(recipient=c.email, template="booking_reminder", subject="Book", client=c, related_type="purchase",
                 related_id=i, nudge_kind="booking_reminder", dedupe_key=f"k{next(_serial)}", status="sent")
        for i, c in enumerate(clients)
    )


def add_staff_notifications(world, n: int) -> None:
    StaffNotification.objects.bulk_create(
        StaffNotification(staff_member=world["coach"], text=f"Credits issued {next(_serial)}", related_type="purchase",
                          related_id=1)
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
    # Places taken and sessions used are aggregates in the page's own query.
    Session: (add_sessions, 6),
    Booking: (add_bookings, 6),
    Payment: (add_payments, 4),
    OutstandingPurchase: (add_purchases, 5),  # + the unfiltered total, shown in the header
    Refund: (add_refunds, 4),  # credits voided: an aggregate in the page's own query
    StripeEvent: (add_stripe_events, 5),  # + the distinct types for the type filter
    EmailLog: (add_email_logs, 5),  # + the distinct templates for the template filter
    StaffNotification: (add_staff_notifications, 5),  # + the staff members for the filter
    Invoice: (add_invoices, 4),
    Subscription: (add_subscriptions, 4),
    ReportExport: (add_report_exports, 5),
    IntakeForm: (add_intake_forms, 5),  # + whether an export is running (the page refreshes)
    ReconciliationRun: (add_reconciliation_runs, 4),  # open mismatches: an aggregate in the page's query
    ReconciliationLine: (add_reconciliation_runs, 5),  # + the runs for the run filter
}
# One row at most: measured on its own below.
SINGLETONS = {BusinessSettings: 5}


@pytest.fixture
def world(db, category, massage, coach, staff_user, make_pack):
    return {
        "category": category, "massage": massage, "coach": coach, "user": staff_user,
        "pack": make_pack([(massage, False, 10)]),
    }


def test_every_registered_list_is_measured():
    assert set(admin.site._registry) == set(LISTS) | set(SINGLETONS)


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


@pytest.mark.parametrize("model", list(SINGLETONS), ids=lambda m: m._meta.label)
def test_singleton_list_has_a_fixed_query_count(admin_client, model, django_assert_max_num_queries):
    model.current()
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    _, first = _load(admin_client, url, SINGLETONS[model], django_assert_max_num_queries)
    response, again = _load(admin_client, url, SINGLETONS[model], django_assert_max_num_queries)
    assert response.context["cl"].result_count == 1
    assert first == again
