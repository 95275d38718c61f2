"""Stripe Billing in the test-mode double: customers, invoice items and invoices.

Split from payments.stripe_double (the HTTP layer and Checkout) to keep each part readable;
subscriptions build their invoices with the helpers here (payments.stripe_double_subscriptions).
Invoices start from Stripe's example object with the leftovers that would mislead a caller cleared
(a quote parent, a subscription, a finalization error). Nothing here runs on a clock: a client
paying an emailed invoice, or a failed renewal retried, is pay_invoice() (also importable from
payments.stripe_double).
"""
from __future__ import annotations

from django.conf import settings
from django.db import transaction

from payments.models import LocalStripeObject
from payments.stripe_double import (
    DAY, DoubleError, as_bool, as_int, as_metadata, check_params, example, list_objects, load, new_id, now,
    require, save,
)
from payments.stripe_double_balance import empty_list, settle_charge, take_payment

UNPAID_SUB_STATES = ("past_due", "incomplete", "unpaid")


# --- Customers -------------------------------------------------------------------------------

CUSTOMER_PARAMS = {"email", "name", "description", "metadata", "phone", "preferred_locales"}


def customer_create(params: dict) -> dict:
    check_params(params, CUSTOMER_PARAMS)
    customer = example("customer")
    customer.update(
        id=new_id("cus"), created=now(), currency=None, discount=None, shipping=None, livemode=False,
        invoice_prefix="PDT", next_invoice_sequence=1, metadata=as_metadata(params.get("metadata", {})),
        **{name: params.get(name) or None for name in ("email", "name", "description", "phone")},
    )
    return customer


def customer_update(customer_id: str, params: dict) -> dict:
    check_params(params, CUSTOMER_PARAMS)
    customer = load(customer_id, "customer")
    for name in ("email", "name", "description", "phone"):
        if name in params:
            customer[name] = params[name] or None
    if "metadata" in params:
        customer["metadata"] = as_metadata(params["metadata"], customer["metadata"])
    return customer


# --- Invoices ------------------------------------------------------------------------------


def new_invoice(customer: dict, currency: str, *, created: int | None = None) -> dict:
    created = created or now()
    invoice = example("invoice")
    invoice_id = new_id("in")
    invoice.update(
        id=invoice_id, customer=customer["id"], customer_email=customer.get("email"),
        customer_name=customer.get("name"), customer_address=None, customer_shipping=None, created=created,
        currency=currency, status="draft", number=None, billing_reason="manual", description=None, metadata={},
        collection_method="charge_automatically", auto_advance=False, due_date=None, effective_at=None,
        amount_due=0, amount_paid=0, amount_remaining=0, amount_overpaid=0, amount_shipping=0, shipping_cost=None,
        subtotal=0, subtotal_excluding_tax=0, total=0, total_excluding_tax=0, starting_balance=0, ending_balance=None,
        attempt_count=0, attempted=False, next_payment_attempt=None, from_invoice=None, last_finalization_error=None,
        hosted_invoice_url=None, invoice_pdf=None, receipt_number=None, webhooks_delivered_at=None,
        automatically_finalizes_at=None, period_start=created, period_end=created, parent=None,
        subscription=None, account_name="Packdesk (test mode)", livemode=False, total_taxes=[],
        total_pretax_credit_amounts=[],
        status_transitions=dict.fromkeys(("finalized_at", "marked_uncollectible_at", "paid_at", "voided_at")),
        lines=empty_list(f"/v1/invoices/{invoice_id}/lines"),
        payments=empty_list(f"/v1/invoice_payments?invoice={invoice_id}"),
    )
    return invoice


