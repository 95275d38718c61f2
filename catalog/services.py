"""Writes to the catalog: every change goes through these functions."""
from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from catalog.models import CreditPack, PackCreditLine, PackStaffPrice, SessionType
from catalog.validation import (
    LineData,
    StaffPriceData,
    validate_add_on,
    validate_pack,
    validate_session_type_change,
)

PACK_FIELDS = (
    "name", "description", "category", "price", "currency", "sell_online", "published",
    "restrict_to", "all_staff", "validity_amount", "validity_unit", "valid_from",
    "is_recurring", "recurring_collection", "billing_interval", "billing_interval_count", "recurs_when",
    "minimum_commitment", "free_trial_days",
)


def _apply_fields(pack: CreditPack, fields: dict) -> None:
    unknown = set(fields) - set(PACK_FIELDS)
    if unknown:
        raise TypeError(f"unknown credit pack fields: {sorted(unknown)}")
    for name, value in fields.items():
        setattr(pack, name, value)


def _pack_data(pack: CreditPack) -> dict:
    data = {name: getattr(pack, name) for name in PACK_FIELDS if name != "category"}
    # Reading a missing foreign key raises; validation must see None and name the field instead.
    data["category"] = pack.category if pack.category_id is not None else None
    return data


def _save_pack(pack: CreditPack, lines: list[LineData], staff_prices: list[StaffPriceData], actor) -> None:
    validate_pack(_pack_data(pack), lines, staff_prices)
    pack.full_clean(exclude=["credit_lines"])  # unique name and model-level checks
    pack._history_user = actor
    pack.save()
    pack.credit_lines.all().delete()
    PackCreditLine.objects.bulk_create(
        PackCreditLine(
            pack=pack, session_type=line.session_type, unlimited=line.unlimited,
            credits=None if line.unlimited else line.credits,
            validity_amount=line.validity_amount, validity_unit=line.validity_unit or "",
        )
        for line in lines
    )
    pack.staff_prices.all().delete()
    PackStaffPrice.objects.bulk_create(
        PackStaffPrice(pack=pack, staff_member=row.staff_member, price=row.price)
        for row in staff_prices
    )


@transaction.atomic
def pack_create(
    *, actor, lines: list[LineData], staff_prices: list[StaffPriceData] = (), **fields
) -> CreditPack:
    pack = CreditPack()
    _apply_fields(pack, fields)
    _save_pack(pack, list(lines), list(staff_prices), actor)
    return pack


@transaction.atomic
def pack_update(
    *, pack: CreditPack, actor, lines: list[LineData] | None = None,
    staff_prices: list[StaffPriceData] | None = None, **fields,
) -> CreditPack:
    """Changes future purchases only: earlier purchases keep their snapshot."""
    pack = CreditPack.objects.select_for_update().get(pk=pack.pk)
    _apply_fields(pack, fields)
    if lines is None:
        lines = [
            LineData(l.session_type, l.unlimited, l.credits, l.validity_amount, l.validity_unit)
            for l in pack.credit_lines.select_related("session_type")
        ]
    if staff_prices is None:
        staff_prices = [
            StaffPriceData(r.staff_member, r.price)
            for r in pack.staff_prices.select_related("staff_member")
        ]
    _save_pack(pack, list(lines), list(staff_prices), actor)
    return pack


@transaction.atomic
def session_type_update(*, session_type: SessionType, actor, add_on_for=None, **fields) -> SessionType:
    """`add_on_for`: the base session types this one is an add-on for (None: unchanged)."""
    session_type = SessionType.objects.select_for_update().get(pk=session_type.pk)
    validate_session_type_change(
        session_type,
        archived=fields.get("archived", session_type.archived),
        requires_credit=fields.get("requires_credit", session_type.requires_credit),
    )
    for name, value in fields.items():
        setattr(session_type, name, value)
    bases = list(session_type.add_on_for.all()) if add_on_for is None else list(add_on_for)
    validate_add_on(
        session_type, add_on_for=bases, price=session_type.price, currency=session_type.currency,
        intake_form=session_type.intake_form,
    )
    session_type.full_clean()
    session_type._history_user = actor
    session_type.save()
    if add_on_for is not None:
        session_type.add_on_for.set(bases)
    return session_type


def pack_price_for(pack: CreditPack, staff_member=None) -> Decimal:
    if staff_member is not None:
        for row in pack.staff_prices.all():
            if row.staff_member_id == staff_member.pk and row.price is not None:
                return row.price
    return pack.price


def pack_snapshot(pack: CreditPack) -> dict:
    """A JSON copy of everything a purchase needs, so later edits to the pack never reach it."""
    lines = list(pack.credit_lines.select_related("session_type").order_by("id"))
    return {
        "pack_id": pack.pk,
        "name": pack.name,
        "category": pack.category.name,
        "price": str(pack.price),
        "currency": pack.currency,
        "restrict_to": pack.restrict_to,
        "valid_from": pack.valid_from,
        "validity_amount": pack.validity_amount,
        "validity_unit": pack.validity_unit,
        "all_staff": pack.all_staff,
        "staff": [
            {"staff_member_id": r.staff_member_id, "price": None if r.price is None else str(r.price)}
            for r in pack.staff_prices.all().order_by("id")
        ],
        "lines": [
            {
                "session_type_id": line.session_type_id,
                "session_type": line.session_type.name,
                "unlimited": line.unlimited,
                "credits": line.credits,
                "validity_amount": line.validity_amount or pack.validity_amount,
                "validity_unit": line.validity_unit or pack.validity_unit,
            }
            for line in lines
        ],
        "recurring": {
            "is_recurring": pack.is_recurring,
            "billing_interval": pack.billing_interval,
            "billing_interval_count": pack.billing_interval_count,
            "recurs_when": pack.recurs_when,
            "collection": pack.recurring_collection,
            "minimum_commitment": pack.minimum_commitment,
            "free_trial_days": pack.free_trial_days,
        },
        "taken_at": timezone.now().isoformat(),
    }
