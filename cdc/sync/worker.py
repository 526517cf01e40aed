"""Sync workers: Kafka records -> mapper -> sink, with retries, a circuit breaker and dead letters.

``Applier`` handles one batch of records for one integration: decode the envelope, map it
to entity operations, apply them through the sink. ``SyncWorker`` runs an ``Applier``
behind a consumer group and commits offsets. Replay (``cdc.sync.replay``) drives the same
``Applier`` from its own consumer.

Invariants:
- Offsets are committed only after every record before them was applied, skipped as
  older/duplicate, or dead-lettered (durably: the dead-letter topic acknowledged it).
  A crash anywhere re-delivers from the last commit; sinks are idempotent, so the
  result is the same.
- Records of one partition are handled in offset order, so operations on one key reach
  the sink in capture order.
- A target that is down is waited for (circuit open, consumption paused), never
  dead-lettered; only a record that keeps failing while the target answers its health
  probe, a record the sink rejects, or one the mapper cannot map is dead-lettered.
- No record stops the worker: whatever a record makes the decoder, the mapper or the sink
  raise (other than a ``RetryableError``, or the registry refusing the credentials, which
  stops the worker) dead-letters it; a dead letter the topic or the
  state store refuses for good is kept where it can be (the store, else the log at error
  level with its origin), and the offset moves on.
- A mapper waiting for a related entity (``RelationPending``) first lets the operations
  mapped so far reach the sink (they may be what it waits for), then waits; the record
  is never dropped. The related ids a batch needs are looked up in one query per entity
  beforehand, by a first mapping pass: mappers must be pure (called more than once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from cdc.config import Config, IntegrationConfig
from cdc.config.names import ORIGIN_HEADER, ORIGIN_LSN_HEADER, origin_name
from cdc.core import tracing
from cdc.core.backoff import Backoff, BackoffPolicy
from cdc.core.circuit_breaker import CircuitBreaker, CircuitState
from cdc.core.errors import (
    BrokerUnavailable,
    RegistryRefused,
    RelationPending,
    RetryableError,
    SinkRejected,
    SinkUnavailable,
    first_line,
)
from cdc.core.histogram import LatencyHistogram
from cdc.core.logs import ContextLogger
from cdc.core.supervision import run_restarting
from cdc.core.text import storable
from cdc.kafka.consumer import BatchFeed, group_consumer_config
from cdc.kafka.publisher import Publisher, producer_config
from cdc.state.store import StateStore
from cdc.sync.reread import blind_creates, reread_signal, send_signal
from cdc.sync.sinks.base import Outcome, Sink
from mappers.entity import EntityOp, Mapper, Origin, TableEvent
from schema_registry.serde import AvroDeserializer, UnknownSchemaIdError

log = logging.getLogger("cdcsync.sync")

# How long a mapper waits between look-ups of a related entity's external id.
RELATION_WAIT = BackoffPolicy(initial_s=0.1, max_s=2.0)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One run of a sink's health probe."""

    at: float  # Unix time
    ok: bool
    duration_ms: float
    detail: str | None = None


@dataclass
class IntegrationStats:
    """Counters of one integration, shown by status and metrics."""

    applied: int = 0
    older: int = 0
    duplicate: int = 0
    retried: int = 0
    dead_lettered: int = 0
    # Operations echoing this integration's own inbound writes, not sent to it again.
    echo: int = 0
    records: int = 0
    # Records with nothing to apply: Kafka tombstones, and events mapped to no operation.
    tombstones: int = 0
    no_operation: int = 0
    waits: int = 0
    # Rows capture was asked to read again (an upsert would have created an entity
    # without its unchanged TOAST values).
    rereads: int = 0
    restarts: int = 0
    last_version: str | None = None
    last_error: str | None = None
    paused: bool = False
    circuit: str = CircuitState.CLOSED.value
    failed_checks: int = 0
    # The latest sink health checks, newest last.
    checks: deque[HealthCheck] = field(default_factory=lambda: deque(maxlen=20))
    # Source commit -> applied, per applied operation (the /metrics histogram).
    apply_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Source commit -> applied, microseconds, when recording is on.
    latencies_us: list[int] | None = None

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.APPLIED:
            self.applied += 1
        elif outcome is Outcome.OLDER:
            self.older += 1
        elif outcome is Outcome.ECHO:
            self.echo += 1
        else:
            self.duplicate += 1


