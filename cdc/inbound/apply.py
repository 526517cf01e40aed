"""Inbound apply: changes queued by the inbound endpoint -> rows of the source database.

``InboundWorker`` consumes one integration's inbound topic (consumer group
``cdcsync.inbound.{name}``) and applies each change in its own source-database transaction:

1. insert the change's marker (``inbound_changes``, keyed by integration and
   Idempotency-Key); if it is already there the change was applied before: nothing else;
2. find the row through the identity map (external id -> key) and lock it
   (``SELECT ... FOR UPDATE``), reading its version column;
3. apply the change only if its version is newer than the row's; else it is recorded as
   ``lost`` to a newer write. An unknown external id creates the row (the database assigns
   the key) and records the new identity mapping; a known id whose row was deleted is not
   resurrected (``gone``); a delete of an unknown id changes nothing (``absent``);
4. record the outcome in the marker; commit. Offsets are committed after the transactions.

The session runs under the replication origin ``cdcsync_{name}``, so capture marks these
writes; the transaction's origin LSN carries ``mappers.lww.echo_token`` of the change's base,
so the integration's own sink skips the echo only while the external system still holds its
write (no echo), and sends it otherwise; other integrations receive them like any change.

Invariants: a change is applied at most once per Idempotency-Key (the marker commits with
it), and at least once (offsets are committed only after the transaction committed or the
record was dead-lettered). A change that the database refuses for good (a constraint, bad
data) or that cannot be read is dead-lettered, never dropped. The inbound bookkeeping lives
in the state schema of the source database, so it commits with the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import ValidationError

from cdc.config import Config
from cdc.config.names import (
    inbound_dead_letter_topic,
    inbound_group_id,
    inbound_topic,
    origin_name,
)
from cdc.core import tracing
from cdc.core.errors import (
    BrokerUnavailable,
    ConfigError,
    MappingError,
    RetryableError,
    SourceUnavailable,
    first_line,
)
from cdc.core.logs import ContextLogger
from cdc.core.lsn import Lsn
from cdc.core.secrets import redact_dsn
from cdc.core.supervision import run_restarting
from cdc.core.text import key_text, storable
from cdc.kafka.consumer import BatchFeed, group_consumer_config
from cdc.kafka.publisher import Publisher, producer_config
from cdc.state.store import StateStore
from mappers.entity import Origin, microseconds
from mappers.inbound import InboundChange, load_inbound_mapper, load_inbound_model
from mappers.lww import echo_token, inbound_wins

__all__ = ["InboundApplier", "InboundStats", "InboundWorker", "Outcome"]

log = logging.getLogger("cdcsync.inbound")

BATCH_SIZE = 200


class Outcome:
    """What became of an inbound change (the ``outcome`` column)."""

    APPLIED = "applied"
    CREATED = "created"
    DELETED = "deleted"
    LOST = "lost"  # the row holds a newer (or the same) version
    GONE = "gone"  # the row was deleted; an external update does not bring it back
    ABSENT = "absent"  # a delete of an entity the database never had
    DUPLICATE = "duplicate"  # this Idempotency-Key was applied before


@dataclass
class InboundStats:
    """Counters of one integration's inbound apply."""

    records: int = 0
    applied: int = 0
    lost: int = 0
    duplicate: int = 0
    other: int = 0
    dead_lettered: int = 0
    restarts: int = 0
    last_error: str | None = None

    def count(self, outcome: str) -> None:
        if outcome in (Outcome.APPLIED, Outcome.CREATED, Outcome.DELETED):
            self.applied += 1
        elif outcome == Outcome.LOST:
            self.lost += 1
        elif outcome == Outcome.DUPLICATE:
            self.duplicate += 1
        else:
            self.other += 1


