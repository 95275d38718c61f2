"""Admin for people (clients, staff members, users) and the admin base classes every app uses."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import ModelAdmin as DjangoModelAdmin
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django_dramatiq.admin import TaskAdmin as BaseTaskAdmin
from django_dramatiq.models import Task
from import_export import resources
from import_export.admin import ExportMixin, ImportExportModelAdmin
from simple_history.admin import SimpleHistoryAdmin
from unfold.admin import ModelAdmin
from unfold.contrib.import_export.forms import ExportForm, ImportForm
from unfold.decorators import action, display
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

from core.forms import AdjustCreditsForm, LedgerFilterForm
from core.models import Client, StaffMember
from ledger.exceptions import LedgerError
from ledger.selectors import balances_for_client, ledger_for_client, with_credit_totals
from ledger.services import credits_adjust

LEDGER_PAGE_SIZE = 25


# --- Base classes -------------------------------------------------------------------------
# unfold's ModelAdmin must precede the import-export admin in the bases, and SimpleHistoryAdmin
# precede both (unfold's documented order), or the pages lose unfold's templates.


class _ExportModelAdmin(ExportMixin, DjangoModelAdmin):
    """import-export has no export-only ModelAdmin; this puts ExportMixin ahead of Django's."""


class HistoryAdmin(SimpleHistoryAdmin, ModelAdmin):
    pass


class HistoryImportExportAdmin(SimpleHistoryAdmin, ModelAdmin, ImportExportModelAdmin):
    import_form_class = ImportForm
    export_form_class = ExportForm


class HistoryExportAdmin(SimpleHistoryAdmin, ModelAdmin, _ExportModelAdmin):
    export_form_class = ExportForm


class ExportAdmin(ModelAdmin, _ExportModelAdmin):
    export_form_class = ExportForm


class ReadOnlyAdminMixin:
    """Rows written only by services (the ledger): staff may look, never add, edit or delete."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)


# --- Users --------------------------------------------------------------------------------
# Re-registered so the login users and roles share unfold's theme with the rest of the admin.

admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


@admin.register(Group)
class GroupAdmin(BaseGroupAdmin, ModelAdmin):
    pass


admin.site.unregister(Task)


@admin.register(Task)
class TaskAdmin(BaseTaskAdmin, ModelAdmin):
    """dramatiq's job log, read-only as its own admin has it, in unfold's theme."""


# --- Clients ------------------------------------------------------------------------------


class ClientResource(resources.ModelResource):
    class Meta:
        model = Client
        fields = ("name", "email", "phone", "notes", "archived")
        import_id_fields = ("email",)
        # Every row is validated like the admin form, and one bad row imports nothing.
        clean_model_instances = True
        use_transactions = True
        skip_unchanged = True
        report_skipped = True

    def before_import_row(self, row, **kwargs):
        # Emails are stored lower-cased; match existing clients the same way.
        if row.get("email"):
            row["email"] = row["email"].strip().lower()


class ArchivedFilter(admin.SimpleListFilter):
    """Daily lists hide archived clients unless asked."""

    title = "status"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return (("no", "Active"), ("yes", "Archived"), ("all", "All"))

    def queryset(self, request, queryset):
        value = self.value() or "no"
        if value == "no":
            return queryset.filter(archived=False)
        if value == "yes":
            return queryset.filter(archived=True)
        return queryset

    def choices(self, changelist):
        current = self.value() or "no"
        for lookup, title in self.lookup_choices:
            yield {
                "selected": current == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


@admin.register(Client)
class ClientAdmin(HistoryImportExportAdmin):
    resource_classes = [ClientResource]
    list_display = ("name", "email", "phone", "credits", "archived")
    list_filter = (ArchivedFilter,)
    search_fields = ("name", "email", "phone")
    fields = ("name", "email", "phone", "notes", "archived", "created_at")
    readonly_fields = ("created_at",)
    actions_detail = ["adjust_credits"]
    change_form_outer_after_template = "admin/core/client/credits_section.html"

    def get_queryset(self, request):
        # Totals as subqueries: the list costs the same whatever the number of clients.
        return with_credit_totals(super().get_queryset(request))

    @display(description="Credits", ordering="credits_total")
    def credits(self, obj: Client) -> str:
        if obj.has_unlimited:
            return f"{obj.credits_total} + membership"
        return str(obj.credits_total)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        client_id = unquote(object_id)
        if client_id.isdigit():
            extra_context.update(self._credits_context(request, int(client_id)))
        return super().change_view(request, object_id, form_url, extra_context)

    def _credits_context(self, request, client_id: int) -> dict:
        filter_form = LedgerFilterForm(request.GET or None)
        entries = ledger_for_client(client_id, **filter_form.filters())
        page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("ledger_page"))
        return {
            "balances": balances_for_client(client_id),
            "ledger_filter_form": filter_form,
            "ledger_page": page,
            "ledger_page_range": page.paginator.get_elided_page_range(page.number),
            "can_adjust_credits": self.has_adjust_credits_permission(request),
        }

    def has_adjust_credits_permission(self, request, obj=None) -> bool:
        # A named method, not "ledger.add_ledgerentry" in the decorator: unfold's system check
        # looks dotted permissions up in the database, which breaks `migrate` on an empty one.
        return request.user.has_perm("ledger.add_ledgerentry")

    @action(
        description="Adjust credits", url_path="adjust-credits", icon="exposure",
        permissions=["adjust_credits"],
    )
    def adjust_credits(self, request, object_id):
        client = self.get_object(request, unquote(object_id))
        if client is None:
            raise Http404("No such client.")
        if not self.has_view_permission(request, client):
            raise PermissionDenied
        form = AdjustCreditsForm(request.POST or None)
        if request.method == "POST":
            if form.is_valid():
                session_type = form.cleaned_data["session_type"]
                amount = form.cleaned_data["amount"]
                try:
                    credits_adjust(
                        client=client, session_type=session_type, amount=amount,
                        reason=form.cleaned_data["reason"], expires_at=form.expires_at,
                        actor=request.user, idempotency_key=form.idempotency_key,
                    )
                except (LedgerError, ValidationError) as exc:
                    messages.error(request, error_text(exc))
                else:
                    messages.success(
                        request, f"{amount:+d} {session_type} credits for {client.name}: recorded in the ledger.",
                    )
                    return redirect(reverse("admin:core_client_change", args=[client.pk]))
            else:
                messages.error(request, "The credits were not adjusted: correct the errors below.")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Adjust credits: {client.name}",
            "opts": self.model._meta,
            "original": client,
            "form": form,
            "balances": balances_for_client(client.pk),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/client/adjust_credits.html", context)


# --- Staff --------------------------------------------------------------------------------


@admin.register(StaffMember)
class StaffMemberAdmin(HistoryAdmin):
    list_display = ("display_name", "user", "session_type_count", "active")
    list_filter = ("active", "session_types")
    list_select_related = ("user",)
    search_fields = ("display_name", "user__username", "user__email")
    autocomplete_fields = ("user", "session_types")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            session_type_total=Count("session_types", distinct=True)
        )

    @display(description="Session types", ordering="session_type_total")
    def session_type_count(self, obj: StaffMember) -> int:
        return obj.session_type_total
