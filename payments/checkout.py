"""Buying a pack on the public page: a pending purchase, then a Stripe Checkout Session.

The purchase (and a new client, when the email is new) is written in one transaction; Stripe is
called only after it has committed, never inside it. Credits come later, from the verified
webhook (payments.online), never from the browser coming back.

When Stripe cannot create the session, the purchase is **cancelled** (kept, with its history,
not deleted) and the client sees that nothing was charged: they never received a payment link,
so nothing can be paid against it, and a purchase left pending would sit in the lists forever.

Recurring packs are sold by payments.subscription_stripe (a plan, then its Checkout), which
shares the checks here: who buys (checkout_buyer) and whether the price can be paid online.
The public page calls pack_checkout_start, which sends each pack to its own flow.
"""
from __future__ import annotations

import logging

import stripe
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from catalog.models import CreditPack, RestrictTo
from core.models import Client, StaffMember
from core.services import client_create
from payments.exceptions import PackNotForSale, PaymentError
from payments.models import Purchase, PurchaseChannel, PurchaseStatus
from payments.money import to_minor
from payments.services import client_has_booked, purchase_create
from payments.stripe_gateway import stripe_client

logger = logging.getLogger(__name__)


class CheckoutRefused(PaymentError):
    """The pack cannot be bought online by this person; the text is shown to them as it is."""


class NotOnSale(CheckoutRefused):
    message = "That pack is not on sale online. Choose one of the packs below."

    def __init__(self, message: str = ""):
        super().__init__(message or self.message)


class CheckoutUnavailable(PaymentError):
    """Stripe could not start the payment; nothing was charged."""


def pack_on_sale(pack_id, *, recurring: bool = False) -> CreditPack:
    """A published pack sold online, one-off or recurring as the caller sells it."""
    pack = CreditPack.objects.filter(
        pk=pack_id, published=True, sell_online=True, is_recurring=recurring
    ).first()
    if pack is None:
        # Unknown, unpublished and desk-only packs get the same answer: it is not here.
        raise NotOnSale()
    return pack


def _staff_member_for(pack: CreditPack, staff_member_id) -> StaffMember | None:
    """Whose price applies. A pack limited to some staff members is priced by the one chosen
    (its only one, when there is one); a pack for all staff may be bought at its own price."""
    rows = list(pack.staff_prices.select_related("staff_member"))
    if staff_member_id in (None, ""):
        if pack.all_staff:
            return None
        if len(rows) == 1:
            return rows[0].staff_member
        raise CheckoutRefused(f"Choose who you will see for {pack.name}.")
    row = next((r for r in rows if str(r.staff_member_id) == str(staff_member_id)), None)
    if row is None:
        raise CheckoutRefused(f"Choose a staff member listed for {pack.name}.")
    return row.staff_member


def _client_for(*, name: str, email: str) -> Client:
    """The client with this email (any case), or a new one under the name given.

    An existing client keeps the name we have: a public form must not rename anyone.
    """
    email = email.strip().lower()
    client = Client.objects.filter(email=email).first()
    if client is not None:
        return client
    try:
        with transaction.atomic():  # a savepoint: a racing insert of the same email must not abort ours
            return client_create(actor=None, name=name.strip(), email=email)
    except (IntegrityError, ValidationError) as exc:
        # The same email was registered a moment ago (a double submit): use that client.
        client = Client.objects.filter(email=email).first()
        if client is None:
            raise CheckoutRefused("Please check your name and email address.") from exc
        return client


def _refuse_by_restriction(pack: CreditPack, client: Client) -> None:
    """The same rule purchase_create applies, worded for the person typing the email.

    purchase_create's own message names the client on file; shown here it would tell anyone
    who types an email address the name registered to it.
    """
    if pack.restrict_to == RestrictTo.ANYONE:
        return
    has_booked = client_has_booked(client)
    if pack.restrict_to == RestrictTo.NEW_JOINERS and has_booked:
        raise CheckoutRefused(
            f"{pack.name} is for new joiners only, and this email address has booked with us before. "
            "Choose another pack below."
        )
    if pack.restrict_to == RestrictTo.ACTIVE_MEMBERS and not has_booked:
        raise CheckoutRefused(
            f"{pack.name} is for existing members only, and this email address has no bookings with "
            "us yet. Choose another pack below, or use the email address you booked with."
        )


def checkout_buyer(pack: CreditPack, *, name: str, email: str, staff_member_id) -> tuple[Client, StaffMember | None]:
    """Who buys and with whom, refused in words for the person at the form (one-off packs and
    recurring plans alike). Call inside the caller's transaction: a new client rolls back with it."""
    staff_member = _staff_member_for(pack, staff_member_id)
    client = _client_for(name=name, email=email)
    _refuse_by_restriction(pack, client)
    return client, staff_member


