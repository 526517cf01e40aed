"""Consumer-group plumbing shared by the sync and inbound workers and the read-only tools.

- ``group_consumer_config``: a live group member's librdkafka settings (manual commits,
  ``read_committed``, from the earliest offset); the user's client properties apply except
  producer-only ones (``producer_only``).
- ``next_batch`` / ``commit_offsets``: fetch what is there (after waiting up to 0.25 s for
  the first record); commit synchronously the offsets after a handled batch.

Invariant: nothing here commits an offset the caller did not hand over as handled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from cdc.config import Config

BATCH_SIZE = 500
"""Records a worker takes per batch by default."""


def group_consumer_config(config: Config, group_id: str) -> dict[str, Any]:
    """A consumer-group member's settings: manual commits, read_committed, from the start."""
    kafka = config.kafka
    # Defaults for low latency and quick group joins; the user's properties win.
    props: dict[str, Any] = {"fetch.wait.max.ms": 20, "session.timeout.ms": 10_000}
    props.update((k, v) for k, v in kafka.client_properties().items() if not producer_only(k))
    props.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "max.poll.interval.ms": 600_000,
            # Topics created after subscribing (a table's first event) are seen soon.
            "topic.metadata.refresh.interval.ms": 5_000,
        }
    )
    return props


def next_batch(consumer: Consumer, size: int = BATCH_SIZE) -> list[Message]:
    """Wait up to 0.25 s for a record, then take what else is already fetched (``size`` max)."""
    first = consumer.poll(0.25)
    if first is None:
        return []
    return [first, *consumer.consume(size - 1, 0)]


def commit_offsets(
    consumer: Consumer, msgs: Sequence[Message], logger: logging.LoggerAdapter[logging.Logger]
) -> None:
    """Commit, synchronously, the offsets after ``msgs`` (all handled)."""
    last: dict[tuple[str, int], int] = {}
    for msg in msgs:
        if msg.error() is None:
            last[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
    offsets = [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
    if not offsets:
        return
    try:
        consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        # Lost the partitions in a rebalance: their new owner re-applies, harmlessly.
        logger.warning("offset commit failed (%s); records will be re-applied", exc)


_PRODUCER_ONLY = (
    "linger.ms",
    "batch.",
    "compression.",
    "acks",
    "enable.idempotence",
    "queue.buffering.",
    "delivery.timeout.ms",
    "message.timeout.ms",
    "retries",
    "transactional.id",
    "max.in.flight",
    "partitioner",
)


def producer_only(key: str) -> bool:
    """Whether librdkafka property ``key`` applies to producers only."""
    return key.startswith(_PRODUCER_ONLY)
