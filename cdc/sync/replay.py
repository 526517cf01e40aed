"""Replay: re-apply a stretch of an integration's topics through its current mapper and sink.

``cdc.kafka.replay_plan.plan_replay`` turns a ``ReplayRequest`` into one ``PartitionRange`` per
partition, checked against what the broker retains. ``Replay.run`` then reads those ranges
with its own consumer (``assign`` + seek; it never subscribes and never commits) and drives
the same ``Applier`` as the live worker, so mapping, retries, the circuit breaker and dead
letters behave exactly as they do live.

Invariants:
- The live consumer group's committed offsets are never moved: the replay consumer has
  a group id of its own and commits nothing.
- Every check happens in planning, before the first record is read; a bad request
  changes nothing.
- Without an ``until`` a partition is read to the end it has when the replay catches up
  with it (end-of-partition), so records a broker under-reports are not left out.
- The live integration need not be paused: sinks are idempotent and version-guarded, so an
  event replayed next to the live worker is a duplicate or older, never a regression.
- ``dry_run`` maps every record and counts the operations that would be sent; it reads
  the state store (identity map) but writes nothing anywhere: no sink call, no dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Message, TopicPartition

from cdc.config import Config
from cdc.core.errors import BrokerUnavailable, RelationPending, ReplayError, first_line
from cdc.kafka.replay_plan import (
    PartitionRange,
    ReplayRequest,
    TopicOffset,
    end_offset,
    parse_timestamp,
    plan_replay,
    replay_consumer_config,
)
from cdc.state.store import StateStore
from cdc.sync.runtime import load_mappers, select_integrations
from cdc.sync.sinks import build_sink
from cdc.sync.worker import Applier, IntegrationStats
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
    "replay_consumer_config",
    "run_replay_command",
]

log = logging.getLogger("cdcsync.replay")

_BATCH = 500


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What a replay did (or, for a dry run, would do).

    Records and operations are counted apart: every record read ends as exactly one of
    ``with_operations``, ``tombstones``, ``no_operation``, ``echo`` or ``dead_lettered``
    (they add up to ``records``); the operations the mapper made of the first kind end as
    ``applied``, ``older`` or ``duplicate`` (a mapper may make several of one record).
    """

    integration: str
    dry_run: bool
    records: int
    applied: int
    older: int
    duplicate: int
    dead_lettered: int
    would_send: int
    ranges: tuple[PartitionRange, ...]
    tombstones: int = 0
    no_operation: int = 0
    echo: int = 0

    @property
    def with_operations(self) -> int:
        """Records the mapper turned into at least one operation."""
        return self.records - self.tombstones - self.no_operation - self.echo - self.dead_lettered

    def as_dict(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "dry_run": self.dry_run,
            "records": self.records,
            "with_operations": self.with_operations,
            "tombstones": self.tombstones,
            "no_operation": self.no_operation,
            "echo": self.echo,
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
            state = await StateStore.open(
                self.config.state_dsn().get_secret_value(), schema=self.config.state.schema_
            )
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
            tombstones=s.tombstones,
            no_operation=s.no_operation,
            echo=s.echo,
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
    out.print(f"{what} of {name}: {summary.records:,} records", highlight=False)
    for r in summary.ranges:
        out.print(
            f"  {r.topic}[{r.partition}] offsets {r.start}..{r.end} ({r.size:,} records)",
            highlight=False,
        )
    dead = "would be dead-lettered" if summary.dry_run else "dead-lettered"
    out.print(
        f"  records: {summary.with_operations:,} mapped to operations,"
        f" {summary.tombstones:,} tombstones (nothing to apply),"
        f" {summary.no_operation:,} mapped to no operation, {summary.echo:,} echoes,"
        f" {summary.dead_lettered:,} {dead}",
        highlight=False,
        soft_wrap=True,
    )
    if summary.dry_run:
        out.print(
            f"  operations: would send {summary.would_send:,} to the sink (not compared with"
            " the target)",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print(
            f"  operations: applied {summary.applied:,}, older {summary.older:,},"
            f" duplicate {summary.duplicate:,}",
            highlight=False,
            soft_wrap=True,
        )
    return summary
