"""One structured log line for every change of money or credits, and every Stripe webhook.

These lines are for operations (what happened, under which request id), not the record of
truth: the ledger, simple-history and the audit notes are. So they are written from post_save
receivers, outside the services' flow, and only once the transaction commits: a change that
was rolled back never appears. They carry ids, kinds, amounts and statuses; never a name or an
email address.

Writes that bypass save() (QuerySet.update(), bulk_create(), raw SQL) do not pass through here:
the expiry sweep (ledger.expiry) writes its Expired entries in SQL and logs its own line.
"""
from __future__ import annotations

import logging

from django.db import transaction
from django.db.models.signals import post_save, pre_save

from core.middleware import current_request_id

logger = logging.getLogger("packdesk.audit")


def audit(event: str, *, level: int = logging.INFO, **fields) -> None:
    """Log `event` now, with its fields as structured data (`record.audit`)."""
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    logger.log(
        level, "%s %s", event, text,
        extra={"event": event, "audit": fields, "request_id": current_request_id() or "-"},
    )


def audit_on_commit(event: str, **fields) -> None:
    """Log `event` once the current transaction commits (at once outside a transaction).

    The request id is read now: a callback run at commit is still in the same request or job,
    but reading it here keeps that true whoever runs the callback.
    """
    request_id = current_request_id() or "-"
    text = " ".join(f"{key}={value}" for key, value in fields.items())

    def emit() -> None:
        logger.info("%s %s", event, text, extra={"event": event, "audit": fields, "request_id": request_id})

    transaction.on_commit(emit)


# --- Receivers (connected in CoreConfig.ready) -----------------------------------------------


def _money(value) -> str:
    return str(value) if value is not None else ""


def ledger_entry_saved(sender, instance, created, raw=False, **kwargs) -> None:
    if not created or raw:
        return  # entries are append-only; fixtures (raw) are not changes
    audit_on_commit(
        "ledger.entry", entry_id=instance.pk, kind=instance.kind, amount=instance.amount,
        balance_after=instance.balance_after, client_id=instance.client_id,
        session_type_id=instance.session_type_id, grant_id=instance.grant_id,
        purchase_id=instance.purchase_id, booking_id=instance.booking_id, refund_id=instance.refund_id,
        source=instance.source, actor_id=instance.actor_id,
    )


def payment_saved(sender, instance, created, raw=False, **kwargs) -> None:
    if not created or raw:
        return
    audit_on_commit(
        "payment.recorded", payment_id=instance.pk, purchase_id=instance.purchase_id,
        method=instance.method, amount=_money(instance.amount), currency=instance.currency,
        recorded_by_id=instance.recorded_by_id,
    )


def remember_status(sender, instance, raw=False, update_fields=None, **kwargs) -> None:
    """Before a save, the status the row has in the database, so post_save can tell a change."""
    instance._audit_old_status = None
    if raw or instance.pk is None or (update_fields is not None and "status" not in update_fields):
        instance._audit_old_status = getattr(instance, "status", None)  # not changing here
        return
    instance._audit_old_status = (
        sender._default_manager.filter(pk=instance.pk).values_list("status", flat=True).first()
    )


def _status_changed(instance, created: bool) -> tuple[bool, str | None]:
    old = None if created else getattr(instance, "_audit_old_status", None)
    return created or old != instance.status, old


def refund_saved(sender, instance, created, raw=False, **kwargs) -> None:
    if raw:
        return
    if created:
        audit_on_commit(
            "refund.created", refund_id=instance.pk, purchase_id=instance.purchase_id,
            amount=_money(instance.amount), currency=instance.currency, method=instance.method,
            status=instance.status, created_by_id=instance.created_by_id,
        )
        return
    changed, old = _status_changed(instance, created)
    if changed:
        audit_on_commit(
            "refund.status", refund_id=instance.pk, purchase_id=instance.purchase_id,
            amount=_money(instance.amount), currency=instance.currency, old_status=old, status=instance.status,
        )


def purchase_saved(sender, instance, created, raw=False, **kwargs) -> None:
    changed, old = _status_changed(instance, created)
    if raw or not changed:
        return
    audit_on_commit(
        "purchase.status", purchase_id=instance.pk, client_id=instance.client_id,
        channel=instance.channel, price=_money(instance.price), currency=instance.currency,
        refunded_amount=_money(instance.refunded_amount), subscription_id=instance.subscription_id,
        old_status=old, status=instance.status,
    )


def invoice_saved(sender, instance, created, raw=False, **kwargs) -> None:
    changed, old = _status_changed(instance, created)
    if raw or not changed:
        return
    audit_on_commit(
        "invoice.status", invoice_id=instance.pk, purchase_id=instance.purchase_id, kind=instance.kind,
        amount=_money(instance.amount), currency=instance.currency, old_status=old, status=instance.status,
    )


def subscription_saved(sender, instance, created, raw=False, **kwargs) -> None:
    changed, old = _status_changed(instance, created)
    if raw or not changed:
        return
    audit_on_commit(
        "subscription.status", subscription_id=instance.pk, client_id=instance.client_id,
        pack_id=instance.pack_id, price=_money(instance.price), currency=instance.currency,
        old_status=old, status=instance.status,
    )


def connect() -> None:
    from ledger.models import LedgerEntry
    from payments.models import Invoice, OutstandingPurchase, Payment, Purchase, Refund, Subscription

    uid = "packdesk.audit_log"
    post_save.connect(ledger_entry_saved, sender=LedgerEntry, dispatch_uid=f"{uid}.ledger_entry")
    post_save.connect(payment_saved, sender=Payment, dispatch_uid=f"{uid}.payment")
    # Signals name the class saved: a proxy (the outstanding payments list) needs its own.
    for model, receiver in ((Refund, refund_saved), (Purchase, purchase_saved),
                            (OutstandingPurchase, purchase_saved),
                            (Invoice, invoice_saved), (Subscription, subscription_saved)):
        name = model.__name__.lower()
        pre_save.connect(remember_status, sender=model, dispatch_uid=f"{uid}.{name}.before")
        post_save.connect(receiver, sender=model, dispatch_uid=f"{uid}.{name}")
