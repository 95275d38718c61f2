"""Every admin URL, as each role, as a staff login with no role and as nobody: only the allowed succeed.

The URLs come from walking admin.site.get_urls() (each ModelAdmin's own URLs included: unfold
actions, imports and exports, history pages, the extra pages of invoices, reconciliation,
reports and dead letters). Each path is filled with a real row of tests.test_admin.populated,
then opened with a GET and, unless it only reads, sent an empty POST. Every request runs in a
savepoint rolled back afterwards, so each one sees the same rows and one user's allowed POST
never changes what the next request finds.

What a user should get comes from two places, neither of them the admin's own answer for that user:
- model pages (list, add, change, delete, history): what the model admin allows at all, asked as
  a superuser about the same row, AND the model permission the user holds (core.roles.ROLES), as
  tests/test_roles.py derives it for lists and add pages;
- every other URL: CUSTOM below, one line per URL name with the permission its view checks
  (read from the view's code). A new admin URL fails test_every_custom_admin_url_is_in_the_table
  until it gets its line.
"Refused" is a 403, a redirect carrying an error message, or a redirect to a page that itself
refuses the user (unfold's "Today" button, the legacy /<id>/ URL): nothing is shown or changed.
A refused POST must leave every money, credit and booking row as it was.
"""
from __future__ import annotations

import re
import uuid

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.contrib.messages import constants as message_levels
from django.db import connection, transaction
from django.test import Client as HttpClient
from django.test import RequestFactory
from django_dramatiq.models import Task
from dramatiq import Message

from catalog.models import CreditPack, IntakeForm, IntakeQuestion
from core.models import Booking, Client, IntakeResponse
from core.roles import FINANCE, FRONT_DESK, MANAGER, sync_roles
from ledger.integrity import ledger_check
from ledger.models import LedgerEntry
from payments.models import Invoice, Payment, Purchase, PurchaseStatus, Refund, Subscription
from reports.models import ReportExport
from reports.registry import REPORTS as REPORT_KINDS
from tests.admin_url_table import (
    CUSTOM,
    NOT_SWEPT,
    REPORTS,
    AdminURL,
    Check,
    Rule,
    admin_urls,
    has,
)
from tests.test_admin import populated  # noqa: F401 - the fixture, reused

pytestmark = pytest.mark.slow  # about half a minute per user: every admin page, rendered

LOGIN = "/admin/login/"
USERS = ("anonymous", "no role", FRONT_DESK, MANAGER, FINANCE, "superuser")

# --- The rows the paths are filled with ------------------------------------------------------


@pytest.fixture
def rows(request, staff_user):
    """populated, plus the rows it lacks for models registered since (reports, jobs)."""
    request.getfixturevalue("populated")
    if not ReportExport.objects.exists():
        ReportExport.objects.create(kind=next(iter(REPORT_KINDS)), filters={}, created_by=staff_user)
    _intake_rows(staff_user)
    message = Message(queue_name="default", actor_name="process_stripe_event", args=(1,), kwargs={}, options={})
    Task.tasks.create_or_update_from_message(message, status=Task.STATUS_DONE, actor_name=message.actor_name,
                                             queue_name=message.queue_name)
    for model in admin.site._registry:
        # Rows written in bulk by services (a pack's lines) have no history yet: give the first
        # row one, so its history pages have a version to open.
        first = model._default_manager.order_by("pk").first()
        if first is not None and hasattr(first, "history") and not first.history.exists():
            first.save()
    missing = [m._meta.label for m in admin.site._registry if not m._default_manager.exists()]
    assert not missing, f"no row to open for {missing}: add one to tests.test_admin.populated"
    pending = Purchase.objects.filter(status=PurchaseStatus.PENDING, invoices__isnull=True,
                                      subscription__isnull=True).order_by("pk").first()
    paid = Purchase.objects.filter(status=PurchaseStatus.PAID, refunded_amount=0).order_by("pk").first()
    return {
        "pending": pending.pk,
        "paid": paid.pk,
        "booked": Booking.objects.filter(status="booked").order_by("pk").first().pk,
    }


