"""Jobs go through the real Redis broker and a real dramatiq worker."""
import time
from datetime import timedelta

import dramatiq
import pytest
from django.db import transaction
from django.utils import timezone

from config.dramatiq import enqueue_on_commit
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, GrantState
from ledger.services import credits_adjust
from ledger.tasks import expire_due_credits


@pytest.mark.django_db(transaction=True)
def test_expiry_job_enqueued_on_commit_is_done_by_a_worker(
    redis_broker, client_a, massage, staff_user
):
    credits_adjust(
        client=client_a, session_type=massage, amount=3, reason="trial credits", actor=staff_user,
        expires_at=timezone.now() + timedelta(seconds=1),
    )
    time.sleep(1.2)
    with transaction.atomic():
        enqueue_on_commit(expire_due_credits)
        assert redis_broker.client.hlen("dramatiq:default.msgs") == 0  # nothing sent before commit
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 1
    worker = dramatiq.Worker(redis_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        redis_broker.join(expire_due_credits.queue_name, timeout=15_000)
    finally:
        worker.stop()
    grant = CreditGrant.objects.get(client=client_a)
    assert grant.state == GrantState.EXPIRED
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 0
    assert ledger_check().ok


@pytest.mark.django_db(transaction=True)
def test_job_of_a_rolled_back_transaction_is_never_sent(redis_broker):
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            enqueue_on_commit(expire_due_credits)
            raise RuntimeError("the write failed")
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0