def add_line(
    invoice: dict, *, amount: int, description: str | None, period: dict, metadata: dict | None = None,
    invoice_item: str | None = None, subscription: dict | None = None,
) -> None:
    line = example("invoice")["lines"]["data"][0]
    if subscription:
        sub_item = subscription["items"]["data"][0]
        parent = {"type": "subscription_item_details", "invoice_item_details": None, "subscription_item_details": {
            "invoice_item": None, "proration": False, "proration_details": {"credited_items": None},
            "subscription": subscription["id"], "subscription_item": sub_item["id"],
        }}
        price = {"price": sub_item["price"]["id"], "product": sub_item["price"]["product"]}
    else:
        parent = {"type": "invoice_item_details", "subscription_item_details": None, "invoice_item_details": {
            "invoice_item": invoice_item, "proration": False, "proration_details": {"credited_items": None},
            "subscription": None,
        }}
        price = None
    line.update(
        id=new_id("il"), amount=amount, subtotal=amount, currency=invoice["currency"], description=description,
        invoice=invoice["id"], metadata=metadata or {}, period=period, quantity=1, discount_amounts=[],
        discounts=[], taxes=[], pretax_credit_amounts=[], livemode=False, parent=parent,
        subscription=subscription["id"] if subscription else None,
        pricing={"type": "price_details", "price_details": price, "unit_amount_decimal": str(amount)},
    )
    invoice["lines"]["data"].append(line)
    total = sum(item["amount"] for item in invoice["lines"]["data"])
    invoice.update(
        subtotal=total, subtotal_excluding_tax=total, total=total, total_excluding_tax=total,
        amount_due=max(total, 0), amount_remaining=max(total, 0) - invoice["amount_paid"],
    )


ITEM_PARAMS = {"customer", "invoice", "amount", "currency", "description", "metadata", "period", "discountable"}


def invoiceitem_create(params: dict) -> dict:
    """A line for a draft invoice, or (no `invoice`) pending for the customer's next invoice."""
    check_params(params, ITEM_PARAMS)
    customer = load(require(params, "customer"), "customer")
    amount = as_int(require(params, "amount"), "amount")
    currency = (params.get("currency") or "").lower()
    invoice = load(params["invoice"], "invoice") if params.get("invoice") else None
    if invoice:
        _editable(invoice)
        if invoice["customer"] != customer["id"]:
            raise DoubleError(400, f"Invoice {invoice['id']} belongs to another customer.", "parameter_invalid")
        currency = currency or invoice["currency"]
        if currency != invoice["currency"]:
            raise DoubleError(
                400, f"The currency of the invoice item ({currency}) must match the currency of the invoice "
                f"({invoice['currency']}).", "parameter_invalid",
            )
    if not currency:
        raise DoubleError(400, "Missing required param: currency.", "parameter_missing")
    created = now()
    period = {"start": created, "end": created}
    if isinstance(params.get("period"), dict):
        period = {name: as_int(params["period"].get(name), f"period[{name}]") for name in ("start", "end")}
    item = example("invoiceitem")
    item.update(
        id=new_id("ii"), amount=amount, net_amount=amount, currency=currency, customer=customer["id"], date=created,
        description=params.get("description") or None, invoice=invoice["id"] if invoice else None,
        metadata=as_metadata(params.get("metadata", {})), period=period, parent=None, proration=False,
        quantity=1, quantity_decimal="1", livemode=False, test_clock=None, customer_account=None,
        pricing={"type": "price_details", "price_details": None, "unit_amount_decimal": str(amount)},
    )
    if invoice:
        add_line(invoice, amount=amount, description=item["description"], period=period,
                  metadata=item["metadata"], invoice_item=item["id"])
        save(invoice)
    return item


INVOICE_PARAMS = {
    "customer", "collection_method", "days_until_due", "metadata", "description", "currency", "auto_advance",
    "pending_invoice_items_behavior", "footer",
}


