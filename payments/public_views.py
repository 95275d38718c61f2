"""The public pack page: list the packs sold online, start a Stripe Checkout, show the result.

Thin by design: no login, no JavaScript framework, a fixed number of queries per page. The
browser sends a pack id, a name and an email; prices and credits always come from our database.
"""
from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from catalog.models import CreditPack, PackCreditLine, PackStaffPrice, RestrictTo, ValidFrom
from catalog.validation import ZERO_DECIMAL_CURRENCIES
from core.portal_tokens import portal_url
from ledger.models import CreditGrant, EntrySource, GrantState
from ledger.templatetags.credits import last_usable_day
from payments import stripe_double
from payments.checkout import CheckoutRefused, CheckoutUnavailable, NotOnSale, checkout_start
from payments.models import Purchase, PurchaseChannel, PurchaseStatus
from payments.money import from_minor

logger = logging.getLogger(__name__)

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "INR": "₹"}
VALID_FROM_WORDS = {
    ValidFrom.PAYMENT: "from payment",
    ValidFrom.BOOKING: "from your first booking",
    ValidFrom.FIRST_SESSION: "from your first session",
}
RESTRICTION_WORDS = {
    RestrictTo.NEW_JOINERS: "New joiners only",
    RestrictTo.ACTIVE_MEMBERS: "Existing members only",
}
# A webhook normally lands within seconds; after this the page stops refreshing and says so.
CONFIRMING_REFRESH_FOR = timedelta(minutes=10)
WEBHOOK_PATH = "/stripe/webhook/"


def money(amount: Decimal, currency: str) -> str:
    currency = currency.upper()
    places = 0 if currency in ZERO_DECIMAL_CURRENCIES else 2
    text = f"{amount:,.{places}f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def period(amount: int, unit: str) -> str:
    return f"{amount} {unit[:-1] if amount == 1 else unit}"


