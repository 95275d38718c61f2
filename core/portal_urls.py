"""The client's own page, mounted at /me/ (config/urls.py). /me/link/ is core.portal_link's."""
from django.urls import path, register_converter

from core import optout_views, portal_addon_views, portal_link_views, portal_views

app_name = "portal"


class TokenConverter:
    # Any segment but "link": /me/link/ is the "ask for a new link" page, wherever it is mounted.
    regex = r"(?!link/)[^/]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(TokenConverter, "portal_token")

urlpatterns = [
    path("link/", portal_link_views.link_request, name="link_request"),
    path("opt-out/<str:token>/", optout_views.opt_out, name="opt_out"),
    path("<portal_token:token>/", portal_views.home, name="home"),
    path("<portal_token:token>/book/", portal_views.book_list, name="book_list"),
    # str, not int: a mangled id gets the portal's own "not found" page, not the bare 404.
    path("<portal_token:token>/book/<str:session_id>/", portal_views.book, name="book"),
    path("<portal_token:token>/bookings/<str:booking_id>/cancel/", portal_views.cancel, name="cancel"),
    path("<portal_token:token>/plans/<str:plan_id>/cancel/", portal_views.plan_cancel, name="plan_cancel"),
    # Add-ons (seed 003): the extras offered for one booking, then one extra's intake form and confirm.
    path("<portal_token:token>/bookings/<str:booking_id>/extras/", portal_addon_views.extras, name="extras"),
    path("<portal_token:token>/bookings/<str:booking_id>/extras/<str:type_id>/", portal_addon_views.extra_add,
         name="extra_add"),
]
