"""Rules of a valid credit pack, shared by the admin forms and the service layer.

Each function takes plain values and raises ValidationError keyed by the field a person must fix.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.core.exceptions import ValidationError

from catalog.models import (
    MAX_CREDIT_LINES,
    MAX_CREDITS_PER_LINE,
    BillingInterval,
    CreditPack,
    PackCreditLine,
    RecursWhen,
    RecurringCollection,
    RestrictTo,
    SessionType,
    ValidFrom,
    ValidityUnit,
)

# Stripe's zero-decimal currencies: a price in these has no minor unit.
ZERO_DECIMAL_CURRENCIES = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
MAX_PRICE = Decimal("99999999.99")
MAX_VALIDITY = {ValidityUnit.DAYS: 3660, ValidityUnit.WEEKS: 522, ValidityUnit.MONTHS: 120}


@dataclass(frozen=True)
class LineData:
    session_type: SessionType
    unlimited: bool = False
    credits: int | None = None
    validity_amount: int | None = None
    validity_unit: str = ""


@dataclass(frozen=True)
class StaffPriceData:
    staff_member: object
    price: Decimal | None = None


def _price_errors(price, currency: str, label: str) -> list[str]:
    if price is None:
        return [f"{label} is required."]
    if not isinstance(price, Decimal):
        return [f"{label} must be a decimal amount such as 30.00."]
    if not price.is_finite():
        return [f"{label} must be a number."]
    if price < 0:
        return [f"{label} cannot be negative."]
    if price > MAX_PRICE:
        return [f"{label} cannot be more than {MAX_PRICE}."]
    places = 0 if currency in ZERO_DECIMAL_CURRENCIES else 2
    if price != price.quantize(Decimal(1).scaleb(-places)):
        return [f"{label} can have at most {places} decimal places in {currency}."]
    return []


def _validity_errors(amount, unit: str, label: str) -> list[str]:
    if unit not in ValidityUnit.values:
        return [f"{label}: choose days, weeks or months."]
    if amount is None or amount < 1:
        return [f"{label} must be at least 1 {unit} (a day or more)."]
    if amount > MAX_VALIDITY[ValidityUnit(unit)]:
        return [f"{label} cannot be more than {MAX_VALIDITY[ValidityUnit(unit)]} {unit}."]
    return []


def validate_pack_fields(data: Mapping) -> None:
    """The pack's own fields. `data` holds the model's field values by name."""
    errors: dict[str, list[str]] = {}

    def add(field: str, messages: Iterable[str]) -> None:
        messages = list(messages)
        if messages:
            errors.setdefault(field, []).extend(messages)

    name = (data.get("name") or "").strip()
    if not name:
        add("name", ["Name is required."])
    currency = (data.get("currency") or "").strip()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        add("currency", ["Currency must be a three-letter ISO code in capitals, such as GBP."])
    add("price", _price_errors(data.get("price"), currency, "Price"))
    if data.get("category") is None and data.get("category_id") is None:
        add("category", ["Category is required."])
    add(
        "validity_amount",
        _validity_errors(data.get("validity_amount"), data.get("validity_unit") or "", "Validity"),
    )
    if data.get("valid_from") not in ValidFrom.values:
        add("valid_from", ["Valid from: choose payment, first booking or first session."])
    if data.get("restrict_to") not in RestrictTo.values:
        add("restrict_to", ["Restrict to: choose anyone, new joiners or active members."])

    if data.get("is_recurring"):
        if data.get("billing_interval") not in BillingInterval.values:
            add("billing_interval", ["A recurring pack needs a billing interval (week, month or year)."])
        count = data.get("billing_interval_count") or 0
        if not 1 <= count <= 52:
            add("billing_interval_count", ["Billing every N intervals: N must be between 1 and 52."])
        if data.get("recurs_when") not in RecursWhen.values:
            add("recurs_when", ["A recurring pack needs 'recurs when': no credits remain or pack expires."])
        if data.get("recurring_collection") not in RecurringCollection.values:
            add("recurring_collection", ["A recurring pack needs a collection: auto-debit or invoice."])
        if (data.get("minimum_commitment") or 0) > 120:
            add("minimum_commitment", ["Minimum commitment cannot be more than 120 payments."])
        if (data.get("free_trial_days") or 0) > 365:
            add("free_trial_days", ["A free trial cannot be longer than 365 days."])
    else:
        if data.get("billing_interval"):
            add("billing_interval", ["Only a recurring pack has a billing interval."])
        if data.get("recurs_when"):
            add("recurs_when", ["Only a recurring pack has 'recurs when'."])
        if data.get("recurring_collection"):
            add("recurring_collection", ["Only a recurring pack has a collection mode."])
        if data.get("minimum_commitment"):
            add("minimum_commitment", ["Only a recurring pack has a minimum commitment."])
        if data.get("free_trial_days"):
            add("free_trial_days", ["Only a recurring pack has a free trial."])
    if data.get("sell_online") and not data.get("published"):
        add("sell_online", ["A pack sold online must also be published."])
    if errors:
        raise ValidationError(errors)


def validate_credit_lines(lines: list[LineData]) -> None:
    errors: list[str] = []
    if not lines:
        errors.append("Credit lines: a pack needs at least one session type.")
    if len(lines) > MAX_CREDIT_LINES:
        errors.append(
            f"Credit lines: a pack has at most {MAX_CREDIT_LINES} session types ({len(lines)} given)."
        )
    seen: set[int] = set()
    for number, line in enumerate(lines, start=1):
        where = f"Credit line {number} ({line.session_type})"
        if line.session_type.pk in seen:
            errors.append(f"{where}: each session type may appear once in a pack.")
        seen.add(line.session_type.pk)
        if line.session_type.archived:
            errors.append(f"{where}: the session type is archived.")
        if not line.session_type.requires_credit:
            errors.append(f"{where}: the session type does not require a credit.")
        if line.unlimited and line.credits is not None:
            errors.append(f"{where}: credits must be empty when the line is unlimited.")
        if not line.unlimited and (
            line.credits is None or not 1 <= line.credits <= MAX_CREDITS_PER_LINE
        ):
            errors.append(
                f"{where}: credits must be between 1 and {MAX_CREDITS_PER_LINE}, or tick unlimited."
            )
        if (line.validity_amount is None) != (not line.validity_unit):
            errors.append(f"{where}: give both the validity amount and unit, or neither.")
        elif line.validity_amount is not None:
            errors.extend(_validity_errors(line.validity_amount, line.validity_unit, f"{where}: validity"))
    if errors:
        raise ValidationError({"credit_lines": errors})


def validate_staff_prices(staff_prices: list[StaffPriceData], *, all_staff: bool, currency: str) -> None:
    errors: list[str] = []
    if not all_staff and not staff_prices:
        errors.append("Staff: list at least one staff member, or make the pack usable with all staff.")
    seen: set[int] = set()
    for row in staff_prices:
        if row.staff_member.pk in seen:
            errors.append(f"Staff: {row.staff_member} is listed twice.")
        seen.add(row.staff_member.pk)
        if all_staff and row.price is None:
            errors.append(
                f"Staff: {row.staff_member} has no price of their own; with 'all staff' list only "
                "staff members whose price differs."
            )
        if row.price is not None:
            errors.extend(_price_errors(row.price, currency, f"Staff: price for {row.staff_member}"))
    if errors:
        raise ValidationError({"staff_prices": errors})


def validate_pack(data: Mapping, lines: list[LineData], staff_prices: list[StaffPriceData]) -> None:
    """Every rule at once, so a person sees all that needs fixing in one go."""
    collected: dict[str, list] = {}
    for check in (
        lambda: validate_pack_fields(data),
        lambda: validate_credit_lines(lines),
        lambda: validate_staff_prices(
            staff_prices, all_staff=bool(data.get("all_staff")), currency=data.get("currency") or ""
        ),
    ):
        try:
            check()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                collected.setdefault(field, []).extend(messages)
    if collected:
        raise ValidationError(collected)


def validate_session_type_change(session_type: SessionType, *, archived: bool, requires_credit: bool) -> None:
    """Refuse changes that would strand packs or credits that depend on the session type."""
    if session_type.pk is None:
        return
    errors: dict[str, list[str]] = {}
    if archived and not session_type.archived:
        in_use = CreditPack.objects.filter(
            published=True, credit_lines__session_type=session_type
        ).values_list("name", flat=True)[:5]
        if in_use:
            errors["archived"] = [
                "Cannot archive: published packs use this session type ("
                + ", ".join(in_use) + "). Unpublish them or remove the session type from them first."
            ]
    if not requires_credit and session_type.requires_credit:
        from core.models import Session
        from ledger.models import CreditGrant

        # Name the dependency, so the person knows what to change first.
        if PackCreditLine.objects.filter(session_type=session_type).exists():
            errors["requires_credit"] = [
                "Cannot switch off 'requires a credit': packs sell credits for this session type."
            ]
        elif CreditGrant.objects.filter(session_type=session_type).exists():
            errors["requires_credit"] = [
                "Cannot switch off 'requires a credit': clients hold credits for this session type."
            ]
        elif Session.objects.filter(session_type=session_type).exists():
            errors["requires_credit"] = [
                "Cannot switch off 'requires a credit': sessions of this type are booked with credits."
            ]
    if errors:
        raise ValidationError(errors)


# --- Add-ons and intake forms (seed 003) -------------------------------------------------------


def validate_add_on(
    session_type: SessionType, *, add_on_for: Iterable[SessionType], price, currency: str, intake_form,
) -> None:
    """An add-on extends main session types only: never itself, never another add-on.

    `add_on_for` is the base session types being saved (empty: not an add-on). A price and an
    intake form belong to add-ons, so they need a base session type too.
    """
    bases = list(add_on_for or [])
    name = session_type.name or "this session type"
    errors: dict[str, list[str]] = {}
    base_ids = {base.pk for base in bases}
    if session_type.pk is not None and session_type.pk in base_ids:
        errors.setdefault("add_on_for", []).append(
            f"An add-on cannot extend itself: remove {name} from the session types it is an add-on for."
        )
    through = SessionType.add_on_for.through
    add_on_bases = sorted(
        SessionType.objects.filter(pk__in=base_ids - {session_type.pk}, add_on_for__isnull=False)
        .distinct().values_list("name", flat=True)
    ) if base_ids else []
    if add_on_bases:
        errors.setdefault("add_on_for", []).append(
            f"{', '.join(add_on_bases)} {'is' if len(add_on_bases) == 1 else 'are'} itself an add-on: "
            "an add-on extends main session types only."
        )
    if bases and session_type.pk is not None:
        own_add_ons = sorted(
            through.objects.filter(to_sessiontype_id=session_type.pk)
            .exclude(from_sessiontype_id=session_type.pk)
            .values_list("from_sessiontype__name", flat=True)
        )
        if own_add_ons:
            errors.setdefault("add_on_for", []).append(
                f"{name} has add-ons of its own ({', '.join(own_add_ons)}), so it cannot be an add-on too."
            )
    if price is not None:
        problems = _price_errors(price, currency or "", "Price")
        if problems:
            errors["price"] = problems
    if not bases:
        if price is not None:
            errors.setdefault("price", []).append(
                "Only an add-on has a price of its own: choose the session types it is an add-on for, "
                "or leave the price empty."
            )
        if intake_form is not None:
            errors["intake_form"] = [
                "Only an add-on asks an intake form: choose the session types it is an add-on for, "
                "or leave the form empty."
            ]
    if errors:
        raise ValidationError(errors)


def validate_intake_question(*, kind: str, blocks_on_yes: bool, block_reason: str) -> None:
    """A blocking question is a yes/no question with a reason the client is shown."""
    errors: dict[str, list[str]] = {}
    if blocks_on_yes and kind != "yes_no":
        errors["kind"] = ["Only a yes/no question can block an add-on: make it yes/no or untick “blocks on yes”."]
    if blocks_on_yes and not (block_reason or "").strip():
        errors["block_reason"] = [
            "A blocking question needs the reason shown to the client, e.g. "
            "“Hot stones are not suitable during pregnancy.”"
        ]
    if errors:
        raise ValidationError(errors)