def invoice_create(params: dict) -> dict:
    check_params(params, INVOICE_PARAMS)
    customer = load(require(params, "customer"), "customer")
    method = params.get("collection_method", "charge_automatically")
    if method not in ("charge_automatically", "send_invoice"):
        raise DoubleError(400, "Invalid collection_method: must be charge_automatically or send_invoice",
                          "parameter_invalid")
    days = params.get("days_until_due")
    if method == "send_invoice" and days in (None, ""):
        raise DoubleError(400, "Invoices with `collection_method=send_invoice` need `days_until_due`.",
                          "parameter_missing")
    if method != "send_invoice" and days not in (None, ""):
        raise DoubleError(400, "You can only set `days_until_due` if `collection_method` is `send_invoice`.",
                          "parameter_invalid")
    pending = params.get("pending_invoice_items_behavior", "exclude")
    if pending not in ("include", "exclude"):
        raise DoubleError(400, "Invalid pending_invoice_items_behavior: must be include or exclude",
                          "parameter_invalid")
    invoice = new_invoice(customer, (params.get("currency") or settings.DEFAULT_CURRENCY).lower())
    if days not in (None, ""):
        days = as_int(days, "days_until_due")
        if days < 0:
            raise DoubleError(400, "days_until_due must be 0 or more", "parameter_invalid")
        invoice["due_date"] = invoice["created"] + days * DAY
    invoice.update(
        collection_method=method, metadata=as_metadata(params.get("metadata", {})),
        description=params.get("description") or None, footer=params.get("footer") or None,
        auto_advance=as_bool(params.get("auto_advance", False), "auto_advance"),
    )
    if pending == "include":
        waiting = LocalStripeObject.objects.filter(
            object_type="invoiceitem", data__customer=customer["id"], data__invoice=None,
            data__currency=invoice["currency"],
        ).order_by("id")
        for row in waiting:
            item = dict(row.data, invoice=invoice["id"])
            add_line(invoice, amount=item["amount"], description=item["description"], period=item["period"],
                      metadata=item["metadata"], invoice_item=item["id"])
            save(item)
    return invoice


def invoice_update(invoice_id: str, params: dict) -> dict:
    check_params(params, {"metadata", "description", "footer", "auto_advance", "days_until_due"})
    invoice = load(invoice_id, "invoice")
    if set(params) - {"metadata", "auto_advance"}:
        _editable(invoice)
    if "metadata" in params:
        invoice["metadata"] = as_metadata(params["metadata"], invoice["metadata"])
    if "auto_advance" in params:
        invoice["auto_advance"] = as_bool(params["auto_advance"], "auto_advance")
    for name in ("description", "footer"):
        if name in params:
            invoice[name] = params[name] or None
    if "days_until_due" in params:
        if invoice["collection_method"] != "send_invoice":
            raise DoubleError(400, "You can only set `days_until_due` if `collection_method` is `send_invoice`.",
                              "parameter_invalid")
        invoice["due_date"] = invoice["created"] + as_int(params["days_until_due"], "days_until_due") * DAY
    return invoice


def _editable(invoice: dict) -> None:
    if invoice["status"] != "draft":
        raise DoubleError(
            400, f"Invoice {invoice['id']} is {invoice['status']}: only a draft invoice can be edited.",
            "invoice_not_editable",
        )


def _next_number() -> str:
    """Stripe numbers invoices PREFIX-NNNN when finalized; counting is enough for a double."""
    numbered = LocalStripeObject.objects.filter(object_type="invoice").exclude(data__number=None)
    count = numbered.count() + 1
    while numbered.filter(data__number=f"PDT-{count:04d}").exists():
        count += 1
    return f"PDT-{count:04d}"


def finalize(invoice: dict) -> None:
    at = now()
    if invoice["due_date"] is not None:  # days_until_due counts from finalization
        invoice["due_date"] += at - invoice["created"]
    invoice.update(
        status="open", number=_next_number(), effective_at=at,
        hosted_invoice_url=f"{settings.PUBLIC_BASE_URL}/packs/test-invoice/{invoice['id']}/",
        invoice_pdf=f"{settings.PUBLIC_BASE_URL}/packs/test-invoice/{invoice['id']}/pdf/",
    )
    invoice["status_transitions"]["finalized_at"] = at
    if invoice["amount_remaining"] == 0:  # nothing to collect: Stripe marks it paid straight away
        mark_paid(invoice, at)


def mark_paid(invoice: dict, at: int) -> None:
    invoice.update(
        status="paid", amount_paid=invoice["amount_due"], amount_remaining=0, next_payment_attempt=None,
        attempted=True,
    )
    invoice["status_transitions"]["paid_at"] = at


def _open_intent(invoice: dict) -> dict | None:
    for payment in invoice["payments"]["data"]:
        if payment["status"] == "open":
            return load(payment["payment"]["payment_intent"], "payment_intent")
    return None


