"""Replay: re-apply a stretch of an integration's topics through its current mapper and sink.

``plan_replay`` turns a ``ReplayRequest`` (from the beginning, from offsets or from a time;
optionally until offsets or a time) into one ``PartitionRange`` per partition, checked
against what the broker retains. ``Replay.run`` then reads those ranges with its own
consumer (``assign`` + seek; it never subscribes and never commits) and drives the same
``Applier`` as the live worker, so mapping, retries, the circuit breaker and dead letters
behave exactly as they do live.

Invariants:
- The live consumer group's committed offsets are never read for writing nor moved: the
  replay consumer has a group id of its own and commits nothing.
- Every check (integration, topics, partitions, offsets, times) happens before the first
  record is read; a bad request changes nothing.
- Ranges are half-open: ``start`` is the first offset replayed, ``end`` the first one not
  replayed. Without an ``until`` a partition ends at its end offset when the replay starts.
- The live integration need not be paused: sinks are idempotent and version-guarded, so an
  event replayed next to the live worker is a duplicate or older, never a regression.
- ``dry_run`` maps every record and counts the operations that would be sent; it reads
  the state store (identity map) but writes nothing anywhere: no sink call, no dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from cdc.config import Config
from cdc.errors import BrokerUnavailable, ConfigError, RelationPending, ReplayError, first_line
from cdc.sinks import build_sink
from cdc.state import StateStore
from cdc.sync import load_mappers, select_integrations, state_dsn
from cdc.worker import Applier, IntegrationStats, _producer_only
from schema_registry.client import RegistryClient
from schema_registry.serde import AvroDeserializer

__all__ = [
    "PartitionRange",
    "Replay",
    "ReplayRequest",
    "ReplaySummary",
    "TopicOffset",
    "end_offset",
    "parse_timestamp",
    "plan_replay",
]

log = logging.getLogger("cdcsync.replay")

_BATCH = 500
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


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did (or, for a dry run, would do)."""

    integration: str
    dry_run: bool
    records: int
    applied: int
    older: int
    duplicate: int
    dead_lettered: int
    would_send: int
    ranges: tuple[PartitionRange, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "dry_run": self.dry_run,
            "records": self.records,
            "applied": self.applied,
            "older": self.older,
            "duplicate": self.duplicate,
            "dead_lettered": self.dead_lettered,
            "would_send": self.would_send,
            "ranges": [
                {"topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}
                for r in self.ranges
            ],
        }


# --------------------------------------------------------------------------- planning


def replay_consumer_config(config: Config, name: str) -> dict[str, Any]:
    """A consumer of its own: unique group id, no commits, errors on out-of-range offsets."""
    kafka = config.kafka
    props: dict[str, Any] = {"fetch.wait.max.ms": 50}
    props.update((k, v) for k, v in kafka.client_properties().items() if not _producer_only(k))
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
    return props


def plan_replay(
    config: Config, name: str, request: ReplayRequest, *, consumer: Consumer
) -> list[PartitionRange]:
    """The ranges ``request`` means for integration ``name``; ``ReplayError`` when impossible.

    Blocking (broker metadata and offset look-ups): call it from a thread.
    """
    if name not in config.integrations:
        known = ", ".join(sorted(config.integrations)) or "none"
        raise ConfigError(f"unknown integration {name!r} (configured: {known})")
    topics = list(config.integrations[name].topics)
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


# --------------------------------------------------------------------------- running


class _DryRunApplier(Applier):
    """Maps and counts; never calls the sink, never dead-letters, never waits."""

    would_send = 0

    async def apply(self, entries: list[Any], stop: asyncio.Event) -> None:
        self.would_send += sum(len(entry.ops) for entry in entries)

    async def dead_letter(self, msg: Message, error: BaseException, *, attempts: int) -> None:
        log.info("%s: would dead-letter %s: %s", self.name, _where(msg), first_line(error))
        self.stats.dead_lettered += 1

    async def _resolve(self, pending: RelationPending, stop: asyncio.Event) -> None:
        # The related entity may be created by this very replay: assume it will be there.
        key = (pending.integration, pending.entity, pending.key)
        self.context.known[key] = f"(pending {pending.entity} {pending.key})"


Progress = Callable[[int, int], None]


@dataclass
class Replay:
    """Replays one integration; ``await Replay(config, name, request).run(stop)``."""

    config: Config
    name: str
    request: ReplayRequest
    on_progress: Progress | None = None
    on_planned: Callable[[list[PartitionRange]], None] | None = None
    stats: IntegrationStats = field(default_factory=IntegrationStats)
    _reached: dict[tuple[str, int], int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> ReplaySummary:
        select_integrations(self.config, [self.name])
        mapper = load_mappers(self.config, [self.name])[self.name]
        consumer = Consumer(replay_consumer_config(self.config, self.name))
        try:
            ranges = await asyncio.to_thread(
                plan_replay, self.config, self.name, self.request, consumer=consumer
            )
            if self.on_planned is not None:
                self.on_planned(ranges)
            state = await StateStore.open(state_dsn(self.config), schema=self.config.state.schema_)
            registry = RegistryClient.from_url(
                self.config.registry.url, auth=self.config.registry.auth()
            )
            sink = build_sink(self.name, self.config, state=state)
            try:
                kind = _DryRunApplier if self.request.dry_run else Applier
                applier = kind(
                    self.name,
                    self.config,
                    mapper=mapper,
                    sink=sink,
                    state=state,
                    deserializer=AvroDeserializer(registry),
                    stats=self.stats,
                )
                if not self.request.dry_run:
                    await sink.start()
                try:
                    await self._consume(consumer, applier, ranges, stop)
                finally:
                    applier.close()
            finally:
                with contextlib.suppress(Exception):
                    await sink.close()
                with contextlib.suppress(Exception):
                    await registry.aclose()
                await state.close()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(consumer.close)
        s = self.stats
        return ReplaySummary(
            integration=self.name,
            dry_run=self.request.dry_run,
            records=s.records,
            applied=s.applied,
            older=s.older,
            duplicate=s.duplicate,
            dead_lettered=s.dead_lettered,
            would_send=getattr(applier, "would_send", 0),
            ranges=tuple(
                replace(r, end=max(r.end, self._reached.get((r.topic, r.partition), r.end)))
                for r in ranges
            ),
        )

    async def _consume(
        self,
        consumer: Consumer,
        applier: Applier,
        ranges: list[PartitionRange],
        stop: asyncio.Event,
    ) -> None:
        todo = {(r.topic, r.partition): r for r in ranges if r.size > 0 or r.open_ended}
        planned = sum(r.size for r in todo.values())
        done_by: dict[tuple[str, int], int] = {}
        self._report(0, planned)
        if not todo:
            return
        consumer.assign([TopicPartition(t, p, r.start) for (t, p), r in todo.items()])
        while todo:
            if stop.is_set():
                raise asyncio.CancelledError
            msgs = await asyncio.to_thread(consumer.consume, _BATCH, 0.5)
            batch: list[Message] = []
            finished: list[tuple[str, int]] = []
            for msg in msgs:
                tp = (msg.topic() or "", msg.partition() or 0)
                wanted = todo.get(tp)
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if wanted is not None:
                            finished.append(tp)
                        continue
                    if err.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise ReplayError(
                            f"{tp[0]}[{tp[1]}]: offsets left the retained range during the"
                            f" replay ({err.str()})"
                        )
                    raise BrokerUnavailable(f"replay of {self.name}: {err.str()}")
                offset = msg.offset() or 0
                if wanted is None or tp in finished:
                    continue
                if not wanted.open_ended and offset >= wanted.end:
                    finished.append(tp)
                    continue
                batch.append(msg)
                done_by[tp] = offset + 1 - wanted.start
                self._reached[tp] = offset + 1
                if not wanted.open_ended and offset + 1 >= wanted.end:
                    finished.append(tp)
            if batch:
                await applier.handle(batch, stop)
            for tp in dict.fromkeys(finished):
                self._finish(consumer, todo, tp, done_by)
            # Transaction markers take offsets too: a partition whose position passed its
            # end is done even if no record sat at end - 1.
            bounded = [TopicPartition(t, p) for (t, p), r in todo.items() if not r.open_ended]
            for tp_pos in consumer.position(bounded) if bounded else []:
                tp = (tp_pos.topic, tp_pos.partition)
                if tp_pos.offset != OFFSET_INVALID and tp_pos.offset >= todo[tp].end:
                    self._finish(consumer, todo, tp, done_by)
            done = sum(done_by.values())
            self._report(done, max(planned, done))

    @staticmethod
    def _finish(
        consumer: Consumer,
        todo: dict[tuple[str, int], PartitionRange],
        tp: tuple[str, int],
        done_by: dict[tuple[str, int], int],
    ) -> None:
        wanted = todo.pop(tp, None)
        if wanted is None:
            return
        if not wanted.open_ended:
            done_by[tp] = wanted.size
        consumer.pause([TopicPartition(tp[0], tp[1])])

    def _report(self, done: int, total: int) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


# --------------------------------------------------------------------------- command line


def run_replay_command(
    config: Config, name: str, request: ReplayRequest, *, quiet: bool, as_json: bool
) -> ReplaySummary:
    """``cdcsync replay``: a progress bar on stderr (a TTY, not quiet), a summary on stdout."""
    import json  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    err = Console(stderr=True)
    show = not quiet and err.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
        transient=False,
    )
    task = progress.add_task(f"replay {name}", total=None, rate="")

    def on_progress(done: int, total: int) -> None:
        speed = progress.tasks[0].speed
        rate = f"{speed:,.0f} records/s" if speed else ""
        progress.update(task, completed=done, total=total, rate=rate)

    replay = Replay(config, name, request, on_progress=on_progress)

    async def main() -> ReplaySummary:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await replay.run(stop)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None

    with progress:
        summary = asyncio.run(main())
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
        return summary
    out = Console(file=sys.stdout)
    what = "dry run of replay" if summary.dry_run else "replay"
    out.print(f"{what} of {name}: {summary.records} records")
    for r in summary.ranges:
        out.print(f"  {r.topic}[{r.partition}] offsets {r.start}..{r.end} ({r.size} records)")
    if summary.dry_run:
        out.print(
            f"  would send {summary.would_send} operations to the sink (not compared with the"
            f" target); would dead-letter {summary.dead_lettered}"
        )
    else:
        out.print(
            f"  applied {summary.applied}, older {summary.older}, duplicate"
            f" {summary.duplicate}, dead-lettered {summary.dead_lettered}"
        )
    return summary
