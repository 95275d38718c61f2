"""Pack rules after the sale: editing a pack never reaches earlier buyers, session type changes that
would strand packs or credits are refused, and selling follows the pack's staff and prices.

Split from tests/test_pack_validation.py, whose fixtures it uses."""
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from catalog.models import SessionType
from catalog.services import pack_update, session_type_update
from catalog.validation import LineData, StaffPriceData
from ledger.models import CreditGrant
from ledger.services import credits_adjust
from payments.exceptions import PackNotForSale
from payments.services import purchase_create, purchase_mark_paid
from tests.test_pack_validation import (  # noqa: F401 - fixtures (and helpers) shared with tests/test_pack_validation.py
    line,  # noqa: F401, F811
    other_coach,  # noqa: F401, F811
    pack_fields,  # noqa: F401, F811
    refused,  # noqa: F401, F811
    rule_context,  # noqa: F401, F811
    types,  # noqa: F401, F811
)

pytestmark = pytest.mark.django_db


# --- editing a pack never reaches earlier buyers -------------------------------------------------


def test_editing_a_pack_after_a_purchase_keeps_the_purchase_snapshot(
    client_a, client_b, massage, make_pack, staff_user
):
    pack = make_pack([(massage, False, 10)], price=Decimal("300.00"))
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
    pack_update(
        pack=pack,
        actor=staff_user,
        price=Decimal("120.00"),
        name="Three Massages",
        lines=[LineData(massage, credits=3)],
    )

    paid = purchase_mark_paid(purchase=purchase, actor=staff_user)
    assert paid.price == Decimal("300.00")
    assert paid.snapshot["name"] == "Pack 1" and paid.snapshot["price"] == "300.00"
    assert [line["credits"] for line in paid.snapshot["lines"]] == [10]
    assert CreditGrant.objects.get(purchase=paid).quantity == 10

    later = purchase_mark_paid(
        purchase=purchase_create(client=client_b, pack=pack, actor=staff_user), actor=staff_user
    )
    assert later.price == Decimal("120.00")
    assert CreditGrant.objects.get(purchase=later).quantity == 3


# --- session type changes that would strand packs or credits -------------------------------------


def test_session_type_in_a_published_pack_cannot_be_archived(make_pack, massage, staff_user):
    pack = make_pack([(massage, False, 5)], name="Ten Massages")
    with pytest.raises(ValidationError) as caught:
        session_type_update(session_type=massage, actor=staff_user, archived=True)
    assert caught.value.message_dict == {
        "archived": [
            "Cannot archive: published packs use this session type (Ten Massages). "
            "Unpublish them or remove the session type from them first."
        ]
    }
    massage.refresh_from_db()
    assert not massage.archived

    pack_update(pack=pack, actor=staff_user, published=False, sell_online=False)
    assert session_type_update(session_type=massage, actor=staff_user, archived=True).archived
    # ...and the pack cannot be published again while it sells an archived session type.
    with pytest.raises(ValidationError) as caught:
        pack_update(pack=pack, actor=staff_user, published=True)
    assert (
        "Credit line 1 (Massage 60): the session type is archived."
        in caught.value.message_dict["credit_lines"]
    )


def test_requires_credit_stays_on_while_packs_or_credits_depend_on_it(
    make_pack, massage, physio, category, client_a, staff_user
):
    make_pack([(massage, False, 5)], published=False, sell_online=False)
    with pytest.raises(ValidationError) as caught:
        session_type_update(session_type=massage, actor=staff_user, requires_credit=False)
    assert caught.value.message_dict == {
        "requires_credit": [
            "Cannot switch off 'requires a credit': packs sell credits for this session type."
        ]
    }

    credits_adjust(
        client=client_a, session_type=physio, amount=2, reason="opening balance", actor=staff_user
    )
    with pytest.raises(ValidationError) as caught:
        session_type_update(session_type=physio, actor=staff_user, requires_credit=False)
    assert caught.value.message_dict == {
        "requires_credit": [
            "Cannot switch off 'requires a credit': clients hold credits for this session type."
        ]
    }

    free = SessionType.objects.create(name="Open gym", category=category)
    assert not session_type_update(
        session_type=free, actor=staff_user, requires_credit=False
    ).requires_credit
    massage.refresh_from_db()
    physio.refresh_from_db()
    assert massage.requires_credit and physio.requires_credit


# --- selling -------------------------------------------------------------------------------------


def test_unpublished_pack_cannot_be_sold(make_pack, massage, client_a, staff_user):
    pack = make_pack([(massage, False, 5)], name="Secret", published=False, sell_online=False)
    with pytest.raises(PackNotForSale, match="Secret is not published, so it cannot be sold."):
        purchase_create(client=client_a, pack=pack, actor=staff_user)


def test_restricted_pack_is_sold_only_with_its_staff_at_their_price(
    make_pack, massage, client_a, staff_user, coach, other_coach
):
    pack = make_pack(
        [(massage, False, 5)],
        name="With Carter",
        all_staff=False,
        staff_prices=[StaffPriceData(coach, Decimal("350.00"))],
    )
    with pytest.raises(PackNotForSale, match="With Carter is not sold with Other Coach."):
        purchase_create(client=client_a, pack=pack, actor=staff_user, staff_member=other_coach)
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user, staff_member=coach)
    assert (purchase.price, purchase.currency) == (Decimal("350.00"), "GBP")


def test_per_staff_price_is_charged_and_others_pay_the_pack_price(
    make_pack, massage, client_a, staff_user, coach, other_coach
):
    pack = make_pack(
        [(massage, False, 5)],
        price=Decimal("300.00"),
        staff_prices=[StaffPriceData(coach, Decimal("420.00"))],
    )
    assert purchase_create(
        client=client_a, pack=pack, actor=staff_user, staff_member=coach
    ).price == Decimal("420.00")
    assert purchase_create(
        client=client_a, pack=pack, actor=staff_user, staff_member=other_coach
    ).price == Decimal("300.00")
    assert purchase_create(client=client_a, pack=pack, actor=staff_user).price == Decimal("300.00")


def test_requires_credit_stays_on_while_sessions_of_the_type_exist(category, coach, staff_user):
    from datetime import timedelta

    from django.utils import timezone

    from core.sessions import session_create

    yoga = SessionType.objects.create(name="Yoga", category=category)
    coach.session_types.add(yoga)
    session_create(
        session_type=yoga, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        actor=staff_user, outside_hours_reason="test diary has no working hours",
    )
    with pytest.raises(ValidationError) as caught:
        session_type_update(session_type=yoga, actor=staff_user, requires_credit=False)
    assert caught.value.message_dict == {
        "requires_credit": [
            "Cannot switch off 'requires a credit': sessions of this type are booked with credits."
        ]
    }
    yoga.refresh_from_db()
    assert yoga.requires_credit
