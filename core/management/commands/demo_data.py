"""Load a small, lived-in studio into an empty database and print an admin login.

Everything goes through the same services staff use (sessions, bookings, desk payments, the
ledger), so the demo obeys every rule and its ledger balances. The diary runs from a week ago to
two weeks ahead of the day it is loaded, so the front desk sees past visits and upcoming ones.
"""
from __future__ import annotations

import secrets
from datetime import datetime, time, timedelta
from decimal import Decimal
from itertools import cycle

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from catalog.models import Category, CreditPack, IntakeForm, IntakeQuestion, SessionType
from catalog.services import pack_create
from catalog.validation import LineData, StaffPriceData
from core.addons import addon_attach
from core.bookings import booking_cancel, booking_create, booking_mark_attended, booking_mark_no_show
from core.models import Booking, BookingStatus, Client, Session, StaffMember, WorkingHours
from core.services import client_create
from core.sessions import session_create
from ledger.integrity import ledger_check
from ledger.services import credits_adjust
from payments.models import PaymentMethod
from payments.selectors import outstanding_purchases
from payments.services import payment_record, purchase_create

CLIENTS = [
    ("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com"),
    ("Alan Turing", "alan@example.com"), ("Katherine Johnson", "katherine@example.com"),
    ("Edsger Dijkstra", "edsger@example.com"), ("Barbara Liskov", "barbara@example.com"),
    ("Donald Knuth", "donald@example.com"), ("Margaret Hamilton", "margaret@example.com"),
    ("Tim Berners-Lee", "tim@example.com"), ("Frances Allen", "frances@example.com"),
    ("Ken Thompson", "ken@example.com"), ("Radia Perlman", "radia@example.com"),
]
# Walk-ins booked by selling a pack on the spot.
WALK_INS = [("Hedy Lamarr", "hedy@example.com"), ("Annie Easley", "annie@example.com")]

OPENS, CLOSES = time(7), time(21)  # Monday to Saturday
PT_TIMES = (time(7), time(12), time(17, 30))  # Sam
MASSAGE_TIMES = (time(10), time(15))  # Jo; the hour after each is free for an add-on
YOGA_TIMES = {0: time(18, 30), 2: time(18, 30), 4: time(18, 30), 5: time(8, 30)}  # Jo: Mon Wed Fri, Sat
PAST_DAYS, AHEAD_DAYS = 7, 14


