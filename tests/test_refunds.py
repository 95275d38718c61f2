"""Refunds: full and partial, through Stripe (the real SDK against the double) or recorded for desk
payments; unused credits voided in proportion, once, with entries linked to the refund."""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse
from django.utils import timezone

from core.bookings import booking_create
from core.roles import FINANCE, FRONT_DESK, sync_roles
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.models import CreditGrant, EntryKind, EntrySource, LedgerEntry
from ledger.services import credit_redeem
from payments import stripe_double
from payments.exceptions import InvalidRefund
from payments.models import (
    LocalStripeObject,
    PaymentMethod,
    Purchase,
    PurchaseChannel,
    PurchaseStatus,
    Refund,
    RefundStatus,
)
from payments.money import to_minor
from payments.online import purchase_confirm_online
from payments.refunds import (
    DASHBOARD_REASON,
    _refund_open,
    refund_create,
    refund_reflect_charge,
    refund_retry,
)
from payments.services import payment_record, purchase_create
from payments.stripe_gateway import stripe_client

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def double(settings):
    settings.STRIPE_TEST_DOUBLE = True


@pytest.fixture
def pack(make_pack, massage):
    return make_pack([(massage, False, 10)])  # 10 massages for £300


def pay_online(client, pack, actor) -> Purchase:
    """What the public page and Stripe's webhook do: a Checkout Session, paid, then confirmed."""
    purchase = purchase_create(client=client, pack=pack, actor=actor, channel=PurchaseChannel.ONLINE)
    stripe = stripe_client()
    session = stripe.v1.checkout.sessions.create(
        params={
            "mode": "payment", "customer_email": client.email, "metadata": {"purchase_id": str(purchase.pk)},
            "line_items": [{"quantity": 1, "price_data": {
                "currency": purchase.currency.lower(), "unit_amount": to_minor(purchase.price, purchase.currency),
                "product_data": {"name": purchase.snapshot["name"]},
            }}],
            "success_url": "http://testserver/packs/success/?session_id={CHECKOUT_SESSION_ID}",
            "cancel_url": "http://testserver/packs/",
        },
        options={"idempotency_key": f"packdesk-checkout-{purchase.pk}"},
    )
    Purchase.objects.filter(pk=purchase.pk).update(stripe_checkout_session_id=session.id)
    stripe_double.complete_checkout(session.id)
    paid = stripe.v1.checkout.sessions.retrieve(session.id).to_dict()
    return purchase_confirm_online(purchase_id=purchase.pk, checkout_session=paid)


def charge_of(purchase: Purchase) -> str:
    return stripe_double.load(purchase.stripe_payment_intent_id, "payment_intent")["latest_charge"]


def stripe_refunds_of(purchase: Purchase) -> list[dict]:
    rows = LocalStripeObject.objects.filter(object_type="refund").order_by("pk")
    return [r.data for r in rows if r.data["payment_intent"] == purchase.stripe_payment_intent_id]


def unused(purchase: Purchase) -> int:
    return sum(g.remaining for g in CreditGrant.objects.filter(purchase=purchase))


def voided_by(refund: Refund) -> int:
    return -sum(refund.ledger_entries.values_list("amount", flat=True))


def use_credits(client, session_type, n: int, actor) -> None:
    for _ in range(n):
        credit_redeem(client=client, session_type=session_type, at=timezone.now() + timedelta(days=1), actor=actor)


def assert_ledger_ok():
    result = ledger_check()
    assert result.ok, result.problems


# --- Through Stripe ------------------------------------------------------------------------


def test_full_refund_through_stripe_voids_every_unused_credit(client_a, pack, staff_user, massage):
    purchase = pay_online(client_a, pack, staff_user)
    use_credits(client_a, massage, 2, staff_user)

    refund = refund_create(purchase=purchase, amount=Decimal("300.00"), reason="Moving away", actor=staff_user)

    assert (refund.status, refund.method, refund.error) == (RefundStatus.SUCCEEDED, PaymentMethod.STRIPE, "")
    [sent] = stripe_refunds_of(purchase)
    assert (sent["id"], sent["amount"]) == (refund.stripe_refund_id, 30000)
    assert sent["metadata"] == {"refund_id": str(refund.pk), "purchase_id": str(purchase.pk)}
    assert LocalStripeObject.objects.get(object_id=sent["id"]).idempotency_key == f"packdesk-refund-{refund.pk}"
    purchase.refresh_from_db()
    assert (purchase.status, purchase.refunded_amount) == (PurchaseStatus.REFUNDED, Decimal("300.00"))
    assert unused(purchase) == 0 and voided_by(refund) == 8
    entry = refund.ledger_entries.get()
    assert (entry.kind, entry.source, entry.amount, entry.actor) == (EntryKind.VOIDED, EntrySource.REFUND, -8, staff_user)
    assert "Moving away" in entry.note
    assert LedgerEntry.objects.filter(grant__purchase=purchase, kind=EntryKind.USED).count() == 2  # used stay used
    assert_ledger_ok()


