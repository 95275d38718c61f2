"""The one way the system sends email: templated (text and HTML), logged, at most once, after commit.

email_send() writes an EmailLog row inside the caller's transaction and hands the message to
Django's email backend only once that transaction commits. A rolled-back transaction leaves no
row and sends nothing; a dedupe_key (unique in the table) makes a second request for the same
message, even a concurrent one, a no-op. A failing backend is recorded on the row, never raised.

Templates live in templates/email/: f"{template}.txt", f"{template}.html" and
f"{template}_subject.txt"; both bodies extend email/base.txt or email/base.html, which carry the
business's name and, for client emails, the client's personal link and the opt-out link.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, models, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from core.models import BusinessSettings, Client, EmailLog, EmailStatus, NudgeKind

logger = logging.getLogger(__name__)

OPTOUT_SALT = "packdesk.optout"
# The names a front-desk person would use for what an email is about (EmailLog.related_type).
RELATED_TYPES = {"payments.purchase": "purchase", "ledger.creditgrant": "grant", "core.booking": "booking"}
# Nudges to the client: the client's opt-out applies to these. The staff note goes to staff.
CLIENT_NUDGES = {NudgeKind.BOOKING_REMINDER, NudgeKind.EXPIRY_REMINDER, NudgeKind.NEXT_PACK}

Related = models.Model | tuple[str, int] | None


# --- Opt-out link ---------------------------------------------------------------------------------


def optout_token_for(client: Client) -> str:
    # No expiry: an old reminder's link must still work, and it can only ever switch emails off.
    return signing.dumps({"c": client.pk}, salt=OPTOUT_SALT)


def client_from_optout_token(token: str) -> Client | None:
    try:
        data = signing.loads(token, salt=OPTOUT_SALT)
    except signing.BadSignature:
        return None
    client_id = data.get("c") if isinstance(data, dict) else None
    return Client.objects.filter(pk=client_id).first() if isinstance(client_id, int) else None


def optout_url(client: Client) -> str:
    return settings.PUBLIC_BASE_URL + reverse("portal:opt_out", args=[optout_token_for(client)])


def nudges_opt_out(*, client: Client) -> Client:
    """The client asked for no more reminder emails. Idempotent: the first time is the one recorded."""
    with transaction.atomic():
        client = Client.objects.select_for_update().get(pk=client.pk)
        if not client.nudges_opt_out:
            client.nudges_opt_out = True
            client.nudges_opted_out_at = timezone.now()
            # save(), not update(): the client's history records the change.
            client.save(update_fields=["nudges_opt_out", "nudges_opted_out_at"])
    return client


# --- Sending --------------------------------------------------------------------------------------


def nudge_enabled(kind: str) -> bool:
    """The business's switch for one NudgeKind (BusinessSettings.nudge_<kind>)."""
    return bool(getattr(BusinessSettings.current(), f"nudge_{NudgeKind(kind).value}"))


def _related(related: Related) -> tuple[str, int | None]:
    if related is None:
        return "", None
    if isinstance(related, tuple):
        return related[0], related[1]
    return RELATED_TYPES.get(related._meta.label_lower, related._meta.model_name), related.pk


def _skip_reason(client: Client | None, nudge_kind: str | None) -> str:
    if not nudge_kind:
        return ""
    if not nudge_enabled(nudge_kind):
        return "This reminder is switched off in the business settings."
    if client is not None and nudge_kind in CLIENT_NUDGES:
        # Read now, not from the caller's possibly stale instance: the opt-out may be seconds old.
        if Client.objects.filter(pk=client.pk, nudges_opt_out=True).exists():
            return "The client opted out of reminder emails."
    return ""