class InboundApplier:
    """Applies inbound changes of one integration over one source connection."""

    def __init__(self, name: str, config: Config) -> None:
        inbound = config.integrations[name].inbound
        if inbound is None:
            raise ConfigError(f"integrations.{name}.inbound: not configured")
        if config.state.dsn is not None and (
            config.state.dsn.get_secret_value() != config.source.dsn.get_secret_value()
        ):
            raise ConfigError(
                f"integrations.{name}.inbound: needs the state store in the source database "
                "(leave state.dsn unset), so a change and its bookkeeping commit together"
            )
        self.name = name
        self.config = config
        self.inbound = inbound
        self.model = load_inbound_model(inbound.model)
        self.mapper = load_inbound_mapper(inbound.mapper)
        self.origin = origin_name(name)
        schema, _, table = inbound.table.partition(".")
        self.table = sql.Identifier(schema, table)
        self.key = sql.Identifier(inbound.key_column)
        self.version = sql.Identifier(inbound.version_column)
        self.state = sql.Identifier(config.state.schema_)
        self.key_type: sql.Composable = sql.SQL("text")
        self.conn: psycopg.AsyncConnection[Any] | None = None

    # ------------------------------------------------------------------ session

    async def connect(self, stop: asyncio.Event) -> None:
        """Open the session: migrations, the origin (created if missing) set up for it."""
        dsn = self.config.source.dsn.get_secret_value()
        # The bookkeeping tables must exist in the source database.
        store = await StateStore.open(dsn, schema=self.config.state.schema_)
        await store.close()
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name=f"cdcsync-inbound-{self.name}"
            )
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(
                f"inbound {self.name}: source database: {redact_dsn(first_line(exc))}"
            ) from None
        try:
            await self._prepare(conn, stop)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await conn.close()
            raise SourceUnavailable(
                f"inbound {self.name}: source database: {redact_dsn(first_line(exc))}"
            ) from None
        except BaseException:
            await conn.close()
            raise
        self.conn = conn

    async def _prepare(self, conn: psycopg.AsyncConnection[Any], stop: asyncio.Event) -> None:
        cur = await conn.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(%s) AND a.attname = ANY(%s) AND NOT a.attisdropped"
            " ORDER BY a.attname = %s DESC",
            (
                self.inbound.table,
                [self.inbound.key_column, self.inbound.version_column],
                self.inbound.key_column,
            ),
        )
        types = [r[0] for r in await cur.fetchall()]
        if len(types) < 2:
            raise ConfigError(
                f"integrations.{self.name}.inbound: table {self.inbound.table} with columns "
                f"{self.inbound.key_column!r} and {self.inbound.version_column!r} not found"
            )
        self.key_type = sql.SQL(types[0])  # from the catalog: a type name, not input
        try:
            await conn.execute(
                "SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS"
                " (SELECT FROM pg_replication_origin WHERE roname = %s)",
                (self.origin, self.origin),
            )
        except pg_errors.UniqueViolation:
            pass  # created by another process meanwhile
        except pg_errors.InsufficientPrivilege as exc:
            raise ConfigError(
                f"inbound {self.name}: cannot use replication origins ({first_line(exc)}); "
                "connect as a superuser or GRANT EXECUTE ON FUNCTION "
                "pg_replication_origin_create(text), pg_replication_origin_session_setup(text)"
            ) from None
        delay = 0.1
        while True:
            try:
                await conn.execute("SELECT pg_replication_origin_session_setup(%s)", (self.origin,))
                return
            except pg_errors.ObjectInUse as exc:
                # Held by another session: a previous process's backend not yet gone,
                # or a second worker of this integration. Wait for it.
                (log.info if delay == 0.1 else log.debug)(
                    "inbound %s: origin busy (%s); waiting", self.name, first_line(exc)
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise asyncio.CancelledError from None
                delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None

    # ------------------------------------------------------------------ apply

    async def apply(self, change: InboundChange, origin: Origin) -> tuple[str, str | None]:
        """Apply ``change`` in one transaction: (outcome, key of the row)."""
        conn = self.conn
        assert conn is not None, "connect() first"
        if change.integration != self.name or change.entity != self.inbound.entity:
            raise MappingError(
                f"{origin}: a change for {change.integration}/{change.entity} on the inbound "
                f"topic of {self.name}/{self.inbound.entity}"
            )
        columns = self._columns(change, origin)
        try:
            async with conn.transaction():
                return await self._apply(conn, change, origin, columns)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise SourceUnavailable(
                f"inbound {self.name}: source database: {redact_dsn(first_line(exc))}"
            ) from None
        except (psycopg.IntegrityError, psycopg.DataError):
            raise  # this change is refused: the caller dead-letters it
        except psycopg.Error as exc:
            # Privileges, a missing column: the setup is wrong, not this change.
            raise ConfigError(
                f"integrations.{self.name}.inbound: applying to {self.inbound.table} failed: "
                f"{first_line(exc)}"
            ) from None

    def _columns(self, change: InboundChange, origin: Origin) -> dict[str, Any]:
        if change.op == "delete":
            return {}
        try:
            model = self.model.model_validate(change.fields)
            columns = dict(self.mapper(model))
        except (ValidationError, ValueError, TypeError) as exc:
            raise MappingError(f"{origin}: {self.name}: {first_line(exc)}") from None
        for reserved in (self.inbound.key_column, self.inbound.version_column):
            columns.pop(reserved, None)
        columns[self.inbound.version_column] = getattr(
            model, self.inbound.version_field, change.version_us
        )
        return columns

    async def _apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        change: InboundChange,
        origin: Origin,
        columns: dict[str, Any],
    ) -> tuple[str, str | None]:
        # Under a session origin, logical decoding reports the origin's timestamp as the
        # commit time: without this, the events would say 2000-01-01 (and a delete, whose
        # version is its commit time, would lose to every older write).
        token = echo_token(change.base)
        await conn.execute(
            "SELECT pg_replication_origin_xact_setup(%s::pg_lsn, clock_timestamp())",
            (str(Lsn(token)),),
        )
        marked = await conn.execute(
            sql.SQL(
                "INSERT INTO {}.inbound_changes (integration, idempotency_key, entity,"
                ' external_id, op, outcome, version_us, topic, partition, "offset")'
                " VALUES (%s, %s, %s, %s, %s, 'pending', %s, %s, %s, %s)"
                " ON CONFLICT (integration, idempotency_key) DO NOTHING"
            ).format(self.state),
            (
                self.name,
                change.idempotency_key,
                change.entity,
                change.external_id,
                change.op,
                change.version_us,
                origin.topic,
                origin.partition,
                origin.offset,
            ),
        )
        if marked.rowcount == 0:
            return Outcome.DUPLICATE, None
        cur = await conn.execute(
            sql.SQL(
                "SELECT key FROM {}.identities WHERE integration = %s AND entity = %s"
                " AND external_id = %s ORDER BY updated_at DESC LIMIT 1"
            ).format(self.state),
            (self.name, change.entity, change.external_id),
        )
        found = await cur.fetchone()
        key: str | None = None if found is None else str(found[0])
        if key is None:
            if change.op == "delete":
                outcome = Outcome.ABSENT
            else:
                key = await self._create(conn, columns)
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {}.identities (integration, entity, key, external_id)"
                        " VALUES (%s, %s, %s, %s) ON CONFLICT (integration, entity, key)"
                        " DO UPDATE SET external_id = excluded.external_id, updated_at = now()"
                    ).format(self.state),
                    (self.name, change.entity, key, change.external_id),
                )
                outcome = Outcome.CREATED
        else:
            outcome = await self._update(conn, change, key, columns)
        await conn.execute(
            sql.SQL(
                "UPDATE {}.inbound_changes SET outcome = %s, key = %s,"
                " xid = pg_current_xact_id()::text::bigint & 4294967295, echo_token = %s"
                " WHERE integration = %s AND idempotency_key = %s"
            ).format(self.state),
            (outcome, key, token, self.name, change.idempotency_key),
        )
        return outcome, key

    async def _create(self, conn: psycopg.AsyncConnection[Any], columns: dict[str, Any]) -> str:
        names = list(columns)
        cur = await conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}::text").format(
                self.table,
                sql.SQL(", ").join(sql.Identifier(n) for n in names),
                sql.SQL(", ").join(sql.Placeholder() * len(names)),
                self.key,
            ),
            [columns[n] for n in names],
        )
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def _update(
        self,
        conn: psycopg.AsyncConnection[Any],
        change: InboundChange,
        key: str,
        columns: dict[str, Any],
    ) -> str:
        where = sql.SQL("{} = %s::{}").format(self.key, self.key_type)
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} FOR UPDATE").format(
                self.version, self.table, where
            ),
            (key,),
        )
        row = await cur.fetchone()
        if row is None:
            return Outcome.ABSENT if change.op == "delete" else Outcome.GONE
        current = row[0]
        held = (
            None if current is None else microseconds(current, column=self.inbound.version_column)
        )
        if not inbound_wins(held, change.version_us):
            return Outcome.LOST
        if change.op == "delete":
            await conn.execute(sql.SQL("DELETE FROM {} WHERE {}").format(self.table, where), (key,))
            return Outcome.DELETED
        names = list(columns)
        await conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE {}").format(
                self.table,
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n)) for n in names),
                where,
            ),
            [*(columns[n] for n in names), key],
        )
        return Outcome.APPLIED


