"""Jobs in the admin: the dead letters (messages whose retries ran out) with a Retry action.

The page hangs off dramatiq's Tasks admin ("Dead letters" button on its list) because dead
letters are not rows of ours: they live in the broker (config.dead_letters). Superusers only:
re-running a job is a technical decision, and the list shows job arguments.
"""
from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_dramatiq.models import Task
from unfold.decorators import action

from config.dead_letters import dead_letter_retry, dead_letters_list
from core.admin import TaskAdmin as _TaskAdmin

logger = logging.getLogger(__name__)


class TaskAdmin(_TaskAdmin):
    actions_list = ["dead_letters"]

    def has_dead_letters_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    @action(description="Dead letters", url_path="dead-letters-link", icon="report",
            permissions=["dead_letters"])
    def dead_letters(self, request):
        return redirect("admin:dead_letters")

    def get_urls(self):
        extra = [
            path("dead-letters/", self.admin_site.admin_view(self.dead_letters_view), name="dead_letters"),
            path("dead-letters/retry/", self.admin_site.admin_view(require_POST(self.dead_letters_retry_view)),
                 name="dead_letters_retry"),
        ]
        return extra + super().get_urls()

    def dead_letters_view(self, request):
        if not self.has_dead_letters_permission(request):
            raise PermissionDenied
        letters = dead_letters_list()
        context = {
            **self.admin_site.each_context(request),
            "title": "Dead letters",
            "opts": self.model._meta,
            "letters": [(letter, timezone.localtime(letter.died_at) if letter.died_at else None) for letter in letters],
        }
        return TemplateResponse(request, "admin/jobs/dead_letters.html", context)

    def dead_letters_retry_view(self, request):
        if not self.has_dead_letters_permission(request):
            raise PermissionDenied
        retried = missing = 0
        for value in request.POST.getlist("letter"):
            queue_name, _, key = value.partition("|")
            try:
                ok = dead_letter_retry(queue_name=queue_name, key=key)
            except Exception as exc:  # the broker is down: say so, the letter stays dead
                logger.exception("dead letter %s not retried", key)
                messages.error(request, f"Could not send the job again: {exc}")
                break
            retried, missing = retried + ok, missing + (not ok)
        if retried:
            messages.success(request, f"{retried} job{'s' if retried != 1 else ''} sent again.")
        if missing:
            messages.warning(request, f"{missing} job{'s were' if missing != 1 else ' was'} no longer dead "
                                      "(already retried, or removed after 7 days).")
        if not (retried or missing) and not request.POST.getlist("letter"):
            messages.warning(request, "Choose at least one job to retry.")
        return redirect(reverse("admin:dead_letters"))


admin.site.unregister(Task)
admin.site.register(Task, TaskAdmin)