def test_two_partial_refunds_void_in_proportion_and_sum_to_the_price(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)

    first = refund_create(purchase=purchase, amount=Decimal("150.00"), reason="Half back", actor=staff_user)
    purchase.refresh_from_db()
    assert (purchase.status, purchase.refunded_amount, unused(purchase)) == (PurchaseStatus.PAID, Decimal("150.00"), 5)
    assert voided_by(first) == 5

    second = refund_create(purchase=purchase, amount=Decimal("150.00"), reason="The rest", actor=staff_user)
    purchase.refresh_from_db()
    assert (purchase.status, purchase.refunded_amount, unused(purchase)) == (PurchaseStatus.REFUNDED, Decimal("300.00"), 0)
    assert voided_by(second) == 5
    assert [r["amount"] for r in stripe_refunds_of(purchase)] == [15000, 15000]
    keys = set(LedgerEntry.objects.filter(refund__isnull=False).values_list("idempotency_key", flat=True))
    grant = CreditGrant.objects.get(purchase=purchase)
    assert keys == {f"refund:{first.pk}:grant:{grant.pk}", f"refund:{second.pk}:grant:{grant.pk}"}
    assert_ledger_ok()


def test_never_more_than_unused_is_voided(client_a, client_b, pack, staff_user, massage):
    # 7 of 10 used: a full refund voids the 3 left.
    full = pay_online(client_a, pack, staff_user)
    use_credits(client_a, massage, 7, staff_user)
    assert voided_by(refund_create(purchase=full, amount=Decimal("300.00"), reason="r", actor=staff_user)) == 3

    # In halves: the first half would void 5 but only 3 are left; the second finds nothing left.
    halves = pay_online(client_b, pack, staff_user)
    use_credits(client_b, massage, 7, staff_user)
    first = refund_create(purchase=halves, amount=Decimal("150.00"), reason="r", actor=staff_user)
    second = refund_create(purchase=halves, amount=Decimal("150.00"), reason="r", actor=staff_user)
    assert (voided_by(first), voided_by(second)) == (3, 0)
    assert LedgerEntry.objects.filter(grant__purchase=halves, kind=EntryKind.USED).count() == 7
    halves.refresh_from_db()
    assert halves.status == PurchaseStatus.REFUNDED
    assert_ledger_ok()


def test_voiding_rounds_half_up_on_the_whole_line(client_a, pack, staff_user, massage, coach):
    # A booking sold the pack on the spot: one credit held for it, nine released on payment.
    # The line is 10 credits: refunding 15% voids round-half-up(1.5) = 2, not 1 from the nine.
    session = session_create(
        session_type=massage, staff_member=coach, starts_at=timezone.now() + timedelta(days=2),
        capacity=1, actor=staff_user, outside_hours_reason="refund tests",
    )
    booking = booking_create(client=client_a, session=session, actor=staff_user, sell_pack=pack)
    purchase = booking.purchase
    payment_record(purchase=purchase, method=PaymentMethod.CARD_TERMINAL, amount=purchase.price, actor=staff_user)
    assert sorted(CreditGrant.objects.filter(purchase=purchase).values_list("quantity", flat=True)) == [1, 9]

    refund = refund_create(purchase=purchase, amount=Decimal("45.00"), reason="Partial", actor=staff_user)

    assert voided_by(refund) == 2 and unused(purchase) == 7
    assert refund.method == PaymentMethod.CARD_TERMINAL
    assert_ledger_ok()


def test_unlimited_line_is_voided_only_by_a_full_refund(client_a, make_pack, massage, physio, staff_user):
    pack = make_pack([(massage, False, 4), (physio, True, None)])
    purchase = pay_online(client_a, pack, staff_user)
    membership = CreditGrant.objects.get(purchase=purchase, unlimited=True)

    refund_create(purchase=purchase, amount=Decimal("150.00"), reason="Half", actor=staff_user)
    membership.refresh_from_db()
    assert membership.state == "active" and unused(purchase) == 2

    last = refund_create(purchase=purchase, amount=Decimal("150.00"), reason="Rest", actor=staff_user)
    membership.refresh_from_db()
    assert membership.state == "voided"
    assert last.ledger_entries.filter(grant=membership, amount=0).exists()
    assert_ledger_ok()


