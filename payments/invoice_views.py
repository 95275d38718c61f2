"""Demo / test mode: our stand-in for Stripe's hosted invoice page (/packs/test-invoice/<id>/).

With no Stripe account configured (settings.STRIPE_TEST_DOUBLE), a Stripe invoice lives in
payments.stripe_double and its hosted_invoice_url points here. "Pay" does what Stripe does when a
client pays an emailed invoice (stripe_double.pay_invoice), then Stripe's invoice.paid event is
posted, signed, to our own webhook, so the payment takes the same path as in production.
"""
from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from payments import stripe_double
from payments.money import from_minor
from payments.public_views import _deliver_test_event, _not_found, _page, money

TEMPLATE = "payments/public/test_invoice.html"


def _due_text(due_date) -> str:
    if not due_date:
        return ""
    day = timezone.localtime(datetime.fromtimestamp(int(due_date), tz=dt_timezone.utc))
    return f"{day.day} {day:%B %Y}"


def _invoice_page(request: HttpRequest, stripe_invoice: dict, *, error: str = "", status: int = 200) -> HttpResponse:
    currency = stripe_invoice.get("currency") or ""
    context = {
        "invoice": stripe_invoice,
        "number": stripe_invoice.get("number") or stripe_invoice["id"],
        "amount": money(from_minor(stripe_invoice.get("amount_due") or 0, currency), currency),
        "lines": [line.get("description") or "" for line in (stripe_invoice.get("lines") or {}).get("data", [])],
        "email": stripe_invoice.get("customer_email") or "",
        "error": error,
        "due": _due_text(stripe_invoice.get("due_date")),
    }
    response = _page(request, TEMPLATE, context, status=status)
    response["X-Robots-Tag"] = "noindex"
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def test_invoice(request: HttpRequest, invoice_id: str) -> HttpResponse:
    if not settings.STRIPE_TEST_DOUBLE:
        return _not_found(request, "There is no test-mode invoice here.")
    try:
        stripe_invoice = stripe_double.load(invoice_id, "invoice")
    except stripe_double.DoubleError:
        return _not_found(request, "This test-mode invoice does not exist.")
    if request.method == "GET":
        return _invoice_page(request, stripe_invoice)
    if request.POST.get("action") != "pay":
        return _invoice_page(request, stripe_invoice, status=400, error="Press Pay to pay the invoice.")
    if stripe_invoice.get("status") not in ("open", "paid"):
        return _invoice_page(
            request, stripe_invoice, status=409,
            error=f"This invoice is {stripe_invoice.get('status')}: it cannot be paid.",
        )
    if stripe_invoice["status"] == "open":
        stripe_double.pay_invoice(invoice_id)
    # Paid already (a double click, or a retry after a failed delivery): send the event again.
    problem = _deliver_test_event(request, "invoice.paid", invoice_id)
    if problem:
        return _invoice_page(
            request, stripe_double.load(invoice_id), status=502,
            error=f"Test payment taken, but {problem}. Stripe would retry; press the button to send it again.",
        )
    return HttpResponseRedirect(request.path, status=303)
