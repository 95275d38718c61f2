"""Money movements in the test-mode double: card payments, disputes, payouts and the balance
transactions Stripe writes for each (what reconciliation reads back through the list endpoint).

Split from payments.stripe_double to keep each part readable; the helpers here are importable from
there too. Amounts are integer minor units, as in Stripe.
"""
from __future__ import annotations

from django.db import transaction

from payments.stripe_double import (
    DAY, DoubleError, as_amount, check_params, example, list_objects, load, new_id, now, save,
)

# --- Money movements: each one Stripe settles writes a balance transaction ---------------------


def fee_for(amount: int) -> int:
    """Card fee in minor units: 1.5% rounded half up, plus 20 (integer maths, never float)."""
    return (amount * 15 + 500) // 1000 + 20


def write_balance_transaction(
    *, kind: str, amount: int, currency: str, source: str, created: int | None = None,
    fee: int = 0, category: str | None = None, description: str | None = None,
) -> dict:
    txn = example("balance_transaction")
    created = created or now()
    txn.update(
        id=new_id("txn"), type=kind, reporting_category=category or kind, amount=amount, fee=fee,
        net=amount - fee, currency=currency, source=source, created=created, available_on=created + 2 * DAY,
        status="available", description=description, exchange_rate=None,
        fee_details=[{
            "amount": fee, "application": None, "currency": currency,
            "description": "Stripe processing fees", "type": "stripe_fee",
        }] if fee else [],
    )
    return save(txn)


def settle_charge(intent: dict, charge: dict, *, succeeded: bool) -> None:
    intent.update(
        status="succeeded" if succeeded else "requires_payment_method",
        amount_received=charge["amount"] if succeeded else 0,
    )
    charge.update(paid=succeeded, status="succeeded" if succeeded else "failed")
    if succeeded:
        charge["balance_transaction"] = write_balance_transaction(
            kind="charge", amount=charge["amount"], fee=fee_for(charge["amount"]), currency=charge["currency"],
            source=charge["id"], created=charge["created"], description=charge.get("description"),
        )["id"]
    else:
        charge.update(failure_code="card_declined", failure_message="Your card was declined.")
        intent["last_payment_error"] = {
            "type": "card_error", "code": "card_declined", "decline_code": "generic_decline",
            "message": "Your card was declined.", "charge": charge["id"],
        }
    save(intent)
    save(charge)


def empty_list(url: str) -> dict:
    return {"object": "list", "data": [], "has_more": False, "url": url}


def take_payment(
    amount: int, currency: str, *, outcome: str = "succeeded", metadata: dict | None = None,
    customer: str | None = None, description: str | None = None, intent: dict | None = None,
    created: int | None = None,
) -> tuple[dict, dict]:
    """One card payment attempt: a PaymentIntent (new, or an invoice's earlier one retried) and a charge
    that has succeeded, is still processing (bank debits) or failed."""
    created = created or now()
    if intent is None:
        intent = example("payment_intent")
        intent.update(
            id=new_id("pi"), amount=amount, currency=currency, metadata=metadata or {}, customer=customer,
            description=description, created=created, canceled_at=None, cancellation_reason=None,
        )
    charge = example("charge")
    charge.update(
        id=new_id("ch"), amount=amount, amount_captured=amount, amount_refunded=0, refunded=False, captured=True,
        paid=False, currency=currency, payment_intent=intent["id"], status="pending", metadata=intent["metadata"],
        customer=customer, description=description, created=created, disputed=False, balance_transaction=None,
        failure_code=None, failure_message=None,
    )
    charge["refunds"] = empty_list(f"/v1/charges/{charge['id']}/refunds")
    intent.update(latest_charge=charge["id"], status="processing", amount_received=0, last_payment_error=None)
    if outcome == "processing":
        save(intent)
        save(charge)
    else:
        settle_charge(intent, charge, succeeded=outcome == "succeeded")
    return intent, charge


def record_charge(amount: int, currency: str, metadata: dict | None = None, *, created: int | None = None) -> dict:
    """A card payment taken in Stripe that is nothing of ours (another integration, the dashboard)."""
    with transaction.atomic():
        return take_payment(as_amount(amount), currency.lower(), metadata=metadata, created=created)[1]


def create_dispute(charge_id: str, amount: int | None = None) -> dict:
    """The cardholder's bank takes the money back: Stripe debits the balance at once."""
    with transaction.atomic():
        charge = load(charge_id, "charge")
        amount = charge["amount"] if amount is None else as_amount(amount)
        if charge["status"] != "succeeded" or amount > charge["amount"]:
            raise DoubleError(400, f"Charge {charge_id} cannot be disputed for {amount}", "charge_not_disputable")
        dispute = example("dispute")
        dispute.update(
            id=new_id("dp"), amount=amount, charge=charge_id, payment_intent=charge["payment_intent"],
            currency=charge["currency"], created=now(), reason="general", status="needs_response",
            metadata={}, is_charge_refundable=False, livemode=False,
        )
        dispute["balance_transactions"] = [write_balance_transaction(
            kind="adjustment", category="dispute", amount=-amount, currency=charge["currency"],
            source=dispute["id"], description=f"Chargeback withdrawal for {charge_id}",
        )]
        charge["disputed"] = True
        save(charge)
        return save(dispute)


def create_payout(amount: int, currency: str, *, created: int | None = None) -> dict:
    """Stripe paying the balance out to the bank account."""
    with transaction.atomic():
        created = created or now()
        payout = example("payout")
        payout.update(
            id=new_id("po"), amount=as_amount(amount), currency=currency.lower(), created=created,
            arrival_date=created + 2 * DAY, status="paid", destination=None, metadata={}, livemode=False,
            failure_balance_transaction=None, original_payout=None, reversed_by=None, trace_id=None,
        )
        payout["balance_transaction"] = write_balance_transaction(
            kind="payout", amount=-payout["amount"], currency=payout["currency"], source=payout["id"],
            created=created, description="STRIPE PAYOUT",
        )["id"]
        return save(payout)


def route(method: str, path: list[str], params: dict) -> dict | None:
    """The balance's share of StripeDouble._route; None when the URL is not ours."""
    if (method, path) == ("get", ["balance_transactions"]):
        check_params(params, {"created", "limit", "starting_after", "ending_before", "type", "source", "currency"})
        filters = {name: params.get(name) for name in ("type", "source", "currency")}
        return list_objects("balance_transaction", params, url="/v1/balance_transactions", filters=filters)
    return None
