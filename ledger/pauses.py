"""Moving the expiry of a recurring plan's credits while the plan is paused.

Pausing a plan stops its cycles and freezes the credits it already gave: each active grant of
the plan's cycles gets its expiry moved by the length of the pause (back again for the days
left when the plan resumes early). The amount of credit does not change, but the change is
still written to the ledger as a 0-credit Adjusted entry per grant, so the client's history
says when and why an expiry date moved.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from ledger.models import CreditGrant, EntryKind, EntrySource, GrantState
from ledger.services import _lock_balances, _write_entry


def _shift_local(moment: datetime, days: int) -> datetime:
    """The same wall-clock time `days` later in the business's time zone: an expiry at the end
    of a local day stays at the end of a local day across a clock change."""
    local = timezone.localtime(moment)
    return timezone.make_aware(local.replace(tzinfo=None) + timedelta(days=days))


@transaction.atomic
def grants_shift_expiry(*, purchase_ids: list[int], days: int, actor, note: str, key: str) -> int:
    """Move the expiry of the active, dated grants of these purchases by `days` local days
    (either sign).

    `key` makes it idempotent: the same key applied twice moves each grant once.
    Returns the number of grants moved.
    """
    if not days or not purchase_ids:
        return 0
    now = timezone.now()
    candidates = CreditGrant.objects.filter(
        purchase_id__in=purchase_ids, state=GrantState.ACTIVE, expires_at__isnull=False,
    )
    pairs = set(candidates.values_list("client_id", "session_type_id"))
    balances = _lock_balances(pairs)  # lock order: balances, then grants
    moved = 0
    for grant in candidates.select_for_update().order_by("pk"):
        entry_key = f"{key}:grant:{grant.pk}"
        if grant.entries.filter(idempotency_key=entry_key).exists():
            continue
        before = grant.expires_at
        grant.expires_at = _shift_local(before, days)
        CreditGrant.objects.filter(pk=grant.pk).update(expires_at=grant.expires_at)
        _write_entry(
            balance=balances[(grant.client_id, grant.session_type_id)], grant=grant,
            kind=EntryKind.ADJUSTED, amount=0, actor=actor, source=EntrySource.ADJUSTMENT,
            note=(
                f"{note}: expiry moved from {timezone.localtime(before):%d %b %Y %H:%M} "
                f"to {timezone.localtime(grant.expires_at):%d %b %Y %H:%M}"
            ),
            key=entry_key, at=now,
        )
        moved += 1
    return moved