@pytest.mark.parametrize(
    ("amount", "reason", "message"),
    [
        (Decimal("300.01"), "r", "at most 300.00 GBP"),
        (Decimal("0"), "r", "more than 0"),
        (Decimal("-5"), "r", "more than 0"),
        (Decimal("10.005"), "r", "more decimals than GBP"),
        (Decimal("10"), "  ", "Give a reason"),
    ],
)
def test_bad_refunds_are_refused_with_nothing_changed(client_a, pack, staff_user, amount, reason, message):
    purchase = pay_online(client_a, pack, staff_user)

    with pytest.raises(InvalidRefund, match=message):
        refund_create(purchase=purchase, amount=amount, reason=reason, actor=staff_user)

    assert not Refund.objects.exists() and stripe_refunds_of(purchase) == []
    purchase.refresh_from_db()
    assert (purchase.status, purchase.refunded_amount, unused(purchase)) == (PurchaseStatus.PAID, Decimal("0"), 10)


def test_refund_over_the_remainder_and_of_unpaid_or_refunded_purchases_is_refused(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    refund_create(purchase=purchase, amount=Decimal("200.00"), reason="r", actor=staff_user)
    with pytest.raises(InvalidRefund, match=r"at most 100.00 GBP .*200.00 GBP already refunded"):
        refund_create(purchase=purchase, amount=Decimal("150.00"), reason="r", actor=staff_user)
    refund_create(purchase=purchase, amount=Decimal("100.00"), reason="r", actor=staff_user)
    with pytest.raises(InvalidRefund, match="already fully refunded"):
        refund_create(purchase=purchase, amount=Decimal("1.00"), reason="r", actor=staff_user)

    pending = purchase_create(client=client_a, pack=pack, actor=staff_user)
    with pytest.raises(InvalidRefund, match="pending payment: only a paid purchase is refunded"):
        refund_create(purchase=pending, amount=Decimal("1.00"), reason="r", actor=staff_user)
    assert Refund.objects.count() == 2


def test_stripe_refusal_fails_the_refund_and_voids_nothing(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    # £200 refunded in Stripe's dashboard, not reflected yet: Stripe has only £100 left to give.
    stripe_client().v1.refunds.create(params={"payment_intent": purchase.stripe_payment_intent_id, "amount": 20000})

    refund = refund_create(purchase=purchase, amount=Decimal("150.00"), reason="r", actor=staff_user)

    assert refund.status == RefundStatus.FAILED and refund.applied_at is None
    assert refund.error.startswith("Stripe refused the refund:") and "greater than unrefunded" in refund.error
    assert not refund.ledger_entries.exists()
    purchase.refresh_from_db()
    assert (purchase.refunded_amount, unused(purchase)) == (Decimal("0"), 10)

    # The dashboard refund then arrives (charge.refunded) and is reflected: £200 of £300 voids 7.
    [reflected] = refund_reflect_charge(charge_id=charge_of(purchase))
    assert (reflected.amount, reflected.reason, reflected.created_by) == (Decimal("200.00"), DASHBOARD_REASON, None)
    assert voided_by(reflected) == 7
    refund.refresh_from_db()
    assert refund.status == RefundStatus.FAILED  # a failed refund stays failed
    assert_ledger_ok()


def test_a_dashboard_refund_is_reflected_once(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    made = stripe_client().v1.refunds.create(params={"payment_intent": purchase.stripe_payment_intent_id, "amount": 15000})

    [refund] = refund_reflect_charge(charge_id=charge_of(purchase))
    assert refund_reflect_charge(charge_id=charge_of(purchase)) == []

    assert Refund.objects.get() == refund
    assert (refund.stripe_refund_id, refund.status, refund.method) == (made.id, RefundStatus.SUCCEEDED, PaymentMethod.STRIPE)
    assert voided_by(refund) == 5 and unused(purchase) == 5
    purchase.refresh_from_db()
    assert (purchase.status, purchase.refunded_amount) == (PurchaseStatus.PAID, Decimal("150.00"))
    assert_ledger_ok()


def test_a_crash_between_stripe_and_apply_is_healed_by_charge_refunded(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    # Step 1 committed and Stripe refunded (step 2), then the process died before step 3.
    refund = _refund_open(purchase=purchase, amount=Decimal("300.00"), reason="Crash", actor=staff_user)
    stripe_client().v1.refunds.create(
        params={"payment_intent": purchase.stripe_payment_intent_id, "amount": 30000,
                "metadata": {"refund_id": str(refund.pk), "purchase_id": str(purchase.pk)}},
        options={"idempotency_key": f"packdesk-refund-{refund.pk}"},
    )
    assert unused(purchase) == 10

    assert refund_reflect_charge(charge_id=charge_of(purchase)) == [refund]
    assert refund_reflect_charge(charge_id=charge_of(purchase)) == []

    refund.refresh_from_db()
    assert refund.status == RefundStatus.SUCCEEDED and refund.stripe_refund_id == stripe_refunds_of(purchase)[0]["id"]
    assert Refund.objects.count() == 1 and voided_by(refund) == 10
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.REFUNDED
    assert_ledger_ok()


def test_retry_sends_a_stuck_refund_once(client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    # A crash after step 1: pending, never sent. Its money cannot be refunded a second time meanwhile.
    refund = _refund_open(purchase=purchase, amount=Decimal("100.00"), reason="Stuck", actor=staff_user)
    with pytest.raises(InvalidRefund, match=r"at most 200.00 GBP .*100.00 GBP being refunded"):
        refund_create(purchase=purchase, amount=Decimal("300.00"), reason="r", actor=staff_user)

    assert refund_retry(refund_id=refund.pk).status == RefundStatus.SUCCEEDED
    with pytest.raises(InvalidRefund, match="succeeded: nothing to send"):
        refund_retry(refund_id=refund.pk)
    assert len(stripe_refunds_of(purchase)) == 1 and voided_by(refund) == 3


def test_desk_cash_refund_is_recorded_without_stripe(client_a, pack, staff_user):
    purchase = purchase_create(client=client_a, pack=pack, actor=staff_user)
    payment_record(purchase=purchase, method=PaymentMethod.CASH, amount=purchase.price, actor=staff_user)

    refund = refund_create(purchase=purchase, amount=Decimal("300.00"), reason="Injured", actor=staff_user)

    assert (refund.method, refund.status, refund.stripe_refund_id) == (PaymentMethod.CASH, RefundStatus.SUCCEEDED, None)
    assert not LocalStripeObject.objects.filter(object_type="refund").exists()
    assert voided_by(refund) == 10
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.REFUNDED
    assert_ledger_ok()


# --- Admin ---------------------------------------------------------------------------------


def refund_url(purchase) -> str:
    return reverse("admin:payments_purchase_refund", args=[purchase.pk])


def test_admin_refund_page_shows_credits_and_refunds(admin_client, client_a, pack, staff_user, massage):
    purchase = pay_online(client_a, pack, staff_user)
    use_credits(client_a, massage, 4, staff_user)
    assert refund_url(purchase) in admin_client.get(reverse("admin:payments_purchase_change", args=[purchase.pk])).content.decode()

    page = admin_client.get(refund_url(purchase))
    assert page.status_code == 200
    text = page.content.decode()
    assert 'value="300.00"' in text  # the default: all that is left
    assert page.context["lines"][0].unused == 6 and page.context["lines"][0].to_void == 6

    response = admin_client.post(refund_url(purchase), {"amount": "150.00", "reason": "Goodwill"})
    assert response.status_code == 302
    refund = Refund.objects.get()
    assert (refund.amount, refund.created_by.username, voided_by(refund)) == (Decimal("150.00"), "boss", 5)
    assert unused(purchase) == 1
    assert admin_client.get(reverse("admin:payments_refund_changelist")).status_code == 200


@pytest.mark.parametrize(("amount", "error"), [("999", "at most 300.00 GBP"), ("abc", "Enter a number"), ("", "required")])
def test_admin_bad_refund_amount_shows_the_error(admin_client, client_a, pack, staff_user, amount, error):
    purchase = pay_online(client_a, pack, staff_user)

    response = admin_client.post(refund_url(purchase), {"amount": amount, "reason": "r"})

    assert response.status_code == 200 and error in response.content.decode()
    assert not Refund.objects.exists()


def test_admin_shows_stripe_refusal_on_the_page(admin_client, client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    stripe_client().v1.refunds.create(params={"payment_intent": purchase.stripe_payment_intent_id, "amount": 29000})

    response = admin_client.post(refund_url(purchase), {"amount": "50.00", "reason": "r"})

    assert response.status_code == 200 and "Stripe refused the refund" in response.content.decode()
    assert Refund.objects.get().status == RefundStatus.FAILED


@pytest.fixture
def member(db):
    sync_roles()

    def make(role: str):
        user = get_user_model().objects.create_user(role.replace(" ", "-"), password="pw-role-123", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        return user

    return make


def test_finance_refunds_and_front_desk_cannot(client, member, client_a, pack, staff_user):
    purchase = pay_online(client_a, pack, staff_user)
    change_url = reverse("admin:payments_purchase_change", args=[purchase.pk])

    client.force_login(member(FRONT_DESK))
    assert refund_url(purchase) not in client.get(change_url).content.decode()
    assert client.get(refund_url(purchase)).status_code == 403
    assert client.post(refund_url(purchase), {"amount": "300.00", "reason": "r"}).status_code == 403
    assert not Refund.objects.exists()

    client.force_login(member(FINANCE))
    assert refund_url(purchase) in client.get(change_url).content.decode()
    response = client.post(refund_url(purchase), {"amount": "300.00", "reason": "Cancelled membership"})
    assert response.status_code == 302
    assert Refund.objects.get().status == RefundStatus.SUCCEEDED
    assert client.get(reverse("admin:payments_refund_changelist")).status_code == 200