class InboundWorker:
    """One integration's inbound consumer: consume, apply, commit, repeat."""

    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self.log = ContextLogger(log, {"integration": name})
        self.stats = InboundStats()
        self.applier = InboundApplier(name, config)
        self.topic = inbound_topic(config, name)
        self.group_id = inbound_group_id(config, name)
        self.dead_letter_topic = inbound_dead_letter_topic(config, name)
        self._publisher: Publisher | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and apply until ``stop``; transient failures restart from the last commit."""
        await run_restarting(self._run_once, stop, self.stats, self.log, f"inbound {self.name}")

    def _publisher_for(self) -> Publisher:
        if self._publisher is None:
            kafka = self.config.kafka
            self._publisher = Publisher(
                producer_config(kafka.bootstrap_servers, kafka.client_properties())
            )
        return self._publisher

    async def _run_once(self, stop: asyncio.Event) -> None:
        kafka = self.config.kafka
        await asyncio.to_thread(
            self._publisher_for().ensure_topics,
            [self.topic],
            partitions=kafka.topic_partitions,
            replication_factor=kafka.topic_replication_factor,
        )
        await self.applier.connect(stop)
        consumer = Consumer(group_consumer_config(self.config, self.group_id))
        feed = BatchFeed(consumer, self.log, BATCH_SIZE)
        try:
            consumer.subscribe([self.topic])
            self.log.info("inbound %s: applying %s", self.name, self.topic)
            while not stop.is_set():
                msgs = await feed.next()
                if not msgs:
                    continue
                await self._handle(msgs)
                feed.handled(msgs)
        except KafkaException as exc:
            raise BrokerUnavailable(f"inbound {self.name}: {first_line(exc)}") from exc
        finally:
            await feed.close()
            await self.applier.close()
            if self._publisher is not None:
                self._publisher.flush(5)

    async def _handle(self, msgs: Sequence[Message]) -> None:
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    continue
                raise BrokerUnavailable(f"inbound {self.name}: {err.str()}")
            self.stats.records += 1
            origin = Origin(msg.topic() or "", msg.partition() or 0, msg.offset() or 0)
            try:
                change = InboundChange.from_json(msg.value() or b"")
                with tracing.record_span(
                    "inbound apply", msg.headers(), {"cdc.integration": self.name}
                ):
                    outcome, key = await self.applier.apply(change, origin)
            except (RetryableError, ConfigError):
                raise  # transient, or the setup is wrong: not this record's fault
            except Exception as exc:
                # Anything else is this record's: a constraint, bad data, a mapper's bug.
                # It is dead-lettered and the offset moves on (no poison pill).
                await self.dead_letter(msg, origin, exc)
                continue
            self.stats.count(outcome)
            if outcome == Outcome.LOST:
                self.log.info(
                    "inbound %s: %s %s lost to a newer write of row %s",
                    self.name,
                    change.entity,
                    change.external_id,
                    key,
                )

    async def dead_letter(self, msg: Message, origin: Origin, error: BaseException) -> None:
        """Publish ``msg`` to the inbound dead-letter topic with why, and record it.

        Never stopped by the record itself: a key or error the store refuses is escaped
        (``cdc.core.text``); a record the dead-letter topic refuses for good is kept in the
        state store alone (its payload there, no topic offset); a row the state store
        refuses for good is logged at error level with the record's origin. Only transient
        failures (broker or database away) propagate, to be retried from the last commit.
        """
        reason = storable(first_line(error))[:2000]
        self.log.warning("inbound %s: dead-lettering %s: %s", self.name, origin, reason)
        headers: list[tuple[str, str | bytes | None]] = [
            ("cdcsync.error", reason.encode()),
            ("cdcsync.error.class", type(error).__name__.encode()),
            ("cdcsync.attempts", b"1"),
            ("cdcsync.integration", self.name.encode()),
            ("cdcsync.origin.topic", origin.topic.encode()),
            ("cdcsync.origin.partition", str(origin.partition).encode()),
            ("cdcsync.origin.offset", str(origin.offset).encode()),
            ("cdcsync.timestamp", datetime.now(UTC).isoformat().encode()),
        ]
        headers += tracing.event_span("dead-letter", msg.headers(), {"cdc.error": reason})
        key, payload = msg.key(), msg.value()
        partition: int | None = None
        offset: int | None = None
        try:
            partition, offset = await asyncio.to_thread(self._publish, key, payload, headers)
        except RetryableError:
            raise
        except Exception as exc:  # refused for good (too large, invalid): keep it in the store
            reason = storable(f"{reason} [not on {self.dead_letter_topic}: {first_line(exc)}]")
            self.log.error("inbound %s: %s: %s", self.name, origin, reason)
        store = await StateStore.open(
            self.config.source.dsn.get_secret_value(), schema=self.config.state.schema_
        )
        try:
            await store.keep_dead_letter(
                f"{self.name}.inbound",
                log=self.log,
                origin=origin,
                key=key_text(key),
                error=reason,
                attempts=1,
                payload=None if payload is None else bytes(payload),
                dlq_topic=self.dead_letter_topic,
                dlq_partition=partition,
                dlq_offset=offset,
            )
        finally:
            await store.close()
        self.stats.dead_lettered += 1

    def _publish(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, str | bytes | None]]
    ) -> tuple[int | None, int | None]:
        publisher = self._publisher_for()
        publisher.ensure_topics(
            [self.dead_letter_topic],
            partitions=1,
            replication_factor=self.config.kafka.topic_replication_factor,
        )
        where: list[Any] = []
        publisher.produce(
            self.dead_letter_topic, key, value, lambda e, m: where.append((e, m)), headers=headers
        )
        publisher.flush(30)
        if not where or where[0][0] is not None:
            detail = where[0][0] if where else "no acknowledgement"
            raise BrokerUnavailable(f"dead-letter topic {self.dead_letter_topic}: {detail}")
        m = where[0][1]
        return m.partition(), m.offset()