def collect(invoice: dict, *, outcome: str = "succeeded", out_of_band: bool = False) -> dict:
    """Stripe's pay: finalize a draft, then charge the card (or record money taken elsewhere).
    A failed attempt leaves the invoice open with its PaymentIntent, retried by the next attempt."""
    if invoice["status"] == "paid":
        raise DoubleError(400, "Invoice is already paid.", "invoice_already_paid")
    if invoice["status"] == "void":
        raise DoubleError(400, f"Invoice {invoice['id']} is void: a void invoice cannot be paid.",
                          "invoice_not_payable")
    if invoice["status"] == "draft":
        finalize(invoice)
        if invoice["status"] == "paid":
            return invoice
    at = now()
    if out_of_band:
        mark_paid(invoice, at)
        return invoice
    amount, intent = invoice["amount_remaining"], _open_intent(invoice)
    if intent and intent["status"] == "processing":  # a bank debit already under way settles
        charge = load(intent["latest_charge"], "charge")
        settle_charge(intent, charge, succeeded=outcome == "succeeded")
    else:
        intent, charge = take_payment(
            amount, invoice["currency"], outcome=outcome, customer=invoice["customer"], intent=intent,
            description=f"Invoice {invoice['number']}", created=at,
        )
        invoice.update(attempt_count=invoice["attempt_count"] + 1, attempted=True)
    payment = next((p for p in invoice["payments"]["data"] if p["payment"]["payment_intent"] == intent["id"]), None)
    if payment is None:
        payment = example("invoice_payment")
        payment.update(
            id=new_id("inpay"), amount_requested=amount, currency=invoice["currency"], invoice=invoice["id"],
            created=at, livemode=False, is_default=True,
            payment={"type": "payment_intent", "payment_intent": intent["id"]},
        )
        invoice["payments"]["data"].append(payment)
    paid = charge["status"] == "succeeded"
    payment.update(
        status="paid" if paid else "open", amount_paid=amount if paid else None,
        status_transitions={"canceled_at": None, "paid_at": at if paid else None},
    )
    if paid:
        mark_paid(invoice, at)
    elif charge["status"] == "failed" and invoice["collection_method"] == "charge_automatically":
        invoice["next_payment_attempt"] = at + 3 * DAY  # Stripe's smart retries would try again
    return invoice


def subscription_catches_up(invoice: dict) -> None:
    """A subscription behind on payment is active again once none of its invoices is left open."""
    if not invoice.get("subscription") or invoice["status"] != "paid":
        return
    sub = load(invoice["subscription"], "subscription")
    still_open = LocalStripeObject.objects.filter(
        object_type="invoice", data__subscription=sub["id"], data__status="open"
    ).exclude(object_id=invoice["id"])
    if sub["status"] in UNPAID_SUB_STATES and not still_open.exists():
        sub["status"] = "active"
        save(sub)


def invoice_finalize(invoice_id: str, params: dict) -> dict:
    check_params(params, {"auto_advance"})
    invoice = load(invoice_id, "invoice")
    if invoice["status"] != "draft":
        raise DoubleError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                          "invoice_not_editable")
    if "auto_advance" in params:
        invoice["auto_advance"] = as_bool(params["auto_advance"], "auto_advance")
    finalize(invoice)
    return invoice


def invoice_send(invoice_id: str, params: dict) -> dict:
    """Stripe emails the invoice (never in test mode); a draft is finalized first."""
    check_params(params, set())
    invoice = load(invoice_id, "invoice")
    if invoice["collection_method"] != "send_invoice":
        raise DoubleError(400, "You can only send invoices whose collection_method is send_invoice.",
                          "parameter_invalid")
    if invoice["status"] == "draft":
        finalize(invoice)
    elif invoice["status"] not in ("open", "paid"):
        raise DoubleError(400, f"Invoice {invoice_id} is {invoice['status']} and cannot be sent.",
                          "invoice_not_editable")
    return invoice


