"""The permission sweep's table (tests/test_permissions_sweep.py): what each custom admin URL's
view checks, one line per URL name, and the walk over admin.site's URLs that the sweep opens."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from django.contrib import admin
from django.urls import URLResolver

# --- What each custom URL's view checks -------------------------------------------------------

Check = Callable[[object], bool]  # user -> may they


def has(*perms: str) -> Check:
    return lambda user: all(user.has_perm(p) for p in perms)


def sees(label: str) -> Check:
    """The model's view permission; Django's change permission implies it."""
    app, model = label.split(".")
    return lambda user: user.has_perm(f"{app}.view_{model}") or user.has_perm(f"{app}.change_{model}")


def both(*checks: Check) -> Check:
    return lambda user: all(check(user) for check in checks)


def either(*checks: Check) -> Check:
    return lambda user: any(check(user) for check in checks)


STAFF: Check = lambda user: True  # noqa: E731 - admin_view already asked for is_staff
SUPERUSER: Check = lambda user: user.is_superuser  # noqa: E731


@dataclass(frozen=True)
class Rule:
    check: Check
    obj: str = ""  # which row fills <object_id> (ROWS below); empty: the model's first row
    post_only: bool = False  # wrapped in require_POST: a GET is 405 for everyone, before any check
    not_found: bool = False  # answers 404 even to those allowed (no page for this row)


REPORTS = "reports.view_reports"

CUSTOM: dict[str, Rule] = {
    # -- Site-wide pages: any staff login (admin_view checks is_staff and nothing more).
    "index": Rule(STAFF),
    "search": Rule(STAFF),  # unfold's search: its results are filtered by each model's view permission
    "password_change": Rule(STAFF),
    "password_change_done": Rule(STAFF),
    "jsi18n": Rule(STAFF),
    # The global autocomplete answers only a request naming a field of a model the user may view;
    # with no parameters it refuses everyone.
    "autocomplete": Rule(lambda user: False),
    "view_on_site": Rule(STAFF, not_found=True),  # no model has get_absolute_url: 404 for everyone
    # An app's index (app_list) is derived: the apps whose models the user may open, else a 404.
    # -- Logins: Django's UserAdmin sets a password only for those who may change users.
    "auth_user_password_change": Rule(has("auth.change_user")),
    # -- Clients
    # unfold permissions=["adjust_credits"] (ledger.add_ledgerentry), then the client's view permission.
    "core_client_adjust_credits": Rule(both(has("ledger.add_ledgerentry"), sees("core.client"))),
    # permissions=["send_portal_link"]: core.change_client (a link opens the client's page).
    "core_client_send_portal_link": Rule(has("core.change_client")),
    # GuardedImportMixin.import_permission: the client import is its own permission.
    "core_client_import": Rule(has("core.import_client")),
    "core_client_process_import": Rule(has("core.import_client"), post_only=True),
    # import-export's export: every client's name, email and phone leave in a file; only for
    # those who may see clients.
    "core_client_export": Rule(sees("core.client")),
    # -- Bookings: permissions=["change_status"] (core.change_booking), then the booking's view permission.
    "core_booking_cancel_booking": Rule(has("core.change_booking"), obj="booked"),
    "core_booking_mark_attended": Rule(has("core.change_booking"), obj="booked"),
    "core_booking_mark_no_show": Rule(has("core.change_booking"), obj="booked"),
    # Add-ons: permissions=["core.add_booking"], then the booking's view permission.
    "core_booking_add_add_on": Rule(both(has("core.add_booking"), sees("core.booking")), obj="booked"),
    # -- Sessions
    # permissions=["book"]: core.add_booking; it only redirects to the booking form, which checks again.
    "core_session_book_client": Rule(has("core.add_booking")),
    # No permissions: a link to the list filtered on today; the list checks the view permission,
    # so without it the redirect ends on a 403 (classified refused).
    "core_session_today": Rule(sees("core.session")),
    # -- Jobs: dead letters are superusers' (TaskAdmin.has_dead_letters_permission).
    "dead_letters": Rule(SUPERUSER),
    "dead_letters_retry": Rule(SUPERUSER, post_only=True),
    "django_dramatiq_task_dead_letters": Rule(SUPERUSER),  # the list button: permissions=["dead_letters"]
    # -- Catalog and ledger exports: the rows of a list the user may see.
    "catalog_sessiontype_export": Rule(sees("catalog.sessiontype")),
    "catalog_creditpack_export": Rule(sees("catalog.creditpack")),
    "ledger_ledgerentry_export": Rule(sees("ledger.ledgerentry")),
    # Opening balances import: ledger.add_creditgrant (OpeningBalanceImportAdmin.import_permission).
    "ledger_creditgrant_import": Rule(has("ledger.add_creditgrant")),
    "ledger_creditgrant_process_import": Rule(has("ledger.add_creditgrant"), post_only=True),
    # -- Purchases
    "payments_purchase_export": Rule(sees("payments.purchase")),
    # permissions=["record_payment"]: payments.add_payment.
    "payments_purchase_record_payment": Rule(has("payments.add_payment"), obj="pending"),
    "payments_outstandingpurchase_record_payment": Rule(has("payments.add_payment"), obj="pending"),
    # permissions=["issue_invoice"]: payments.add_invoice; it redirects to the invoice issue page.
    "payments_purchase_issue_invoice": Rule(has("payments.add_invoice"), obj="pending"),
    "payments_outstandingpurchase_issue_invoice": Rule(has("payments.add_invoice"), obj="pending"),
    # permissions=["refund"]: payments.add_refund.
    "payments_purchase_refund": Rule(has("payments.add_refund"), obj="paid"),
    # -- Invoices
    # invoice_issue_view checks payments.add_invoice itself (a plain get_urls path).
    "payments_invoice_issue": Rule(has("payments.add_invoice")),  # <purchase_id>: the pending purchase
    # permissions=["mark_paid"] / ["void"] / ["retry_send"]: payments.change_invoice.
    "payments_invoice_mark_paid": Rule(has("payments.change_invoice")),
    "payments_invoice_void": Rule(has("payments.change_invoice")),
    "payments_invoice_retry_send": Rule(has("payments.change_invoice")),
    # -- Refunds: permissions=["send_again"]: payments.add_refund.
    "payments_refund_send_again": Rule(has("payments.add_refund")),
    # -- Stripe events: permissions=["retry"]: payments.change_stripeevent.
    "payments_stripeevent_retry": Rule(has("payments.change_stripeevent")),
    # -- Reconciliation
    # permissions=["export"]: has_export_permission is the run's view permission.
    "payments_reconciliationrun_export_csv": Rule(sees("payments.reconciliationrun")),
    # permissions=["add"]: payments.add_reconciliationrun.
    "payments_reconciliationrun_run_now": Rule(has("payments.add_reconciliationrun")),
    # permissions=["resolve"]: payments.change_reconciliationline.
    "payments_reconciliationline_issue_credits": Rule(has("payments.change_reconciliationline")),
    "payments_reconciliationline_void_credits": Rule(has("payments.change_reconciliationline")),
    "payments_reconciliationline_explain": Rule(has("payments.change_reconciliationline")),
    # -- Recurring plans: permissions=["act"]: payments.change_subscription.
    "payments_subscription_activate": Rule(has("payments.change_subscription")),
    "payments_subscription_pause": Rule(has("payments.change_subscription")),
    "payments_subscription_resume": Rule(has("payments.change_subscription")),
    "payments_subscription_cancel_plan": Rule(has("payments.change_subscription")),
    # permissions=["act_or_sell"]: selling a plan (add) or changing one.
    "payments_subscription_payment_link": Rule(
        either(has("payments.add_subscription"), has("payments.change_subscription"))
    ),
    # -- Reports: every page checks reports.view_reports (ReportExportAdmin._check).
    "reports_report": Rule(has(REPORTS)),
    "reports_report_csv": Rule(has(REPORTS)),
    "reports_report_export": Rule(has(REPORTS), post_only=True),
    # The only export is queued, so it has no file yet: a 404 to those allowed.
    "reports_reportexport_download": Rule(has(REPORTS), not_found=True),
    "reports_reportexport_retry": Rule(has(REPORTS)),
}

# URL names every admin model has; the expectation for these is derived, not listed.
STANDARD = ("changelist", "add", "change", "delete", "history", "simple_history")
# Not swept: logging in and out is not a permission (and a POST to logout ends the test's login).
NOT_SWEPT = {"login", "logout"}


# --- The URLs ----------------------------------------------------------------------------------


@dataclass
class AdminURL:
    route: str  # as written in the URLconf, below /admin/
    name: str | None
    model_admin: object | None  # None: a site-wide page
    kind: str = ""  # a STANDARD name, "legacy" (/<id>/ -> change), "app_list", "catch_all" or "custom"
    params: list[str] = field(default_factory=list)


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def admin_urls() -> list[AdminURL]:
    """Every URL of the admin site, once each (unfold lists a row and detail action twice)."""
    by_prefix = {f"{m._meta.app_label}/{m._meta.model_name}/": ma for m, ma in admin.site._registry.items()}
    found: dict[str, AdminURL] = {}
    for route, pattern in _walk(admin.site.get_urls()):
        if route in found:
            continue
        model_admin = next((ma for p, ma in by_prefix.items() if route.startswith(p)), None)
        url = AdminURL(route, pattern.name, model_admin)
        suffix = ""
        if model_admin is not None:
            opts = model_admin.model._meta
            stem = f"{opts.app_label}_{opts.model_name}_"
            suffix = (pattern.name or "").removeprefix(stem) if (pattern.name or "").startswith(stem) else ""
        if suffix in STANDARD:
            url.kind = suffix
        elif model_admin is not None and pattern.name is None:
            url.kind = "legacy"  # Django's "<path:object_id>/" redirect to the change page
        elif model_admin is None and pattern.name is None:
            url.kind = "catch_all"
        elif pattern.name == "app_list":
            url.kind = "app_list"  # derived from the models of the app (app_visible)
        else:
            url.kind = "custom"
        url.params = re.findall(r"<(?:\w+:)?(\w+)>", route)
        found[route] = url
    return list(found.values())
