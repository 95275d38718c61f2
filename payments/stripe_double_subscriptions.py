"""Subscriptions in the test-mode double: bought through a subscription-mode Checkout Session,
renewed period by period, paused, cancelled.

Stripe's clock is not simulated: tests and the demo call renew_subscription() to end a period
(also importable from payments.stripe_double). Periods follow Stripe's billing cycle anchor.
Invoices are built with payments.stripe_double_billing's helpers, so they look and pay like any other.
"""
from __future__ import annotations

from datetime import UTC, datetime

from dateutil.relativedelta import relativedelta
from django.db import transaction

from payments.stripe_double import (
    DAY, DoubleError, as_amount, as_bool, as_int, as_metadata, check_params, example, list_objects, load,
    new_id, now, save,
)
from payments.stripe_double_billing import (
    LIST_PARAMS, add_line, collect, customer_create, finalize, new_invoice, subscription_catches_up, void,
)

INTERVALS = {"day": "days", "week": "weeks", "month": "months", "year": "years"}
PAUSE_BEHAVIORS = {"keep_as_draft", "mark_uncollectible", "void"}


def checkout_subscription_params(session_id: str, params: dict) -> bool:
    """Check a subscription-mode Checkout Session's price and subscription_data and keep them (Stripe
    does not echo them on the session) for complete_checkout. True when it starts with a free trial."""
    item = params.get("line_items", {}).get("0", {})
    recurring = item.get("price_data", {}).get("recurring")
    if not isinstance(recurring, dict):
        raise DoubleError(400, "You must provide at least one recurring price in `subscription` mode when using "
                          "prices.", "parameter_missing")
    if recurring.get("interval") not in INTERVALS:
        raise DoubleError(400, "Invalid recurring[interval]: must be one of day, week, month or year",
                          "parameter_invalid")
    if as_int(recurring.get("interval_count", 1), "recurring[interval_count]") < 1:
        raise DoubleError(400, "recurring[interval_count] must be at least 1", "parameter_invalid")
    sub_data = params.get("subscription_data", {})
    check_params(sub_data, {"metadata", "trial_period_days", "description"})
    trial = sub_data.get("trial_period_days")
    if trial not in (None, "") and as_int(trial, "subscription_data[trial_period_days]") < 1:
        raise DoubleError(400, "subscription_data[trial_period_days] must be at least 1", "parameter_invalid")
    save({"id": f"{session_id}_params", "object": "double.checkout_params", "line_item": item,
          "subscription_data": sub_data})
    return trial not in (None, "")


def _period_end(sub: dict, cycles: int) -> int:
    """Stripe counts every period from the billing cycle anchor, so 31 Jan goes to 28 Feb then 31 Mar."""
    recurring = sub["items"]["data"][0]["price"]["recurring"]
    anchor = datetime.fromtimestamp(sub["billing_cycle_anchor"], UTC)
    step = relativedelta(**{INTERVALS[recurring["interval"]]: recurring["interval_count"] * cycles})
    return int((anchor + step).timestamp())


