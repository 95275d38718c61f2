"""A test-mode stand-in for Stripe's HTTP API, for the demo (no Stripe account) and the tests.

The real stripe SDK is used unchanged; only its HTTP layer (StripeClient's `http_client`) is this
class. Responses start from Stripe's own published example objects (stripe_fixtures.json, from
stripe/openapi, MIT licence in LICENSE-stripe-fixtures) with our values filled in, and state
lives in LocalStripeObject rows so the web process and workers see the same Stripe.
This module holds the storage, the HTTP layer, Checkout Sessions and refunds; the rest is split by
theme: stripe_double_balance (payments, disputes, payouts, balance transactions),
stripe_double_billing (customers, invoices) and stripe_double_subscriptions. Tests and the demo
move Stripe's side on with helpers, all importable from here: complete_checkout,
settle_async_payment, expire_checkout, record_charge, create_dispute, create_payout, pay_invoice,
renew_subscription.
"""
from __future__ import annotations

import copy
import importlib
import json
import secrets
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import stripe
from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.db.models.fields.json import KT
from django.db.models.functions import Cast

from payments.models import LocalStripeObject

FIXTURES = Path(__file__).with_name("stripe_fixtures.json")
DAY = 24 * 3600
REPLAY = "double.idempotent_request"  # rows keeping an action's answer under its Idempotency-Key
PARTS = ("stripe_double_balance", "stripe_double_billing", "stripe_double_subscriptions")
HELPERS = {
    "record_charge": PARTS[0], "create_dispute": PARTS[0], "create_payout": PARTS[0],
    "take_payment": PARTS[0], "write_balance_transaction": PARTS[0],
    "pay_invoice": PARTS[1], "renew_subscription": PARTS[2],
}


def _part(name: str):
    """The other parts import this module, so it imports them only when first needed."""
    return importlib.import_module(f"payments.{name}")


