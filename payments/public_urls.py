"""The public pack page, mounted at /packs/ (config/urls.py)."""
from django.urls import path

from payments import invoice_views, public_views

app_name = "public"

urlpatterns = [
    path("", public_views.pack_list, name="pack_list"),
    # str, not int: a mangled id gets the pack page with a message, not the bare 404 page.
    path("<str:pack_id>/buy/", public_views.pack_buy, name="pack_buy"),
    path("success/", public_views.checkout_success, name="success"),
    path("test-checkout/<str:session_id>/", public_views.test_checkout, name="test_checkout"),
    path("test-invoice/<str:invoice_id>/", invoice_views.test_invoice, name="test_invoice"),
]
