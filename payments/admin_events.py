"""Admin for stored Stripe webhook events: what came in, what it did, and why it failed.

Read-only: events are written by the webhook and by payments.events. "Retry" re-runs the same
processing synchronously (it re-reads Stripe and is idempotent, so retrying a done event or
retrying twice changes nothing) and says what happened. Registered from payments.admin.
"""
from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from unfold.admin import ModelAdmin
from unfold.decorators import action, display

from core.admin import ReadOnlyAdminMixin, local_start
from payments.events import StripeEventFailed, stripe_event_process
from payments.models import StripeEvent, StripeEventStatus

RETRY_PERMISSION = "payments.change_stripeevent"
# Each retry calls Stripe; a bigger selection is left to the sweep rather than one long request.
BULK_RETRY_LIMIT = 50
STATUS_LABELS = {
    StripeEventStatus.PENDING: "info",
    StripeEventStatus.PROCESSED: "success",
    StripeEventStatus.IGNORED: "",
    StripeEventStatus.FAILED: "danger",
}


def _retry_one(event_pk: int) -> tuple[str, str]:
    """Process one event now: (message level, what happened). Never raises, so never a 500."""
    try:
        event = stripe_event_process(event_pk)
    except StripeEventFailed as exc:
        name = StripeEvent.objects.filter(pk=event_pk).values_list("event_id", flat=True).first()
        return "error", f"Stripe event {name or event_pk} failed again: {exc}"
    if event.status == StripeEventStatus.IGNORED:
        return "ignored", f"Stripe event {event.event_id} ({event.type}) is not one Packdesk acts on: ignored."
    return "done", f"Stripe event {event.event_id} ({event.type}) is processed."


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdminMixin, ModelAdmin):
    list_display = ("event_id", "type", "state", "attempts", "error", "received", "processed")
    list_filter = ("status", "type", ("received_at", admin.DateFieldListFilter))
    search_fields = ("event_id", "type")
    ordering = ("-received_at", "-id")
    fields = ("event_id", "type", "status", "attempts", "last_error", "livemode", "received_at",
              "processed_at", "payload_json")
    readonly_fields = fields
    actions = ["retry_selected"]
    actions_row = ["retry"]
    actions_detail = ["retry"]
    show_full_result_count = False

    def has_retry_permission(self, request, obj=None) -> bool:
        return request.user.has_perm(RETRY_PERMISSION)

    @display(description="Status", ordering="status", label={str(s): c for s, c in STATUS_LABELS.items()})
    def state(self, obj: StripeEvent):
        return obj.status, obj.get_status_display()

    @display(description="Error")
    def error(self, obj: StripeEvent):
        if not obj.last_error:
            return "—"
        # The start in the column, all of it on hover (and on the event's page).
        return format_html('<span title="{}">{}</span>', obj.last_error, Truncator(obj.last_error).chars(120))

    @display(description="Received", ordering="received_at")
    def received(self, obj: StripeEvent) -> str:
        return local_start(obj.received_at)

    @display(description="Processed", ordering="processed_at")
    def processed(self, obj: StripeEvent) -> str:
        return local_start(obj.processed_at)

    @display(description="Payload (as Stripe sent it)")
    def payload_json(self, obj: StripeEvent):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))

    @action(description="Retry", url_path="retry", icon="refresh", permissions=["retry"])
    def retry(self, request, object_id):
        """GET: a confirmation page. POST: process the event now and go back to the list."""
        object_id = unquote(str(object_id))
        event = StripeEvent.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if event is None:
            raise Http404("No such Stripe event.")
        back = reverse("admin:payments_stripeevent_changelist")
        if request.method == "POST":
            level, text = _retry_one(event.pk)
            {"error": messages.error, "ignored": messages.info, "done": messages.success}[level](request, text)
            return redirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Retry Stripe event {event.event_id}",
            "intro": (
                f"{event.type}, {event.get_status_display().lower()} after {event.attempts} attempt(s)"
                + (f": {event.last_error}" if event.last_error else ".")
                + " Retrying reads the current state from Stripe and applies it; it never pays or "
                "credits a purchase twice."
            ),
            "submit_label": "Retry now",
            "cancel_url": back,
            "opts": self.model._meta,
            "form": forms.Form(),
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    @action(description="Retry selected events", permissions=["retry"])
    def retry_selected(self, request, queryset):
        pks = list(
            queryset.exclude(status__in=(StripeEventStatus.PROCESSED, StripeEventStatus.IGNORED))
            .order_by("received_at", "pk").values_list("pk", flat=True)[: BULK_RETRY_LIMIT + 1]
        )
        if not pks:
            messages.info(request, "The selected events are all processed or ignored already: nothing to retry.")
            return
        if len(pks) > BULK_RETRY_LIMIT:
            messages.warning(
                request, f"Retrying the oldest {BULK_RETRY_LIMIT}; the sweep (or another retry) does the rest."
            )
        outcomes = [_retry_one(pk) for pk in pks[:BULK_RETRY_LIMIT]]
        done = sum(1 for level, _ in outcomes if level == "done")
        ignored = sum(1 for level, _ in outcomes if level == "ignored")
        if done or ignored:
            messages.success(request, f"{done} event(s) processed, {ignored} ignored.")
        for level, text in outcomes:
            if level == "error":
                messages.error(request, text)
