"""Consumer-group plumbing shared by the sync and inbound workers and the read-only tools.

- ``group_consumer_config``: a live group member's librdkafka settings (manual commits,
  ``read_committed``, from the earliest offset); the user's client properties apply except
  producer-only ones (``producer_only``).
- ``next_batch``: fetch what is there (after waiting up to 0.25 s for the first record).
- ``BatchFeed``: a worker's batches (fetched in a thread) and the offsets after each
  handled batch, committed without waiting for the broker, so the next batch is not held
  up by a commit round trip; ``close`` commits them synchronously before leaving the
  group (only for partitions still assigned).

Invariants:
- Nothing here commits an offset the caller did not hand over as handled.
- An asynchronous commit that is lost (the broker down, the partition reassigned) only
  means its records are applied again after a restart, which every sink tolerates; the
  committed offset never moves backwards, since commits are sent in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from cdc.config import Config
from cdc.kafka.client_log import with_logger

FETCH_WAIT_MAX_MS = 50
"""The sync and inbound workers' default ``fetch.wait.max.ms`` (see ``group_consumer_config``)."""

BATCH_SIZE = 500
"""Records a worker takes per batch by default."""


def group_consumer_config(config: Config, group_id: str) -> dict[str, Any]:
    """A consumer-group member's settings: manual commits, read_committed, from the start."""
    kafka = config.kafka
    # Defaults for low latency and quick group joins; the user's properties win.
    # fetch.wait.max.ms: Apache Kafka answers a fetch as soon as data is there, so this only
    # bounds idle polling; a broker that holds every fetch this long (tansu) makes it a
    # latency floor. 50 rather than 20 ms means fewer, larger batches, which on a loaded
    # small machine lowers the tail more than the wait adds (bench/sync.py, docs/sizing.md).
    props: dict[str, Any] = {"fetch.wait.max.ms": FETCH_WAIT_MAX_MS, "session.timeout.ms": 10_000}
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
    return with_logger(props)


def next_batch(consumer: Consumer, size: int = BATCH_SIZE) -> list[Message]:
    """Wait up to 0.25 s for a record, then take what else is already fetched (``size`` max)."""
    first = consumer.poll(0.25)
    if first is None:
        return []
    return [first, *consumer.consume(size - 1, 0)]


def _next_offsets(msgs: Sequence[Message]) -> dict[tuple[str, int], int]:
    """Per partition, the offset after the last of ``msgs``."""
    last: dict[tuple[str, int], int] = {}
    for msg in msgs:
        if msg.error() is None:
            last[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
    return last


def _commit(
    consumer: Consumer,
    offsets: dict[tuple[str, int], int],
    logger: logging.LoggerAdapter[logging.Logger],
    *,
    asynchronous: bool,
) -> None:
    if not offsets:
        return
    partitions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    try:
        if asynchronous:
            consumer.commit(offsets=partitions, asynchronous=True)
        else:
            consumer.commit(offsets=partitions, asynchronous=False)
    except KafkaException as exc:
        # Lost the partitions in a rebalance: their new owner re-applies, harmlessly.
        logger.warning("offset commit failed (%s); records will be re-applied", exc)


class BatchFeed:
    """A worker's batches, and the offsets after each handled one (see the module)."""

    def __init__(
        self,
        consumer: Consumer,
        logger: logging.LoggerAdapter[logging.Logger],
        size: int = BATCH_SIZE,
    ) -> None:
        self.consumer = consumer
        self._log = logger
        self._size = size
        self._handled: dict[tuple[str, int], int] = {}

    async def next(self) -> list[Message]:
        """The next batch; empty if nothing came within 0.25 s."""
        return await asyncio.to_thread(next_batch, self.consumer, self._size)

    def handled(self, msgs: Sequence[Message]) -> None:
        """``msgs`` are applied: commit the offsets after them, without waiting."""
        offsets = _next_offsets(msgs)
        self._handled.update(offsets)
        _commit(self.consumer, offsets, self._log, asynchronous=True)

    def _commit_owned(self) -> None:
        # Only partitions still assigned: another member may own (and have moved) the rest.
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        offsets = {tp: o for tp, o in self._handled.items() if tp in owned}
        _commit(self.consumer, offsets, self._log, asynchronous=False)

    async def close(self) -> None:
        """Commit, synchronously, what was handled; leave the group."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._commit_owned)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.consumer.close)


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
