"""The client admin's "Send personal link" actions (one client from their page, or the selected ones).

A mixin so core.admin's ClientAdmin only lists the actions; both call core.portal_link.portal_link_send.
"""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from unfold.decorators import action

from core.models import Client
from core.portal_link import portal_link_send

# One request renders and sends each message; more than this is a mailing, not a desk task.
BULK_LINK_LIMIT = 100


class SendPortalLinkMixin:
    def has_send_portal_link_permission(self, request, obj=None) -> bool:
        # Sending a link opens the client's page to whoever reads that mailbox: a change, not a view.
        return request.user.has_perm("core.change_client")

    @action(description="Send personal link", url_path="send-personal-link", icon="forward_to_inbox",
            permissions=["send_portal_link"])
    def send_portal_link(self, request, object_id):
        """GET: a confirmation page (a link never leaves on a GET). POST: send it and go back."""
        object_id = unquote(str(object_id))
        client = Client.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if client is None:
            raise Http404("No such client.")
        back = reverse("admin:core_client_change", args=[client.pk])
        if request.method == "POST":
            portal_link_send(client=client, actor=request.user)
            messages.success(request, f"Personal link sent to {client.name} at {client.email}.")
            return redirect(back)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Send personal link: {client.name}",
            "intro": (
                f"Email {client.email} a link to their own page (credits, expiry, bookings). "
                "It needs no password and works for "
                f"{self._link_days()} days; links sent before keep working until they expire."
            ),
            "submit_label": "Send link",
            "cancel_url": back,
            "opts": self.model._meta,
            "original": client,
            "form": forms.Form(),
        }
        return TemplateResponse(request, "admin/core/form_page.html", context)

    @action(description="Send personal link to the selected clients", permissions=["send_portal_link"])
    def send_portal_link_selected(self, request, queryset):
        clients = list(queryset.order_by("pk")[: BULK_LINK_LIMIT + 1])
        if len(clients) > BULK_LINK_LIMIT:
            messages.error(request, f"Select at most {BULK_LINK_LIMIT} clients at a time: no link was sent.")
            return
        for client in clients:
            portal_link_send(client=client, actor=request.user)
        messages.success(request, f"Personal link sent to {len(clients)} client(s).")

    @staticmethod
    def _link_days() -> int:
        return max(1, settings.PORTAL_LINK_MAX_AGE // 86400)