def __getattr__(name: str):
    """Serve the other parts' helpers from here too (PEP 562): stripe_double.renew_subscription(...)."""
    if name in HELPERS:
        return getattr(_part(HELPERS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=1)
def _fixtures() -> dict:
    return json.loads(FIXTURES.read_text())["resources"]


def example(resource: str) -> dict:
    """Stripe's own example object of a resource, as a fresh copy."""
    return copy.deepcopy(_fixtures()[resource])


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


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
    """Store Stripe's current state of an object; a key only ever marks the request that created it."""
    fields = {"object_type": obj["object"], "data": obj}
    LocalStripeObject.objects.update_or_create(
        object_id=obj["id"], defaults=fields, create_defaults={**fields, "idempotency_key": idempotency_key}
    )
    return obj


def load(object_id: str, object_type: str | None = None) -> dict:
    # An id from a URL may hold a NUL, which PostgreSQL text cannot: no such object, not a DataError.
    row = None if "\x00" in object_id else LocalStripeObject.objects.filter(object_id=object_id).first()
    if row is None or (object_type and row.object_type != object_type):
        raise DoubleError(404, f"No such {object_type or 'object'}: '{object_id}'")
    return row.data


# --- Parameters, checked the way Stripe checks them -------------------------------------------


def as_int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DoubleError(400, f"Invalid integer: {name}", "parameter_invalid_integer")


def as_amount(value) -> int:
    amount = as_int(value, "amount")
    if amount < 1:
        raise DoubleError(400, "Amount must be at least 1", "amount_too_small")
    return amount


def as_bool(value, name: str) -> bool:
    if value in (True, "true"):
        return True
    if value in (False, "false"):
        return False
    raise DoubleError(400, f"Invalid boolean: {name} must be true or false", "parameter_invalid_boolean")


def as_list(value) -> list:
    """expand[0]=a&expand[1]=b arrives as {"0": "a", "1": "b"}."""
    if value in (None, ""):
        return []
    if isinstance(value, dict):
        return [value[k] for k in sorted(value, key=int)]
    return list(value) if isinstance(value, list) else [value]


def as_metadata(value, current: dict | None = None) -> dict:
    """Stripe merges metadata keys into what is there; "" unsets a key, or all of them."""
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise DoubleError(400, "Invalid object: metadata must be a hash of keys and values", "parameter_invalid")
    merged = dict(current or {})
    for key, item in value.items():
        if item == "":
            merged.pop(key, None)
        else:
            merged[key] = str(item)
    return merged


def check_params(params: dict, allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise DoubleError(400, f"Received unknown parameter: {unknown[0]}", "parameter_unknown")


def require(params: dict, name: str) -> str:
    if params.get(name) in (None, ""):
        raise DoubleError(400, f"Missing required param: {name}.", "parameter_missing")
    return params[name]


# --- Lists: newest first, cursor pages --------------------------------------------------------


def list_objects(object_type: str, params: dict, *, url: str, filters: dict | None = None, exclude=None) -> dict:
    """Stripe's list endpoints: newest first, `limit` per page, `starting_after`/`ending_before` cursors
    and `created` ranges, filtered and ordered in the database so thousands of rows stay cheap."""
    limit = as_int(params.get("limit", 10), "limit")
    if not 1 <= limit <= 100:
        raise DoubleError(400, "Invalid integer: limit must be between 1 and 100", "parameter_invalid_integer")
    rows = LocalStripeObject.objects.filter(object_type=object_type).annotate(
        created=Cast(KT("data__created"), models.BigIntegerField())
    )
    for field, value in (filters or {}).items():
        if value not in (None, ""):
            rows = rows.filter(**{f"data__{field}": value})
    if exclude:
        rows = rows.exclude(**{f"data__{field}": value for field, value in exclude.items()})
    created = params.get("created")
    if isinstance(created, dict):
        for op, value in created.items():
            if op not in ("gt", "gte", "lt", "lte"):
                raise DoubleError(400, f"Received unknown parameter: created[{op}]", "parameter_unknown")
            rows = rows.filter(**{f"created__{op}": as_int(value, f"created[{op}]")})
    elif created not in (None, ""):
        rows = rows.filter(created=as_int(created, "created"))
    newest_first = True
    for cursor_param in ("starting_after", "ending_before"):
        if params.get(cursor_param):
            cursor = rows.filter(object_id=params[cursor_param]).first()
            if cursor is None:
                raise DoubleError(404, f"No such {object_type}: '{params[cursor_param]}'")
            older = Q(created__lt=cursor.created) | Q(created=cursor.created, id__lt=cursor.id)
            newer = Q(created__gt=cursor.created) | Q(created=cursor.created, id__gt=cursor.id)
            newest_first = cursor_param == "starting_after"
            rows = rows.filter(older if newest_first else newer)
    order = ("-created", "-id") if newest_first else ("created", "id")
    page = list(rows.order_by(*order)[: limit + 1])
    data = [row.data for row in page[:limit]]
    return {"object": "list", "data": data if newest_first else data[::-1], "has_more": len(page) > limit, "url": url}


def present(obj: dict, expand: list[str]) -> dict:
    """What Stripe sends: an invoice's `payments` only when asked for, ids swapped for objects as expanded."""
    obj = copy.deepcopy(obj)
    is_list = obj.get("object") == "list"
    prefix = "data." if is_list else ""
    for item in obj.get("data", []) if is_list else [obj]:
        wanted = any(path == prefix + "payments" or path.startswith(prefix + "payments.") for path in expand)
        if isinstance(item, dict) and item.get("object") == "invoice" and not wanted:
            item.pop("payments", None)
    for path in expand:
        slots = []
        _expandable(obj, path.split("."), path, slots)
        rows = LocalStripeObject.objects.filter(object_id__in=[node[key] for node, key in slots])
        found = {row.object_id: row.data for row in rows}
        for node, key in slots:
            if node[key] in found:
                node[key] = present(found[node[key]], [])
    return obj


def _expandable(node, parts: list[str], path: str, slots: list) -> None:
    if not isinstance(node, dict):
        return
    head, rest = parts[0], parts[1:]
    if head not in node:
        raise DoubleError(400, f"This property cannot be expanded ({path}).", "parameter_invalid")
    value = node[head]
    if not rest:
        if isinstance(value, str):
            slots.append((node, head))
        return
    for child in value if isinstance(value, list) else [value]:
        _expandable(child, rest, path, slots)


# --- Checkout and refunds --------------------------------------------------------------------


def create_checkout_session(params: dict) -> dict:
    item = params.get("line_items", {}).get("0", {})
    price = item.get("price_data", {})
    quantity = int(item.get("quantity", 1))
    mode = params.get("mode", "payment")
    session_id = new_id("cs")
    amount = as_amount(price.get("unit_amount")) * quantity
    if mode == "subscription":
        trial = _part("stripe_double_subscriptions").checkout_subscription_params(session_id, params)
        amount = 0 if trial else amount  # a free trial: nothing to pay today
    elif mode != "payment":
        raise DoubleError(400, f"Invalid mode: {mode} (the double knows payment and subscription)",
                          "parameter_invalid")
    elif price.get("recurring"):
        raise DoubleError(
            400, "You specified `payment` mode but passed a recurring price. Either switch to `subscription` "
            "mode or use only one-time prices.", "parameter_invalid",
        )
    if params.get("customer"):
        load(params["customer"], "customer")
    session = example("checkout.session")
    session.update(
        id=session_id, object="checkout.session", mode=mode,
        status="open", payment_status="unpaid", payment_intent=None, livemode=False,
        amount_subtotal=amount, amount_total=amount, currency=(price.get("currency") or "").lower(),
        customer=params.get("customer"), subscription=None, invoice=None, customer_details=None,
        customer_email=params.get("customer_email"),
        client_reference_id=params.get("client_reference_id"),
        metadata=params.get("metadata", {}),
        success_url=params.get("success_url"), cancel_url=params.get("cancel_url"),
        created=now(), expires_at=now() + DAY,
        url=f"{settings.PUBLIC_BASE_URL}/packs/test-checkout/{session_id}/",
    )
    return session


def complete_checkout(session_id: str, *, paid: bool = True) -> dict:
    """What Stripe does when the client pays on its page: a PaymentIntent and charge (succeeded, or
    processing when not `paid`); in subscription mode a customer, the subscription and its first invoice."""
    with transaction.atomic():
        session = load(session_id, "checkout.session")
        if session["status"] != "open":
            raise DoubleError(400, f"Checkout Session is {session['status']}", "checkout_not_open")
        session["customer_details"] = dict(
            example("checkout.session")["customer_details"], email=session["customer_email"], name=None
        )
        if session["mode"] == "subscription":
            _part("stripe_double_subscriptions").checkout_subscription(session, paid=paid)
            return save(session)
        intent, _charge = _part("stripe_double_balance").take_payment(
            session["amount_total"], session["currency"], outcome="succeeded" if paid else "processing",
            metadata=session["metadata"],
        )
        session.update(status="complete", payment_status="paid" if paid else "unpaid", payment_intent=intent["id"])
        return save(session)


def settle_async_payment(session_id: str, *, succeeded: bool) -> dict:
    """A delayed payment method (bank debit) finishing after the session completed."""
    with transaction.atomic():
        session = load(session_id, "checkout.session")
        intent = load(session["payment_intent"], "payment_intent")
        _part("stripe_double_balance").settle_charge(
            intent, load(intent["latest_charge"], "charge"), succeeded=succeeded
        )
        session["payment_status"] = "paid" if succeeded else "unpaid"
        return save(session)


def expire_checkout(session_id: str) -> dict:
    session = load(session_id, "checkout.session")
    if session["status"] != "open":
        raise DoubleError(400, f"Checkout Session is {session['status']}", "checkout_not_open")
    session["status"] = "expired"
    return save(session)


def create_refund(params: dict) -> dict:
    intent_id = params.get("payment_intent")
    charge_id = params.get("charge") or (load(intent_id, "payment_intent")["latest_charge"] if intent_id else None)
    if not charge_id:
        raise DoubleError(400, "Provide a payment_intent or charge to refund", "parameter_missing")
    charge = load(charge_id, "charge")
    left = charge["amount"] - charge["amount_refunded"]
    amount = as_amount(params["amount"]) if "amount" in params else left
    if amount > left:
        raise DoubleError(
            400, f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
            "amount_too_large",
        )
    refund = example("refund")
    refund.update(
        id=new_id("re"), amount=amount, charge=charge_id, currency=charge["currency"],
        payment_intent=charge["payment_intent"], status="succeeded", created=now(),
        metadata=params.get("metadata", {}), reason=params.get("reason"),
    )
    refund["balance_transaction"] = _part("stripe_double_balance").write_balance_transaction(
        kind="refund", amount=-amount, currency=charge["currency"], source=refund["id"],
        created=refund["created"], description=f"REFUND FOR CHARGE ({charge_id})",
    )["id"]
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] == charge["amount"]
    save(charge)
    return refund


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
        id=event_id or new_id("evt"), type=event_type, created=created or now(),
        data={"object": present(obj, [])}, livemode=False, pending_webhooks=1, api_version=stripe.api_version,
    )
    return event


