"""BatchFeed against a real broker: offsets are committed only for handled batches.

Handled batches are committed without waiting (asynchronously); ``close`` commits
synchronously what was handled, so a member that leaves hands its successor exactly
the position after the last handled record, and an unhandled batch is read again.
"""

from __future__ import annotations

import asyncio
import logging
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from cdc.consumer import BatchFeed

LOG = logging.LoggerAdapter(logging.getLogger("test.batch_feed"), {})


def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i in range(n):
        producer.produce(topic, value=str(i).encode(), partition=0)
    assert producer.flush(30) == 0


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )


async def _read(feed: BatchFeed, n: int, *, handle: bool) -> list[int]:
    """Take batches until ``n`` records came; mark them handled if ``handle``."""
    values: list[int] = []
    deadline = time.monotonic() + 60
    while len(values) < n:
        assert time.monotonic() < deadline, f"only {len(values)} of {n} records came"
        msgs = await feed.next()
        values.extend(int(m.value() or b"") for m in msgs if m.error() is None)
        if handle and msgs:
            feed.handled(msgs)
    return values


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = _consumer(bootstrap, group)
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=30)
        return tp.offset
    finally:
        consumer.close()


def test_handled_batches_are_committed_and_a_successor_starts_after_them(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}.feed", f"{topic_prefix}-group"
    _produce(kafka_bootstrap, topic, 50)

    async def first_member() -> list[int]:
        consumer = _consumer(kafka_bootstrap, group)
        consumer.subscribe([topic])
        feed = BatchFeed(consumer, LOG, size=20)
        try:
            return await _read(feed, 50, handle=True)
        finally:
            await feed.close()

    assert asyncio.run(first_member()) == list(range(50))
    assert _committed(kafka_bootstrap, group, topic) == 50

    _produce(kafka_bootstrap, topic, 5)

    async def successor() -> list[int]:
        consumer = _consumer(kafka_bootstrap, group)
        consumer.subscribe([topic])
        feed = BatchFeed(consumer, LOG)
        try:
            return await _read(feed, 5, handle=True)
        finally:
            await feed.close()

    assert asyncio.run(successor()) == list(range(5))


def test_a_batch_that_was_not_handled_is_not_committed(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}.feed", f"{topic_prefix}-group"
    _produce(kafka_bootstrap, topic, 10)

    async def member(handle: bool) -> list[int]:
        consumer = _consumer(kafka_bootstrap, group)
        consumer.subscribe([topic])
        feed = BatchFeed(consumer, LOG)
        try:
            return await _read(feed, 10, handle=handle)
        finally:
            await feed.close()

    assert asyncio.run(member(handle=False)) == list(range(10))
    # Nothing was handled: the next member reads the same records again.
    assert asyncio.run(member(handle=True)) == list(range(10))
    assert _committed(kafka_bootstrap, group, topic) == 10
