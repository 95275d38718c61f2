from django.contrib import admin
from django.urls import include, path

from payments.webhooks import stripe_webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("packs/", include("payments.public_urls")),
    path("me/", include("core.portal_urls")),
    path("stripe/webhook/", stripe_webhook, name="stripe_webhook"),
]