def sign(payload: str, *, secret: str | None = None, timestamp: int | None = None) -> str:
    return stripe.WebhookSignature.generate_signature_header(
        payload, secret or settings.STRIPE_WEBHOOK_SECRET, timestamp=timestamp
    )


# --- The HTTP layer the SDK calls --------------------------------------------------------------

GETTABLE = {
    "payment_intents": "payment_intent", "charges": "charge", "refunds": "refund",
    "balance_transactions": "balance_transaction", "disputes": "dispute", "payouts": "payout",
}


def _replay(key: str) -> dict | None:
    row = LocalStripeObject.objects.filter(idempotency_key=key).first()
    return None if row is None else row.data


def _store(obj: dict, key: str | None) -> None:
    """A create keeps its key on the new object's row (so a retry answers that object); an action on an
    existing object (finalize, pay, update) keeps its answer on a row of its own under the key."""
    fields = {"object_type": obj["object"], "data": obj}
    _row, created = LocalStripeObject.objects.update_or_create(
        object_id=obj["id"], defaults=fields, create_defaults={**fields, "idempotency_key": key}
    )
    if key and not created:
        LocalStripeObject.objects.create(object_id=f"idem_{key}", object_type=REPLAY, data=obj, idempotency_key=key)


class StripeDouble(stripe.HTTPClient):
    name = "packdesk-stripe-double"

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        method, parts = method.lower(), urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = _nest(parse_qsl(body if method == "post" else parts.query, keep_blank_values=True))
        expand = as_list(params.pop("expand", None))
        key = (headers or {}).get("Idempotency-Key") if method == "post" else None
        try:
            obj = _replay(key) if key else None
            if obj is None:
                try:
                    with transaction.atomic():
                        obj = self._route(method, parts.path.rstrip("/").split("/")[2:], params)
                        if method == "post":
                            _store(obj, key)
                except IntegrityError:  # the same key raced us: answer what the first one stored
                    obj = _replay(key) if key else None
                    if obj is None:
                        raise
            return self._ok(present(obj, expand))
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
            case "post", ["refunds"]:
                return create_refund(params)
            case "get", ["refunds"]:
                return list_refunds(params)
            case "get", [resource, object_id] if resource in GETTABLE:
                return load(object_id, GETTABLE[resource])
        for part in PARTS:
            obj = _part(part).route(method, path, params)
            if obj is not None:
                return obj
        raise DoubleError(404, f"Unrecognized request URL ({method.upper()}: /v1/{'/'.join(path)})")

    def close(self):
        pass
