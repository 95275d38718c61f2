"""Roles: the Django groups staff belong to, and the permissions each one holds.

The table below is the single definition. `sync_roles()` makes the groups hold exactly these
permissions; the data migration core/0005_roles and `manage.py sync_roles` both call it. When you
change the table, add a migration that runs `sync_roles` again (RunPython(migration_sync_roles))
so every installation follows; tests/test_roles.py fails while the database and the table differ.

Front desk adjusts credits within a limit (`adjust_limit_for`): a bigger correction is a
manager's decision, so it needs a manager.
"""
from __future__ import annotations

from django.apps import apps as global_apps
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import DEFAULT_DB_ALIAS, transaction

FRONT_DESK = "Front desk"
MANAGER = "Manager"
FINANCE = "Finance"

ADJUST_PERMISSION = "ledger.add_ledgerentry"
DEFAULT_FRONT_DESK_ADJUST_LIMIT = 2


def _crud(app_model: str, *actions: str) -> list[str]:
    """"catalog.creditpack", "view", "add" -> ["catalog.view_creditpack", "catalog.add_creditpack"]."""
    app_label, model = app_model.split(".")
    return [f"{app_label}.{action}_{model}" for action in actions]


ALL = ("view", "add", "change", "delete")

# What every role reads: the catalog, the people, the calendar and the ledger. Lines and staff
# prices are shown inside a pack's page only to those who may view them.
_VIEW_CATALOG = [
    *_crud("catalog.category", "view"),
    *_crud("catalog.sessiontype", "view"),
    *_crud("catalog.creditpack", "view"),
    *_crud("catalog.packcreditline", "view"),
    *_crud("catalog.packstaffprice", "view"),
    *_crud("catalog.intakeform", "view"),
    *_crud("catalog.intakequestion", "view"),
]
_VIEW_LEDGER = [
    *_crud("ledger.ledgerentry", "view"),
    *_crud("ledger.creditgrant", "view"),
    *_crud("ledger.clientbalance", "view"),
]
# Front desk books around the diary, so it reads hours and time off, never edits them.
_VIEW_STAFF = [
    *_crud("core.staffmember", "view"),
    *_crud("core.workinghours", "view"),
    *_crud("core.timeoff", "view"),
]

ROLES: dict[str, list[str]] = {
    FRONT_DESK: [
        # Clients: find, register, correct; never delete (archiving keeps their history).
        *_crud("core.client", "view", "add", "change"),
        *_VIEW_STAFF,
        *_crud("core.session", "view", "add"),
        # Cancel / attend / no-show are changes to the booking.
        *_crud("core.booking", "view", "add", "change"),
        # A client's health answers for an add-on: seen by those who book it, not by finance.
        *_crud("core.intakeresponse", "view"),
        # Sees packs and their prices to sell them, never changes them.
        *_VIEW_CATALOG,
        # Sells a pack and records the money taken at the desk.
        *_crud("payments.purchase", "view", "add"),
        *_crud("payments.payment", "view", "add"),
        *_crud("payments.outstandingpurchase", "view"),
        # Sells recurring plans and sees them; pausing and cancelling is a manager's or finance's.
        *_crud("payments.subscription", "view", "add"),
        *_crud("payments.invoice", "view"),
        *_VIEW_LEDGER,
        # Adjusts credits, up to FRONT_DESK_ADJUST_LIMIT at a time (adjust_limit_for).
        ADJUST_PERMISSION,
    ],
    MANAGER: [
        *_crud("catalog.category", *ALL),
        *_crud("catalog.sessiontype", *ALL),
        *_crud("catalog.creditpack", *ALL),
        # Lines and staff prices are edited as inlines of the pack: the inline needs these.
        *_crud("catalog.packcreditline", *ALL),
        *_crud("catalog.packstaffprice", *ALL),
        # Add-ons' intake forms; questions are edited as inlines of the form.
        *_crud("catalog.intakeform", *ALL),
        *_crud("catalog.intakequestion", *ALL),
        *_crud("core.intakeresponse", "view"),
        *_crud("core.staffmember", *ALL),
        # A staff member is linked to an existing login: picking it needs to see the users.
        # Creating or changing logins (and so granting permissions) stays with superusers.
        "auth.view_user",
        *_crud("core.workinghours", *ALL),
        *_crud("core.timeoff", *ALL),
        *_crud("core.session", *ALL),
        # Bookings carry ledger entries: they are cancelled, never deleted.
        *_crud("core.booking", "view", "add", "change"),
        # Deleting is refused by the database once a client has history; it removes duplicates.
        *_crud("core.client", *ALL),
        *_crud("core.businesssettings", "view", "change"),
        "core.override_credit_rules",
        # Moving from a spreadsheet or another tool: clients, then their opening balances
        # (core.admin_imports). "add credit grant" is exactly what an opening balance adds.
        "core.import_client",
        "ledger.add_creditgrant",
        *_VIEW_LEDGER,
        ADJUST_PERMISSION,
        *_crud("payments.purchase", "view"),
        *_crud("payments.payment", "view"),
        *_crud("payments.outstandingpurchase", "view"),
        *_crud("payments.refund", "view"),
        # Recurring plans: sell, activate, pause, cancel.
        *_crud("payments.subscription", "view", "add", "change"),
        *_crud("payments.invoice", "view"),
        # Finance reports (reports.admin): read them, download CSVs and background exports.
        "reports.view_reports",
        *_crud("reports.reportexport", "view"),
    ],
    FINANCE: [
        # Money: purchases (manual and late invoices), payments, the outstanding list.
        *_crud("payments.purchase", "view", "add", "change"),
        *_crud("payments.payment", "view", "add", "change"),
        *_crud("payments.outstandingpurchase", "view", "change"),
        # Refunds: through Stripe or recorded for desk payments (payments.refunds); never edited.
        *_crud("payments.refund", "view", "add"),
        # Stripe webhook events: see failures and retry them (retry needs change).
        *_crud("payments.stripeevent", "view", "change"),
        # Recurring plans (activate, pause, cancel), invoices (issue, mark paid, void) and
        # reconciliation (run on demand, resolve or explain each mismatch).
        *_crud("payments.subscription", "view", "add", "change"),
        *_crud("payments.invoice", "view", "add", "change"),
        *_crud("payments.reconciliationrun", "view", "add"),
        *_crud("payments.reconciliationline", "view", "change"),
        # Everything else read-only, for reconciliation and reports.
        *_crud("core.client", "view"),
        *_VIEW_STAFF,
        *_crud("core.session", "view"),
        *_crud("core.booking", "view"),
        *_crud("core.businesssettings", "view"),
        *_VIEW_CATALOG,
        *_VIEW_LEDGER,
        # Finance reports (reports.admin): read them, download CSVs and background exports.
        "reports.view_reports",
        *_crud("reports.reportexport", "view"),
        # Imports of clients and opening balances (core.admin_imports), as for managers.
        "core.import_client",
        "ledger.add_creditgrant",
    ],
}


