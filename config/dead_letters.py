"""Dead letters: messages whose retries ran out, read from dramatiq's own dead-letter queue.

When the Retries middleware gives up, the worker nacks the message and the broker moves it to
the queue's dead-letter set: in Redis the sorted set "dramatiq:<queue>.XQ" (scored by time of
death) with the encoded messages in "dramatiq:<queue>.XQ.msgs", kept for the broker's
dead_message_ttl (7 days by default); in the demo's stub broker, an in-memory list per queue.
Nothing is copied elsewhere, so the admin shows exactly what dramatiq holds.

Retrying takes a message out of the set first (only one of two clicks wins), then enqueues it
with its retry count reset; if the enqueue fails the message goes back where it was.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

import dramatiq
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import q_name, xq_name
from dramatiq.middleware import Middleware

# Options that describe the failed run, not the job: dropped so a retried message starts afresh.
_RUN_OPTIONS = ("retries", "traceback", "requeue_timestamp", "redis_message_id", "eta")

# Overwrite the stored dead message only if nack has just put it there (the TTL purge may not
# have removed it in between), so the final failure's traceback is kept with it.
_UPDATE_IF_PRESENT = """
if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then
    return redis.call('hset', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


@dataclass(frozen=True)
class DeadLetter:
    key: str  # the broker's id for this copy of the message (Redis: redis_message_id)
    queue_name: str
    actor_name: str
    args: tuple
    kwargs: dict
    retries: int
    traceback: str
    died_at: datetime | None
    message: Message = field(repr=False)

    @property
    def failure(self) -> str:
        """The exception line of the last traceback: what a person reads first."""
        lines = [line for line in self.traceback.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "(no traceback recorded)"


class DeadLetterFailure(Middleware):
    """Store the final run's traceback with the dead message.

    Redis keeps the message as it was last enqueued, i.e. with the traceback of the attempt
    before the last one (or none when the actor has max_retries=0). Runs after nack.
    """

    def after_nack(self, broker, message):
        if not isinstance(broker, RedisBroker):
            return  # the stub broker keeps the message object, traceback included
        key = f"{broker.namespace}:{xq_name(q_name(message.queue_name))}.msgs"
        broker.client.eval(
            _UPDATE_IF_PRESENT, 1, key, message.options["redis_message_id"], message._message.encode()
        )


def _queues(broker) -> list[str]:
    # Every actor of ours uses "default"; others are declared when their actor is imported.
    names = {q_name(name) for name in broker.get_declared_queues()} | {"default"}
    return sorted(names)


def _dead_letter(key: str, message: Message, died_at: datetime | None, queue_name: str) -> DeadLetter:
    return DeadLetter(
        key=key, queue_name=queue_name, actor_name=message.actor_name, args=tuple(message.args),
        kwargs=dict(message.kwargs), retries=int(message.options.get("retries", 0)),
        traceback=message.options.get("traceback") or "", died_at=died_at, message=message,
    )


def dead_letters_list(*, broker=None, limit: int = 500) -> list[DeadLetter]:
    """The dead messages of every queue, most recent first (at most `limit`)."""
    broker = broker or dramatiq.get_broker()
    found: list[DeadLetter] = []
    for queue in _queues(broker):
        if isinstance(broker, RedisBroker):
            xq = f"{broker.namespace}:{xq_name(queue)}"
            entries = broker.client.zrevrange(xq, 0, limit - 1, withscores=True)
            if not entries:
                continue
            ids = [key for key, _ in entries]
            for (key, score), data in zip(entries, broker.client.hmget(f"{xq}.msgs", ids)):
                if data is None:  # purged between the two reads
                    continue
                died_at = datetime.fromtimestamp(score / 1000, tz=dt_timezone.utc)
                found.append(_dead_letter(key.decode(), Message.decode(data), died_at, queue))
        elif isinstance(broker, StubBroker):
            for proxy in broker.dead_letters_by_queue.get(queue, ()):
                found.append(_dead_letter(proxy.message_id, proxy._message, None, queue))
    found.sort(key=lambda d: d.died_at or datetime.max.replace(tzinfo=dt_timezone.utc), reverse=True)
    return found[:limit]


def dead_letters_count(*, broker=None) -> int:
    broker = broker or dramatiq.get_broker()
    if isinstance(broker, RedisBroker):
        return sum(broker.client.zcard(f"{broker.namespace}:{xq_name(q)}") for q in _queues(broker))
    if isinstance(broker, StubBroker):
        return len(broker.dead_letters)
    return 0


def _fresh(message: Message) -> Message:
    options = {k: v for k, v in message.options.items() if k not in _RUN_OPTIONS}
    queue = q_name(message.queue_name)
    return Message(
        queue_name=queue, actor_name=message.actor_name, args=message.args, kwargs=message.kwargs,
        options=options, message_id=message.message_id, message_timestamp=message.message_timestamp,
    )


def dead_letter_retry(*, queue_name: str, key: str, broker=None) -> bool:
    """Send a dead message again with a fresh retry count. False if it is no longer dead
    (retried by someone else, or purged after its TTL)."""
    broker = broker or dramatiq.get_broker()
    if isinstance(broker, RedisBroker):
        xq = f"{broker.namespace}:{xq_name(queue_name)}"
        score = broker.client.zscore(xq, key)
        data = broker.client.hget(f"{xq}.msgs", key)
        if score is None or data is None or not broker.client.zrem(xq, key):
            return False
        try:
            broker.enqueue(_fresh(Message.decode(data)))
        except Exception:
            broker.client.zadd(xq, {key: score})  # still dead: shown again, retry later
            raise
        broker.client.hdel(f"{xq}.msgs", key)
        return True
    if isinstance(broker, StubBroker):
        letters = broker.dead_letters_by_queue.get(queue_name, [])
        for proxy in list(letters):
            if proxy.message_id == key:
                letters.remove(proxy)
                broker.enqueue(_fresh(proxy._message))
                return True
    return False


__all__ = ["DeadLetter", "DeadLetterFailure", "dead_letters_count", "dead_letters_list", "dead_letter_retry"]