def _intake_rows(staff_user) -> None:
    """Add-ons' intake forms (catalog) and a client's answers (core), when populated has none."""
    form = IntakeForm.objects.first() or IntakeForm.objects.create(name="Hot stones check", intro="Before hot stones")
    if not IntakeQuestion.objects.exists():
        IntakeQuestion.objects.create(form=form, text="Are you pregnant?", blocks_on_yes=True,
                                      block_reason="Hot stones are not suitable during pregnancy.")
    if not IntakeResponse.objects.exists():
        IntakeResponse.objects.create(
            booking=Booking.objects.order_by("pk").first(), form=form, submitted_by=staff_user,
            answers=[{"question_id": 1, "text": "Are you pregnant?", "kind": "yes_no", "answer": "no",
                      "blocks_on_yes": True}],
        )


def paths_for(url: AdminURL, obj, rows: dict) -> list[str]:
    """The concrete /admin/... paths for one URL (one per app for app_list, per report for reports)."""
    if url.kind == "catch_all":
        return ["/admin/no-such-page/"]
    if url.kind == "app_list":
        return sorted({f"/admin/{m._meta.app_label}/" for m in admin.site._registry})
    model = url.model_admin.model if url.model_admin else None
    if url.kind == "simple_history":
        first = obj.history.order_by("history_id").first()
        return [f"/admin/{model._meta.app_label}/{model._meta.model_name}/{obj.pk}/history/{first.history_id}/"]
    values = {
        "object_id": str(obj.pk) if obj is not None else "",
        "id": str(obj.pk) if obj is not None else "",  # UserAdmin's <id>/password/
        "purchase_id": str(rows["pending"]),
        "content_type_id": str(ContentType.objects.get_for_model(Client).pk),
    }
    if "content_type_id" in url.params:
        values["object_id"] = str(Client.objects.order_by("pk").first().pk)
    kinds = list(REPORT_KINDS) if "kind" in url.params else [""]
    paths = []
    for kind in kinds:
        filled = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: kind if m[1] == "kind" else values[m[1]], url.route)
        paths.append("/admin/" + filled)
    return paths


# --- What should happen ------------------------------------------------------------------------

# Pages that only read: opened with a GET only (the brief of this sweep: POST where state changes).
READS = {"index", "search", "jsi18n", "password_change_done", "autocomplete", "view_on_site"}
READ_KINDS = {"history", "legacy", "app_list", "catch_all"}
# Change pages that are not Django's change form: a POST is answered as a GET, nothing is saved.
POST_IS_GET = {
    "payments_reconciliationrun_change",  # a custom read-only detail page (lines and their actions)
    "payments_outstandingpurchase_change",  # a redirect to the purchase's own page
}


def _superuser_request(superuser):
    request = RequestFactory().get("/admin/")
    request.user = superuser
    return request


def holds(user, opts, action: str) -> bool:
    """The model permission as core.roles grants it; ReportExport's pages read reports.view_reports."""
    if opts.label == "reports.ReportExport":
        return action == "view" and user.has_perm(REPORTS)
    return user.has_perm(f"{opts.app_label}.{action}_{opts.model_name}")


def standard_allowed(url: AdminURL, method: str, user, superuser, obj) -> bool:
    """A model page: the admin allows it at all (as a superuser, on this row) and the user holds
    the model permission it needs."""
    ma, opts = url.model_admin, url.model_admin.model._meta
    su = _superuser_request(superuser)
    sees_it = holds(user, opts, "view") or holds(user, opts, "change")
    kind = url.kind
    if kind == "change" and method == "POST" and url.name not in POST_IS_GET:
        return ma.has_change_permission(su, obj) and holds(user, opts, "change")
    if kind == "simple_history" and method == "POST":
        # Reverting a row to an old version is a change of the row: only where editing is allowed.
        return ma.has_change_permission(su, obj) and holds(user, opts, "change")
    if kind == "changelist":
        return ma.has_view_or_change_permission(su) and sees_it
    if kind == "add":
        return ma.has_add_permission(su) and holds(user, opts, "add")
    if kind == "delete":
        return ma.has_delete_permission(su, obj) and holds(user, opts, "delete")
    # change (GET), legacy /<id>/, history list, history version (GET): reading the row.
    return ma.has_view_or_change_permission(su, obj) and sees_it


