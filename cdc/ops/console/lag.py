"""Consumer lag of the integrations running in this process, read for the console's samples.

``GroupLag.read(name, topics)`` answers how many records the integration's consumer group
has not yet committed: per partition ``end - committed`` (a group that never committed
lags by everything retained), summed. The end offset is read the way ``cdcsync status``
reads it (``cdc.kafka.replay_plan.end_offset``), so a transaction marker at the end of a
partition is not counted as a record.

Invariants: read-only (the group's offsets are fetched, never committed; the group is
never joined: the reader is a consumer of its own); blocking (call it from a thread); the
clients are kept between reads, one pair per integration, and closed by ``close``, which
never blocks: while a read runs in its thread, that thread closes them when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from cdc.config import Config
from cdc.kafka.client_log import with_logger
from cdc.kafka.consumer import producer_only
from cdc.kafka.replay_plan import end_offset, replay_consumer_config

__all__ = ["GroupLag"]

_TIMEOUT_S = 5.0


class GroupLag:
    """Lag readers for the integrations of ``config``; one read at a time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._clients: dict[str, tuple[Consumer, Consumer]] = {}
        self._busy = threading.Lock()
        self._closed = False

    def _pair(self, name: str, group_id: str) -> tuple[Consumer, Consumer]:
        pair = self._clients.get(name)
        if pair is None:
            base: dict[str, Any] = {
                k: v
                for k, v in self.config.kafka.client_properties().items()
                if not producer_only(k)
            }
            group = Consumer(
                with_logger({**base, "group.id": group_id, "enable.auto.commit": False})
            )
            reader = Consumer(replay_consumer_config(self.config, name))
            pair = self._clients[name] = (group, reader)
        return pair

    def read(self, name: str, group_id: str, topics: Sequence[str]) -> int | None:
        """Records of ``topics`` not yet committed by ``group_id``; None once closed
        (KafkaException or BrokerUnavailable if the broker does not answer)."""
        with self._busy:
            if self._closed:
                return None
            try:
                return self._read(name, group_id, topics)
            finally:
                if self.closed:
                    self._close_clients()

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (maybe from another thread, during a read)."""
        return self._closed

    def _read(self, name: str, group_id: str, topics: Sequence[str]) -> int:
        group, reader = self._pair(name, group_id)
        metadata = group.list_topics(timeout=_TIMEOUT_S)
        tps: list[TopicPartition] = []
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is not None and meta.error is None:
                tps.extend(TopicPartition(topic, p) for p in sorted(meta.partitions))
        if not tps:
            return 0
        total = 0
        for tp in group.committed(tps, timeout=_TIMEOUT_S):
            if self.closed:
                break
            low, high = end_offset(reader, tp.topic, tp.partition)
            start = low if tp.offset == OFFSET_INVALID or tp.offset < 0 else int(tp.offset)
            total += max(int(high) - int(start), 0)
        return total

    def close(self) -> None:
        self._closed = True
        if self._busy.acquire(blocking=False):
            try:
                self._close_clients()
            finally:
                self._busy.release()

    def _close_clients(self) -> None:
        for group, reader in self._clients.values():
            group.close()
            reader.close()
        self._clients.clear()
