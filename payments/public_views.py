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

from catalog.models import (
    CreditPack,
    PackCreditLine,
    PackStaffPrice,
    RecurringCollection,
    RestrictTo,
    ValidFrom,
)
from catalog.validation import ZERO_DECIMAL_CURRENCIES
from core.portal_tokens import portal_url
from ledger.models import CreditGrant, EntrySource, GrantState
from ledger.templatetags.credits import last_usable_day
from payments import stripe_double
from payments.checkout import CheckoutRefused, CheckoutUnavailable, NotOnSale, pack_checkout_start
from payments.models import Purchase, PurchaseChannel, PurchaseStatus, Subscription, SubscriptionStatus
from payments.money import from_minor
from payments.subscription_stripe import plan_from_token

logger = logging.getLogger(__name__)

CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "INR": "₹"}
VALID_FROM_WORDS = {
    ValidFrom.PAYMENT: "from payment",
    ValidFrom.BOOKING: "from your first booking",
    ValidFrom.FIRST_SESSION: "from your first session",
}
COLLECTION_WORDS = {
    RecurringCollection.AUTO_DEBIT: "Your card is charged automatically each time.",
    RecurringCollection.INVOICE: "We email you an invoice each time it renews.",
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


def every(interval: str, count: int) -> str:
    """"month", 1 -> "every month"; "week", 2 -> "every 2 weeks"."""
    return f"every {interval}" if count == 1 else f"every {count} {interval}s"


def recurring_words(recurring: dict) -> str:
    """How a recurring pack renews, as its card and pages say it (from a pack or a snapshot)."""
    words = [every(recurring["billing_interval"], recurring.get("billing_interval_count") or 1)]
    if recurring.get("minimum_commitment"):
        count = recurring["minimum_commitment"]
        words.append(f"minimum {count} payment{'s' if count != 1 else ''}")
    if recurring.get("free_trial_days"):
        words.append(f"{recurring['free_trial_days']}-day free trial")
    return ", ".join(words)


def _pack_recurring(pack: CreditPack) -> dict:
    return {
        "billing_interval": pack.billing_interval, "billing_interval_count": pack.billing_interval_count,
        "minimum_commitment": pack.minimum_commitment, "free_trial_days": pack.free_trial_days,
    }


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
    recurring: str = ""  # "every month, minimum 12 payments, 14-day free trial"; empty: one-off
    collection: str = ""  # how each renewal is paid, in the client's words
    pay_now: bool = True  # False: an invoice plan's free trial starts with nothing to pay


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
    if pack.is_recurring and pack.valid_from == ValidFrom.PAYMENT:
        starts = "from the start of each billing period"  # seed 002: the cycle's start, not the payment
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
    recurring = collection = ""
    if pack.is_recurring:
        count = pack.billing_interval_count
        price += f" / {pack.billing_interval if count == 1 else period(count, pack.billing_interval + 's')}"
        recurring = recurring_words(_pack_recurring(pack))
        collection = COLLECTION_WORDS.get(pack.recurring_collection, "")
    return PackCard(
        pk=pack.pk, name=pack.name, description=pack.description, price=price, lines=texts,
        validity=validity, restriction=RESTRICTION_WORDS.get(pack.restrict_to, ""), staff=staff,
        # A single option is no choice: checkout_start takes a pack's only staff member itself.
        staff_choices=options if len(options) > 1 else [],
        recurring=recurring, collection=collection,
        pay_now=not (pack.is_recurring and pack.recurring_collection == RecurringCollection.INVOICE
                     and pack.free_trial_days),
    )


def packs_on_sale():
    """Published packs sold online (one-off and recurring), with all a card shows: three queries,
    any number of packs."""
    return (
        CreditPack.objects.filter(published=True, sell_online=True, price__gt=0)
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


def _id(value: str) -> int | None:
    """A row id typed into a URL or a form: ASCII digits only ("²".isdigit() is true, int("²") fails)."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 12 else None


@require_POST
def pack_buy(request: HttpRequest, pack_id: str) -> HttpResponse:
    failed = _id(pack_id)
    form = BuyForm(request.POST)
    if failed is None:
        return _list_page(request, status=404, form=form, error=NotOnSale.message)
    if not form.is_valid():
        return _list_page(request, status=400, failed_pack=failed, form=form,
                          error="Please check the details you entered.")
    data = form.cleaned_data
    try:
        url = pack_checkout_start(
            pack_id=failed, name=data["name"], email=data["email"],
            staff_member_id=_id(data["staff_member"]),
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


def _bought(request: HttpRequest) -> tuple[Purchase | None, Subscription | None]:
    """What the success page is about: an online purchase (a one-off pack, or an invoice plan's
    first cycle), or a recurring plan (its Stripe Checkout, or an invoice plan's free trial)."""
    session_id = request.GET.get("session_id", "")
    # PostgreSQL text cannot hold NUL: such an id matches nothing, and querying it would raise.
    if session_id and len(session_id) <= 255 and "\x00" not in session_id:
        purchase = (
            Purchase.objects.select_related("client", "subscription")
            .filter(stripe_checkout_session_id=session_id, channel=PurchaseChannel.ONLINE).first()
        )
        if purchase is not None:
            return purchase, purchase.subscription
        plan = Subscription.objects.select_related("client").filter(stripe_checkout_session_id=session_id).first()
    else:
        token = request.GET.get("plan", "")
        plan = plan_from_token(token) if token and len(token) <= 200 else None
    if plan is None:
        return None, None
    # A plan's credits come with its first paid cycle.
    first = plan.cycles.filter(status__in=(PurchaseStatus.PAID, PurchaseStatus.REFUNDED)).order_by("cycle_number")
    return first.select_related("client").first(), plan


def _plan_context(plan: Subscription | None) -> dict:
    if plan is None:
        return {"plan": None}
    return {
        "plan": plan,
        "plan_words": recurring_words(plan.snapshot["recurring"]),
        "auto_debit": plan.collection == RecurringCollection.AUTO_DEBIT,
        "trial_ends": timezone.localtime(plan.trial_ends_at) if plan.trial_ends_at else None,
    }


def _state(purchase: Purchase | None, plan: Subscription | None) -> str:
    if purchase is not None:
        return {PurchaseStatus.PENDING: "pending", PurchaseStatus.CANCELLED: "cancelled"}.get(purchase.status, "paid")
    if plan.status == SubscriptionStatus.TRIALING:
        return "trial"
    return "cancelled" if plan.status == SubscriptionStatus.CANCELLED else "pending"


@never_cache
@require_GET
def checkout_success(request: HttpRequest) -> HttpResponse:
    purchase, plan = _bought(request)
    if purchase is None and plan is None:
        return _not_found(request, "We could not find this payment. Check the link, or buy a pack below.")
    state = _state(purchase, plan)
    grants = []
    if state == "paid":
        grants = [
            _grant_row(g) for g in CreditGrant.objects.filter(
                purchase=purchase, source=EntrySource.PURCHASE
            ).select_related("session_type").order_by("pk")
        ]
    about = purchase or plan
    pending = state == "pending"
    context = {
        "state": state,
        "purchase": purchase,
        "pack_name": about.snapshot.get("name", ""),
        "amount": money(about.price, about.currency),
        "email": about.client.email,
        "first_name": about.client.name.split()[0] if about.client.name.split() else "",
        "grants": grants,
        "pending": pending,
        "refresh": pending and timezone.now() - about.created_at < CONFIRMING_REFRESH_FOR,
        "starts_later": about.snapshot.get("valid_from") in (ValidFrom.BOOKING, ValidFrom.FIRST_SESSION),
        "starts_words": VALID_FROM_WORDS.get(about.snapshot.get("valid_from"), ""),
        # The payer's own page; only ever this purchase's client (the Stripe session id names it).
        "portal_url": portal_url(about.client),
        **_plan_context(plan),
    }
    response = _page(request, "public/success.html", context)
    response["X-Robots-Tag"] = "noindex"
    return response


# --- Demo / test mode: our stand-in for Stripe's hosted checkout page ---------------------------


def _test_event_id(event_type: str, object_id: str) -> str:
    # One id per object and type: sending it again (a retry, a double click) is a duplicate
    # our webhook acknowledges and ignores, as with Stripe's own redeliveries.
    return "evt_test_" + hashlib.sha256(f"{event_type}:{object_id}".encode()).hexdigest()[:24]


def _deliver_test_event(request: HttpRequest, event_type: str, object_id: str) -> str:
    """Post the event, signed as Stripe signs it, to our own webhook. Returns "" or what went wrong."""
    event = stripe_double.build_event(
        event_type, stripe_double.load(object_id), event_id=_test_event_id(event_type, object_id)
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
    logger.error("test-mode %s for %s not delivered: %s", event_type, object_id, problem)
    return problem


def _deliver_checkout_events(request: HttpRequest, session_id: str) -> str:
    """What Stripe sends once a Checkout is paid: the session completed and, for a subscription,
    its first invoice paid (a free trial's is paid too, at 0). Returns "" or what went wrong."""
    problem = _deliver_test_event(request, "checkout.session.completed", session_id)
    session = stripe_double.load(session_id)
    if problem or session.get("mode") != "subscription" or not session.get("subscription"):
        return problem
    invoice_id = stripe_double.load(session["subscription"]).get("latest_invoice")
    if invoice_id and stripe_double.load(invoice_id).get("status") == "paid":
        return _deliver_test_event(request, "invoice.paid", invoice_id)
    return ""


def _checkout_page(request, session: dict, about: Purchase | Subscription | None, *, error: str = "",
                   status: int = 200):
    plan = about if isinstance(about, Subscription) else None
    context = {
        "session": session,
        "pack_name": about.snapshot.get("name", "") if about else "",
        # What is paid today: nothing at the start of a free trial.
        "amount": money(from_minor(session["amount_total"], session["currency"]), session["currency"]),
        "plan_amount": money(plan.price, plan.currency) if plan else "",
        "plan_words": recurring_words(plan.snapshot["recurring"]) if plan else "",
        "trial_days": (plan.snapshot["recurring"].get("free_trial_days") or 0) if plan else 0,
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
    about = Purchase.objects.filter(stripe_checkout_session_id=session_id).first()
    if about is None:
        about = Subscription.objects.filter(stripe_checkout_session_id=session_id).first()
    if request.method == "GET":
        return _checkout_page(request, session, about)

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
        return _checkout_page(request, session, about, status=400, error="Choose Pay or Cancel.")
    if session["status"] == "expired":
        return _checkout_page(request, session, about, status=409,
                              error="This checkout was cancelled or expired: nothing was charged.")
    if session["status"] == "open":
        stripe_double.complete_checkout(session_id)
    # Paid already (a double click, or a retry after a failed delivery): send the events again.
    problem = _deliver_checkout_events(request, session_id)
    if problem:
        return _checkout_page(
            request, stripe_double.load(session_id), about, status=502,
            error=f"Test payment taken, but {problem}. Stripe would retry; press the button to send it again.",
        )
    return HttpResponseRedirect(success_url, status=303)