def app_visible(user, app_label: str) -> bool:
    """An app's index lists the models whose pages the user may open; none at all is a 404."""
    return any(
        holds(user, model._meta, action)
        for model in admin.site._registry if model._meta.app_label == app_label
        for action in ("view", "add", "change", "delete")
    )


def expected(url: AdminURL, rule: Rule | None, method: str, path: str, user, superuser, obj) -> str:
    if user is None:
        return "login"
    if rule is not None and rule.post_only and method == "GET":
        return "method not allowed"
    if url.kind == "catch_all":
        return "not found"
    if url.kind == "app_list":
        return "allowed" if app_visible(user, path.strip("/").split("/")[-1]) else "not found"
    if url.kind == "custom":
        allowed = rule.check(user)
        if allowed and rule.not_found:
            return "not found"
        return "allowed" if allowed else "refused"
    return "allowed" if standard_allowed(url, method, user, superuser, obj) else "refused"


def error_message_queued(response) -> bool:
    storage = getattr(response.wsgi_request, "_messages", None)
    return bool(storage) and any(m.level >= message_levels.WARNING for m in storage._queued_messages)


def outcome(http, response, *, follow: bool) -> str:
    status = response.status_code
    if status >= 500:
        return f"server error {status}"
    if status == 403:
        return "refused"
    if status in (301, 302, 303):
        location = response["Location"]
        if location.startswith(LOGIN):
            return "login"
        if error_message_queued(response):
            return "redirect with error"
        if follow:  # where does it lead? A page that refuses the user shows them nothing
            for _ in range(3):  # /<id>/ -> the outstanding list's change page -> the purchase's
                target = http.get(location)
                if target.status_code not in (301, 302, 303) or target["Location"].startswith(LOGIN):
                    break
                location = target["Location"]
            if target.status_code == 403 or (target.status_code == 302 and target["Location"].startswith(LOGIN)):
                return "redirect to refused"
        return "redirect"
    return {200: "ok", 404: "not found", 405: "method not allowed", 400: "bad request"}.get(status, f"status {status}")


ALLOWED = {"ok", "redirect", "redirect with error", "bad request"}
# A 405 to a user without the permission shows and changes nothing either.
REFUSED = {"refused", "redirect with error", "redirect to refused", "method not allowed"}


def matches(want: str, got: str) -> bool:
    if want == "allowed":
        return got in ALLOWED
    if want == "refused":
        return got in REFUSED
    return got == want


# --- State that a refused POST must leave alone ------------------------------------------------


def watched_tables() -> list:
    """Every table behind an admin page, logins included (a password is set from the admin)."""
    models = {m for m in admin.site._registry if not m._meta.proxy} | {get_user_model(), LedgerEntry}
    return sorted(models, key=lambda m: m._meta.label)


def state() -> dict:
    """A digest of every watched table's rows, in one query: equal digests, nothing changed."""
    models = watched_tables()
    parts = [
        f"(SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t.{m._meta.pk.column}), '')) "
        f"FROM {m._meta.db_table} t)"
        for m in models
    ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts))
        return dict(zip((m._meta.label for m in models), cursor.fetchone()))


def counts() -> dict:
    return {m._meta.label: m.objects.count() for m in (Purchase, Payment, Refund, LedgerEntry, Subscription, Invoice)}


# --- The sweep ---------------------------------------------------------------------------------


@pytest.fixture
def users(db):
    sync_roles()
    made = {"anonymous": None}
    model = get_user_model()
    for role in ("no role", FRONT_DESK, MANAGER, FINANCE):
        user = model.objects.create_user(f"sweep-{uuid.uuid4().hex[:8]}", password="pw-sweep-123", is_staff=True)
        if role in (FRONT_DESK, MANAGER, FINANCE):
            user.groups.add(Group.objects.get(name=role))
        made[role] = model.objects.get(pk=user.pk)
    made["superuser"] = model.objects.create_superuser(f"sweep-su-{uuid.uuid4().hex[:6]}", password="pw-sweep-123")
    return made


