"""Replay planning: what a replay request means, checked against what the broker retains.

``plan_replay`` turns a ``ReplayRequest`` (from the beginning, from offsets or from a time;
optionally until offsets or a time) into one ``PartitionRange`` per partition. It only
reads metadata, offsets and single records; it never commits and never joins a group.

Invariants:
- Every check (integration, topics, partitions, offsets, times) happens here, before the
  replay reads its first record; a bad request raises ``ReplayError`` (``ConfigError`` for
  an unknown integration) and changes nothing.
- Ranges are half-open: ``start`` is the first offset replayed, ``end`` the first one not
  replayed.
- End offsets are read from the partition (``end_offset``), not taken from the broker's
  answer alone: some brokers report one past the first record of the last batch.
- A time resolves to the first record stamped at or after it; the broker's time index is
  checked against the records around its answer and replaced by a binary search over the
  records' timestamps when it does not hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cdc.config import Config
from cdc.core.errors import BrokerUnavailable, ConfigError, ReplayError, first_line
from cdc.kafka.client_log import with_logger
from cdc.kafka.consumer import producer_only

__all__ = [
    "PartitionRange",
    "ReplayRequest",
    "TopicOffset",
    "end_offset",
    "parse_timestamp",
    "plan_replay",
    "replay_consumer_config",
]

_META_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class TopicOffset:
    """``TOPIC:PARTITION:OFFSET`` as given on the command line."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def parse(cls, text: str) -> TopicOffset:
        """Parse ``TOPIC:PARTITION:OFFSET``; the topic may itself contain colons."""
        topic, sep1, rest = text.rpartition(":")
        topic, sep2, partition = topic.rpartition(":")
        if not (sep1 and sep2 and topic and partition.isdigit() and rest.isdigit()):
            raise ReplayError(
                f"{text!r} is not TOPIC:PARTITION:OFFSET (e.g. app.public.orders:0:1200)"
            )
        return cls(topic, int(partition), int(rest))

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def parse_timestamp(text: str) -> datetime:
    """An ISO-8601 time; without a zone it is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"{text!r} is not an ISO-8601 time (e.g. 2026-11-22T07:30:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What to replay: exactly one of the three starts, optionally an end."""

    from_beginning: bool = False
    from_offsets: tuple[TopicOffset, ...] = ()
    from_timestamp: datetime | None = None
    until_offsets: tuple[TopicOffset, ...] = ()
    until_timestamp: datetime | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        starts = sum(
            (self.from_beginning, bool(self.from_offsets), self.from_timestamp is not None)
        )
        if starts != 1:
            raise ReplayError(
                "give exactly one of --from-beginning, --from-offset, --from-timestamp"
            )
        if self.until_offsets and self.until_timestamp is not None:
            raise ReplayError("give --until-offset or --until-timestamp, not both")


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets ``[start, end)`` of one partition to replay.

    ``open_ended``: no end was asked for; ``end`` is the partition's end offset when planned,
    and the replay goes on to the end it finds when it catches up (the end offset a broker
    reports may lag behind what it holds; reading on is harmless).
    """

    topic: str
    partition: int
    start: int
    end: int
    open_ended: bool = False

    @property
    def size(self) -> int:
        return max(self.end - self.start, 0)


def replay_consumer_config(config: Config, name: str) -> dict[str, Any]:
    """A consumer of its own: unique group id, no commits, errors on out-of-range offsets."""
    kafka = config.kafka
    props: dict[str, Any] = {"fetch.wait.max.ms": 50}
    props.update((k, v) for k, v in kafka.client_properties().items() if not producer_only(k))
    props.update(
        {
            "group.id": f"cdcsync.replay.{name}.{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "allow.auto.create.topics": False,
        }
    )
    return with_logger(props)


def plan_replay(
    config: Config,
    name: str,
    request: ReplayRequest,
    *,
    consumer: Consumer,
    topics: Sequence[str] | None = None,
) -> list[PartitionRange]:
    """The ranges ``request`` means for integration ``name``; ``ReplayError`` when impossible.

    ``topics``: the topics to plan over (default: the integration's own topics).
    Blocking (broker metadata and offset look-ups): call it from a thread.
    """
    if name not in config.integrations:
        known = ", ".join(sorted(config.integrations)) or "none"
        raise ConfigError(f"unknown integration {name!r} (configured: {known})")
    topics = list(config.integrations[name].topics if topics is None else topics)
    try:
        metadata = consumer.list_topics(timeout=_META_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnavailable(f"reading topic metadata failed: {first_line(exc)}") from exc
    partitions: dict[str, list[int]] = {}
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is not None and meta.error is None:
            partitions[topic] = sorted(meta.partitions)
    for given in (*request.from_offsets, *request.until_offsets):
        _check_partition(given, name=name, topics=topics, partitions=partitions)

    bounds = {(t, p): _watermarks(consumer, t, p) for t, parts in partitions.items() for p in parts}
    starts: dict[tuple[str, int], int] = {}
    if request.from_beginning:
        starts = {tp: low for tp, (low, _) in bounds.items()}
    elif request.from_offsets:
        for given in request.from_offsets:
            tp = (given.topic, given.partition)
            low, high = bounds[tp]
            if not low <= given.offset <= high:
                raise ReplayError(
                    f"offset {given.offset} of {given.topic}[{given.partition}] is outside the"
                    f" retained range {low}..{high}"
                )
            if tp in starts:
                raise ReplayError(f"{given.topic}[{given.partition}] is given twice")
            starts[tp] = given.offset
    else:
        assert request.from_timestamp is not None
        from_ms = int(request.from_timestamp.timestamp() * 1000)
        starts = _offsets_at(consumer, bounds, request.from_timestamp)
        if all(starts[tp] >= bounds[tp][1] for tp in starts):
            raise ReplayError(
                f"no event at or after {request.from_timestamp.isoformat()} in {', '.join(topics)}"
                " (it is after the newest retained event)"
            )
        for tp, offset in starts.items():
            low = bounds[tp][0]
            if low == 0 or offset != low:
                continue
            first = _RecordReader(consumer).stamp(tp, low, high=bounds[tp][1])
            if first is not None and first[1] > from_ms:
                raise ReplayError(
                    f"{tp[0]}[{tp[1]}] no longer retains events from"
                    f" {request.from_timestamp.isoformat()}: its oldest retained event (offset"
                    f" {low}) is newer; use --from-beginning to replay what is retained"
                )

    ends = {tp: bounds[tp][1] for tp in starts}
    if request.until_offsets:
        for given in request.until_offsets:
            tp = (given.topic, given.partition)
            if tp not in starts:
                raise ReplayError(
                    f"--until-offset {given}: {given.topic}[{given.partition}] is not replayed"
                )
            low, high = bounds[tp]
            if not starts[tp] <= given.offset <= high:
                raise ReplayError(
                    f"--until-offset {given}: must lie between the start {starts[tp]} and the"
                    f" end {high} of {given.topic}[{given.partition}]"
                )
            ends[tp] = given.offset
    elif request.until_timestamp is not None:
        if request.from_timestamp is not None and request.until_timestamp <= request.from_timestamp:
            raise ReplayError("--until-timestamp must be after --from-timestamp")
        until = _offsets_at(consumer, {tp: bounds[tp] for tp in starts}, request.until_timestamp)
        ends = {tp: max(until[tp], starts[tp]) for tp in starts}
    bounded = bool(request.until_offsets) or request.until_timestamp is not None
    return [
        PartitionRange(t, p, starts[(t, p)], ends[(t, p)], open_ended=not bounded)
        for (t, p) in sorted(starts)
    ]


def _check_partition(
    given: TopicOffset, *, name: str, topics: Sequence[str], partitions: dict[str, list[int]]
) -> None:
    if given.topic not in topics:
        raise ReplayError(
            f"topic {given.topic!r} is not one of integration {name!r}'s topics"
            f" ({', '.join(topics)})"
        )
    if given.topic not in partitions:
        raise ReplayError(f"topic {given.topic!r} does not exist on the broker")
    if given.partition not in partitions[given.topic]:
        count = len(partitions[given.topic])
        raise ReplayError(
            f"{given.topic} has no partition {given.partition} (it has {count}: 0..{count - 1})"
        )


def end_offset(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """``(first retained offset, offset after the last record)`` of a partition."""
    low, high = _watermarks(consumer, topic, partition)
    return low, _RecordReader(consumer).end((topic, partition), low=low, high=high)


def _watermarks(consumer: Consumer, topic: str, partition: int) -> tuple[int, int]:
    try:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=_META_TIMEOUT_S, cached=False
        )
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"reading the offsets of {topic}[{partition}] failed: {first_line(exc)}"
        ) from exc
    return int(low), int(high)


def _offsets_at(
    consumer: Consumer, bounds: dict[tuple[str, int], tuple[int, int]], when: datetime
) -> dict[tuple[str, int], int]:
    """Per partition, the first offset stamped at or after ``when`` (else its end).

    The broker's answer (``offsets_for_times``) is checked against the records around it;
    when it does not hold (a broker without a time index answers the first offset), the
    offset is found by a binary search over the records' timestamps.
    """
    if not bounds:
        return {}
    ms = int(when.timestamp() * 1000)
    asked = [TopicPartition(t, p, ms) for (t, p) in bounds]
    try:
        found = consumer.offsets_for_times(asked, timeout=_META_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnavailable(f"looking up offsets by time failed: {first_line(exc)}") from exc
    reader = _RecordReader(consumer)
    result: dict[tuple[str, int], int] = {}
    for tp in found:
        key = (tp.topic, tp.partition)
        if tp.error is not None:
            raise BrokerUnavailable(f"looking up {tp.topic}[{tp.partition}] by time: {tp.error}")
        low, high = bounds[key]
        hint = high if tp.offset < 0 else min(max(tp.offset, low), high)
        if reader.first_at_or_after(key, hint, high=high, ms=ms, low=low):
            result[key] = hint
        else:
            result[key] = reader.search(key, low, high, ms=ms)
    return result


class _RecordReader:
    """Reads single records by offset: timestamps for time look-ups, the true end offset."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def end(self, tp: tuple[str, int], *, low: int, high: int) -> int:
        """The offset after the partition's last record, read rather than trusted.

        Some brokers report the end offset of a partition as one past the first record of
        its last batch; reading from there to the end finds the real one.
        """
        if high <= low:
            return high
        consumer = self._consumer
        consumer.assign([TopicPartition(tp[0], tp[1], high - 1)])
        end = high
        try:
            waited = 0.0
            while waited < _META_TIMEOUT_S:
                msg = consumer.poll(0.5)
                if msg is None:
                    waited += 0.5
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return max(end, msg.offset() or 0)
                    raise BrokerUnavailable(f"reading the end of {tp[0]}[{tp[1]}]: {err.str()}")
                end = max(end, (msg.offset() or 0) + 1)
            raise BrokerUnavailable(f"reading the end of {tp[0]}[{tp[1]}]: no answer")
        finally:
            consumer.unassign()

    def stamp(self, tp: tuple[str, int], offset: int, *, high: int) -> tuple[int, int] | None:
        """``(offset, timestamp ms)`` of the first record at or after ``offset`` below ``high``."""
        if offset >= high:
            return None
        consumer = self._consumer
        consumer.assign([TopicPartition(tp[0], tp[1], offset)])
        try:
            deadline = _META_TIMEOUT_S
            while deadline > 0:
                msg = consumer.poll(0.5)
                deadline -= 0.5
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return None
                    raise BrokerUnavailable(f"reading {tp[0]}[{tp[1]}]@{offset}: {err.str()}")
                found = msg.offset() or 0
                return None if found >= high else (found, int(msg.timestamp()[1]))
            raise BrokerUnavailable(f"reading {tp[0]}[{tp[1]}]@{offset}: no answer")
        finally:
            consumer.unassign()

    def first_at_or_after(
        self, tp: tuple[str, int], offset: int, *, high: int, ms: int, low: int
    ) -> bool:
        """Whether ``offset`` is the first record stamped ``ms`` or later."""
        here = self.stamp(tp, offset, high=high)
        if here is not None and here[1] < ms:
            return False
        if offset <= low:
            return True
        before = self.stamp(tp, offset - 1, high=high)
        return before is None or before[0] >= offset or before[1] < ms

    def search(self, tp: tuple[str, int], low: int, high: int, *, ms: int) -> int:
        """Binary search for the first record stamped ``ms`` or later (timestamps ascend)."""
        lo, hi = low, high
        while lo < hi:
            mid = (lo + hi) // 2
            found = self.stamp(tp, mid, high=hi)
            if found is None or found[1] >= ms:
                hi = mid
            else:
                lo = found[0] + 1
        return lo
