"""The bench server's URLconf: the whole site, plus a trivial view as the baseline.

Only the webhook bench's own server process uses it (bench/webhooks.py sets ROOT_URLCONF there);
the site itself never serves /bench/.
"""
from django.http import HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt  # it is posted the same signed bodies as the webhook, to compare like with like
def ping(request):
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("bench/ping/", ping),
    path("", include("config.urls")),
]