def _page(request: HttpRequest, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    return render(request, template, {"business_name": settings.BUSINESS_NAME, **context}, status=status)


# --- The pack list --------------------------------------------------------------------------


@dataclass
class PackCard:
    pk: int
    name: str
    description: str
    price: str
    lines: list[str]
    validity: str
    restriction: str
    staff: str
    staff_choices: list[tuple[str, str]] = field(default_factory=list)
    failed: bool = False  # the card whose form is shown again with its errors


def _card(pack: CreditPack) -> PackCard:
    lines, validities = [], set()
    for line in pack.credit_lines.all():
        amount = line.validity_amount or pack.validity_amount
        unit = line.validity_unit or pack.validity_unit
        validities.add((amount, unit))
        what = f"Unlimited {line.session_type.name}" if line.unlimited else (
            f"{line.credits} × {line.session_type.name}"
        )
        lines.append((what, amount, unit))
    starts = VALID_FROM_WORDS.get(pack.valid_from, "")
    if len(validities) == 1:
        amount, unit = validities.pop()
        validity = f"Valid {period(amount, unit)} {starts}"
        texts = [what for what, _, _ in lines]
    else:  # lines with their own expiry rule say so each
        validity = f"Validity counts {starts}"
        texts = [f"{what} (valid {period(amount, unit)})" for what, amount, unit in lines]
    rows = [(r, pack.price if r.price is None else r.price) for r in pack.staff_prices.all()]
    if pack.all_staff:
        # Everyone at the pack's price, except the staff members listed at their own.
        staff = ""
        prices = {pack.price} | {p for _, p in rows}
        options = [("", f"Any other staff member, {money(pack.price, pack.currency)}")] if rows else []
    else:
        staff = "With " + ", ".join(r.staff_member.display_name for r, _ in rows) + " only"
        prices = {p for _, p in rows}
        options = []
    options += [
        (str(r.staff_member_id), f"{r.staff_member.display_name}, {money(p, pack.currency)}") for r, p in rows
    ]
    price = money(min(prices or {pack.price}), pack.currency)
    if len(prices) > 1:
        price = "from " + price
    return PackCard(
        pk=pack.pk, name=pack.name, description=pack.description, price=price, lines=texts,
        validity=validity, restriction=RESTRICTION_WORDS.get(pack.restrict_to, ""), staff=staff,
        # A single option is no choice: checkout_start takes a pack's only staff member itself.
        staff_choices=options if len(options) > 1 else [],
    )


def packs_on_sale():
    """Published one-off packs sold online, with all a card shows: three queries, any number of packs."""
    return (
        CreditPack.objects.filter(published=True, sell_online=True, is_recurring=False, price__gt=0)
        .select_related("category")
        .prefetch_related(
            Prefetch("credit_lines", queryset=PackCreditLine.objects.select_related("session_type").order_by("id")),
            Prefetch(
                "staff_prices",
                queryset=PackStaffPrice.objects.select_related("staff_member").order_by(
                    "staff_member__display_name", "id"
                ),
            ),
        )
        .order_by("category__position", "category__name", "name", "pk")
    )


def _grouped_cards(failed_pack: int | None = None) -> list[tuple[str, list[PackCard]]]:
    groups: list[tuple[str, list[PackCard]]] = []
    for pack in packs_on_sale():
        if not groups or groups[-1][0] != pack.category.name:
            groups.append((pack.category.name, []))
        card = _card(pack)
        card.failed = pack.pk == failed_pack
        groups[-1][1].append(card)
    return groups


class BuyForm(forms.Form):
    # The sizes of Client.name and Client.email: longer input is refused, never truncated.
    name = forms.CharField(max_length=200, error_messages={"required": "Enter your name."})
    email = forms.EmailField(max_length=254, error_messages={
        "required": "Enter your email address.", "invalid": "Enter a valid email address, like you@example.com.",
    })
    staff_member = forms.CharField(max_length=20, required=False)


def _list_page(request: HttpRequest, *, status: int = 200, failed_pack: int | None = None,
               form: BuyForm | None = None, error: str = "") -> HttpResponse:
    values = {}
    if form is not None:
        values = {name: str(form.data.get(name, ""))[:300] for name in ("name", "email", "staff_member")}
    context = {
        "groups": _grouped_cards(failed_pack),
        "failed_pack": failed_pack,
        "form_errors": form.errors if form is not None else {},
        "values": values,
        "error": error,
        "cancelled": request.GET.get("checkout") == "cancelled",
    }
    return _page(request, "public/pack_list.html", context, status=status)


@require_GET
def pack_list(request: HttpRequest) -> HttpResponse:
    return _list_page(request)


@require_POST
def pack_buy(request: HttpRequest, pack_id: str) -> HttpResponse:
    failed = int(pack_id) if pack_id.isdigit() and len(pack_id) < 12 else None
    form = BuyForm(request.POST)
    if failed is None:
        return _list_page(request, status=404, form=form, error=NotOnSale.message)
    if not form.is_valid():
        return _list_page(request, status=400, failed_pack=failed, form=form,
                          error="Please check the details you entered.")
    data = form.cleaned_data
    try:
        _, url = checkout_start(
            pack_id=failed, name=data["name"], email=data["email"],
            staff_member_id=int(data["staff_member"]) if data["staff_member"].isdigit() else None,
        )
    except NotOnSale as exc:
        return _list_page(request, status=404, form=form, error=str(exc))
    except CheckoutRefused as exc:
        return _list_page(request, status=403, failed_pack=failed, form=form, error=str(exc))
    except CheckoutUnavailable as exc:
        return _list_page(request, status=503, failed_pack=failed, form=form, error=str(exc))
    # 303: the browser follows with a GET, and "back" never re-posts the form.
    return HttpResponseRedirect(url, status=303)


# --- After Stripe: the success page ------------------------------------------------------------


def _not_found(request: HttpRequest, message: str) -> HttpResponse:
    return _page(request, "public/error.html", {"title": "Not found", "message": message}, status=404)


@dataclass
class GrantRow:
    session_type: str
    credits: str
    until: str
    cancel_hours: int


def _grant_row(grant: CreditGrant) -> GrantRow:
    if grant.unlimited:
        credits = "Unlimited sessions"
    elif grant.remaining < (grant.quantity or 0):
        credits = f"{grant.remaining} of {grant.quantity} credits left"
    else:
        credits = f"{grant.quantity} credit{'s' if grant.quantity != 1 else ''}"
    if grant.state == GrantState.VOIDED:
        until = "Cancelled"
    elif grant.state == GrantState.EXPIRED:
        until = "Expired"
    elif grant.expires_at is not None:
        day = last_usable_day(grant.expires_at)
        until = f"Usable until end of {day.day} {day:%B %Y}"
    else:
        until = (f"Valid {period(grant.validity_amount, grant.validity_unit)} "
                 f"{VALID_FROM_WORDS.get(grant.valid_from_rule, '')}")
    return GrantRow(grant.session_type.name, credits, until, grant.session_type.cancellation_window_hours)


@never_cache
@require_GET
def checkout_success(request: HttpRequest) -> HttpResponse:
    session_id = request.GET.get("session_id", "")
    purchase = None
    if session_id and len(session_id) <= 255:
        purchase = (
            Purchase.objects.select_related("client")
            .filter(stripe_checkout_session_id=session_id, channel=PurchaseChannel.ONLINE).first()
        )
    if purchase is None:
        return _not_found(request, "We could not find this payment. Check the link, or buy a pack below.")
    grants = []
    if purchase.status in (PurchaseStatus.PAID, PurchaseStatus.REFUNDED):
        grants = [
            _grant_row(g) for g in CreditGrant.objects.filter(
                purchase=purchase, source=EntrySource.PURCHASE
            ).select_related("session_type").order_by("pk")
        ]
    pending = purchase.status == PurchaseStatus.PENDING
    context = {
        "purchase": purchase,
        "pack_name": purchase.snapshot.get("name", ""),
        "amount": money(purchase.price, purchase.currency),
        "first_name": purchase.client.name.split()[0] if purchase.client.name.split() else "",
        "grants": grants,
        "pending": pending,
        "refresh": pending and timezone.now() - purchase.created_at < CONFIRMING_REFRESH_FOR,
        "starts_later": purchase.snapshot.get("valid_from") in (ValidFrom.BOOKING, ValidFrom.FIRST_SESSION),
        "starts_words": VALID_FROM_WORDS.get(purchase.snapshot.get("valid_from"), ""),
        # The payer's own page; only ever this purchase's client (the Stripe session id names it).
        "portal_url": portal_url(purchase.client),
    }
    response = _page(request, "public/success.html", context)
    response["X-Robots-Tag"] = "noindex"
    return response


# --- Demo / test mode: our stand-in for Stripe's hosted checkout page ---------------------------


def _test_event_id(event_type: str, session_id: str) -> str:
    # One id per session and type: sending it again (a retry, a double click) is a duplicate
    # our webhook acknowledges and ignores, as with Stripe's own redeliveries.
    return "evt_test_" + hashlib.sha256(f"{event_type}:{session_id}".encode()).hexdigest()[:24]


def _deliver_test_event(request: HttpRequest, event_type: str, session_id: str) -> str:
    """Post the event, signed as Stripe signs it, to our own webhook. Returns "" or what went wrong."""
    event = stripe_double.build_event(
        event_type, stripe_double.load(session_id), event_id=_test_event_id(event_type, session_id)
    )
    payload = json.dumps(event)
    webhook = urllib.request.Request(
        request.build_absolute_uri(WEBHOOK_PATH), data=payload.encode(), method="POST",
        headers={"Content-Type": "application/json", "Stripe-Signature": stripe_double.sign(payload)},
    )
    # No proxy: the webhook is this very server, whatever the environment says about proxies.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(webhook, timeout=10):
            return ""
    except urllib.error.HTTPError as exc:
        problem = f"our webhook answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        problem = f"our webhook could not be reached ({getattr(exc, 'reason', exc)})"
    logger.error("test-mode %s for %s not delivered: %s", event_type, session_id, problem)
    return problem


def _checkout_page(request, session: dict, purchase: Purchase | None, *, error: str = "", status: int = 200):
    context = {
        "session": session,
        "pack_name": purchase.snapshot.get("name", "") if purchase else "",
        "amount": money(from_minor(session["amount_total"], session["currency"]), session["currency"]),
        "email": session.get("customer_email") or "",
        "error": error,
    }
    return _page(request, "public/test_checkout.html", context, status=status)


@never_cache
@require_http_methods(["GET", "POST"])
def test_checkout(request: HttpRequest, session_id: str) -> HttpResponse:
    if not settings.STRIPE_TEST_DOUBLE:
        return _not_found(request, "There is no test-mode checkout here.")
    try:
        session = stripe_double.load(session_id, "checkout.session")
    except stripe_double.DoubleError:
        return _not_found(request, "This test-mode checkout does not exist.")
    purchase = Purchase.objects.filter(stripe_checkout_session_id=session_id).first()
    if request.method == "GET":
        return _checkout_page(request, session, purchase)

    success_url = (session.get("success_url") or "").replace("{CHECKOUT_SESSION_ID}", session_id)
    if request.POST.get("action") == "cancel":
        if session["status"] == "complete":
            return HttpResponseRedirect(success_url, status=303)
        if session["status"] == "open":
            stripe_double.expire_checkout(session_id)
            # Stripe tells us about an expired session too; our webhook cancels the purchase.
            _deliver_test_event(request, "checkout.session.expired", session_id)
        return HttpResponseRedirect(session.get("cancel_url") or "/packs/", status=303)

    if request.POST.get("action") != "pay":
        return _checkout_page(request, session, purchase, status=400, error="Choose Pay or Cancel.")
    if session["status"] == "expired":
        return _checkout_page(request, session, purchase, status=409,
                              error="This checkout was cancelled or expired: nothing was charged.")
    if session["status"] == "open":
        stripe_double.complete_checkout(session_id)
    # Paid already (a double click, or a retry after a failed delivery): send the event again.
    problem = _deliver_test_event(request, "checkout.session.completed", session_id)
    if problem:
        return _checkout_page(
            request, stripe_double.load(session_id), purchase, status=502,
            error=f"Test payment taken, but {problem}. Stripe would retry; press the button to send it again.",
        )
    return HttpResponseRedirect(success_url, status=303)
