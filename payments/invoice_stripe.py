"""The Stripe side of invoices: create and send, void, mark paid out of band.

Called by payments.invoices outside any transaction. Every request that creates or changes
something carries an idempotency key made from our Invoice's pk, and before creating anything we
look for what an earlier attempt already made (Stripe keeps idempotency keys for a day only): the
Stripe id we stored, or an invoice of the customer whose metadata names our invoice. So Retry,
a double click or a crash halfway never makes a second Stripe invoice or a second line.
"""
from __future__ import annotations

import logging

import stripe
from django.db import transaction

from payments.invoices import (
    InvalidInvoice,
    days_until_due_for,
    invoice_apply_stripe_state,
    invoice_label,
    invoice_lines,
)
from payments.models import Invoice, InvoiceKind, InvoiceStatus, Subscription
from payments.money import to_minor
from payments.online import StripeMismatch
from payments.stripe_gateway import stripe_client

logger = logging.getLogger(__name__)


def _key(invoice: Invoice, step: str) -> str:
    return f"packdesk-invoice-{invoice.pk}-{step}"


def _text(exc: stripe.StripeError) -> str:
    return exc.user_message or str(exc) or exc.__class__.__name__


def _plain(obj) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


@transaction.atomic
def invoice_set_error(invoice_id: int, text: str) -> Invoice:
    invoice = Invoice.objects.select_for_update().get(pk=invoice_id)
    if invoice.status == InvoiceStatus.DRAFT:  # the webhook may have opened it meanwhile
        invoice.error = text
        invoice.save(update_fields=["error"])
    return invoice


def invoice_remember_stripe_id(invoice_id: int, stripe_invoice_id: str) -> None:
    """Keep Stripe's id as soon as it exists, so a crash before the end never loses it."""
    Invoice.objects.filter(pk=invoice_id, stripe_invoice_id__isnull=True).update(stripe_invoice_id=stripe_invoice_id)


# --- Finding what exists ----------------------------------------------------------------------


def _known_customer(invoice: Invoice) -> str:
    """A Stripe customer this client already has through a recurring plan, if any."""
    purchase = invoice.purchase
    if purchase.subscription_id and purchase.subscription.stripe_customer_id:
        return purchase.subscription.stripe_customer_id
    return (
        Subscription.objects.filter(client_id=purchase.client_id).exclude(stripe_customer_id="")
        .order_by("-created_at").values_list("stripe_customer_id", flat=True).first()
    ) or ""


def _existing_customer(client, invoice: Invoice) -> str:
    known = _known_customer(invoice)
    if known:
        return known
    found = client.v1.customers.list(params={"email": invoice.purchase.client.email, "limit": 1})
    return found.data[0].id if found.data else ""


def _customer(client, invoice: Invoice) -> str:
    """Find the client's Stripe customer (plan, then email), or create one (keyed per invoice)."""
    existing = _existing_customer(client, invoice)
    if existing:
        return existing
    person = invoice.purchase.client
    created = client.v1.customers.create(
        params={"email": person.email, "name": person.name, "metadata": {"client_id": str(person.pk)}},
        options={"idempotency_key": _key(invoice, "customer")},
    )
    return created.id


def _find_stripe_invoice(client, invoice: Invoice, customer: str) -> dict | None:
    """The Stripe invoice an earlier attempt made for ours: by stored id, else by metadata."""
    if invoice.stripe_invoice_id:
        return _plain(client.v1.invoices.retrieve(invoice.stripe_invoice_id))
    if not customer:
        return None
    listed = client.v1.invoices.list(params={"customer": customer, "limit": 100})
    for found in listed.auto_paging_iter():
        found = _plain(found)
        if (found.get("metadata") or {}).get("invoice_id") == str(invoice.pk):
            return found
    return None


# --- Issuing ------------------------------------------------------------------------------


def _create(client, invoice: Invoice, customer: str) -> dict:
    purchase = invoice.purchase
    created = _plain(client.v1.invoices.create(
        params={
            "customer": customer, "collection_method": "send_invoice",
            "days_until_due": days_until_due_for(invoice), "currency": invoice.currency.lower(),
            # Not auto-advanced: Stripe would finalize the draft by itself while we add its line.
            "auto_advance": False, "pending_invoice_items_behavior": "exclude",
            "description": f"Purchase #{purchase.pk} for {purchase.client.name}",
            "metadata": {"purchase_id": str(purchase.pk), "invoice_id": str(invoice.pk)},
        },
        options={"idempotency_key": _key(invoice, "create")},
    ))
    invoice_remember_stripe_id(invoice.pk, created["id"])
    return created


def _add_lines(client, invoice: Invoice, stripe_invoice: dict) -> None:
    if (stripe_invoice.get("lines") or {}).get("data"):
        return  # an earlier attempt added them
    for number, line in enumerate(invoice_lines(invoice.purchase), start=1):
        client.v1.invoice_items.create(
            params={
                "customer": stripe_invoice["customer"], "invoice": stripe_invoice["id"],
                "amount": line["minor"], "currency": line["currency"].lower(), "description": line["description"],
                "metadata": {"purchase_id": str(invoice.purchase_id), "invoice_id": str(invoice.pk)},
            },
            options={"idempotency_key": _key(invoice, f"item-{number}")},
        )


