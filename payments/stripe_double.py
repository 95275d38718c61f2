"""A test-mode stand-in for Stripe's HTTP API, for the demo (no Stripe account) and the tests.

The real stripe SDK is used unchanged; only its HTTP layer (StripeClient's `http_client`) is this
class. Responses start from Stripe's own published example objects (stripe_fixtures.json, from
stripe/openapi, MIT licence in LICENSE-stripe-fixtures) with our values filled in, and state
lives in LocalStripeObject rows so the web process and workers see the same Stripe.
It covers what Packdesk calls: Checkout Sessions, PaymentIntents, charges and refunds.
"""
from __future__ import annotations

import copy
import json
import secrets
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction

from payments.models import LocalStripeObject

FIXTURES = Path(__file__).with_name("stripe_fixtures.json")


@lru_cache(maxsize=1)
def _fixtures() -> dict:
    return json.loads(FIXTURES.read_text())["resources"]


def example(resource: str) -> dict:
    """Stripe's own example object of a resource, as a fresh copy."""
    return copy.deepcopy(_fixtures()[resource])


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def _nest(pairs: list[tuple[str, str]]) -> dict:
    """Turn Stripe's form encoding (line_items[0][price_data][currency]=gbp) back into a dict."""
    root: dict = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return root


class DoubleError(Exception):
    def __init__(self, status: int, message: str, code: str = "resource_missing"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def save(obj: dict, idempotency_key: str | None = None) -> dict:
    LocalStripeObject.objects.update_or_create(
        object_id=obj["id"],
        defaults={"object_type": obj["object"], "data": obj, "idempotency_key": idempotency_key},
    )
    return obj


def load(object_id: str, object_type: str | None = None) -> dict:
    row = LocalStripeObject.objects.filter(object_id=object_id).first()
    if row is None or (object_type and row.object_type != object_type):
        raise DoubleError(404, f"No such {object_type or 'object'}: '{object_id}'")
    return row.data


def _amount(value) -> int:
    try:
        amount = int(value)
    except (TypeError, ValueError):
        raise DoubleError(400, "Invalid integer amount", "parameter_invalid_integer")
    if amount < 1:
        raise DoubleError(400, "Amount must be at least 1", "amount_too_small")
    return amount


# --- Resources -------------------------------------------------------------------------------


def create_checkout_session(params: dict) -> dict:
    item = params.get("line_items", {}).get("0", {})
    price = item.get("price_data", {})
    quantity = int(item.get("quantity", 1))
    session = example("checkout.session")
    session_id = new_id("cs")
    session.update(
        id=session_id, object="checkout.session", mode=params.get("mode", "payment"),
        status="open", payment_status="unpaid", payment_intent=None, livemode=False,
        amount_subtotal=_amount(price.get("unit_amount")) * quantity,
        amount_total=_amount(price.get("unit_amount")) * quantity,
        currency=(price.get("currency") or "").lower(),
        customer_email=params.get("customer_email"),
        client_reference_id=params.get("client_reference_id"),
        metadata=params.get("metadata", {}),
        success_url=params.get("success_url"), cancel_url=params.get("cancel_url"),
        created=int(time.time()), expires_at=int(time.time()) + 24 * 3600,
        url=f"{settings.PUBLIC_BASE_URL}/packs/test-checkout/{session_id}/",
    )
    return session


def complete_checkout(session_id: str, *, paid: bool = True) -> dict:
    """What Stripe does when the client pays on its page: a succeeded PaymentIntent and charge."""
    with transaction.atomic():
        session = load(session_id, "checkout.session")
        if session["status"] != "open":
            raise DoubleError(400, f"Checkout Session is {session['status']}", "checkout_not_open")
        intent = example("payment_intent")
        intent.update(
            id=new_id("pi"), amount=session["amount_total"], amount_received=session["amount_total"] if paid else 0,
            currency=session["currency"], status="succeeded" if paid else "processing",
            metadata=session["metadata"], canceled_at=None, cancellation_reason=None, last_payment_error=None,
        )
        charge = example("charge")
        charge.update(
            id=new_id("ch"), amount=session["amount_total"], amount_captured=session["amount_total"],
            amount_refunded=0, refunded=False, captured=True, paid=paid, currency=session["currency"],
            payment_intent=intent["id"], status="succeeded" if paid else "pending",
            metadata=session["metadata"], created=int(time.time()),
        )
        intent["latest_charge"] = charge["id"]
        session.update(status="complete", payment_status="paid" if paid else "unpaid", payment_intent=intent["id"])
        save(intent)
        save(charge)
        return save(session)


def settle_async_payment(session_id: str, *, succeeded: bool) -> dict:
    """A delayed payment method (bank debit) finishing after the session completed."""
    with transaction.atomic():
        session = load(session_id, "checkout.session")
        intent = load(session["payment_intent"], "payment_intent")
        charge = load(intent["latest_charge"], "charge")
        intent["status"] = "succeeded" if succeeded else "requires_payment_method"
        charge.update(paid=succeeded, status="succeeded" if succeeded else "failed")
        session["payment_status"] = "paid" if succeeded else "unpaid"
        save(intent)
        save(charge)
        return save(session)


def expire_checkout(session_id: str) -> dict:
    session = load(session_id, "checkout.session")
    if session["status"] != "open":
        raise DoubleError(400, f"Checkout Session is {session['status']}", "checkout_not_open")
    session["status"] = "expired"
    return save(session)


def create_refund(params: dict) -> dict:
    with transaction.atomic():
        intent_id = params.get("payment_intent")
        charge_id = params.get("charge") or (load(intent_id, "payment_intent")["latest_charge"] if intent_id else None)
        if not charge_id:
            raise DoubleError(400, "Provide a payment_intent or charge to refund", "parameter_missing")
        charge = load(charge_id, "charge")
        left = charge["amount"] - charge["amount_refunded"]
        amount = _amount(params["amount"]) if "amount" in params else left
        if amount > left:
            raise DoubleError(
                400, f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                "amount_too_large",
            )
        refund = example("refund")
        refund.update(
            id=new_id("re"), amount=amount, charge=charge_id, currency=charge["currency"],
            payment_intent=charge["payment_intent"], status="succeeded", created=int(time.time()),
            metadata=params.get("metadata", {}), reason=params.get("reason"),
        )
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        save(charge)
        return save(refund)


def list_refunds(params: dict) -> dict:
    rows = LocalStripeObject.objects.filter(object_type="refund").order_by("-id")
    data = [r.data for r in rows]
    if params.get("charge"):
        data = [r for r in data if r["charge"] == params["charge"]]
    if params.get("payment_intent"):
        data = [r for r in data if r["payment_intent"] == params["payment_intent"]]
    return {"object": "list", "data": data, "has_more": False, "url": "/v1/refunds"}


# --- Events, signed as Stripe signs them ---------------------------------------------------


def build_event(event_type: str, obj: dict, *, event_id: str | None = None, created: int | None = None) -> dict:
    event = example("event")
    event.update(
        id=event_id or new_id("evt"), type=event_type, created=created or int(time.time()),
        data={"object": obj}, livemode=False, pending_webhooks=1, api_version=stripe.api_version,
    )
    return event


def sign(payload: str, *, secret: str | None = None, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(
        payload, secret or settings.STRIPE_WEBHOOK_SECRET, timestamp=timestamp
    )


# --- The HTTP layer the SDK calls --------------------------------------------------------------


class StripeDouble(stripe.HTTPClient):
    name = "packdesk-stripe-double"

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = _nest(parse_qsl(body if method.lower() == "post" else parts.query, keep_blank_values=True))
        key = (headers or {}).get("Idempotency-Key")
        try:
            if key and method.lower() == "post":
                earlier = LocalStripeObject.objects.filter(idempotency_key=key).first()
                if earlier is not None:
                    return self._ok(earlier.data)
            obj = self._route(method.lower(), parts.path.rstrip("/").split("/")[2:], params)
            if key and method.lower() == "post":
                try:
                    save(obj, idempotency_key=key)
                except IntegrityError:  # the same key raced us: answer what the first one stored
                    obj = LocalStripeObject.objects.get(idempotency_key=key).data
            elif method.lower() == "post":
                save(obj)
            return self._ok(obj)
        except DoubleError as exc:
            error = {"error": {"type": "invalid_request_error", "message": exc.message, "code": exc.code}}
            return json.dumps(error), exc.status, {"request-id": new_id("req")}

    @staticmethod
    def _ok(obj: dict):
        return json.dumps(obj), 200, {"request-id": new_id("req")}

    @staticmethod
    def _route(method: str, path: list[str], params: dict) -> dict:
        match method, path:
            case "post", ["checkout", "sessions"]:
                return create_checkout_session(params)
            case "get", ["checkout", "sessions", session_id]:
                return load(session_id, "checkout.session")
            case "post", ["checkout", "sessions", session_id, "expire"]:
                return expire_checkout(session_id)
            case "get", ["payment_intents", intent_id]:
                return load(intent_id, "payment_intent")
            case "get", ["charges", charge_id]:
                return load(charge_id, "charge")
            case "post", ["refunds"]:
                return create_refund(params)
            case "get", ["refunds"]:
                return list_refunds(params)
            case "get", ["refunds", refund_id]:
                return load(refund_id, "refund")
        raise DoubleError(404, f"Unrecognized request URL ({method.upper()}: /v1/{'/'.join(path)})")

    def close(self):
        pass
