"""Jobs end to end: a real `manage.py rundramatiq` process, and a send lost to a Redis outage."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import dramatiq
import pytest
from django.db import connection, transaction
from django.utils import timezone
from dramatiq.brokers.redis import RedisBroker

from config import schedule
from config.dramatiq import enqueue_on_commit
from ledger.integrity import ledger_check
from ledger.models import ClientBalance, CreditGrant, GrantState
from ledger.services import credits_adjust
from ledger.tasks import expire_due_credits

BASE_DIR = Path(__file__).resolve().parent.parent


def database_url_for_tests() -> str:
    """The URL of the database pytest-django made for this run, for another process to use."""
    s = connection.settings_dict
    auth = quote(s["USER"] or "", safe="") + (f":{quote(s['PASSWORD'], safe='')}" if s["PASSWORD"] else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def due_grant(client, session_type, actor) -> CreditGrant:
    credits_adjust(
        client=client, session_type=session_type, amount=3, reason="trial credits", actor=actor,
        expires_at=timezone.now() + timedelta(seconds=1),
    )
    time.sleep(1.2)  # now past its expiry, still active: due for the sweep
    grant = CreditGrant.objects.get(client=client)
    assert grant.state == GrantState.ACTIVE
    return grant


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not done within {timeout} s: {what}"
        time.sleep(0.2)


def stop(process: subprocess.Popen, log) -> int:
    process.send_signal(signal.SIGTERM)  # dramatiq's graceful shutdown
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"the worker did not stop on SIGTERM:\n{Path(log.name).read_text()}")


@pytest.mark.django_db(transaction=True)  # the worker process only sees committed rows
def test_a_real_worker_process_does_the_job(redis_broker, client_a, massage, staff_user, tmp_path):
    grant = due_grant(client_a, massage, staff_user)
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "worker.log", "w+") as log:
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "rundramatiq", "--processes", "1", "--threads", "2"],
            cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            expire_due_credits.send()
            wait_until(
                lambda: CreditGrant.objects.get(pk=grant.pk).state == GrantState.EXPIRED or worker.poll() is not None,
                timeout=30, what="the worker process expiring the grant",
            )
            assert worker.poll() is None, f"the worker died:\n{Path(log.name).read_text()}"
        finally:
            code = stop(worker, log)
        assert code == 0, Path(log.name).read_text()
        assert "Worker process is ready for action." in Path(log.name).read_text()
    assert CreditGrant.objects.get(pk=grant.pk).state == GrantState.EXPIRED
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 0
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0  # taken and acknowledged
    assert ledger_check().ok


@pytest.mark.django_db(transaction=True)
def test_a_job_sent_while_redis_is_unreachable_is_caught_by_the_periodic_sweep(
    redis_broker, client_a, massage, staff_user, monkeypatch, caplog
):
    # A broker whose Redis nobody listens on: the send after commit really fails to connect.
    unreachable = RedisBroker(url="redis://127.0.0.1:1/0", middleware=[])
    monkeypatch.setattr(expire_due_credits, "broker", unreachable)
    with caplog.at_level(logging.ERROR, logger="config.dramatiq"):
        with transaction.atomic():
            credits_adjust(
                client=client_a, session_type=massage, amount=3, reason="trial credits", actor=staff_user,
                expires_at=timezone.now() + timedelta(seconds=1),
            )
            enqueue_on_commit(expire_due_credits)
    # The write committed and the caller saw no error; the lost send is logged.
    assert "job expire_due_credits not enqueued (broker unreachable)" in caplog.text
    grant = CreditGrant.objects.get(client=client_a)
    assert grant.state == GrantState.ACTIVE
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 0

    # Redis is back. The scheduler's next tick sends the periodic job, exactly as APScheduler
    # calls it, and a worker runs it: the grant that fell due meanwhile is expired after all.
    monkeypatch.undo()
    time.sleep(1.2)
    schedule.register()
    from dramatiq_crontab import scheduler

    [tick] = [job for job in scheduler.get_jobs() if job.name == "expire_due_credits"]
    tick.func(*tick.args, **tick.kwargs)
    assert redis_broker.client.hlen("dramatiq:default.msgs") == 1
    worker = dramatiq.Worker(redis_broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        redis_broker.join(expire_due_credits.queue_name, timeout=15_000)
    finally:
        worker.stop()
    grant.refresh_from_db()
    assert grant.state == GrantState.EXPIRED
    assert ClientBalance.objects.get(client=client_a, session_type=massage).balance == 0
    assert ledger_check().ok
