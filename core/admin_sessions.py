"""Admin for the diary: the list of sessions, creating one through the service, and its bookings."""
from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.decorators import action, display

from core.admin_base import DiaryDateFilter, HistoryAdmin, diary_ordering, error_text, local_start
from core.admin_display import booking_rows, bookings_for_session
from core.exceptions import BookingError
from core.forms import SessionCreateForm
from core.models import PLACE_HOLDING, Session
from core.sessions import session_create

DETAIL_FIELDS = (
    "session_type", "staff_member", "when", "places_taken", "outside_hours_reason", "created_by", "created_at",
)


class SessionDateFilter(DiaryDateFilter):
    field = "starts_at"


@admin.register(Session)
class SessionAdmin(HistoryAdmin):
    list_display = ("start", "session_type", "staff_member", "places", "duration")
    list_display_links = ("start",)
    list_filter = (SessionDateFilter, "staff_member", "session_type")
    list_select_related = ("session_type", "staff_member")
    search_fields = ("session_type__name", "staff_member__display_name")
    fields = DETAIL_FIELDS
    readonly_fields = DETAIL_FIELDS
    actions_list = ["today"]
    actions_row = ["book_client"]
    actions_detail = ["book_client"]
    # Who is booked matters more on this page than the session's own fields: shown first.
    change_form_outer_before_template = "admin/core/session/bookings_section.html"
    show_full_result_count = False

    def get_queryset(self, request):
        # Places taken as one aggregate over the page, never a query per row.
        return super().get_queryset(request).annotate(
            booked=Count("bookings", filter=Q(bookings__status__in=PLACE_HOLDING))
        )

    def get_ordering(self, request):
        return diary_ordering(request, "starts_at", ("-starts_at", "-id"))

    def get_search_results(self, request, queryset, search_term):
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        # The booking form's autocomplete offers only upcoming sessions (core.forms.bookable_sessions).
        if request.GET.get("model_name") == "booking" and request.GET.get("field_name") == "session":
            queryset = queryset.filter(starts_at__gt=timezone.now())
        return queryset, may_have_duplicates

    # A session's time and staff member are fixed once created (bookings and credits depend on
    # them): it is created through the service and then only read, or deleted while empty.
    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is not None and obj.bookings.exists():
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete would hit sessions with bookings
        return actions

    def has_book_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("core.add_booking")

    @display(description="Start", ordering="starts_at")
    def start(self, obj: Session) -> str:
        return local_start(obj.starts_at)

    @display(description="When")
    def when(self, obj: Session) -> str:
        return f"{local_start(obj.starts_at)}–{timezone.localtime(obj.ends_at):%H:%M} ({obj.duration_minutes} min)"

    @display(description="Places")
    def places_taken(self, obj: Session) -> str:
        booked = obj.booked if hasattr(obj, "booked") else obj.bookings.filter(status__in=PLACE_HOLDING).count()
        return f"{booked} of {obj.capacity} taken"

    @display(description="Places", label={"full": "warning", "open": "success", "empty": "info"})
    def places(self, obj: Session):
        booked = obj.booked
        state = "full" if booked >= obj.capacity else ("empty" if booked == 0 else "open")
        return state, f"{booked}/{obj.capacity}"

    @display(description="Duration", ordering="duration_minutes")
    def duration(self, obj: Session) -> str:
        return f"{obj.duration_minutes} min"

    @action(description="Today", url_path="today", icon="today")
    def today(self, request):
        """One click to the day's diary, whatever filters the list had."""
        return redirect(f"{reverse('admin:core_session_changelist')}?{SessionDateFilter.parameter_name}=today")

    # --- Creating a session ------------------------------------------------------------------

    def add_view(self, request, form_url="", extra_context=None):
        """Create a session through the service, which checks hours, time off and double-booking."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = SessionCreateForm(request.POST or None, initial=self._initial(request))
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                session = session_create(
                    session_type=data["session_type"], staff_member=data["staff_member"],
                    starts_at=data["starts_at"], capacity=data["capacity"],
                    duration_minutes=data["duration_minutes"],
                    outside_hours_reason=data["outside_hours_reason"], actor=request.user,
                )
            except ValidationError as exc:
                form.add_error(None, exc if hasattr(exc, "error_dict") else error_text(exc))
            except BookingError as exc:
                form.add_error(None, error_text(exc))
            else:
                messages.success(request, format_html(
                    "Session created: {}. <a class=\"underline\" href=\"{}\">Book a client</a>",
                    session, self._book_url(session, reverse("admin:core_session_change", args=[session.pk])),
                ))
                return redirect(reverse("admin:core_session_change", args=[session.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Add a session",
            "intro": (
                "The staff member must deliver the session type and be free: the diary refuses "
                "double-bookings and time off, and asks for a reason outside working hours."
            ),
            "submit_label": "Create session",
            "cancel_url": reverse("admin:core_session_changelist"),
            "opts": self.model._meta,
            "form": form,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    def _initial(self, request) -> dict:
        initial = {}
        for name in ("session_type", "staff_member"):
            if request.GET.get(name, "").isdigit():
                initial[name] = int(request.GET[name])
        return initial

    # --- Its bookings ------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        session_id = unquote(object_id)
        if session_id.isdigit():
            here = reverse("admin:core_session_change", args=[session_id])
            may_change = request.user.has_perm("core.change_booking")
            extra_context.update({
                "booking_rows": booking_rows(bookings_for_session(int(session_id)), may_change=may_change),
                "may_change_bookings": may_change,
                "book_url": self._book_url(int(session_id), here) if self.has_book_permission(request) else "",
                "here": here,
            })
        return super().change_view(request, object_id, form_url, extra_context)

    @staticmethod
    def _book_url(session, back: str) -> str:
        session_id = session if isinstance(session, int) else session.pk
        return f"{reverse('admin:core_booking_add')}?{urlencode({'session': session_id, 'next': back})}"

    @action(description="Book a client", url_path="book", icon="person_add", permissions=["book"])
    def book_client(self, request, object_id):
        session_id = unquote(object_id)
        if not session_id.isdigit() or not Session.objects.filter(pk=session_id).exists():
            raise Http404("No such session.")
        return redirect(self._book_url(int(session_id), reverse("admin:core_session_change", args=[session_id])))