def _check_total(invoice: Invoice, stripe_invoice: dict) -> None:
    expected = to_minor(invoice.amount, invoice.currency)
    total, currency = stripe_invoice.get("amount_due"), str(stripe_invoice.get("currency") or "")
    if total != expected or currency.lower() != invoice.currency.lower():
        raise StripeMismatch(
            f"Stripe invoice {stripe_invoice.get('id')} asks for {total} {currency.upper()} (minor units), but "
            f"invoice {invoice_label(invoice)} is for {expected} {invoice.currency.upper()}: it was not sent. "
            "Void it and issue a new one."
        )


def _issue_in_stripe(client, invoice: Invoice) -> dict:
    customer = _existing_customer(client, invoice) if not invoice.stripe_invoice_id else ""
    stripe_invoice = _find_stripe_invoice(client, invoice, customer)
    if stripe_invoice is None:
        stripe_invoice = _create(client, invoice, customer or _customer(client, invoice))
    if stripe_invoice.get("status") == "draft":
        _add_lines(client, invoice, stripe_invoice)
        stripe_invoice = _plain(client.v1.invoices.retrieve(stripe_invoice["id"]))
        _check_total(invoice, stripe_invoice)
        stripe_invoice = _plain(client.v1.invoices.finalize_invoice(
            stripe_invoice["id"], options={"idempotency_key": _key(invoice, "finalize")},
        ))
    if stripe_invoice.get("status") == "open":
        _check_total(invoice, stripe_invoice)
        stripe_invoice = _plain(client.v1.invoices.send_invoice(
            stripe_invoice["id"], options={"idempotency_key": _key(invoice, "send")},
        ))
    if stripe_invoice.get("status") == "paid":  # paid meanwhile: applied with its payment
        stripe_invoice = _plain(client.v1.invoices.retrieve(stripe_invoice["id"], params={"expand": ["payments"]}))
    return stripe_invoice


def invoice_send(*, invoice_id: int) -> Invoice:
    """Create, finalize and send our draft Stripe invoice in Stripe, then store what Stripe says.

    Returns the Invoice: open, or still draft with `error` set (Retry sends it again).
    """
    invoice = Invoice.objects.select_related("purchase__client", "purchase__subscription").get(pk=invoice_id)
    if invoice.kind != InvoiceKind.STRIPE or invoice.status != InvoiceStatus.DRAFT:
        return invoice
    try:
        stripe_invoice = _issue_in_stripe(stripe_client(), invoice)
    except (stripe.APIConnectionError, stripe.APIError) as exc:
        return invoice_set_error(
            invoice.pk, f"Stripe did not answer ({_text(exc)}). The invoice is not sent yet: Retry sends it, "
            "never twice.",
        )
    except stripe.StripeError as exc:
        return invoice_set_error(invoice.pk, f"Stripe refused the invoice: {_text(exc)}")
    except StripeMismatch as exc:
        return invoice_set_error(invoice.pk, str(exc))
    invoice_apply_stripe_state(stripe_invoice)
    return Invoice.objects.get(pk=invoice.pk)


# --- Voiding, and paid elsewhere ---------------------------------------------------------------


def stripe_void(invoice: Invoice) -> None:
    """Stop the client paying in Stripe: void it there (a draft is deleted). Paid there: refused."""
    client = stripe_client()
    try:
        customer = _existing_customer(client, invoice) if not invoice.stripe_invoice_id else ""
        found = _find_stripe_invoice(client, invoice, customer)
        if found is None:
            return  # never reached Stripe
        status = found.get("status")
        if status == "paid":
            raise InvalidInvoice(
                f"Stripe says invoice {found.get('number') or found['id']} is paid: it is recorded here when "
                "Stripe's confirmation arrives. Refund the purchase instead of voiding."
            )
        if status == "draft":
            _delete_draft(client, found["id"])
        elif status in ("open", "uncollectible"):
            client.v1.invoices.void_invoice(found["id"], options={"idempotency_key": _key(invoice, "void")})
    except stripe.StripeError as exc:
        raise InvalidInvoice(
            f"Stripe could not void invoice {invoice_label(invoice)}: {_text(exc)}. Nothing was changed."
        ) from exc


def _delete_draft(client, stripe_invoice_id: str) -> None:
    """Stripe voids only finalized invoices; a draft is deleted. If that fails the draft may stay:
    it was never finalized or sent (we create it with auto_advance off), so nobody can pay it."""
    try:
        client.v1.invoices.delete(stripe_invoice_id)
    except stripe.InvalidRequestError:
        logger.warning("Stripe draft invoice %s could not be deleted; it stays an unpayable draft", stripe_invoice_id)


def stripe_mark_paid_out_of_band(invoice: Invoice) -> None:
    """The client paid a Stripe invoice at the desk or by transfer: Stripe stops asking for it."""
    client = stripe_client()
    try:
        found = _plain(client.v1.invoices.retrieve(invoice.stripe_invoice_id))
        if found.get("status") == "paid":
            raise InvalidInvoice(
                f"The client has already paid invoice {invoice_label(invoice)} in Stripe: it is recorded when "
                "Stripe's confirmation arrives. Do not record it again."
            )
        if found.get("status") != "open":
            raise InvalidInvoice(f"Invoice {invoice_label(invoice)} is {found.get('status')} in Stripe: it cannot be paid.")
        client.v1.invoices.pay(
            invoice.stripe_invoice_id, params={"paid_out_of_band": True},
            options={"idempotency_key": _key(invoice, "paid-out-of-band")},
        )
    except stripe.StripeError as exc:
        raise InvalidInvoice(
            f"Stripe could not mark invoice {invoice_label(invoice)} paid: {_text(exc)}. Nothing was recorded."
        ) from exc
