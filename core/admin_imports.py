"""Admin pages for imports: "Import clients" on the client list and "Import opening balances"
on the credit grants list, as django-import-export's own views (upload, dry-run preview with
every error by row and column, then confirm).

Only orchestrates: the resources in core.imports validate and call the services. What is added
to import-export's views: who may import (a permission of its own, not "may add and change":
the front desk adds clients one by one but does not load files), the import-nothing-on-error
rule also at the confirm step, and wording a person can act on.
"""
from __future__ import annotations

from django.contrib import messages
from django.contrib.admin import ModelAdmin as DjangoModelAdmin
from django.template.response import TemplateResponse
from import_export.admin import ImportMixin
from import_export.results import RowResult
from unfold.admin import ModelAdmin
from unfold.contrib.import_export.forms import ImportForm

from core.imports import (
    CLIENT_COLUMNS,
    MAX_OPENING_CREDITS,
    OPENING_COLUMNS,
    OPENING_VALIDITY_MONTHS,
    ClientImportResource,
    OpeningBalanceResource,
)

# Manager and Finance (core.roles). Opening balances reuse "add credit grant": importing one
# adds exactly that, and the credit grants admin itself stays read-only for everyone.
CLIENT_IMPORT_PERMISSION = "core.import_client"
OPENING_BALANCE_IMPORT_PERMISSION = "ledger.add_creditgrant"


class _ImportModelAdmin(ImportMixin, DjangoModelAdmin):
    """ImportMixin ahead of Django's ModelAdmin, as core.admin_base does for exports, so its
    URLs and changelist context are not cut off by Django's own get_urls / changelist_view."""


class GuardedImportMixin:
    """import-export's import views, restricted and worded for one resource."""

    import_permission: str = ""
    import_resource = None
    import_button = "Import"
    import_help: tuple[str, ...] = ()
    import_form_class = ImportForm
    import_template_name = "admin/imports/import.html"
    import_export_change_list_template = "admin/imports/change_list.html"

    def has_import_permission(self, request) -> bool:
        return bool(self.import_permission) and request.user.has_perm(self.import_permission)

    def get_import_resource_classes(self, request):
        return [self.import_resource]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "import_button": self.import_button}
        return super().changelist_view(request, extra_context)

    def import_action(self, request, **kwargs):
        response = super().import_action(request, **kwargs)
        if isinstance(response, TemplateResponse):
            response.context_data.update(title=self.import_button, import_help=self.import_help)
        return response

    def process_result(self, result, request):
        if result.has_errors() or result.has_validation_errors():
            # The preview was clean but the confirmed import was not (the data changed in
            # between, e.g. a client added at the desk): the resource rolled it all back.
            messages.error(request, "Nothing was imported: the file no longer imports cleanly. "
                                    "Correct the rows below and upload it again.")
            return self._result_page(request, result)
        return super().process_result(result, request)

    def _result_page(self, request, result):
        form = self.get_import_form_class(request)(
            self.get_import_formats(), self.get_import_resource_classes(request)
        )
        resources = [cls() for cls in self.get_import_resource_classes(request)]
        context = {
            **self.admin_site.each_context(request),
            "title": self.import_button, "import_help": self.import_help, "form": form,
            "result": result, "opts": self.model._meta, "media": self.media + form.media,
            "fields_list": [
                (r.get_display_name(), [f.column_name for f in r.get_user_visible_fields()])
                for r in resources
            ],
            "import_error_display": self.import_error_display,
        }
        return TemplateResponse(request, [self.import_template_name], context)

    def add_success_message(self, result, request):
        totals = result.totals
        messages.success(request, (
            f"{self.import_resource.get_display_name()} imported: {totals[RowResult.IMPORT_TYPE_NEW]} new, "
            f"{totals[RowResult.IMPORT_TYPE_UPDATE]} updated, "
            f"{totals[RowResult.IMPORT_TYPE_SKIP]} unchanged or imported before."
        ))


class ClientImportMixin(GuardedImportMixin):
    """For core.admin.ClientAdmin (an import-export admin already; export is unchanged)."""

    import_permission = CLIENT_IMPORT_PERMISSION
    import_resource = ClientImportResource
    import_button = "Import clients"
    import_help = (
        f"Columns: {', '.join(CLIENT_COLUMNS)} (headers in any case). Only email is required "
        "in the file; a new client also needs a name.",
        "A client is matched by email, whatever its case. An email already in Packdesk updates "
        "that client with the file's non-empty cells; empty cells keep what is recorded.",
        "Each email once per file. The preview shows every change; nothing is imported until "
        "you confirm, and nothing at all if any row has an error.",
    )


class OpeningBalanceImportAdmin(GuardedImportMixin, ModelAdmin, _ImportModelAdmin):
    """Base for ledger.admin.CreditGrantAdmin: its list gains "Import opening balances"."""

    import_permission = OPENING_BALANCE_IMPORT_PERMISSION
    import_resource = OpeningBalanceResource
    import_button = "Import opening balances"
    import_help = (
        f"Columns: {', '.join(OPENING_COLUMNS)}. client_email, session_type and credits are "
        "required; import the clients first.",
        f"credits: 1 to {MAX_OPENING_CREDITS}. expires_on: the last day the credits can be used "
        f"(2026-03-31 or 31/03/2026; empty: {OPENING_VALIDITY_MONTHS} months from today), not in the past.",
        "value: what the client paid for these credits, for deferred revenue (empty: unknown, "
        "counted as 0); currency: its ISO code (empty: the business's currency).",
        "Each row becomes credits in the ledger (Issued, source Import). A row imported before "
        "is skipped, so the same file can be confirmed twice without doubling anything; "
        "nothing is imported if any row has an error.",
    )