def row_for(url: AdminURL, rule: Rule | None, rows: dict, superuser):
    """The row a URL is opened on: the one its rule names, else the first the admin lists."""
    if url.model_admin is None:
        return None
    model = url.model_admin.model
    if rule and rule.obj:
        return model._default_manager.get(pk=rows[rule.obj])
    return url.model_admin.get_queryset(_superuser_request(superuser)).order_by("pk").first()


def sweep(who: str, users: dict, rows: dict):
    user, superuser = users[who], users["superuser"]
    http = HttpClient(raise_request_exception=False)
    if user is not None:
        http.force_login(user)
    mismatches, changed_by_refused = [], []
    tried = 0
    for url in admin_urls():
        if url.name in NOT_SWEPT:
            continue
        rule = CUSTOM.get(url.name) if url.kind == "custom" else None
        if url.kind == "custom" and rule is None:
            continue  # test_every_custom_admin_url_is_in_the_table names it
        obj = row_for(url, rule, rows, superuser)
        methods = ("GET",) if url.name in READS or url.kind in READ_KINDS else ("GET", "POST")
        for path in paths_for(url, obj, rows):
            for method in methods:
                want = expected(url, rule, method, path, user, superuser, obj)
                with transaction.atomic():
                    before = state() if method == "POST" and want != "allowed" else None
                    response = getattr(http, method.lower())(path)
                    got = outcome(http, response, follow=want != "allowed")
                    after = state() if before is not None else None
                    transaction.set_rollback(True)
                tried += 1
                if not matches(want, got):
                    mismatches.append(f"{method} {path} ({url.name or url.kind}): {got}, expected {want}")
                if before is not None and before != after:
                    diff = sorted(label for label in before if before[label] != after[label])
                    changed_by_refused.append(f"{method} {path} ({got}) changed {', '.join(diff)}")
    return tried, mismatches, changed_by_refused


# Fails today for every login on the two holes pinned at the end of this file.
@pytest.mark.parametrize("who", USERS)
def test_every_admin_url_answers_each_user_as_their_permissions_say(who, users, rows):
    counts_before = counts()

    tried, mismatches, changed = sweep(who, users, rows)

    assert tried > 250, f"only {tried} requests: did the URL walk find the model admins?"
    problems = mismatches + [f"refused, yet {line}" for line in changed]
    assert problems == [], f"{len(problems)} of {tried} requests:\n" + "\n".join(problems)
    assert counts() == counts_before


# --- Bulk actions: a POST to a list with an action and a selected row ---------------------------

# What each list action checks (its admin.action / unfold action permissions=[...]).
BULK_ACTIONS: dict[str, Check] = {
    "send_portal_link_selected": has("core.change_client"),  # permissions=["send_portal_link"]
    "mark_attended_selected": has("core.change_booking"),  # permissions=["change_status"]
    "retry_selected": has("payments.change_stripeevent"),  # permissions=["retry"]
}
# Past every confirmation page: delete_selected's "post", the register's "confirmed".
CONFIRMED = {"post": "yes", "confirmed": "yes", "index": "0", "select_across": "0"}


def bulk_actions():
    for model, model_admin in admin.site._registry.items():
        for _func, name, _description in model_admin._get_base_actions():
            yield model, model_admin, name