class IdentityContext:
    """``MapContext`` over an identity-map cache filled from the state store: an id not
    in ``known`` is ``RelationPending`` (the caller looks it up, or waits for it)."""

    def __init__(
        self, integration: str, known: dict[tuple[str, str, str], str] | None = None
    ) -> None:
        self._integration = integration
        self.known: dict[tuple[str, str, str], str] = {} if known is None else known

    @property
    def integration(self) -> str:
        return self._integration

    def external_id(self, integration: str, entity: str, key: object) -> str:
        found = self.known.get((integration, entity, str(key)))
        if found is None:
            raise RelationPending(integration=integration, entity=entity, key=str(key))
        return found


@dataclass
class _Entry:
    """The operations one record mapped to."""

    msg: Message
    event: TableEvent
    ops: list[EntityOp] = field(default_factory=list)
    mapped: bool = False  # ``ops`` already holds the mapper's result
    dead_lettered: bool = False
    # Nonzero: a write this integration made itself (inbound), with its echo token.
    echo_token: int = 0
    trace: Any = None  # the trace the record carries (cdc.core.tracing), when tracing is on


class Applier:
    """Maps and applies records of one integration; see the module docstring."""

    def __init__(
        self,
        name: str,
        config: Config,
        *,
        mapper: Mapper,
        sink: Sink,
        state: StateStore,
        deserializer: AvroDeserializer,
        stats: IntegrationStats | None = None,
        keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.log = ContextLogger(log, {"integration": name})
        self.config = config
        self.integration: IntegrationConfig = config.integrations[name]
        self.mapper = mapper
        self.sink = sink
        self.state = state
        self.deserializer = deserializer
        self.stats = stats or IntegrationStats()
        self.backoff = Backoff(self.integration.retry)
        self.breaker = CircuitBreaker(self.integration.circuit)
        self.context = IdentityContext(name)
        self.dead_letter_topic = (
            self.integration.dead_letter_topic or f"{config.kafka.topic_prefix}.dlq.{name}"
        )
        self._dlq: Publisher | None = None
        self._keepalive = keepalive
        self._own_origin = origin_name(name).encode()
        # Sink calls and health probes take turns (a probe may share the sink's connection).
        self._sink_lock = asyncio.Lock()
        self._opened_by_check = False

    # ------------------------------------------------------------------ batches

    async def handle(self, msgs: Sequence[Message], stop: asyncio.Event) -> None:
        """Map and apply ``msgs`` (one consumed batch) completely, or raise."""
        entries = await self._decode(msgs)
        if tracing.ENABLED:
            for entry in entries:
                entry.trace = tracing.record_context(entry.msg.headers())
        await self._prefetch_relations(entries)
        pending: list[_Entry] = []
        for entry in entries:
            if stop.is_set():
                raise asyncio.CancelledError
            while not entry.mapped:
                try:
                    entry.ops = self._map(entry)
                    break
                except RelationPending as exc:
                    # What it waits for may be in the operations mapped so far.
                    await self.apply(pending, stop)
                    pending = []
                    await self._resolve(exc, stop)
                except RetryableError:
                    raise
                except Exception as exc:
                    # MappingError, or a mapper's own bug (KeyError, ...): this record's
                    # fault, dead-lettered; the offset moves on.
                    await self.dead_letter(entry.msg, exc, attempts=1)
                    entry.ops = []
                    entry.dead_lettered = True
                    break
            if entry.ops and entry.echo_token:
                entry.ops = [replace(op, echo_token=entry.echo_token) for op in entry.ops]
            if entry.ops:
                pending.append(entry)
            elif not entry.dead_lettered:
                self.stats.no_operation += 1
        await self.apply(pending, stop)

    async def _decode(self, msgs: Sequence[Message]) -> list[_Entry]:
        """The batch's change events; undecodable records are dead-lettered."""
        entries: list[_Entry] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    # Capture creates a table's topic with its first event; it will come.
                    self.log.debug("%s: %s", self.name, err.str())
                    continue
                raise BrokerUnavailable(f"consuming for {self.name} failed: {err.str()}")
            self.stats.records += 1
            value = msg.value()
            if value is None:
                self.stats.tombstones += 1  # compaction's business, not an event
                continue
            echo = 0
            if _header(msg, ORIGIN_HEADER) == self._own_origin:
                # Written back by this integration. With a base (``mappers.lww``) the sink
                # skips it while the target still holds that write; without one, skipped.
                echo = _echo_token(msg)
                if echo == 0:
                    self.stats.echo += 1
                    continue
            origin = _origin(msg)
            try:
                envelope = await self._deserialize(value)
                raw_key = msg.key()
                key = None if raw_key is None else await self._deserialize(raw_key)
                event = TableEvent.from_envelope(envelope, key=key, origin=origin)
            except (RetryableError, RegistryRefused):  # refused credentials: not the record's
                raise
            except Exception as exc:  # undecodable, whatever the decoder raised
                await self.dead_letter(msg, exc, attempts=1)
                continue
            entries.append(_Entry(msg, event, echo_token=echo))
        return entries

    async def _deserialize(self, data: bytes) -> Any:
        """One framed record; no registry call (nor its coroutines) once its schema is known."""
        try:
            return self.deserializer.deserialize_cached(data)
        except UnknownSchemaIdError:
            return await self.deserializer.deserialize(data)

    async def _prefetch_relations(self, entries: list[_Entry]) -> None:
        """Look up, in one query per entity, every related id the batch's mappers ask for.

        An entry whose mapping needs nothing unknown keeps its result (mappers are pure).
        """
        wanted: dict[tuple[str, str], set[str]] = {}
        for entry in entries:
            try:
                entry.ops = self._map(entry)
                entry.mapped = True
            except RelationPending as exc:
                wanted.setdefault((exc.integration, exc.entity), set()).add(exc.key)
            except RetryableError:
                raise
            except Exception:  # noqa: S112 - reported when the entry is mapped for real
                continue
        for (integration, entity), keys in wanted.items():
            found = await self.state.external_ids(integration, entity, keys=sorted(keys))
            for key, external_id in found.items():
                self.context.known[(integration, entity, key)] = external_id

    async def _resolve(self, pending: RelationPending, stop: asyncio.Event) -> None:
        """Wait until the identity map knows the related entity."""
        attempt = 0
        while not stop.is_set():
            found = await self.state.external_ids(
                pending.integration, pending.entity, keys=[pending.key]
            )
            if pending.key in found:
                self.context.known[(pending.integration, pending.entity, pending.key)] = found[
                    pending.key
                ]
                return
            attempt += 1
            self.stats.waits += 1
            if attempt in (1, 10) or attempt % 100 == 0:
                self.log.info("%s: %s (try %d)", self.name, pending, attempt)
            await self._sleep(RELATION_WAIT.delay(attempt), stop)
        raise asyncio.CancelledError

    # ------------------------------------------------------------------ applying

    async def apply(self, entries: list[_Entry], stop: asyncio.Event) -> None:
        """Apply the entries' operations: retried, circuit-guarded, dead-lettered at worst."""
        if not entries:
            return
        ops = [op for entry in entries for op in entry.ops]
        attempt = 0
        reread_asked = False  # once per batch, not again on each retry of an outage
        while True:
            await self._wait_for_circuit(stop)
            try:
                async with self._sink_lock:
                    if not reread_asked:
                        await self._reread_blind_creates(entries, ops)
                        reread_asked = True
                    with tracing.applying(
                        ((e.trace, e.ops) for e in entries), {"cdc.integration": self.name}
                    ):
                        results = await self.sink.apply(ops)
            except SinkUnavailable as exc:
                attempt += 1
                self.stats.retried += 1
                self.stats.last_error = first_line(exc)
                self._failed()
                if self.backoff.exhausted(attempt):
                    if await self._target_healthy():
                        # The target answers, yet this batch keeps failing: isolate it.
                        if len(entries) > 1:
                            for entry in entries:
                                await self.apply([entry], stop)
                            return
                        await self.dead_letter(entries[0].msg, exc, attempts=attempt)
                        return
                    attempt -= 1  # the target is down: wait for it, however long
                retry_after = getattr(exc, "retry_after_s", None)
                delay = self.backoff.delay(max(attempt, 1), retry_after=retry_after)
                self.log.warning("%s: %s; retry in %.1fs", self.name, first_line(exc), delay)
                await self._sleep(delay, stop)
                continue
            except RetryableError:
                raise
            except Exception as exc:
                # Not an outage (the sink would say SinkUnavailable): a record the sink
                # cannot take, raised instead of answered. Isolate it and dead-letter it.
                if len(entries) > 1:
                    for entry in entries:
                        await self.apply([entry], stop)
                    return
                await self.dead_letter(entries[0].msg, exc, attempts=attempt + 1)
                return
            if self.breaker.state is not CircuitState.CLOSED:
                self.log.info("%s: circuit closed, the target answers again", self.name)
            self.breaker.record_success()
            self._opened_by_check = False
            self.stats.circuit = self.breaker.state.value
            self.stats.last_error = None  # it applies again: the error is history
            break
        now_us = time.time_ns() // 1000
        latencies = self.stats.latencies_us
        histogram = self.stats.apply_latency
        it = iter(results)
        last_applied: EntityOp | None = None
        for entry in entries:
            rejected: SinkRejected | None = None
            for op in entry.ops:
                result = next(it)
                if isinstance(result, SinkRejected):
                    rejected = rejected or result
                    continue
                self.stats.count(result)
                if result is Outcome.APPLIED:
                    last_applied = op
                    histogram.observe_us(now_us - entry.event.ts_us)
                    if latencies is not None:
                        latencies.append(now_us - entry.event.ts_us)
            if rejected is not None:
                await self.dead_letter(entry.msg, rejected, attempts=attempt + 1)
        if last_applied is not None:  # formatted once per batch, not per operation
            self.stats.last_version = str(last_applied.version)

    async def _reread_blind_creates(self, entries: list[_Entry], ops: list[EntityOp]) -> None:
        """Ask capture to read again the rows whose upsert would create an entity without
        the fields it cannot see (``cdc.sync.reread``)."""
        blind = await blind_creates(self.sink, ops)
        if not blind:
            return
        owners = [entry.event for entry in entries for _ in entry.ops]
        signal = reread_signal([owners[i] for i in blind])
        if signal is not None:
            await send_signal(self.config.source.dsn.get_secret_value(), signal)
            self.stats.rereads += len(blind)
            self.log.info(
                "%s: %d upserts would create entities without unchanged TOAST values; "
                "asked capture to read those rows again",
                self.name,
                len(blind),
            )

    def _map(self, entry: _Entry) -> list[EntityOp]:
        """The mapper's operations for ``entry``, in a ``map`` span when it is traced."""
        if entry.trace is None:
            return list(self.mapper(entry.event, self.context))
        with tracing.span("map", entry.trace, {"cdc.integration": self.name}):
            return list(self.mapper(entry.event, self.context))

    async def _wait_for_circuit(self, stop: asyncio.Event) -> None:
        """Return when the circuit lets a call through; probes the target while open."""
        while not self.breaker.allow():
            self.stats.circuit = self.breaker.state.value
            await self._sleep(max(self.breaker.retry_in(), 0.05), stop)
            if self.breaker.allow():
                if await self._target_healthy():
                    return
                self._failed()
        self.stats.circuit = self.breaker.state.value

    def _failed(self) -> None:
        was_open = self.breaker.state is CircuitState.OPEN
        self.breaker.record_failure()
        self.stats.circuit = self.breaker.state.value
        if self.breaker.state is CircuitState.OPEN and not was_open:
            self.log.warning(
                "%s: circuit open after %d failures in a row; consumption paused, probing the "
                "target every %.1fs",
                self.name,
                self.breaker.consecutive_failures,
                self.integration.circuit.reset_timeout_s,
            )

    async def check_health(self) -> HealthCheck:
        """Run the sink's probe once. A failure opens the circuit before any record fails;
        a success closes a circuit that a failed check opened."""
        started = time.monotonic()
        detail: str | None = None
        try:
            async with self._sink_lock:
                await self.sink.probe()
        except SinkUnavailable as exc:
            detail = first_line(exc)
        check = HealthCheck(
            at=time.time(),
            ok=detail is None,
            duration_ms=(time.monotonic() - started) * 1000,
            detail=detail,
        )
        self.stats.checks.append(check)
        if not check.ok:
            self.stats.failed_checks += 1
            self.stats.last_error = detail
            if self.breaker.state is CircuitState.CLOSED:
                self.breaker.trip()
                self._opened_by_check = True
                self.log.warning(
                    "%s: health check failed (%s); circuit open, consumption paused",
                    self.name,
                    detail,
                )
        elif self._opened_by_check and self.breaker.state is not CircuitState.CLOSED:
            self.breaker.record_success()
            self._opened_by_check = False
            self.stats.last_error = None
            self.log.info("%s: health check passes again; circuit closed", self.name)
        self.stats.circuit = self.breaker.state.value
        return check

    async def _target_healthy(self) -> bool:
        try:
            await self.sink.probe()
        except SinkUnavailable as exc:
            self.stats.last_error = first_line(exc)
            return False
        return True

    async def _sleep(self, seconds: float, stop: asyncio.Event) -> None:
        """Sleep, keeping the consumer's membership alive, unless stopped."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._keepalive is not None:
                self._keepalive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(remaining, 1.0))
        raise asyncio.CancelledError

    # ------------------------------------------------------------------ dead letters

    async def dead_letter(self, msg: Message, error: BaseException, *, attempts: int) -> None:
        """Publish ``msg`` to the dead-letter topic with why, and record it."""
        origin = _origin(msg)
        reason = storable(first_line(error))[:2000]
        self.log.warning(
            "%s: dead-lettering %s after %d attempt(s): %s",
            self.name,
            origin,
            attempts,
            reason,
            extra={"topic": origin.topic, "partition": origin.partition, "offset": origin.offset},
        )
        headers: list[tuple[str, str | bytes | None]] = [
            ("cdcsync.error", reason.encode()),
            ("cdcsync.error.class", type(error).__name__.encode()),
            ("cdcsync.attempts", str(attempts).encode()),
            ("cdcsync.integration", self.name.encode()),
            ("cdcsync.origin.topic", origin.topic.encode()),
            ("cdcsync.origin.partition", str(origin.partition).encode()),
            ("cdcsync.origin.offset", str(origin.offset).encode()),
            ("cdcsync.timestamp", datetime.now(UTC).isoformat().encode()),
        ]
        headers += tracing.event_span(
            "dead-letter", msg.headers(), {"cdc.integration": self.name, "cdc.error": reason}
        )
        key, payload = msg.key(), msg.value()
        partition: int | None = None
        offset: int | None = None
        try:
            partition, offset = await asyncio.to_thread(
                self._publish_dead_letter, key, payload, headers
            )
        except RetryableError:
            raise
        except Exception as exc:  # refused for good (too large...): kept in the state store
            reason = storable(f"{reason} [not on {self.dead_letter_topic}: {first_line(exc)}]")
            self.log.error("%s: %s: %s", self.name, origin, reason)
        await self.state.keep_dead_letter(
            self.name,
            log=self.log,
            origin=origin,
            key=None if key is None else bytes(key).hex(),
            error=reason,
            attempts=attempts,
            payload=None if payload is None else bytes(payload),
            dlq_topic=self.dead_letter_topic,
            dlq_partition=partition,
            dlq_offset=offset,
        )
        self.stats.dead_lettered += 1

    def _publish_dead_letter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]]
    ) -> tuple[int | None, int | None]:
        if self._dlq is None:
            kafka = self.config.kafka
            self._dlq = Publisher(
                producer_config(kafka.bootstrap_servers, kafka.client_properties())
            )
            self._dlq.ensure_topics(
                [self.dead_letter_topic],
                partitions=1,
                replication_factor=kafka.topic_replication_factor,
            )
        where: list[Any] = []

        def delivered(err: Any, m: Any) -> None:
            where.append((err, m))

        self._dlq.produce(self.dead_letter_topic, key, value, delivered, headers=headers)
        self._dlq.flush(30)
        if not where:
            raise BrokerUnavailable(
                f"dead-letter topic {self.dead_letter_topic}: no acknowledgement"
            )
        err, m = where[0]
        if err is not None:
            raise BrokerUnavailable(f"dead-letter topic {self.dead_letter_topic}: {err}")
        return m.partition(), m.offset()

    def close(self) -> None:
        if self._dlq is not None:
            self._dlq.flush(5)


class SyncWorker:
    """One integration's consumer-group member: consume, apply, commit, repeat."""

    def __init__(
        self,
        name: str,
        config: Config,
        *,
        mapper: Mapper,
        sink: Sink,
        state: StateStore,
        deserializer: AvroDeserializer,
        record_latency: bool = False,
    ) -> None:
        self.name = name
        self.log = ContextLogger(log, {"integration": name})
        self.config = config
        self.integration = config.integrations[name]
        self.stats = IntegrationStats(latencies_us=[] if record_latency else None)
        self.stats.paused = self.integration.paused
        self.group_id = self.integration.group_id or f"cdcsync.{name}"
        self._consumer: Consumer | None = None
        self.applier = Applier(
            name,
            config,
            mapper=mapper,
            sink=sink,
            state=state,
            deserializer=deserializer,
            stats=self.stats,
            keepalive=self._keepalive,
        )
        self._resumed = asyncio.Event()
        if not self.stats.paused:
            self._resumed.set()

    # ------------------------------------------------------------------ control

    def pause(self) -> None:
        """Stop consuming (the current batch finishes); offsets stay where they are."""
        self.stats.paused = True
        self._resumed.clear()
        self.log.info("%s paused", self.name)

    def resume(self) -> None:
        self.stats.paused = False
        self._resumed.set()
        self.log.info("%s resumed", self.name)

    def _keepalive(self) -> None:
        consumer = self._consumer
        msg: Message | None = None
        if consumer is not None:
            with contextlib.suppress(KafkaException, RuntimeError):
                assignment = consumer.assignment()
                if assignment:
                    consumer.pause(assignment)
                msg = consumer.poll(0)
                if assignment:
                    consumer.resume(assignment)
            if msg is not None and msg.error() is None:
                # A partition assigned during this poll was not paused: its record is put
                # back (a failing seek raises, and the worker restarts from its commits).
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                if topic is not None and partition is not None and offset is not None:
                    consumer.seek(TopicPartition(topic, partition, offset))

    # ------------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and apply until ``stop``; transient failures restart from the last commit."""
        await run_restarting(self._run_once, stop, self.stats, self.log, self.name)

    async def _run_once(self, stop: asyncio.Event) -> None:
        try:
            await self.applier.sink.start()
        except SinkUnavailable as exc:
            raise SinkUnavailable(f"{self.name}: sink not ready: {first_line(exc)}") from exc
        consumer = Consumer(group_consumer_config(self.config, self.group_id))
        self._consumer = consumer
        feed = BatchFeed(consumer, self.log)
        checks = asyncio.create_task(self._health_checks(stop))
        try:
            consumer.subscribe(list(self.integration.topics))
            while not stop.is_set():
                if not self._resumed.is_set():
                    await self._paused(stop)
                    continue
                msgs = await feed.next()
                if not msgs:
                    continue
                if not self._resumed.is_set():
                    # Paused while this batch was being fetched: it waits for the resume.
                    await self._paused(stop)
                    if stop.is_set():
                        break
                await self.applier.handle(msgs, stop)
                feed.handled(msgs)
        except KafkaException as exc:
            raise BrokerUnavailable(f"{self.name}: {first_line(exc)}") from exc
        finally:
            checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checks
            self._consumer = None
            await feed.close()
            self.applier.close()

    async def _health_checks(self, stop: asyncio.Event) -> None:
        """Probe the sink every ``health_check_interval_s`` (0: never)."""
        interval = self.integration.health_check_interval_s
        if interval <= 0:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if not stop.is_set():
                await self.applier.check_health()

    async def _paused(self, stop: asyncio.Event) -> None:
        while not self._resumed.is_set() and not stop.is_set():
            self._keepalive()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resumed.wait(), 1.0)


def _origin(msg: Message) -> Origin:
    return Origin(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)


def _echo_token(msg: Message) -> int:
    raw = _header(msg, ORIGIN_LSN_HEADER)
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


def _header(msg: Message, name: str) -> bytes | None:
    raw = msg.headers() or []
    for key, value in raw.items() if isinstance(raw, dict) else raw:
        if key == name:
            return value.encode() if isinstance(value, str) else value
    return None


__all__ = ["Applier", "HealthCheck", "IdentityContext", "IntegrationStats", "SyncWorker"]
