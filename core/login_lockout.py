"""What a staff member sees when django-axes has locked their sign-in (settings.AXES_*)."""
from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.template.response import TemplateResponse


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed sign-ins for this username from your network. For your security, signing "
        f"in is paused for {minutes} minutes. Try again then, or ask an administrator to unlock it."
    )


def admin_lockout_response(request, original_response=None, credentials=None):
    """The admin's own sign-in page (unfold's form and look) with the reason on it, as a 429."""
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    form_class = admin.site.login_form or AdminAuthenticationForm
    messages.error(request, lockout_message())
    context = {
        **admin.site.each_context(request),
        "title": "Log in",
        "app_path": request.get_full_path(),
        "form": form_class(request, initial={"username": username}),
        "username": username,
    }
    return TemplateResponse(request, "admin/login.html", context, status=429).render()
