"""Every rule of a credit pack's configuration: the service's message on the right field, the
database constraint behind it where one can express it, and the snapshot that protects buyers."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from catalog.models import CreditPack, PackCreditLine, PackStaffPrice, SessionType
from catalog.services import pack_create, pack_update
from catalog.validation import LineData, StaffPriceData
from core.models import StaffMember

pytestmark = pytest.mark.django_db



@pytest.fixture
def other_coach(db, django_user_model, massage):
    user = django_user_model.objects.create_user("other", "other@example.com", "pw-other-123")
    member = StaffMember.objects.create(user=user, display_name="Other Coach")
    member.session_types.set([massage])
    return member


@pytest.fixture
def types(db, category):
    return [
        SessionType.objects.create(name=f"Type {n}", category=category, duration_minutes=30)
        for n in range(1, 7)
    ]


@pytest.fixture
def pack_fields(category):
    return dict(
        name="Ten Massages", category=category, price=Decimal("300.00"), currency="GBP",
        published=True, sell_online=True, validity_amount=3, validity_unit="months",
        valid_from="payment", restrict_to="anyone", all_staff=True,
    )


@pytest.fixture
def refused(staff_user, massage, pack_fields):
    """Create a pack with some fields/lines/staff changed; assert it is refused on `field`."""

    def check(field, text, *, lines=None, staff_prices=(), **changes):
        lines = [LineData(massage, credits=10)] if lines is None else lines
        before = CreditPack.objects.count()
        with pytest.raises(ValidationError) as caught:
            pack_create(
                actor=staff_user, lines=lines, staff_prices=staff_prices,
                **{**pack_fields, **changes},
            )
        errors = caught.value.message_dict
        assert field in errors, errors
        assert text in errors[field], errors
        assert CreditPack.objects.count() == before
        return errors

    return check


@pytest.fixture
def rule_context(massage, physio, coach, types, category):
    archived = SessionType.objects.create(name="Old massage", category=category, archived=True)
    free = SessionType.objects.create(name="Open gym", category=category, requires_credit=False)
    return dict(
        massage=massage, physio=physio, coach=coach, types=types, archived=archived, free=free
    )


def raises_integrity(make):
    with pytest.raises(IntegrityError), transaction.atomic():
        make()


# --- every rule, through pack_create, with its message on the field to fix -----------------------

GBP_PRICE = "Price can have at most 2 decimal places in GBP."
LINE_CREDITS = "Credit line 1 (Massage 60): credits must be between 1 and 100, or tick unlimited."
HALF_VALIDITY = "Credit line 1 (Massage 60): give both the validity amount and unit, or neither."
RECURRING = dict(
    is_recurring=True, billing_interval="month", billing_interval_count=1,
    recurs_when="pack_expires", recurring_collection="auto_debit", minimum_commitment=3, free_trial_days=7,
)
NEEDS_INTERVAL = "A recurring pack needs a billing interval (week, month or year)."
EVERY_N = "Billing every N intervals: N must be between 1 and 52."
CURRENCY = "Currency must be a three-letter ISO code in capitals, such as GBP."
OWN_PRICE = (
    "Staff: Coach Carter has no price of their own; with 'all staff' list only "
    "staff members whose price differs."
)


def line(c, credits=5, type_="massage", **kw):
    return LineData(c[type_], credits=credits, **kw)


def bad_line(**kw):
    return lambda c: {"lines": [line(c, **kw)]}


def staff(*rows, **changes):
    return lambda c: {"staff_prices": [StaffPriceData(c["coach"], p) for p in rows], **changes}


def fields(**changes):
    return lambda c: changes


# (field, message, changes) for every rule of catalog/validation.py and the model's own checks.
RULES = [
    ("name", "Name is required.", fields(name="")),
    ("name", "Name is required.", fields(name="   ")),
    ("name", "Name is required.", fields(name=None)),
    ("name", "Ensure this value has at most 120 characters (it has 121).", fields(name="x" * 121)),
    *[("currency", CURRENCY, fields(currency=code)) for code in ("gbp", "GB", "GBPX", "", "G1P")],
    ("price", "Price is required.", fields(price=None)),
    ("price", "Price must be a decimal amount such as 30.00.", fields(price=30.0)),
    ("price", "Price must be a number.", fields(price=Decimal("NaN"))),
    ("price", "Price must be a number.", fields(price=Decimal("Infinity"))),
    ("price", "Price cannot be negative.", fields(price=Decimal("-0.01"))),
    ("price", "Price cannot be more than 99999999.99.", fields(price=Decimal("100000000.00"))),
    ("price", GBP_PRICE, fields(price=Decimal("30.005"))),
    ("price", "Price can have at most 0 decimal places in JPY.",
     fields(price=Decimal("3000.50"), currency="JPY")),
    ("category", "Category is required.", fields(category=None)),
    ("validity_amount", "Validity must be at least 1 days (a day or more).",
     fields(validity_amount=0, validity_unit="days")),
    ("validity_amount", "Validity must be at least 1 weeks (a day or more).",
     fields(validity_amount=None, validity_unit="weeks")),
    ("validity_amount", "Validity cannot be more than 3660 days.",
     fields(validity_amount=3661, validity_unit="days")),
    ("validity_amount", "Validity cannot be more than 522 weeks.",
     fields(validity_amount=523, validity_unit="weeks")),
    ("validity_amount", "Validity cannot be more than 120 months.", fields(validity_amount=121)),
    ("validity_amount", "Validity: choose days, weeks or months.", fields(validity_unit="years")),
    ("valid_from", "Valid from: choose payment, first booking or first session.",
     fields(valid_from="tomorrow")),
    ("restrict_to", "Restrict to: choose anyone, new joiners or active members.",
     fields(restrict_to="vips")),
    ("billing_interval", NEEDS_INTERVAL, fields(**{**RECURRING, "billing_interval": ""})),
    ("billing_interval", NEEDS_INTERVAL, fields(**{**RECURRING, "billing_interval": "fortnight"})),
    ("recurs_when", "A recurring pack needs 'recurs when': no credits remain or pack expires.",
     fields(**{**RECURRING, "recurs_when": ""})),
    ("billing_interval_count", EVERY_N, fields(**{**RECURRING, "billing_interval_count": 0})),
    ("billing_interval_count", EVERY_N, fields(**{**RECURRING, "billing_interval_count": 53})),
    ("minimum_commitment", "Minimum commitment cannot be more than 120 payments.",
     fields(**{**RECURRING, "minimum_commitment": 121})),
    ("free_trial_days", "A free trial cannot be longer than 365 days.",
     fields(**{**RECURRING, "free_trial_days": 366})),
    ("billing_interval", "Only a recurring pack has a billing interval.",
     fields(billing_interval="month")),
    ("recurs_when", "Only a recurring pack has 'recurs when'.", fields(recurs_when="pack_expires")),
    ("minimum_commitment", "Only a recurring pack has a minimum commitment.",
     fields(minimum_commitment=3)),
    ("free_trial_days", "Only a recurring pack has a free trial.", fields(free_trial_days=7)),
    ("sell_online", "A pack sold online must also be published.",
     fields(sell_online=True, published=False)),
    ("credit_lines", "Credit lines: a pack needs at least one session type.", fields(lines=[])),
    ("credit_lines", "Credit lines: a pack has at most 5 session types (6 given).",
     lambda c: {"lines": [LineData(t, credits=1) for t in c["types"]]}),
    ("credit_lines", "Credit line 3 (Massage 60): each session type may appear once in a pack.",
     lambda c: {"lines": [line(c), line(c, type_="physio"), line(c)]}),
    ("credit_lines", "Credit line 1 (Old massage): the session type is archived.",
     bad_line(type_="archived")),
    ("credit_lines", "Credit line 1 (Open gym): the session type does not require a credit.",
     bad_line(type_="free")),
    *[("credit_lines", LINE_CREDITS, bad_line(credits=n)) for n in (0, 101, None, -1)],
    ("credit_lines",
     "Credit line 1 (Massage 60): credits must be empty when the line is unlimited.",
     bad_line(credits=10, unlimited=True)),
    ("credit_lines", HALF_VALIDITY, bad_line(validity_amount=5, validity_unit="")),
    ("credit_lines", HALF_VALIDITY, bad_line(validity_amount=None, validity_unit="days")),
    ("credit_lines",
     "Credit line 1 (Massage 60): validity must be at least 1 days (a day or more).",
     bad_line(validity_amount=0, validity_unit="days")),
    ("credit_lines", "Credit line 1 (Massage 60): validity cannot be more than 120 months.",
     bad_line(validity_amount=121, validity_unit="months")),
    ("credit_lines", "Credit line 1 (Massage 60): validity: choose days, weeks or months.",
     bad_line(validity_amount=1, validity_unit="years")),
    ("staff_prices",
     "Staff: list at least one staff member, or make the pack usable with all staff.",
     fields(all_staff=False)),
    ("staff_prices", "Staff: Coach Carter is listed twice.",
     staff(None, Decimal("10.00"), all_staff=False)),
    ("staff_prices", OWN_PRICE, staff(None)),
    ("staff_prices", "Staff: price for Coach Carter cannot be negative.", staff(Decimal("-5.00"))),
    ("staff_prices", "Staff: price for Coach Carter can have at most 2 decimal places in GBP.",
     staff(Decimal("5.001"))),
    ("staff_prices", "Staff: price for Coach Carter can have at most 0 decimal places in JPY.",
     staff(Decimal("500.5"), currency="JPY", price=Decimal("300"))),
]


@pytest.mark.parametrize(
    ("field", "text", "changes"), RULES, ids=[f"{n}-{rule[0]}" for n, rule in enumerate(RULES)]
)
def test_rule_is_refused_with_its_message(refused, rule_context, field, text, changes):
    refused(field, text, **changes(rule_context))


def test_name_is_unique_case_insensitively(refused, make_pack, massage):
    make_pack([(massage, False, 5)], name="Ten Massages")
    refused("name", "A credit pack with this name already exists.", name="TEN massages")


def test_every_problem_is_reported_at_once(refused, massage):
    errors = refused(
        "name", "Name is required.", name="", price=Decimal("-1"),
        lines=[LineData(massage, credits=0)], all_staff=False,
    )
    assert set(errors) == {"name", "price", "credit_lines", "staff_prices"}
    assert errors["staff_prices"] == [
        "Staff: list at least one staff member, or make the pack usable with all staff."
    ]


def test_limits_are_inclusive(make_pack, massage, physio):
    assert make_pack([(massage, False, 5)], price=Decimal("3000"), currency="JPY").price == 3000
    assert make_pack([(massage, False, 1)], price=Decimal("0.00")).price == 0
    assert make_pack([(massage, False, 1)], validity_amount=1, validity_unit="days")
    assert make_pack([(massage, False, 1)], validity_amount=120, validity_unit="months")
    pack = make_pack([(massage, False, 1), (physio, False, 100)])
    assert sorted(pack.credit_lines.values_list("credits", flat=True)) == [1, 100]


def test_a_complete_recurring_pack_is_accepted(make_pack, massage):
    pack = make_pack([(massage, False, 4)], **{**RECURRING, "recurs_when": "no_credits_remain"})
    assert (pack.is_recurring, pack.minimum_commitment, pack.free_trial_days) == (True, 3, 7)


def test_full_pack_is_accepted(staff_user, pack_fields, types, coach, other_coach):
    lines = [LineData(t, credits=n * 10) for n, t in enumerate(types[:4], start=1)]
    lines.append(LineData(types[4], unlimited=True, validity_amount=2, validity_unit="weeks"))
    pack = pack_create(
        actor=staff_user,
        lines=lines,
        staff_prices=[StaffPriceData(coach, Decimal("350.00")), StaffPriceData(other_coach, None)],
        **{**pack_fields, "all_staff": False},
    )
    stored = list(
        pack.credit_lines.order_by("id").values_list(
            "session_type__name", "unlimited", "credits", "validity_amount", "validity_unit"
        )
    )
    assert stored == [
        ("Type 1", False, 10, None, ""),
        ("Type 2", False, 20, None, ""),
        ("Type 3", False, 30, None, ""),
        ("Type 4", False, 40, None, ""),
        ("Type 5", True, None, 2, "weeks"),
    ]
    assert dict(pack.staff_prices.values_list("staff_member__display_name", "price")) == {
        "Coach Carter": Decimal("350.00"),
        "Other Coach": None,
    }
    assert pack.history.count() == 1


def test_update_is_validated_and_changes_nothing_when_refused(staff_user, make_pack, massage):
    make_pack([(massage, False, 5)], name="Taken")
    pack = make_pack([(massage, False, 5)], name="Mine")
    with pytest.raises(ValidationError) as caught:
        pack_update(pack=pack, actor=staff_user, name="TAKEN", price=Decimal("-3"))
    assert caught.value.message_dict["price"] == ["Price cannot be negative."]
    with pytest.raises(ValidationError) as caught:
        pack_update(pack=pack, actor=staff_user, name="taken")
    assert caught.value.message_dict == {"name": ["A credit pack with this name already exists."]}
    with pytest.raises(ValidationError) as caught:
        pack_update(pack=pack, actor=staff_user, lines=[LineData(massage, credits=101)])
    assert "credit_lines" in caught.value.message_dict
    pack.refresh_from_db()
    assert (pack.name, pack.price) == ("Mine", Decimal("300.00"))
    assert list(pack.credit_lines.values_list("credits", flat=True)) == [5]
    # Renaming to its own name in another case is not a clash with itself.
    assert pack_update(pack=pack, actor=staff_user, name="MINE").name == "MINE"
    with pytest.raises(TypeError, match="unknown credit pack fields"):
        pack_update(pack=pack, actor=staff_user, colour="red")


# --- database constraints: the same rules below the ORM ------------------------------------------


def test_database_refuses_line_credits_outside_1_to_100(make_pack, massage, physio):
    pack = make_pack([(massage, False, 5)])
    for credits, unlimited in ((0, False), (101, False), (None, False), (5, True)):
        row = PackCreditLine(pack=pack, session_type=physio, credits=credits, unlimited=unlimited)
        raises_integrity(lambda row=row: PackCreditLine.objects.bulk_create([row]))
    PackCreditLine.objects.bulk_create(
        [PackCreditLine(pack=pack, session_type=physio, unlimited=True)]
    )


def test_database_refuses_a_session_type_twice_in_a_pack(make_pack, massage):
    pack = make_pack([(massage, False, 5)])
    raises_integrity(
        lambda: PackCreditLine.objects.create(pack=pack, session_type=massage, credits=3)
    )


def test_database_refuses_half_a_line_validity(make_pack, massage, physio):
    pack = make_pack([(massage, False, 5)])
    raises_integrity(
        lambda: PackCreditLine.objects.create(
            pack=pack, session_type=physio, credits=3, validity_amount=5, validity_unit=""
        )
    )
    raises_integrity(
        lambda: PackCreditLine.objects.create(
            pack=pack, session_type=physio, credits=3, validity_amount=None, validity_unit="days"
        )
    )
    raises_integrity(
        lambda: PackCreditLine.objects.create(
            pack=pack, session_type=physio, credits=3, validity_amount=0, validity_unit="days"
        )
    )


def test_database_refuses_bad_pack_rows(make_pack, massage, category):
    make_pack([(massage, False, 5)], name="Ten Massages")
    base = dict(category=category, price=Decimal("1.00"), currency="GBP")
    raises_integrity(lambda: CreditPack.objects.create(name="ten MASSAGES", **base))
    raises_integrity(
        lambda: CreditPack.objects.create(name="Negative", **{**base, "price": Decimal("-1")})
    )
    raises_integrity(lambda: CreditPack.objects.create(name="No days", validity_amount=0, **base))
    raises_integrity(lambda: CreditPack.objects.create(name="Recurring", is_recurring=True, **base))
    raises_integrity(
        lambda: CreditPack.objects.create(name="Every 0", billing_interval_count=0, **base)
    )


def test_database_refuses_bad_staff_price_rows(make_pack, massage, coach):
    pack = make_pack([(massage, False, 5)])
    raises_integrity(
        lambda: PackStaffPrice.objects.create(pack=pack, staff_member=coach, price=Decimal("-1"))
    )
    PackStaffPrice.objects.create(pack=pack, staff_member=coach, price=None)
    raises_integrity(
        lambda: PackStaffPrice.objects.create(pack=pack, staff_member=coach, price=Decimal("9"))
    )


def test_database_refuses_a_session_shorter_than_five_minutes(category):
    raises_integrity(
        lambda: SessionType.objects.create(name="Blink", category=category, duration_minutes=4)
    )
