"""Replay of an inbound queue: a stretch of the inbound topic is queued again.

The live inbound worker holds the integration's replication origin (one session at a
time can), so a replay applies nothing itself: it reads the chosen records of the
integration's inbound topic and enqueues them again, unchanged (key, value, headers,
plus ``cdcsync.replayed_from``), at the end of that topic. The live worker then applies
them like any inbound change: last-writer-wins against the row, and once per
idempotency key, so a change the database already holds is a duplicate and the
database ends as it would have without the replay. The use: a database restored from a
backup gets back the inbound changes accepted after the backup.

Invariants:
- Planning (``cdc.kafka.replay_plan.plan_replay``) checks the whole request before anything is
  read; a bad request enqueues nothing.
- Every record of the range is read before the first one is enqueued again, so the
  replay never reads its own records (the topic it reads is the one it writes). Without
  an ``until``, a partition is read to the end it has when the replay reaches it, as
  ``cdcsync replay`` does (a broker may under-report its end offsets).
- Records are enqueued in their offset order per partition and each is acknowledged by
  Kafka (acks=all, idempotent producer) before the replay reports success.
- ``dry_run`` reads and counts; it enqueues nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from cdc.config import Config
from cdc.config.names import inbound_topic
from cdc.core.errors import BrokerUnavailable, ConfigError
from cdc.kafka.publisher import Publisher, producer_config
from cdc.kafka.replay_plan import PartitionRange, ReplayRequest, plan_replay, replay_consumer_config

__all__ = ["REPLAYED_FROM_HEADER", "InboundReplaySummary", "enqueue", "replay_inbound"]

REPLAYED_FROM_HEADER = "cdcsync.replayed_from"
_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class InboundReplaySummary:
    """What an inbound replay read and enqueued again."""

    integration: str
    topic: str
    ranges: tuple[PartitionRange, ...]
    read: int
    requeued: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "inbound": True,
            "topic": self.topic,
            "dry_run": self.dry_run,
            "read": self.read,
            "requeued": self.requeued,
            "ranges": [
                {"topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}
                for r in self.ranges
            ],
        }

    def human(self) -> str:
        verb = "would be re-enqueued" if self.dry_run else "re-enqueued"
        return (
            f"{self.integration}: {self.read} inbound changes read from {self.topic},"
            f" {self.requeued} {verb}; the inbound worker applies them once each"
            " (changes the database already holds are duplicates)"
        )


def replay_inbound(
    config: Config,
    name: str,
    request: ReplayRequest,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> InboundReplaySummary:
    """Enqueue again the records ``request`` selects on ``name``'s inbound topic (blocking)."""
    integration = config.integrations.get(name)
    if integration is None:
        known = ", ".join(sorted(config.integrations)) or "none"
        raise ConfigError(f"unknown integration {name!r} (configured: {known})")
    if integration.inbound is None:
        raise ConfigError(f"integration {name!r} has no inbound section: nothing to replay")
    topic = inbound_topic(config, name)
    consumer = Consumer(replay_consumer_config(config, f"{name}.inbound"))
    try:
        ranges = plan_replay(config, name, request, consumer=consumer, topics=[topic])
        records = _read(consumer, ranges, on_progress)
    finally:
        consumer.close()
    requeued = 0
    if not request.dry_run and records:
        requeued = _enqueue(config, topic, records)
    return InboundReplaySummary(
        name, topic, tuple(ranges), len(records), requeued, dry_run=request.dry_run
    )


def _read(
    consumer: Consumer,
    ranges: list[PartitionRange],
    on_progress: Callable[[int, int], None] | None,
) -> list[Message]:
    """Every record of ``ranges``, in offset order per partition."""
    todo = {(r.topic, r.partition): r for r in ranges if r.size > 0 or r.open_ended}
    if not todo:
        return []
    total = sum(r.size for r in todo.values())
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in todo.values()])
    records: list[Message] = []
    deadline = time.monotonic() + _READ_TIMEOUT_S
    while todo:
        if time.monotonic() > deadline:
            left = ", ".join(f"{t}[{p}]" for t, p in sorted(todo))
            raise BrokerUnavailable(f"inbound replay: reading {left} timed out")
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        where = (msg.topic() or "", msg.partition() or 0)
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                todo.pop(where, None)  # the broker holds no more than this
                continue
            raise BrokerUnavailable(f"inbound replay: reading failed: {err.str()}")
        wanted = todo.get(where)
        offset = msg.offset() or 0
        if wanted is None or (offset >= wanted.end and not wanted.open_ended):
            todo.pop(where, None)
            continue
        records.append(msg)
        deadline = time.monotonic() + _READ_TIMEOUT_S
        if on_progress is not None:
            on_progress(len(records), max(total, len(records)))
        if offset + 1 >= wanted.end and not wanted.open_ended:
            todo.pop(where, None)
    return records


def _enqueue(config: Config, topic: str, records: list[Message]) -> int:
    kafka = config.kafka
    publisher = Publisher(producer_config(kafka.bootstrap_servers, kafka.client_properties()))
    items: list[QueuedRecord] = []
    for msg in records:
        origin = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
        raw: Any = msg.headers() or []
        pairs = raw.items() if isinstance(raw, dict) else raw
        headers = [(str(k), v) for k, v in pairs if k != REPLAYED_FROM_HEADER]
        headers.append((REPLAYED_FROM_HEADER, origin.encode()))
        items.append((msg.key(), msg.value(), headers))
    enqueue(publisher, topic, items, what="inbound replay")
    return len(items)


QueuedRecord = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]
"""(key, value, headers) of a record to put on an inbound queue."""


def enqueue(
    publisher: Publisher, topic: str, records: Sequence[QueuedRecord], *, what: str
) -> None:
    """Produce ``records`` to ``topic`` and wait for every acknowledgement, else raise."""
    failures: list[str] = []
    acked = 0

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        nonlocal acked
        if err is None:
            acked += 1
        else:
            failures.append(err.str())

    for key, value, headers in records:
        publisher.produce(topic, key, value, delivered, headers=headers)
    left = publisher.flush(60)
    if failures or left:
        detail = failures[0] if failures else f"{left} records unacknowledged"
        raise BrokerUnavailable(
            f"{what}: {acked} of {len(records)} records re-enqueued on {topic};"
            f" the rest failed ({detail}); running it again is safe"
        )