class UnknownPermission(LookupError):
    pass


def ensure_permissions(apps=global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create content types and permissions now; Django otherwise only does so after migrate.

    In a migration `apps` is the historical registry; the live app configs are passed because
    create_permissions skips configs without a models module, which historical stubs lack.
    """
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, apps=apps, using=using, verbosity=0)


def _permissions_by_name(apps, using: str) -> dict[str, object]:
    Permission = apps.get_model("auth", "Permission")
    rows = Permission.objects.using(using).select_related("content_type")
    return {f"{p.content_type.app_label}.{p.codename}": p for p in rows}


@transaction.atomic
def sync_roles(
    *, apps=global_apps, using: str = DEFAULT_DB_ALIAS, skip_missing: bool = False
) -> dict[str, int]:
    """Give each role group exactly the permissions of ROLES, creating groups as needed.

    Idempotent. An unknown permission is an error (a typo would silently weaken a role), except
    in the data migration: a permission of a model added by a later migration does not exist yet
    there, and that later migration syncs again.
    """
    Group = apps.get_model("auth", "Group")
    ensure_permissions(apps, using)
    known = _permissions_by_name(apps, using)
    missing = sorted({name for names in ROLES.values() for name in names if name not in known})
    if missing and not skip_missing:
        raise UnknownPermission(f"Unknown permissions in core.roles.ROLES: {', '.join(missing)}")
    counts = {}
    for group_name, names in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=group_name)
        permissions = [known[name] for name in dict.fromkeys(names) if name in known]
        group.permissions.set(permissions)
        counts[group_name] = len(permissions)
    return counts


def migration_sync_roles(apps, schema_editor) -> None:
    sync_roles(apps=apps, using=schema_editor.connection.alias, skip_missing=True)


# --- Credit adjustments -------------------------------------------------------------------


def front_desk_adjust_limit() -> int:
    return int(getattr(settings, "FRONT_DESK_ADJUST_LIMIT", DEFAULT_FRONT_DESK_ADJUST_LIMIT))


def adjust_limit_for(user) -> int | None:
    """The most credits `user` may add or remove in one adjustment; None: no limit, 0: none."""
    if not user.is_active or not user.has_perm(ADJUST_PERMISSION):
        return 0
    if user.is_superuser or user.groups.filter(name=MANAGER).exists():
        return None
    return front_desk_adjust_limit()


def adjust_refusal(user, amount: int) -> str | None:
    """Why `user` may not adjust a balance by `amount` credits, or None when they may."""
    limit = adjust_limit_for(user)
    if limit is None or abs(amount) <= limit:
        return None
    if limit == 0:
        return "You are not allowed to adjust credits."
    return (
        f"You may adjust at most {limit} credit{'s' if limit != 1 else ''} at a time; "
        "ask a manager for a larger correction."
    )
