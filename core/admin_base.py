"""The admin base classes every app uses, and small helpers shared by the front-desk pages."""
from __future__ import annotations

from datetime import datetime, time, timedelta

from django.contrib import admin
from django.contrib.admin import ModelAdmin as DjangoModelAdmin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import dateformat, timezone
from django.utils.http import url_has_allowed_host_and_scheme
from import_export.admin import ExportMixin, ImportExportModelAdmin
from simple_history.admin import SimpleHistoryAdmin
from unfold.admin import ModelAdmin
from unfold.contrib.import_export.forms import ExportForm, ImportForm

# unfold's ModelAdmin must precede the import-export admin in the bases, and SimpleHistoryAdmin
# precede both (unfold's documented order), or the pages lose unfold's templates.


class _ExportModelAdmin(ExportMixin, DjangoModelAdmin):
    """import-export has no export-only ModelAdmin; this puts ExportMixin ahead of Django's."""

    def has_export_permission(self, request) -> bool:
        # import-export lets every staff login export when IMPORT_EXPORT_EXPORT_PERMISSION_CODE is
        # unset: an export is the list's rows in a file, so it needs what the list needs.
        return self.has_view_or_change_permission(request)


class GuardedHistoryMixin:
    """simple-history's version page saves a POST (a "revert") after checking only the *view*
    permission, even where the admin refuses every change: a revert is a change of the row."""

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if request.method == "POST":
            obj = self.get_object(request, unquote(object_id))
            if obj is None or not self.has_change_permission(request, obj):
                raise PermissionDenied
        return super().history_form_view(request, object_id, version_id, extra_context)


class HistoryAdmin(GuardedHistoryMixin, SimpleHistoryAdmin, ModelAdmin):
    pass


class HistoryImportExportAdmin(GuardedHistoryMixin, SimpleHistoryAdmin, ModelAdmin, ImportExportModelAdmin):
    import_form_class = ImportForm
    export_form_class = ExportForm

    def has_import_permission(self, request) -> bool:
        # import-export lets anyone who can open the list import; an import adds and changes rows.
        return self.has_add_permission(request) and self.has_change_permission(request)

    def has_export_permission(self, request) -> bool:
        return self.has_view_or_change_permission(request)


class HistoryExportAdmin(GuardedHistoryMixin, SimpleHistoryAdmin, ModelAdmin, _ExportModelAdmin):
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


def next_url(request, default: str) -> str:
    """Where to go back to after a form: the page that sent us here, if it is one of ours."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return default


def start_of_today() -> datetime:
    """Midnight at the start of today in the business's time zone (where "today" is decided)."""
    return timezone.make_aware(datetime.combine(timezone.localdate(), time.min))


def local_start(value: datetime | None) -> str:
    return dateformat.format(timezone.localtime(value), "D j M Y, H:i") if value else "—"


class DiaryDateFilter(admin.SimpleListFilter):
    """Today / today and later / past / all, defaulting to today and later: the desk's day ahead.

    Subclasses name the datetime field (`field`) it filters on.
    """

    title = "date"
    parameter_name = "when"
    field = "starts_at"
    DEFAULT = "upcoming"

    def lookups(self, request, model_admin):
        return (("today", "Today"), ("upcoming", "Today and later"), ("past", "Past"), ("all", "All"))

    def current(self) -> str:
        return self.value() or self.DEFAULT

    def queryset(self, request, queryset):
        today = start_of_today()
        value = self.current()
        if value == "today":
            return queryset.filter(**{f"{self.field}__gte": today, f"{self.field}__lt": today + timedelta(days=1)})
        if value == "upcoming":
            return queryset.filter(**{f"{self.field}__gte": today})
        if value == "past":
            return queryset.filter(**{f"{self.field}__lt": today})
        return queryset

    def choices(self, changelist):
        # The default is selected when the parameter is absent, unlike Django's "All" first entry.
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.current() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }


def diary_ordering(request, field: str, default_desc: tuple) -> tuple:
    """Ascending for the day ahead (the next thing first), newest first when looking back."""
    when = request.GET.get(DiaryDateFilter.parameter_name) or DiaryDateFilter.DEFAULT
    if when in ("today", "upcoming"):
        return (field, "id")
    return default_desc