def email_send(
    *, to: str, template: str, context: dict[str, Any], client: Client | None = None,
    related: Related = None, dedupe_key: str | None = None, nudge_kind: str | None = None,
) -> EmailLog | None:
    """Log an email and send it after the caller's transaction commits.

    - client: the client the email goes to (adds their personal link and the opt-out link). For
      an email to staff about a client, pass the purchase or grant as related instead.
    - related: a model instance (purchase, grant, booking...) or a (type, id) pair.
    - dedupe_key: the same key twice gives one email; the second call returns None.
    - nudge_kind: a reminder that the business setting or the client's opt-out can switch off.
      Then nothing is sent and the row is kept with status "skipped" and the reason: its key is
      used up, so a sweep that runs every few minutes does not ask again and again, and staff can
      see why a client got no reminder. The skipped row is returned.
    """
    with transaction.atomic():
        log = _record(to, template, client, related, dedupe_key, nudge_kind)
        if log is not None and log.status == EmailStatus.QUEUED:
            transaction.on_commit(partial(_deliver, log.pk, to, template, _full_context(context, client)))
    return log


def email_send_on_commit(
    *, to: str, template: str, context: dict[str, Any], client: Client | None = None,
    related: Related = None, dedupe_key: str | None = None, nudge_kind: str | None = None,
) -> None:
    """email_send() once the caller's transaction commits: even the log row is written then.

    For emails whose request must do the same database work whether or not anyone is emailed
    (the /me/link/ form never reveals whether an address is a client's). Nothing is written if
    the caller rolls back.
    """

    def send() -> None:
        # After the caller's commit: the row commits on its own, then the message goes at once.
        with transaction.atomic():
            log = _record(to, template, client, related, dedupe_key, nudge_kind)
        if log is not None and log.status == EmailStatus.QUEUED:
            _deliver(log.pk, to, template, _full_context(context, client))

    transaction.on_commit(send, robust=True)


def _record(
    to: str, template: str, client: Client | None, related: Related, dedupe_key: str | None,
    nudge_kind: str | None,
) -> EmailLog | None:
    """Insert the log row (queued, or skipped with the reason); None if dedupe_key is taken."""
    related_type, related_id = _related(related)
    reason = _skip_reason(client, nudge_kind)
    log = EmailLog(
        recipient=to, template=template, client=client, related_type=related_type, related_id=related_id,
        nudge_kind=nudge_kind or "", dedupe_key=dedupe_key,
        status=EmailStatus.SKIPPED if reason else EmailStatus.QUEUED, reason=reason,
    )
    try:
        # A savepoint, so a duplicate key leaves the caller's transaction usable. Concurrent
        # callers with one key: PostgreSQL holds the second insert until the first commits.
        with transaction.atomic():
            log.save(force_insert=True)
    except IntegrityError:
        if dedupe_key and EmailLog.objects.filter(dedupe_key=dedupe_key).exists():
            return None
        raise
    return log


def _full_context(context: dict[str, Any], client: Client | None) -> dict[str, Any]:
    full = {
        "business_name": settings.BUSINESS_NAME,
        "packs_url": settings.PUBLIC_BASE_URL + reverse("public:pack_list"),
        **context,
    }
    if client is not None:
        full.setdefault("client", client)
        full.setdefault("client_name", client.name)
        full["portal_url"] = _portal_url(client)
        full["optout_url"] = optout_url(client)
    return full


def _portal_url(client: Client) -> str:
    from core.portal_tokens import portal_url  # portal_tokens imports core.models only; kept lazy

    return portal_url(client)


def _deliver(log_id: int, to: str, template: str, context: dict[str, Any]) -> None:
    """Render and hand to the backend; the outcome goes on the log row. Never raises."""
    subject = ""
    try:
        subject = " ".join(render_to_string(f"email/{template}_subject.txt", context).split())[:300]
        message = EmailMultiAlternatives(
            subject=subject, body=render_to_string(f"email/{template}.txt", context), to=[to],
        )
        message.attach_alternative(render_to_string(f"email/{template}.html", context), "text/html")
        if context.get("optout_url"):
            # Mail clients show their own "unsubscribe" button from this header.
            message.extra_headers["List-Unsubscribe"] = f"<{context['optout_url']}>"
        message.send()
    except Exception as exc:  # noqa: BLE001 - any backend or template error is recorded, not raised
        # Not the address: logs are kept and shipped more widely than the EmailLog row that holds it.
        logger.exception("email %s (%s) failed", log_id, template)
        EmailLog.objects.filter(pk=log_id).update(
            status=EmailStatus.FAILED, subject=subject, error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        return
    EmailLog.objects.filter(pk=log_id).update(status=EmailStatus.SENT, subject=subject, sent_at=timezone.now())
