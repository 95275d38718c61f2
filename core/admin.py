"""Admin for people (clients, staff members, users) and the business settings.

Sessions and bookings have their own modules (core.admin_sessions, core.admin_bookings),
registered from the bottom of this one, which is the module Django's autodiscovery imports.
"""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django_dramatiq.admin import TaskAdmin as BaseTaskAdmin
from django_dramatiq.models import Task
from import_export import resources
from unfold.admin import ModelAdmin, TabularInline
from unfold.decorators import action, display
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm

# The base classes live in core.admin_base; other apps import them from here.
from core.admin_base import (  # noqa: F401
    ExportAdmin,
    HistoryAdmin,
    HistoryExportAdmin,
    HistoryImportExportAdmin,
    ReadOnlyAdminMixin,
    error_text,
    local_start,
)
from core.admin_display import booking_rows, bookings_for_client
from core.admin_imports import ClientImportMixin
from core.admin_portal_link import SendPortalLinkMixin
from core.forms import AdjustCreditsForm, LedgerFilterForm
from core.models import PLACE_HOLDING, BusinessSettings, Client, Session, StaffMember, TimeOff, WorkingHours
from core.roles import adjust_refusal
from ledger.exceptions import LedgerError
from ledger.selectors import balances_for_client, ledger_for_client, with_credit_totals
from ledger.services import credits_adjust

LEDGER_PAGE_SIZE = 25


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
class ClientAdmin(ClientImportMixin, SendPortalLinkMixin, HistoryImportExportAdmin):
    resource_classes = [ClientResource]
    list_display = ("name", "email", "phone", "credits", "archived")
    list_filter = (ArchivedFilter,)
    search_fields = ("name", "email", "phone")
    fields = ("name", "email", "phone", "notes", "archived", "nudges_opt_out", "nudges_opted_out_at", "created_at")
    readonly_fields = ("created_at", "nudges_opted_out_at")
    actions_detail = ["adjust_credits", "send_portal_link"]
    actions = ["send_portal_link_selected"]
    # Balances and bookings first: they are what the desk opens a client for, not the edit form.
    change_form_outer_before_template = "admin/core/client/credits_section.html"

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
        context = {
            "balances": balances_for_client(client_id),
            "ledger_filter_form": filter_form,
            "ledger_page": page,
            "ledger_page_range": page.paginator.get_elided_page_range(page.number),
            "can_adjust_credits": self.has_adjust_credits_permission(request),
        }
        user = request.user
        if user.has_perm("core.view_booking") or user.has_perm("core.change_booking"):
            context.update(self._bookings_context(request, client_id))
        return context

    def _bookings_context(self, request, client_id: int) -> dict:
        """Upcoming and past bookings with the credit that paid for each: two queries."""
        here = reverse("admin:core_client_change", args=[client_id])
        bookings = bookings_for_client(client_id)
        may_change = request.user.has_perm("core.change_booking")
        query = urlencode({"client": client_id, "next": here})
        return {
            "show_bookings": True,
            "upcoming_rows": booking_rows(bookings["upcoming"], may_change=may_change),
            "past_rows": booking_rows(bookings["past"], may_change=may_change),
            "more_past": bookings["more_past"],
            "all_bookings_url": f"{reverse('admin:core_booking_changelist')}?client__id__exact={client_id}&when=all",
            "book_url": f"{reverse('admin:core_booking_add')}?{query}" if request.user.has_perm("core.add_booking") else "",
            "sell_url": (
                f"{reverse('admin:payments_purchase_add')}?{urlencode({'client': client_id})}"
                if request.user.has_perm("payments.add_purchase") else ""
            ),
            "here": here,
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
                    if refusal := adjust_refusal(request.user, amount):  # front desk's limit
                        raise ValidationError(refusal)
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


class WorkingHoursInline(TabularInline):
    model = WorkingHours
    fields = ("weekday", "starts", "ends")
    extra = 0
    verbose_name = "weekly working hours"
    verbose_name_plural = "working hours (weekly, local time)"


class TimeOffInline(TabularInline):
    model = TimeOff
    fields = ("starts_at", "ends_at", "reason")
    extra = 0
    per_page = 10  # holidays pile up over the years; the latest first
    ordering = ("-starts_at",)


@admin.register(StaffMember)
class StaffMemberAdmin(HistoryAdmin):
    inlines = [WorkingHoursInline, TimeOffInline]
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

    def save_formset(self, request, form, formset, change):
        super().save_formset(request, form, formset, change)
        if formset.model is TimeOff:
            for time_off in formset.new_objects + [obj for obj, _ in formset.changed_objects]:
                self._warn_booked_sessions(request, time_off)

    def _warn_booked_sessions(self, request, time_off: TimeOff) -> None:
        """Time off does not move sessions already booked in it: say so, so the desk calls clients."""
        clashes = Session.objects.filter(
            staff_member_id=time_off.staff_member_id, starts_at__lt=time_off.ends_at, ends_at__gt=time_off.starts_at,
        ).annotate(booked=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING))).filter(booked__gt=0)
        count = clashes.count()
        if count:
            url = f"{reverse('admin:core_session_changelist')}?" + urlencode(
                {"staff_member__id__exact": time_off.staff_member_id, "when": "all"}
            )
            messages.warning(request, format_html(
                "{} session(s) with bookings fall in this time off ({} to {}): the clients are still "
                "booked. <a class=\"underline\" href=\"{}\">See the sessions</a>",
                count, local_start(time_off.starts_at), local_start(time_off.ends_at), url,
            ))


# --- Business settings --------------------------------------------------------------------


@admin.register(BusinessSettings)
class BusinessSettingsAdmin(HistoryAdmin):
    """The one row of settings: edited, never added twice or deleted."""

    list_display = ("name", "prepaid_only")
    fields = (
        "name", "prepaid_only",
        # Each client nudge (and the staff note) can be switched off for the whole business.
        "nudge_booking_reminder", "nudge_expiry_reminder", "nudge_next_pack", "nudge_staff_credits_issued",
    )
    show_full_result_count = False

    # Never added by hand: the row is made on first use (below). Not "add while none exists"
    # either: the app list asks every admin page for it, and that would cost a query each time.
    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        # The row is created on first use, so the list always has the one row to open.
        BusinessSettings.current()
        return super().changelist_view(request, extra_context)


# Registered here because Django's autodiscovery imports only core.admin.
from core import admin_bookings, admin_sessions  # noqa: E402,F401
from core import notification_admin  # noqa: E402,F401

# The dead-letter page on dramatiq's Tasks admin (re-registers Task with it).
from core import admin_jobs  # noqa: E402,F401
