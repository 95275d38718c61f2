"""Opening balances: credits a business brings with it from a spreadsheet or its previous tool.

Each one becomes a grant with an Issued entry whose source is Import, written through the same
helpers and locking protocol as every other credit change (ledger.services: the balance row
first, then the grant). The money the business was paid for those credits, when known, is kept
on the grant (opening_value / opening_currency) so deferred-revenue reports can value it; a grant
without a purchase and without a value is worth nothing.

The caller gives an idempotency key (the import resource derives it from the row's content), so
confirming the same file twice, or a file that repeats rows already imported, adds nothing.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from catalog.models import SessionType, ValidFrom, ValidityUnit
from catalog.validation import MAX_PRICE, ZERO_DECIMAL_CURRENCIES
from core.models import Client
from ledger.models import CreditGrant, EntrySource, LedgerEntry
from ledger.services import GrantSpec, _issue_grant, _lock_balance

MAX_OPENING_CREDITS = 1000
# Without an expiry in the file, imported credits last as long as an adjustment's.
OPENING_VALIDITY_MONTHS = 12


def opening_value_errors(value: Decimal | None, currency: str) -> dict[str, list[str]]:
    """What is wrong with a value and its currency, keyed "value" / "currency"."""
    errors: dict[str, list[str]] = {}
    if not re.fullmatch(r"[A-Z]{3}", currency or ""):
        errors["currency"] = ["Use a three-letter ISO currency code in capitals, such as GBP."]
    if value is None:
        return errors
    if not isinstance(value, Decimal) or not value.is_finite():
        errors["value"] = ["Give the value as an amount such as 150.00."]
    elif value < 0:
        errors["value"] = ["The value cannot be negative."]
    elif value > MAX_PRICE:
        errors["value"] = [f"The value cannot be more than {MAX_PRICE}."]
    elif "currency" not in errors:
        places = 0 if currency in ZERO_DECIMAL_CURRENCIES else 2
        if value != value.quantize(Decimal(1).scaleb(-places)):
            errors["value"] = [f"{currency} amounts have at most {places} decimal places."]
    return errors


def _validity_days(expires_at: datetime, now: datetime) -> int:
    """The grant's validity, informational once its window is set: days from today to expiry."""
    days = (timezone.localtime(expires_at).date() - timezone.localdate(now)).days
    return max(1, days)


@transaction.atomic
def credits_import_opening(
    *, client: Client, session_type: SessionType, credits: int, expires_at: datetime | None,
    value: Decimal | None, currency: str | None, actor, key: str, note: str = "",
) -> CreditGrant:
    """Give `client` an opening balance of `credits` credits of `session_type`. Once per `key`.

    `expires_at` None: OPENING_VALIDITY_MONTHS from now (to the end of that local day). `value`
    is what the business was paid for these credits, in `currency` (default DEFAULT_CURRENCY);
    None when unknown. Errors are ValidationErrors keyed by the argument a person must fix.
    """
    if not key:
        raise ValueError("credits_import_opening needs an idempotency key.")
    currency = (currency or settings.DEFAULT_CURRENCY).strip().upper()
    now = timezone.now()
    errors = opening_value_errors(value, currency)
    if isinstance(credits, bool) or not isinstance(credits, int) or not 1 <= credits <= MAX_OPENING_CREDITS:
        errors["credits"] = [f"Give a whole number of credits from 1 to {MAX_OPENING_CREDITS}."]
    if expires_at is not None and expires_at <= now:
        errors["expires_at"] = ["The expiry is in the past: imported credits must still be usable."]
    if errors:
        raise ValidationError(errors)

    done = LedgerEntry.objects.filter(idempotency_key=key).select_related("grant").first()
    if done is not None:
        return done.grant
    balance = _lock_balance(client.pk, session_type.pk)
    # The same file may have been confirmed twice at once: the first holds the lock, we see its entry.
    done = LedgerEntry.objects.filter(idempotency_key=key).select_related("grant").first()
    if done is not None:
        return done.grant

    if expires_at is None:
        validity = (OPENING_VALIDITY_MONTHS, ValidityUnit.MONTHS)
    else:
        validity = (_validity_days(expires_at, now), ValidityUnit.DAYS)
    spec = GrantSpec(
        session_type_id=session_type.pk, unlimited=False, quantity=credits,
        validity_amount=validity[0], validity_unit=validity[1], valid_from_rule=ValidFrom.PAYMENT,
    )
    grant = _issue_grant(
        balance=balance, client_id=client.pk, spec=spec, purchase_id=None,
        source=EntrySource.IMPORT, all_staff=True, staff_ids=[], window_start=now,
        expires_at=expires_at, actor=actor, note=note or "Opening balance (import)", key=key,
        now=now,
    )
    if value is not None:
        # _issue_grant does not know opening values; set in the same transaction, the grant
        # row already ours (we created it), so the locking order is unchanged.
        CreditGrant.objects.filter(pk=grant.pk).update(opening_value=value, opening_currency=currency)
        grant.opening_value, grant.opening_currency = value, currency
    return grant