@pytest.mark.parametrize("who", USERS)
def test_list_actions_run_only_for_those_allowed_and_refused_ones_change_nothing(who, users, rows):
    user, su = users[who], _superuser_request(users["superuser"])
    http = HttpClient(raise_request_exception=False)
    if user is not None:
        http.force_login(user)
    problems, ran = [], 0
    for model, model_admin, name in bulk_actions():
        if name == "delete_selected":  # Django's own: the model's delete permission
            allowed = model_admin.has_delete_permission(su) and holds(user, model._meta, "delete") if user else False
        else:
            allowed = user is not None and BULK_ACTIONS[name](user)
        row = model_admin.get_queryset(su).order_by("pk").first()
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        with transaction.atomic():
            before = state()
            response = http.post(url, {**CONFIRMED, "action": name, "_selected_action": [str(row.pk)]})
            after = state()
            transaction.set_rollback(True)
        if response.status_code >= 500:
            problems.append(f"{name} on {url}: {response.status_code}")
        if user is None and not response.get("Location", "").startswith(LOGIN):
            problems.append(f"{name} on {url}: {response.status_code} to nobody, not the login page")
        if not allowed and before != after:
            changed = sorted(label for label in before if before[label] != after[label])
            problems.append(f"{name} on {url} ran for {who}: changed {', '.join(changed)}")
        ran += allowed and before != after
    assert problems == [], "\n".join(problems)
    if who == "superuser":  # the POST is one that runs actions: a superuser's deletes go through
        assert ran >= 3, ran


def test_every_list_action_is_in_the_table(db):
    names = {name for _model, _admin, name in bulk_actions()} - {"delete_selected"}
    assert names <= set(BULK_ACTIONS), f"list actions with no expectation in BULK_ACTIONS: {names - set(BULK_ACTIONS)}"


def test_every_custom_admin_url_is_in_the_table(db):
    names = {url.name for url in admin_urls() if url.kind == "custom"} - NOT_SWEPT
    missing = sorted(names - set(CUSTOM))
    assert not missing, f"admin URLs with no expectation in CUSTOM (say which permission each checks): {missing}"
    stale = sorted(set(CUSTOM) - names)
    assert not stale, f"CUSTOM names URLs that no longer exist: {stale}"


# --- The two holes the sweep found, pinned one by one ---------------------------------------
# Both fail until core/admin_base.py guards them (the fix is in the hardening report):
# simple-history's version page saves a POST ("revert") after checking only the *view*
# permission, and import-export lets every staff login export when no export permission is set.


def version_url(obj) -> str:
    opts = obj._meta
    first = obj.history.order_by("history_id").first()
    return f"/admin/{opts.app_label}/{opts.model_name}/{obj.pk}/history/{first.history_id}/"


def test_front_desk_cannot_change_a_pack_price_through_its_history(users, rows):
    # Front desk may view packs, never change them (tests/test_roles.py proves the change form).
    pack = CreditPack.objects.order_by("pk").first()
    http = HttpClient(raise_request_exception=False)
    http.force_login(users[FRONT_DESK])
    page = http.get(version_url(pack))
    assert page.status_code == 200  # reading the old version is allowed
    form = page.context["adminform"].form
    # The version's own values, as the browser posts them (an unticked box is left out).
    data = {k: "on" if v is True else v for k, v in form.initial.items()
            if k in form.fields and v is not None and v is not False}

    response = http.post(version_url(pack), {**data, "price": "1.00"})

    assert response.status_code == 403
    pack.refresh_from_db()
    assert pack.price == pack.purchases.order_by("pk").first().price  # 300.00, as sold


def test_no_one_reverts_a_paid_purchase_to_pending_through_its_history(users, rows):
    # A purchase is a money record that moves only through services; its admin refuses every
    # change, to superusers too. Its first version is "pending": reverting to it would leave
    # the credits issued on a purchase that could then be paid again.
    purchase = Purchase.objects.get(pk=rows["paid"])
    for who in (FINANCE, "superuser"):
        http = HttpClient(raise_request_exception=False)
        http.force_login(users[who])

        response = http.post(version_url(purchase))

        assert response.status_code == 403, who
        purchase.refresh_from_db()
        assert (purchase.status, purchase.paid_at is not None) == (PurchaseStatus.PAID, True), who
    assert ledger_check().ok


def test_a_staff_login_without_a_role_cannot_export_clients(users, rows):
    http = HttpClient(raise_request_exception=False)
    http.force_login(users["no role"])

    response = http.post("/admin/core/client/export/", {"format": "0", "resource": "0"})

    assert response.status_code == 403
    assert b"ada@example.com" not in response.content