def _subscription_new(customer: dict, item: dict, metadata: dict, at: int) -> dict:
    price_data, sub_id, unit = item["price_data"], new_id("sub"), as_amount(item["price_data"]["unit_amount"])
    recurring = {"interval": price_data["recurring"]["interval"],
                 "interval_count": int(price_data["recurring"].get("interval_count", 1)),
                 "meter": None, "usage_type": "licensed", "trial_period_days": None}
    sub = example("subscription")
    sub_item = sub["items"]["data"][0]
    sub_item["price"].update(
        id=new_id("price"), product=new_id("prod"), currency=price_data["currency"].lower(), unit_amount=unit,
        unit_amount_decimal=str(unit), recurring=recurring, created=at, metadata={}, livemode=False,
        custom_unit_amount=None, transform_quantity=None, lookup_key=None, tiers_mode=None,
        nickname=price_data.get("product_data", {}).get("name"),  # product_data makes a product; we keep its name
    )
    sub_item["plan"].update(
        id=sub_item["price"]["id"], product=sub_item["price"]["product"], amount=unit, amount_decimal=str(unit),
        currency=sub_item["price"]["currency"], interval=recurring["interval"], billing_scheme="per_unit",
        interval_count=recurring["interval_count"], created=at, livemode=False, metadata={}, transform_usage=None,
    )
    sub_item.update(id=new_id("si"), created=at, metadata={}, quantity=int(item.get("quantity", 1)),
                    subscription=sub_id, billing_thresholds=None, discounts=[])
    sub.update(
        id=sub_id, customer=customer["id"], currency=sub_item["price"]["currency"], created=at, start_date=at,
        metadata=metadata, status="active", billing_cycle_anchor=at, billing_cycle_anchor_config=None,
        cancel_at=None, canceled_at=None, ended_at=None, cancel_at_period_end=False, trial_start=None,
        trial_end=None, pause_collection=None, latest_invoice=None, next_pending_invoice_item_invoice=None,
        pending_invoice_item_interval=None, pending_update=None, transfer_data=None, schedule=None,
        billing_schedules=[], billing_thresholds=None, description=None, livemode=False,
        default_payment_method=new_id("pm"), managed_payments=None,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
    )
    sub["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    return sub


def _cycle_invoice(sub: dict, start: int, end: int, *, reason: str, trial: bool = False) -> dict:
    """The invoice for one billing period, in draft: lines.data[0].period is the period it pays for."""
    sub_item = sub["items"]["data"][0]
    invoice = new_invoice(load(sub["customer"], "customer"), sub["currency"])
    invoice.update(billing_reason=reason, subscription=sub["id"], parent={
        "type": "subscription_details", "quote_details": None,
        "subscription_details": {"subscription": sub["id"], "metadata": dict(sub["metadata"])},
    })
    name = sub_item["price"].get("nickname") or "this plan"
    amount = 0 if trial else sub_item["price"]["unit_amount"] * sub_item["quantity"]
    description = f"Trial period for {name}" if trial else f"{sub_item['quantity']} × {name}"
    add_line(invoice, amount=amount, description=description, period={"start": start, "end": end},
              subscription=sub)
    sub["latest_invoice"] = invoice["id"]
    return invoice


def checkout_subscription(session: dict, *, paid: bool) -> None:
    """complete_checkout for mode=subscription: the customer, the subscription (trialing, or active once
    the first invoice is paid) and that first invoice; the session gets all three ids."""
    stored = load(f"{session['id']}_params", "double.checkout_params")
    sub_data, at = stored["subscription_data"], now()
    if session.get("customer"):
        customer = load(session["customer"], "customer")
    else:
        customer = save(customer_create({"email": session.get("customer_email") or ""}))
    sub = _subscription_new(customer, stored["line_item"], as_metadata(sub_data.get("metadata", {})), at)
    trial_days = sub_data.get("trial_period_days")
    if trial_days not in (None, ""):
        trial_end = at + int(trial_days) * DAY
        sub.update(status="trialing", trial_start=at, trial_end=trial_end, billing_cycle_anchor=trial_end)
        end = trial_end
    else:
        end = _period_end(sub, 1)
    sub["items"]["data"][0].update(current_period_start=at, current_period_end=end)
    invoice = _cycle_invoice(sub, at, end, reason="subscription_create", trial=trial_days not in (None, ""))
    finalize(invoice)
    if invoice["status"] == "open":
        collect(invoice, outcome="succeeded" if paid else "processing")
        if invoice["status"] != "paid":
            sub["status"] = "incomplete"
    save(invoice)
    save(sub)
    free = sub["status"] == "trialing"
    session.update(
        status="complete", customer=customer["id"], subscription=sub["id"], invoice=invoice["id"],
        payment_status="no_payment_required" if free else ("paid" if invoice["status"] == "paid" else "unpaid"),
    )


def renew_subscription(sub_id: str, *, paid: bool = True) -> dict | None:
    """Stripe's clock reaching the end of the current period: the next period's invoice, charged to the card
    (paid, or left open with a failed attempt and the subscription past_due). A trial's end starts the
    first paid period. With collection paused the invoice is voided (or kept as draft / uncollectible, per
    pause_collection.behavior). Returns the invoice, or None when the subscription ended instead
    (cancel_at_period_end, or cancel_at reached)."""
    with transaction.atomic():
        sub = load(sub_id, "subscription")
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise DoubleError(400, f"Subscription {sub_id} is {sub['status']} and does not renew.",
                              "subscription_canceled")
        sub_item = sub["items"]["data"][0]
        start = sub_item["current_period_end"]
        if sub["cancel_at"] is not None and sub["cancel_at"] <= start:
            sub.update(status="canceled", ended_at=sub["cancel_at"], canceled_at=sub["canceled_at"] or now())
            sub["cancellation_details"]["reason"] = "cancellation_requested"
            save(sub)
            return None
        cycles = 1
        while _period_end(sub, cycles) <= start:
            cycles += 1
        end = _period_end(sub, cycles)
        sub_item.update(current_period_start=start, current_period_end=end)
        invoice = _cycle_invoice(sub, start, end, reason="subscription_cycle")
        pause = sub["pause_collection"]
        if pause and pause.get("resumes_at") and pause["resumes_at"] <= start:
            pause = sub["pause_collection"] = None
        if sub["status"] == "trialing":
            sub["status"] = "active"
        if pause is None:
            finalize(invoice)
            collect(invoice, outcome="succeeded" if paid else "failed")
            if invoice["status"] != "paid":
                sub["status"] = "past_due"
        elif pause["behavior"] != "keep_as_draft":
            finalize(invoice)
            if pause["behavior"] == "void":
                void(invoice)
            else:
                invoice["status"] = "uncollectible"
                invoice["status_transitions"]["marked_uncollectible_at"] = now()
        save(invoice)
        save(sub)
        subscription_catches_up(invoice)
        return invoice


SUB_UPDATE_PARAMS = {"metadata", "pause_collection", "cancel_at_period_end", "cancel_at", "description",
                     "proration_behavior", "cancellation_details"}


def subscription_update(sub_id: str, params: dict) -> dict:
    check_params(params, SUB_UPDATE_PARAMS)
    sub = load(sub_id, "subscription")
    if sub["status"] == "canceled" and set(params) - {"metadata", "cancellation_details"}:
        raise DoubleError(400, "A canceled subscription can only update its cancellation_details and metadata.",
                          "parameter_invalid")
    if "metadata" in params:
        sub["metadata"] = as_metadata(params["metadata"], sub["metadata"])
    if "description" in params:
        sub["description"] = params["description"] or None
    if "cancellation_details" in params:
        details = params["cancellation_details"] or {}
        check_params(details, {"comment", "feedback"})
        sub["cancellation_details"].update({k: v or None for k, v in details.items()})
    if "pause_collection" in params:
        sub["pause_collection"] = _pause(params["pause_collection"])
    period_end = sub["items"]["data"][0]["current_period_end"]
    if "cancel_at_period_end" in params:
        at_end = as_bool(params["cancel_at_period_end"], "cancel_at_period_end")
        sub.update(cancel_at_period_end=at_end, cancel_at=period_end if at_end else None,
                   canceled_at=now() if at_end else None)
    if "cancel_at" in params:
        cancel_at = None if params["cancel_at"] == "" else as_int(params["cancel_at"], "cancel_at")
        sub.update(cancel_at=cancel_at, cancel_at_period_end=cancel_at == period_end,
                   canceled_at=now() if cancel_at else None)
    return sub


def _pause(value) -> dict | None:
    if value == "":
        return None
    if not isinstance(value, dict) or value.get("behavior") not in PAUSE_BEHAVIORS:
        raise DoubleError(400, "Invalid pause_collection[behavior]: must be one of keep_as_draft, "
                          "mark_uncollectible or void", "parameter_invalid")
    check_params(value, {"behavior", "resumes_at"})
    resumes_at = value.get("resumes_at")
    return {"behavior": value["behavior"],
            "resumes_at": as_int(resumes_at, "pause_collection[resumes_at]") if resumes_at else None}


def subscription_cancel(sub_id: str, params: dict) -> dict:
    """DELETE: ends the subscription now. Its open invoices stay open, as in Stripe."""
    check_params(params, {"cancellation_details", "invoice_now", "prorate"})
    sub = load(sub_id, "subscription")
    if sub["status"] == "canceled":
        raise DoubleError(400, f"Subscription {sub_id} is already canceled.", "parameter_invalid")
    at = now()
    sub.update(status="canceled", canceled_at=at, ended_at=at, cancel_at=None, cancel_at_period_end=False)
    details = params.get("cancellation_details") or {}
    sub["cancellation_details"] = {"reason": "cancellation_requested", "comment": details.get("comment") or None,
                                   "feedback": details.get("feedback") or None}
    save(sub)
    return sub


def route(method: str, path: list[str], params: dict) -> dict | None:
    """Subscriptions' share of StripeDouble._route; None when the URL is not ours."""
    match method, path:
        case "get", ["subscriptions"]:
            check_params(params, LIST_PARAMS | {"customer", "status"})
            filters = {"customer": params.get("customer")}
            if params.get("status") not in (None, "", "all"):
                filters["status"] = params["status"]
            exclude = {"status": "canceled"} if not params.get("status") else None  # Stripe's default
            return list_objects("subscription", params, url="/v1/subscriptions", filters=filters, exclude=exclude)
        case "get", ["subscriptions", sub_id]:
            return load(sub_id, "subscription")
        case "post", ["subscriptions", sub_id]:
            return subscription_update(sub_id, params)
        case "delete", ["subscriptions", sub_id]:
            return subscription_cancel(sub_id, params)
    return None