def invoice_void(invoice_id: str, params: dict) -> dict:
    check_params(params, set())
    invoice = load(invoice_id, "invoice")
    if invoice["status"] not in ("open", "uncollectible"):
        raise DoubleError(
            400, f"Invoice {invoice_id} is {invoice['status']}: you can only void an open or uncollectible invoice.",
            "invoice_not_editable",
        )
    void(invoice)
    return invoice


def void(invoice: dict) -> None:
    intent = _open_intent(invoice)
    if intent:
        intent.update(status="canceled", canceled_at=now(), cancellation_reason="void_invoice")
        save(intent)
        for payment in invoice["payments"]["data"]:
            if payment["status"] == "open":
                payment["status"] = "canceled"
                payment["status_transitions"]["canceled_at"] = now()
    invoice.update(status="void", amount_remaining=0, next_payment_attempt=None)
    invoice["status_transitions"]["voided_at"] = now()


def invoice_pay(invoice_id: str, params: dict) -> dict:
    check_params(params, {"paid_out_of_band", "payment_method", "source", "off_session", "forgive", "mandate"})
    invoice = collect(
        load(invoice_id, "invoice"), out_of_band=as_bool(params.get("paid_out_of_band", False), "paid_out_of_band")
    )
    save(invoice)
    subscription_catches_up(invoice)
    return invoice


def pay_invoice(invoice_id: str) -> dict:
    """The client pays: an emailed invoice on its hosted page, or a failed renewal retried later."""
    with transaction.atomic():
        invoice = collect(load(invoice_id, "invoice"))
        save(invoice)
        subscription_catches_up(invoice)
        return invoice


def invoice_delete(invoice_id: str) -> dict:
    """Only a draft can be deleted; its invoice items go with it."""
    invoice = load(invoice_id, "invoice")
    if invoice["status"] != "draft":
        raise DoubleError(400, f"Invoice {invoice_id} is {invoice['status']}: you can only delete a draft invoice.",
                          "invoice_not_editable")
    LocalStripeObject.objects.filter(object_type="invoiceitem", data__invoice=invoice_id).delete()
    LocalStripeObject.objects.filter(object_id=invoice_id).delete()
    return {"id": invoice_id, "object": "invoice", "deleted": True}


INVOICE_ACTIONS = {"finalize": invoice_finalize, "send": invoice_send, "void": invoice_void, "pay": invoice_pay}


# --- Routes ----------------------------------------------------------------------------------

LIST_PARAMS = {"created", "limit", "starting_after", "ending_before"}


def route(method: str, path: list[str], params: dict) -> dict | None:
    """Billing's share of StripeDouble._route; None when the URL is not ours."""
    match method, path:
        case "post", ["customers"]:
            return customer_create(params)
        case "get", ["customers"]:
            check_params(params, LIST_PARAMS | {"email"})
            return list_objects("customer", params, url="/v1/customers", filters={"email": params.get("email")})
        case "get", ["customers", customer_id]:
            return load(customer_id, "customer")
        case "post", ["customers", customer_id]:
            return customer_update(customer_id, params)
        case "post", ["invoiceitems"]:
            return invoiceitem_create(params)
        case "get", ["invoiceitems", item_id]:
            return load(item_id, "invoiceitem")
        case "post", ["invoices"]:
            return invoice_create(params)
        case "get", ["invoices"]:
            names = ("customer", "subscription", "status", "collection_method")
            check_params(params, LIST_PARAMS | set(names))
            return list_objects("invoice", params, url="/v1/invoices", filters={n: params.get(n) for n in names})
        case "get", ["invoices", invoice_id]:
            return load(invoice_id, "invoice")
        case "post", ["invoices", invoice_id]:
            return invoice_update(invoice_id, params)
        case "delete", ["invoices", invoice_id]:
            check_params(params, set())
            return invoice_delete(invoice_id)
        case "get", ["invoice_payments"]:
            check_params(params, {"invoice", "limit"})
            payments = load(require(params, "invoice"), "invoice")["payments"]
            return dict(payments, url="/v1/invoice_payments")
        case "post", ["invoices", invoice_id, action] if action in INVOICE_ACTIONS:
            return INVOICE_ACTIONS[action](invoice_id, params)
    return None
