"""The Kafka entity sink: entities as JSON records on a compacted topic, keyed by their key.

Record layout (``config.topic``):

- key: the entity's external key (UTF-8), so compaction keeps the newest record per entity
  and every record of one entity lands in the same partition, in order;
- upsert value: a JSON object of the entity's fields (``EntityUpsert.fields()``, JSON-ready)
  plus ``_version`` (``str(Version)``, readable) and ``_version_bytes`` (the hex of
  ``Version.to_bytes()``: comparing these strings orders versions). Fields the change could
  not see (``unavailable``) are left out of the value and named in a header: consumers keep
  their previous value for them;
- delete: a tombstone (null value), so compaction eventually drops the entity;
- headers on both: ``cdc.op`` (``upsert``/``delete``), ``cdc.entity``, ``cdc.version``,
  ``cdc.version_bytes``, ``cdc.integration``, and ``cdc.unavailable`` / ``cdc.origin`` when
  there are any.

Last-writer-wins: Kafka cannot refuse an older record and compaction keeps the last record
per key, not the newest version, so the sink must never produce a version older than one it
produced before, also after a restart or during ``replay --from-beginning``. The newest
version produced per key is durable in the state store (``StateStore.guard``): ``apply``
locks the batch's keys there, reads their versions, produces only newer operations, waits
for the acknowledgements and saves the acknowledged versions in the same transaction, so a
replay beside the live worker waits for the keys. An operation whose version is not newer
is ``DUPLICATE`` / ``OLDER`` and not produced. A version is saved only once the broker
acknowledged it; a record acknowledged but not saved (a crash in between) is produced again
at its redelivery, an equal version, which leaves the compacted state unchanged. Without a
state store (tools and tests only) the guard is a bounded in-memory map of this process.

Delivery: an idempotent producer with ``acks=all`` (a property cannot turn them off; a
``transactional.id`` inherited from the cluster's properties is dropped).
``apply`` produces the whole batch, then waits in a worker thread (the event loop never
blocks) until every delivery report is in. A record the broker refuses for good (too large,
invalid) is that operation's ``SinkRejected``; any other failure (broker down, delivery
timed out after ``delivery.timeout.ms``, 30 s unless configured) raises ``SinkUnavailable``
for the call. ``start`` creates the topic with ``cleanup.policy=compact`` (and the broker's
default partitions and replication) if it is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from pydantic import SecretStr

from cdc.config import KafkaSinkConfig
from cdc.core.errors import ConfigError, SinkRejected, SinkUnavailable
from cdc.kafka.client_log import with_logger
from cdc.state.store import StateStore, VersionGuard
from cdc.sync.sinks.base import Outcome, Result
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version

__all__ = ["KafkaEntitySink", "entity_record"]

log = logging.getLogger(__name__)

_FORCED: Final[Mapping[str, Any]] = {"enable.idempotence": True, "acks": "all"}
_DEFAULTS: Final[Mapping[str, Any]] = {
    "linger.ms": 5,
    "delivery.timeout.ms": 30_000,
    "compression.type": "lz4",
}
_ADMIN_PREFIXES: Final = ("security.", "sasl.", "ssl.", "client.id", "socket.", "broker.")
_REJECTED_CODES: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_RECORD,
        KafkaError.RECORD_LIST_TOO_LARGE,
    }
)
_CONFIG_CODES: Final = frozenset(
    {
        KafkaError.INVALID_CONFIG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TOPIC_EXCEPTION,
    }
)
# Delivery errors after which the producer's idempotence state is unusable: the producer
# is recreated (a new producer id) before the next ``apply``.
_RESET_CODES: Final = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError._FENCED,
    }
)
_PENDING: Final = object()
_ADMIN_TIMEOUT_S: Final = 10.0
_PROBE_TIMEOUT_S: Final = 5.0

Headers = list[tuple[str, str | bytes | None]]


def entity_record(op: EntityOp, *, integration: str) -> tuple[bytes, bytes | None, Headers]:
    """The (key, value, headers) of the record for ``op`` (see the module docstring)."""
    version = op.version
    hex_version = version.to_bytes().hex()
    headers: Headers = [
        ("cdc.op", b"delete" if isinstance(op, EntityDelete) else b"upsert"),
        ("cdc.entity", op.entity.encode()),
        ("cdc.version", str(version).encode()),
        ("cdc.version_bytes", hex_version.encode()),
        ("cdc.integration", integration.encode()),
    ]
    if op.origin is not None:
        headers.append(("cdc.origin", str(op.origin).encode()))
    value: bytes | None = None
    if isinstance(op, EntityUpsert):
        if op.unavailable:
            headers.append(("cdc.unavailable", ",".join(sorted(op.unavailable)).encode()))
        body = {**op.fields(), "_version": str(version), "_version_bytes": hex_version}
        value = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return op.key.encode(), value, headers


class KafkaEntitySink:
    """Entities on a compacted Kafka topic. See the module docstring."""

    def __init__(
        self,
        name: str,
        config: KafkaSinkConfig,
        *,
        integration: str,
        default_bootstrap: str,
        producer_config: Mapping[str, object] | None = None,
        remembered_keys: int = 100_000,
        state: StateStore | None = None,
    ) -> None:
        self.name = name
        self.integration = integration
        self.topic = config.topic
        self._settings = _producer_settings(
            config.bootstrap_servers or default_bootstrap,
            producer_config or {},
            config.properties,
            sink=name,
        )
        self._producer: Producer | None = None
        self._fatal: str | None = None
        self._topic_ready = False
        self._known: OrderedDict[str, Version] = OrderedDict()
        self._remembered = remembered_keys
        self._state = state

    def __repr__(self) -> str:
        return f"KafkaEntitySink({self.name!r}, topic={self.topic!r})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Create the producer and the compacted topic if it is missing."""
        self._ensure_producer()
        if not self._topic_ready:
            await asyncio.to_thread(self._ensure_topic)
            self._topic_ready = True

    async def holding(self, entity: str, keys: Sequence[str]) -> set[str]:
        if self._state is None:
            return {key for key in keys if key in self._known}
        held = await self._state.versions(self.integration, entity, keys=keys)
        return {key for key, (_, deleted) in held.items() if not deleted}

    async def probe(self) -> None:
        producer = self._ensure_producer()
        try:
            await asyncio.to_thread(producer.list_topics, self.topic, _PROBE_TIMEOUT_S)
        except KafkaException as exc:
            raise SinkUnavailable(f"kafka sink {self.name}: broker unreachable: {exc}") from None

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.flush, _PROBE_TIMEOUT_S)

    # ---------------------------------------------------------------------- apply

    async def apply(self, ops: Sequence[EntityOp]) -> list[Result]:
        """Produce ``ops`` and wait for every acknowledgement; one result per op."""
        if not ops:
            return []
        await self.start()
        if self._state is None:
            results, unavailable = await self._apply(ops, None)
        else:
            keys = [(op.entity, op.key) for op in ops]
            async with self._state.guard(self.integration, keys) as guard:
                results, unavailable = await self._apply(ops, guard)
        if unavailable is not None:
            raise SinkUnavailable(f"kafka sink {self.name}: {unavailable}")
        return results

    async def _apply(
        self, ops: Sequence[EntityOp], guard: VersionGuard | None
    ) -> tuple[list[Result], str | None]:
        """Produce what is newer than held; save acknowledged versions in ``guard``."""
        producer = self._ensure_producer()
        results: list[Result | None] = [None] * len(ops)
        newest: dict[tuple[str, str], Version] = {}  # this batch's decisions on top of held
        reports: list[object] = []  # a KafkaError, None (delivered) or _PENDING per record
        sent: list[int] = []  # the op index of each record
        for index, op in enumerate(ops):
            held = newest.get((op.entity, op.key))
            if held is None:
                held = (
                    self._known.get(op.key) if guard is None else guard.version(op.entity, op.key)
                )
            if held is not None and op.version <= held:
                results[index] = Outcome.OLDER if op.version < held else Outcome.DUPLICATE
                continue
            try:
                await self._produce(producer, op, reports)
            except _Refused as refused:
                results[index] = SinkRejected(str(refused))
                continue
            newest[(op.entity, op.key)] = op.version
            sent.append(index)

        if sent:
            timeout = float(self._settings["delivery.timeout.ms"]) / 1000 + 5.0
            await asyncio.to_thread(producer.flush, timeout)

        unavailable: str | None = None
        acknowledged: dict[str, list[tuple[str, Version, bool]]] = {}
        for slot, index in enumerate(sent):
            report = reports[slot]
            op = ops[index]
            if report is None:
                results[index] = Outcome.APPLIED
                if guard is None:
                    self._remember(op.key, op.version)
                else:
                    acknowledged.setdefault(op.entity, []).append(
                        (op.key, op.version, isinstance(op, EntityDelete))
                    )
            elif report is _PENDING:
                unavailable = unavailable or "delivery did not complete in time"
            else:
                assert isinstance(report, KafkaError)
                if report.fatal() or report.code() in _RESET_CODES:
                    self._fatal = report.str()
                if report.code() in _REJECTED_CODES:
                    results[index] = SinkRejected(
                        f"kafka sink {self.name}: {op.entity} {op.key!r} refused: {report.str()}"
                    )
                else:
                    unavailable = unavailable or report.str()
        if guard is not None:
            for entity, items in acknowledged.items():
                await guard.save_versions(entity, items=items)
        return [r for r in results if r is not None], unavailable

    async def _produce(self, producer: Producer, op: EntityOp, reports: list[object]) -> None:
        key, value, headers = entity_record(op, integration=self.integration)
        slot = len(reports)
        reports.append(_PENDING)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            reports[slot] = err

        while True:
            try:
                producer.produce(self.topic, value, key, headers=headers, on_delivery=delivered)
                return
            except BufferError:  # the local queue is full: let deliveries drain
                await asyncio.to_thread(producer.poll, 0.1)
            except KafkaException as exc:
                reports.pop()
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is not None and error.code() in _REJECTED_CODES:
                    raise _Refused(
                        f"kafka sink {self.name}: {op.entity} {op.key!r} refused: {error.str()}"
                    ) from None
                raise SinkUnavailable(f"kafka sink {self.name}: cannot produce: {exc}") from None

    def _remember(self, key: str, version: Version) -> None:
        known = self._known
        held = known.get(key)
        if held is None or version > held:
            known[key] = version
        known.move_to_end(key)
        while len(known) > self._remembered:
            known.popitem(last=False)

    # ------------------------------------------------------------ producer, topic

    def _ensure_producer(self) -> Producer:
        if self._fatal is not None and self._producer is not None:
            log.warning("kafka sink %s: recreating the producer after %s", self.name, self._fatal)
            self._producer = None
        self._fatal = None
        if self._producer is None:
            settings = with_logger({**self._settings, "error_cb": self._on_error})
            try:
                self._producer = Producer(settings)
            except KafkaException as exc:
                raise ConfigError(
                    f"kafka sink {self.name}: producer settings rejected: {exc}"
                ) from None
        return self._producer

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err.str()
        log.debug("kafka sink %s: %s", self.name, err.str())

    def _ensure_topic(self) -> None:
        """Create the compacted topic if missing (runs in a worker thread)."""
        admin = AdminClient(
            with_logger(
                {
                    k: v
                    for k, v in self._settings.items()
                    if k == "bootstrap.servers" or k.startswith(_ADMIN_PREFIXES)
                }
            )
        )
        try:
            meta = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
        except KafkaException as exc:
            raise SinkUnavailable(f"kafka sink {self.name}: broker unreachable: {exc}") from None
        if self.topic in meta.topics:
            return
        wanted = NewTopic(
            self.topic,
            num_partitions=-1,
            replication_factor=-1,
            config={"cleanup.policy": "compact"},
        )
        future = admin.create_topics([wanted], request_timeout=_ADMIN_TIMEOUT_S)[self.topic]
        try:
            future.result(timeout=_ADMIN_TIMEOUT_S + 5)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return
            if error.code() in _CONFIG_CODES:
                raise ConfigError(
                    f"kafka sink {self.name}: cannot create {self.topic}: {error.str()}"
                ) from None
            raise SinkUnavailable(
                f"kafka sink {self.name}: cannot create {self.topic}: {exc}"
            ) from None
        log.info("kafka sink %s: created compacted topic %s", self.name, self.topic)


class _Refused(Exception):
    """The producer refused one record for good (internal to ``apply``)."""


def _producer_settings(
    bootstrap: str,
    base: Mapping[str, object],
    properties: Mapping[str, object],
    *,
    sink: str,
) -> dict[str, Any]:
    """librdkafka settings: defaults, then the cluster's, then the sink's, then the forced."""
    settings: dict[str, Any] = {"bootstrap.servers": bootstrap, **_DEFAULTS}
    for source in (base, properties):
        for key, value in source.items():
            plain = value.get_secret_value() if isinstance(value, SecretStr) else value
            if key in _FORCED and str(plain).lower() != str(_FORCED[key]).lower():
                raise ConfigError(f"kafka sink {sink}: {key} must be {_FORCED[key]!r}")
            settings[key] = plain
    settings["bootstrap.servers"] = bootstrap
    # The capture side's exactly-once mode must not make this producer transactional.
    settings.pop("transactional.id", None)
    if "message.timeout.ms" in settings:
        settings["delivery.timeout.ms"] = settings.pop("message.timeout.ms")
    settings.update(_FORCED)
    return settings
