"""Load a small, believable studio into an empty database and print an admin login.

Everything goes through the same services staff use, so the demo ledger balances.
"""
from __future__ import annotations

import secrets
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from catalog.models import Category, CreditPack, SessionType
from catalog.services import pack_create
from catalog.validation import LineData, StaffPriceData
from core.models import Client, StaffMember
from core.services import client_create
from ledger.integrity import ledger_check
from ledger.services import credit_redeem, credits_adjust
from payments.services import purchase_create, purchase_mark_paid

CLIENTS = [
    ("Ada Lovelace", "ada@example.com"), ("Grace Hopper", "grace@example.com"),
    ("Alan Turing", "alan@example.com"), ("Katherine Johnson", "katherine@example.com"),
    ("Edsger Dijkstra", "edsger@example.com"), ("Barbara Liskov", "barbara@example.com"),
    ("Donald Knuth", "donald@example.com"), ("Margaret Hamilton", "margaret@example.com"),
    ("Tim Berners-Lee", "tim@example.com"), ("Frances Allen", "frances@example.com"),
    ("Ken Thompson", "ken@example.com"), ("Radia Perlman", "radia@example.com"),
]


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
        staff = []
        for username, name in [("sam", "Sam Okafor"), ("jo", "Jo Lindqvist")]:
            user = User.objects.create_user(username, f"{username}@example.com", secrets.token_urlsafe(12), is_staff=True)
            member = StaffMember.objects.create(user=user, display_name=name)
            member.session_types.set([pt, massage, yoga])
            staff.append(member)

        ten_pt = pack_create(
            actor=admin, name="10 personal training sessions", category=private, price=Decimal("300.00"),
            currency="GBP", published=True, sell_online=True, validity_amount=3, validity_unit="months",
            lines=[LineData(pt, credits=10)],
            staff_prices=[StaffPriceData(staff[1], Decimal("350.00"))],
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
        pack_create(
            actor=admin, name="Intro: 2 PT + 2 yoga", category=intro, price=Decimal("49.00"), currency="GBP",
            published=True, sell_online=True, restrict_to="new_joiners", validity_amount=3,
            validity_unit="weeks", lines=[LineData(pt, credits=2), LineData(yoga, credits=2)],
        )
        now = timezone.now()
        packs = [ten_pt, five_massage, yoga_month]
        for number, (name, email) in enumerate(CLIENTS):
            client = client_create(actor=admin, name=name, email=email, phone=f"07700 900{number:03d}")
            pack = packs[number % len(packs)]
            purchase = purchase_create(client=client, pack=pack, actor=admin)
            purchase_mark_paid(purchase=purchase, actor=admin, paid_at=now - timedelta(days=number * 2))
            session_type = purchase.grants.first().session_type
            for visit in range(number % 4):
                credit_redeem(
                    client=client, session_type=session_type, actor=admin,
                    at=now + timedelta(days=visit + 1, hours=10), note="Demo booking",
                )
        credits_adjust(
            client=Client.objects.get(email="ada@example.com"), session_type=pt, amount=1,
            reason="Goodwill: session cut short by a fire alarm", actor=admin,
        )