def check_online_price(pack: CreditPack, price, currency: str) -> None:
    """Checked on the price actually charged (a staff member's price may differ from the pack's)."""
    if price <= 0:
        raise CheckoutRefused(f"{pack.name} is free: ask us at the front desk rather than paying online.")
    try:
        to_minor(price, currency)
    except ValueError as exc:
        raise CheckoutRefused(f"{pack.name} cannot be paid online at this price; please ask us.") from exc


@transaction.atomic
def _purchase_for_checkout(*, pack_id, name: str, email: str, staff_member_id) -> Purchase:
    pack = pack_on_sale(pack_id)
    client, staff_member = checkout_buyer(pack, name=name, email=email, staff_member_id=staff_member_id)
    try:
        purchase = purchase_create(
            client=client, pack=pack, staff_member=staff_member, actor=None,
            channel=PurchaseChannel.ONLINE,
        )
    except PackNotForSale as exc:
        raise CheckoutRefused(str(exc)) from exc
    # Raising here rolls back the purchase and a client created just for it.
    check_online_price(pack, purchase.price, purchase.currency)
    return purchase


def checkout_session_params(purchase: Purchase) -> dict:
    """The Checkout Session for a purchase: the line item comes from our price, nothing else."""
    base = settings.PUBLIC_BASE_URL
    metadata = {"purchase_id": str(purchase.pk)}
    return {
        "mode": "payment",
        "customer_email": purchase.client.email,
        "client_reference_id": str(purchase.pk),
        "metadata": metadata,
        # Copied onto the PaymentIntent so the charge (refunds, disputes) also names the purchase.
        "payment_intent_data": {"metadata": metadata},
        "line_items": [{
            "quantity": 1,
            "price_data": {
                "currency": purchase.currency.lower(),
                "unit_amount": to_minor(purchase.price, purchase.currency),
                "product_data": {"name": purchase.snapshot["name"]},
            },
        }],
        # Stripe fills in {CHECKOUT_SESSION_ID}; the doubled braces survive the f-string.
        "success_url": f"{base}/packs/success/?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{base}/packs/?checkout=cancelled",
    }


def checkout_session_create(purchase: Purchase):
    """Create (or, with the same purchase, get back) its Checkout Session. Call outside transactions.

    The idempotency key is per purchase: a retry or a second call for the same purchase gets
    the session Stripe made the first time, never a second one.
    """
    return stripe_client().v1.checkout.sessions.create(
        params=checkout_session_params(purchase),
        options={"idempotency_key": f"packdesk-checkout-{purchase.pk}"},
    )


def checkout_unavailable() -> CheckoutUnavailable:
    return CheckoutUnavailable(
        "We could not start the payment just now, so nothing was charged. "
        "Please try again in a few minutes."
    )


@transaction.atomic
def purchase_store_session_id(purchase: Purchase, session_id: str) -> Purchase:
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if purchase.stripe_checkout_session_id != session_id:
        purchase.stripe_checkout_session_id = session_id
        purchase._history_user = None
        purchase.save(update_fields=["stripe_checkout_session_id"])
    return purchase


@transaction.atomic
def purchase_cancel_unstarted(purchase: Purchase, reason: str) -> None:
    purchase = Purchase.objects.select_for_update().get(pk=purchase.pk)
    if purchase.status == PurchaseStatus.PENDING and not purchase.stripe_checkout_session_id:
        purchase.status = PurchaseStatus.CANCELLED
        purchase._history_user = None
        purchase._change_reason = reason[:100]
        purchase.save(update_fields=["status"])


def checkout_start(
    *, pack_id, name: str, email: str, staff_member_id=None
) -> tuple[Purchase, str]:
    """A pending online purchase and the URL of its Stripe Checkout page.

    Raises CheckoutRefused (nothing written) or CheckoutUnavailable (the purchase is cancelled).
    """
    purchase = _purchase_for_checkout(
        pack_id=pack_id, name=name, email=email, staff_member_id=staff_member_id
    )
    try:
        session = checkout_session_create(purchase)
    except stripe.StripeError as exc:
        logger.exception("Stripe refused the Checkout Session of purchase #%s", purchase.pk)
        purchase_cancel_unstarted(purchase, f"Stripe Checkout could not start: {exc.__class__.__name__}")
        raise checkout_unavailable() from exc
    purchase = purchase_store_session_id(purchase, session.id)
    return purchase, session.url


def pack_checkout_start(*, pack_id, name: str, email: str, staff_member_id=None) -> str:
    """Where to send the buyer of any pack on sale online: a one-off pack's Checkout, or a
    recurring plan's (payments.subscription_stripe). Refusals as checkout_start's."""
    recurring = CreditPack.objects.filter(
        pk=pack_id, published=True, sell_online=True, is_recurring=True
    ).exists()
    if recurring:
        from payments.subscription_stripe import subscription_checkout_start

        _, url = subscription_checkout_start(
            pack_id=pack_id, name=name, email=email, staff_member_id=staff_member_id
        )
        return url
    _, url = checkout_start(pack_id=pack_id, name=name, email=email, staff_member_id=staff_member_id)
    return url
