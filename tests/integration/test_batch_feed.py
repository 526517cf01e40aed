"""BatchFeed against a real broker: offsets are committed only for handled batches.

Handled batches are committed without waiting (asynchronously); ``close`` commits
synchronously what was handled, so a member that leaves hands its successor exactly
the position after the last handled record, and an unhandled batch is read again.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cdc.kafka.consumer import BatchFeed

LOG = logging.LoggerAdapter(logging.getLogger("test.batch_feed"), {})


class FeedGroup:
    """One topic (one partition used) and one consumer group on the test broker."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.bootstrap = bootstrap
        self.topic, self.group = f"{prefix}.feed", f"{prefix}-group"

    def produce(self, n: int) -> None:
        """Records 0..n-1 (as text) on partition 0."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True})
        for i in range(n):
            producer.produce(self.topic, value=str(i).encode(), partition=0)
        assert producer.flush(30) == 0

    def consumer(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )

    def member(self, n: int, *, handle: bool = True, size: int = 500) -> list[int]:
        """A member taking batches until ``n`` records came (handled if ``handle``); it leaves."""

        async def run() -> list[int]:
            consumer = self.consumer()
            consumer.subscribe([self.topic])
            feed = BatchFeed(consumer, LOG, size=size)
            values: list[int] = []
            deadline = time.monotonic() + 60
            try:
                while len(values) < n:
                    assert time.monotonic() < deadline, f"only {len(values)} of {n} records came"
                    msgs = await feed.next()
                    values.extend(int(m.value() or b"") for m in msgs if m.error() is None)
                    if handle and msgs:
                        feed.handled(msgs)
            finally:
                await feed.close()
            return values

        return asyncio.run(run())

    def committed(self) -> int:
        consumer = self.consumer()
        try:
            [tp] = consumer.committed([TopicPartition(self.topic, 0)], timeout=30)
            return int(tp.offset)
        finally:
            consumer.close()


@pytest.fixture
def group(kafka_bootstrap: str, topic_prefix: str) -> FeedGroup:
    return FeedGroup(kafka_bootstrap, topic_prefix)


def test_handled_batches_are_committed_and_a_successor_starts_after_them(
    group: FeedGroup,
) -> None:
    group.produce(50)
    assert group.member(50, size=20) == list(range(50))
    assert group.committed() == 50
    group.produce(5)
    assert group.member(5) == list(range(5))


def test_a_batch_that_was_not_handled_is_not_committed(group: FeedGroup) -> None:
    group.produce(10)
    assert group.member(10, handle=False) == list(range(10))
    # Nothing was handled: the next member reads the same records again.
    assert group.member(10) == list(range(10))
    assert group.committed() == 10