class Command(BaseCommand):
    help = "Load demo data (once) and print an admin login."

    def handle(self, *args, **options):
        User = get_user_model()
        password = secrets.token_urlsafe(9)
        admin, _ = User.objects.get_or_create(
            username="admin", defaults={"email": "admin@example.com", "is_staff": True, "is_superuser": True}
        )
        admin.is_staff = admin.is_superuser = True
        admin.set_password(password)
        admin.save()
        if CreditPack.objects.exists():
            self.stdout.write("Demo data already loaded.")
        else:
            self._load(admin)
        self.stdout.write(
            f"Diary: {Session.objects.count()} sessions, {Booking.objects.count()} bookings; "
            f"outstanding payments: {outstanding_purchases().count()}"
        )
        result = ledger_check()
        self.stdout.write(f"ledger {'ok' if result.ok else 'BROKEN'}: {result.clients} clients, {result.entries} entries")
        self.stdout.write(self.style.SUCCESS(
            "\n  Packdesk demo is ready.\n"
            "  Admin:    http://127.0.0.1:8000/admin/\n"
            f"  Login:    admin / {password}\n"
        ))

    @transaction.atomic
    def _load(self, admin) -> None:
        User = get_user_model()
        private = Category.objects.create(name="Private sessions", position=1)
        group = Category.objects.create(name="Group classes", position=2)
        intro = Category.objects.create(name="Intro offers", position=3)
        pt = SessionType.objects.create(name="Personal training 60", category=private, duration_minutes=60)
        massage = SessionType.objects.create(name="Massage 60", category=private, duration_minutes=60)
        yoga = SessionType.objects.create(
            name="Yoga class", category=group, duration_minutes=75, cancellation_window_hours=12
        )
        hot_stones = self._hot_stones(private, massage)
        staff = []
        for username, name in [("sam", "Sam Okafor"), ("jo", "Jo Lindqvist")]:
            user = User.objects.create_user(username, f"{username}@example.com", secrets.token_urlsafe(12), is_staff=True)
            member = StaffMember.objects.create(user=user, display_name=name)
            member.session_types.set([pt, massage, yoga, hot_stones])
            for weekday in range(6):
                WorkingHours.objects.create(staff_member=member, weekday=weekday, starts=OPENS, ends=CLOSES)
            staff.append(member)
        sam, jo = staff

        ten_pt = pack_create(
            actor=admin, name="10 personal training sessions", category=private, price=Decimal("300.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=3, validity_unit="months",
            lines=[LineData(pt, credits=10)],
            staff_prices=[StaffPriceData(jo, Decimal("350.00"))],
        )
        five_massage = pack_create(
            actor=admin, name="5 massages", category=private, price=Decimal("225.00"), currency="GBP",
            published=True, sell_online=True, validity_amount=6, validity_unit="months",
            valid_from="first_session", lines=[LineData(massage, credits=5)],
        )
        yoga_month = pack_create(
            actor=admin, name="Unlimited yoga, one month", category=group, price=Decimal("89.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=1, validity_unit="months",
            lines=[LineData(yoga, unlimited=True)],
        )
        intro_offer = pack_create(
            actor=admin, name="Intro: 2 PT + 2 yoga", category=intro, price=Decimal("49.00"), currency="GBP",
            published=True, sell_online=True, restrict_to="new_joiners", validity_amount=3,
            validity_unit="weeks", lines=[LineData(pt, credits=2), LineData(yoga, credits=2)],
        )

        yoga_membership = pack_create(
            actor=admin, name="Yoga membership, monthly", category=group, price=Decimal("75.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=1, validity_unit="months",
            lines=[LineData(yoga, unlimited=True)], is_recurring=True, recurring_collection="auto_debit",
            billing_interval="month", recurs_when="pack_expires", minimum_commitment=6, free_trial_days=7,
        )
        pt_monthly = pack_create(
            actor=admin, name="4 PT sessions a month, invoiced", category=private, price=Decimal("130.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=1, validity_unit="months",
            lines=[LineData(pt, credits=4)], is_recurring=True, recurring_collection="invoice",
            billing_interval="month", recurs_when="no_credits_remain", minimum_commitment=3,
        )

        diary = self._diary(admin, sam=sam, jo=jo, pt=pt, massage=massage, yoga=yoga)
        clients = self._clients_with_paid_packs(admin, [ten_pt, five_massage, yoga_month])
        self._bookings(admin, diary, clients)
        self._walk_ins(admin, diary, five_massage=five_massage, intro_offer=intro_offer)
        self._add_on_booked(admin, clients["massage"][-1], hot_stones)
        self._plans(admin, yoga_membership=yoga_membership, pt_monthly=pt_monthly)
        credits_adjust(
            client=Client.objects.get(email="ada@example.com"), session_type=pt, amount=1,
            reason="Goodwill: session cut short by a fire alarm", actor=admin,
        )

    def _hot_stones(self, category, massage) -> SessionType:
        """An add-on to a massage (seed 003), sold at its price after a short health screening."""
        screening = IntakeForm.objects.create(
            name="Hot stones screening",
            intro="Hot stones are heated basalt stones placed on the body. Please answer before we add them.",
        )
        IntakeQuestion.objects.create(
            form=screening, position=1, text="Are you pregnant?", blocks_on_yes=True,
            block_reason="Hot stones are not suitable during pregnancy.",
        )
        IntakeQuestion.objects.create(form=screening, position=2, text="Do you have any skin conditions?")
        IntakeQuestion.objects.create(
            form=screening, position=3, text="Anything else we should know?", kind="text", required=False,
        )
        hot_stones = SessionType.objects.create(
            name="Hot stones, 30 min", category=category, duration_minutes=30, price=Decimal("25.00"),
            currency="GBP", intake_form=screening,
        )
        hot_stones.add_on_for.add(massage)
        return hot_stones

    def _add_on_booked(self, admin, client, hot_stones) -> None:
        """One massage client already added hot stones at the desk (to pay at the visit); the
        others' upcoming massages leave the hour after free, so the add-on is offered on their page."""
        booking = Booking.objects.filter(
            client=client, status=BookingStatus.BOOKED, session__starts_at__gt=timezone.now(),
            main_booking__isnull=True,
        ).order_by("session__starts_at").first()
        if booking is None:
            return
        questions = hot_stones.intake_form.questions.order_by("position")
        answers = {str(q.pk): answer for q, answer in zip(questions, ("no", "yes", "Mild eczema"))}
        addon_attach(booking=booking, add_on_type=hot_stones, actor=admin, answers=answers)

    def _plans(self, admin, *, yoga_membership, pt_monthly) -> None:
        """One invoice plan paid at the desk for its first cycle, one card plan awaiting Stripe."""
        from payments.subscriptions import subscription_create

        grace = Client.objects.get(email="grace@example.com")
        plan = subscription_create(client=grace, pack=pt_monthly, actor=admin)
        first = plan.cycles.get()
        payment_record(
            purchase=first, method=PaymentMethod.CARD_TERMINAL, amount=first.price, actor=admin,
            reference="Till receipt 2001",
        )
        subscription_create(client=Client.objects.get(email="alan@example.com"), pack=yoga_membership, actor=admin)

    def _diary(self, admin, *, sam, jo, pt, massage, yoga) -> dict[str, dict[str, list[Session]]]:
        """Private sessions and yoga classes, Monday to Saturday, split into past and upcoming."""
        now = timezone.now()
        today = timezone.localdate()
        diary = {kind: {"past": [], "upcoming": []} for kind in ("pt", "massage", "yoga")}
        for offset in range(-PAST_DAYS, AHEAD_DAYS + 1):
            day = today + timedelta(days=offset)
            if day.weekday() == 6:
                continue  # closed on Sundays
            slots = [("pt", pt, sam, t, 1) for t in PT_TIMES]
            slots += [("massage", massage, jo, t, 1) for t in MASSAGE_TIMES]
            if day.weekday() in YOGA_TIMES:
                slots.append(("yoga", yoga, jo, YOGA_TIMES[day.weekday()], 8))
            for kind, session_type, member, at, capacity in slots:
                starts_at = timezone.make_aware(datetime.combine(day, at))
                session = session_create(
                    session_type=session_type, staff_member=member, starts_at=starts_at,
                    capacity=capacity, actor=admin,
                )
                diary[kind]["past" if starts_at < now else "upcoming"].append(session)
        return diary

    def _clients_with_paid_packs(self, admin, packs) -> dict[str, list[Client]]:
        """Each client bought a pack at the desk a week or two ago and paid there and then."""
        now = timezone.now()
        methods = cycle([PaymentMethod.CASH, PaymentMethod.CARD_TERMINAL, PaymentMethod.BANK_TRANSFER])
        by_kind = {"pt": [], "massage": [], "yoga": []}
        for number, (name, email) in enumerate(CLIENTS):
            client = client_create(actor=admin, name=name, email=email, phone=f"07700 900{number:03d}")
            kind, pack = list(by_kind)[number % 3], packs[number % 3]
            purchase = purchase_create(client=client, pack=pack, actor=admin)
            # Paid 8 to 11 days ago: before last week's visits, and a month of yoga still runs.
            payment_record(
                purchase=purchase, method=next(methods), amount=purchase.price, actor=admin,
                reference=f"Till receipt {1000 + number}", received_at=now - timedelta(days=8 + number // 3),
            )
            by_kind[kind].append(client)
        return by_kind

    def _bookings(self, admin, diary, clients) -> None:
        """Visits last week (attended, a no-show, a late cancel) and bookings for the next two weeks."""
        now = timezone.now()
        # Kept aside for a late cancel: the next PT session already inside its cancellation window.
        late = next(
            (
                s for s in diary["pt"]["upcoming"]
                if s.starts_at <= now + timedelta(hours=s.session_type.cancellation_window_hours)
            ),
            None,
        )
        pt_past = iter(diary["pt"]["past"])
        pt_upcoming = iter([s for s in diary["pt"]["upcoming"] if s != late])
        massage_past, massage_upcoming = iter(diary["massage"]["past"]), iter(diary["massage"]["upcoming"])

        def book(client, session):
            return booking_create(client=client, session=session, actor=admin)

        visits = []
        for client in clients["pt"]:
            visits += [book(client, next(pt_past)) for _ in range(2)]
            for _ in range(2):
                book(client, next(pt_upcoming))
        for client in clients["massage"]:
            visits.append(book(client, next(massage_past)))
            book(client, next(massage_upcoming))
        for session in diary["yoga"]["past"][-2:]:
            visits += [book(client, session) for client in clients["yoga"]]
        for session in diary["yoga"]["upcoming"][:3]:
            for client in clients["yoga"]:
                book(client, session)

        no_show, *attended, excused = visits  # a PT client forgot; a yoga client was in hospital
        booking_mark_no_show(booking=no_show, actor=admin)
        booking_mark_no_show(
            booking=excused, actor=admin, override="return", reason="Called from hospital: credit given back"
        )
        for booking in attended:
            booking_mark_attended(booking=booking, actor=admin)

        # One client cancels well ahead (credit returned), another too late (credit forfeited).
        upcoming = Booking.objects.filter(session__starts_at__gt=now + timedelta(days=2)).order_by("session__starts_at")
        booking_cancel(booking=upcoming.first(), actor=admin)
        frances = clients["pt"][-1]
        # With no PT session inside its window (loaded on a Saturday night), the late cancel is
        # recorded after last week's session instead, which the rules treat the same way.
        booking_cancel(booking=book(frances, late or next(pt_past)), actor=admin)

    def _walk_ins(self, admin, diary, *, five_massage, intro_offer) -> None:
        """Two newcomers booked by selling a pack on the spot: one paid at the desk, one still owes."""
        hedy, annie = (client_create(actor=admin, name=name, email=email) for name, email in WALK_INS)
        yoga_class = diary["yoga"]["upcoming"][0]
        paid_later = booking_create(client=annie, session=yoga_class, actor=admin, sell_pack=intro_offer)
        payment_record(
            purchase=paid_later.purchase, method=PaymentMethod.CARD_TERMINAL,
            amount=paid_later.purchase.price, actor=admin, reference="Terminal 7731",
        )
        unpaid_session = next(s for s in diary["massage"]["upcoming"] if not s.bookings.exists())
        booking_create(client=hedy, session=unpaid_session, actor=admin, sell_pack=five_massage)

