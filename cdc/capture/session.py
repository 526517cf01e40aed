"""One capture session: a replication connection's worth of decoding, encoding and producing.

A ``CaptureSession`` owns a fresh decoder, producer, checkpoint and spool; the runtime
(``cdc.capture.runtime``) makes a new one after every transient failure. One loop, batch
by batch: read the frames available on the replication connection, decode them, turn row
changes into envelopes, serialise them and hand them to the producer; serve delivery
reports; confirm the checkpoint's flush LSN to PostgreSQL.

Invariants:
- The LSN confirmed to PostgreSQL is the checkpoint's (never ahead of Kafka).
- Streamed transactions go to the disk spool and are published only at their
  Stream Commit; aborted ones never reach Kafka.
- A new Relation message whose columns differ yields new schemas, registered
  before any event that uses them; if the registry rejects them, capture
  stops with an error naming the table and the column changes.
- A transient failure (source, broker, registry unreachable; a failed
  delivery) raises out of the session, which confirms nothing past what Kafka
  acknowledged; the runtime starts a new session from the slot.
- With ``kafka.exactly_once`` (cdc/capture/exactly_once.py) events are produced inside
  Kafka transactions together with the position; transactions already
  committed to Kafka are skipped, and the confirmed LSN never passes an open
  Kafka transaction.
- With ``source.provide_transaction_metadata`` a transaction's BEGIN goes to
  ``{prefix}.transaction`` before its first event and its END after its last, both
  counted in the transaction's checkpoint progress like its events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

from cdc.capture import source_setup as source
from cdc.capture.checkpoint import Checkpoint, TxProgress
from cdc.capture.encoding.envelope import (
    COLUMN_FACTS_SQL,
    OP_CREATE,
    OP_DELETE,
    OP_TRUNCATE,
    OP_UPDATE,
    Change,
    ColumnFacts,
    RelationEncoder,
    TxContext,
    column_facts_from_rows,
)
from cdc.capture.encoding.envelope_writer import EnvelopeWriter
from cdc.capture.encoding.table_encoding import TableEncoding
from cdc.capture.encoding.transaction_metadata import (
    TransactionFrame,
    transaction_key_schema,
    transaction_topic,
    transaction_value_schema,
)
from cdc.capture.encoding.type_mapping import PgType, TypeOptions, needs_catalog
from cdc.capture.exactly_once import (
    BatchPolicy,
    ExactlyOnce,
    TransactionalPublisher,
    positions_topic,
)
from cdc.capture.pgoutput import (
    UNCHANGED,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Update,
)
from cdc.capture.replication import ReplicationStream
from cdc.capture.slot_watch import SlotWatch, is_heartbeat
from cdc.capture.snapshot.runner import Snapshotter
from cdc.capture.spool import TransactionSpool
from cdc.capture.stats import CaptureStats
from cdc.config import Config
from cdc.config.names import ORIGIN_HEADER, ORIGIN_LSN_HEADER
from cdc.core import tracing
from cdc.core.errors import (
    BrokerUnavailable,
    DecodeError,
    IncompatibleSchemaError,
    SourceUnavailable,
    first_line,
)
from cdc.core.histogram import LatencyHistogram
from cdc.core.lsn import Lsn
from cdc.kafka.publisher import Publisher, producer_config
from schema_registry.client import RegistryClient
from schema_registry.serde import AvroSerializer, PreparedSchema

__all__ = ["CaptureSession", "SessionOwner"]

log = logging.getLogger("cdcsync.capture")

# Reading pauses while more messages than this await acknowledgement: half the
# producer's message cap, so that ``produce`` itself (which would block) rarely waits.
_MAX_QUEUED_MESSAGES = 50_000


class SessionOwner(Protocol):
    """What a session needs of the capture that runs it (``cdc.capture.runtime.Capture``)."""

    @property
    def config(self) -> Config: ...

    @property
    def stats(self) -> CaptureStats: ...

    @property
    def type_options(self) -> TypeOptions: ...

    async def batch_done(self) -> None:
        """Called after each batch, once the confirmed position was sent."""


class CaptureSession:
    """One connection's worth of capture: fresh decoder, producer and checkpoint."""

    def __init__(self, capture: SessionOwner, database: str, *, created_slot: bool = False) -> None:
        self.capture = capture
        self.cfg = capture.config
        self.stats = capture.stats
        self.database = database
        self.decoder = Decoder(protocol_version=2)
        self.checkpoint = Checkpoint()
        self.spool = TransactionSpool()
        self.tables: dict[int, TableEncoding] = {}
        self.types: dict[int, PgType] = {}
        self.topics_ready: set[str] = set()
        self.stream: ReplicationStream | None = None
        self.publisher: Publisher | None = None
        self.eos: ExactlyOnce | None = None
        self.skipping = False
        self.registry: RegistryClient | None = None
        self.serializer: AvroSerializer | None = None
        self.catalog: Any = None
        self.watch: SlotWatch | None = None
        # Transaction state.
        self.tx: TxContext | None = None
        self.progress: TxProgress | None = None
        self.seq = 0
        self.table_seq: dict[int, int] = {}
        self.stream_xid: int | None = None
        self.now_ms = 0
        # The end of the last transaction seen: Debezium's source.sequence[0].
        self.last_commit_lsn: Lsn | None = None
        self.skipped_ops = self.cfg.source.skipped
        self.snapshots = Snapshotter(self, created_slot=created_slot)
        # The Kafka headers of the transaction's events: its replication origin, if any.
        self.headers: list[tuple[str, str | bytes | None]] | None = None
        # provide_transaction_metadata: the topic's key and value schemas, the open
        # transaction's BEGIN/END frame and the LSN of its Begin message.
        self.tx_schemas: tuple[PreparedSchema, PreparedSchema] | None = None
        self.tx_frame: TransactionFrame | None = None
        self.tx_begin_lsn: Lsn | None = None
        # Tracing (cdc.core.tracing): None when off, the one value the hot path checks.
        self.trace = tracing.change_sampler()

    async def open(self) -> None:
        cfg = self.cfg
        kafka = cfg.kafka
        props = kafka.client_properties()
        props.setdefault("delivery.timeout.ms", kafka.delivery_timeout_ms)
        # Bytes waiting for acknowledgement are bounded by the producer's own queue.
        props.setdefault(
            "queue.buffering.max.kbytes", max(1, cfg.source.max_inflight_bytes // 1024)
        )
        if kafka.exactly_once and kafka.transactional_id:
            props["transactional.id"] = kafka.transactional_id
            # librdkafka requires message.timeout.ms (delivery.timeout.ms) <= this.
            props.setdefault("transaction.timeout.ms", props["delivery.timeout.ms"])
            publisher = TransactionalPublisher(producer_config(kafka.bootstrap_servers, props))
            self.publisher = publisher
            self.eos = ExactlyOnce(
                publisher,
                slot=cfg.source.slot,
                topic=positions_topic(kafka.topic_prefix),
                policy=BatchPolicy(kafka.transaction_max_events, kafka.transaction_max_ms),
            )
            await self.eos.start()
        else:
            self.publisher = Publisher(producer_config(kafka.bootstrap_servers, props))
        self.registry = RegistryClient.from_url(cfg.registry.url, auth=cfg.registry.auth())
        self.serializer = AvroSerializer(self.registry)
        dsn = cfg.source.dsn.get_secret_value()
        self.catalog = await source.connect(dsn)
        src = cfg.source
        self.watch = SlotWatch(
            self.catalog,
            slot=src.slot,
            heartbeat_interval_s=src.heartbeat_interval_s,
            warn_bytes=src.slot_lag_warn_bytes,
            stop_bytes=src.slot_lag_stop_bytes,
            check_interval_s=src.status_interval_s,
        )
        self.stream = await ReplicationStream.start(
            dsn,
            slot=cfg.source.slot,
            publication=cfg.source.publication,
            status_interval=cfg.source.status_interval_s,
        )
        self.checkpoint.flush_lsn = self.stream.flushed_lsn
        if src.provide_transaction_metadata:
            await self.open_transaction_topic()
        await self.snapshots.open()
        self.stats.connected = True
        log.info("capture streaming from slot %s", cfg.source.slot)

    async def open_transaction_topic(self) -> None:
        """Create ``{prefix}.transaction`` and register its key and value schemas."""
        publisher, serializer = self.publisher, self.serializer
        assert publisher is not None and serializer is not None
        topic = transaction_topic(self.cfg.kafka.topic_prefix)
        await asyncio.to_thread(
            publisher.ensure_topics,
            [topic],
            partitions=self.cfg.kafka.topic_partitions,
            replication_factor=self.cfg.kafka.topic_replication_factor,
        )
        key = await serializer.prepare(topic, transaction_key_schema(), is_key=True)
        value = await serializer.prepare(topic, transaction_value_schema(), is_key=False)
        self.tx_schemas = (key, value)

    async def close(self) -> None:
        self.spool.close()
        if self.eos is not None:
            clean = self.tx is None and self.checkpoint.failure is None
            await self.eos.finish(clean=clean)
        if self.publisher is not None and self.stream is not None:
            # Drain what is in flight so the final confirmation is as far as it can be.
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.publisher.flush, 5.0)
                self.publisher.poll(0)
                if self.checkpoint.failure is None:
                    self.stream.confirm(self.confirmable())
        with contextlib.suppress(Exception):
            await self.snapshots.close()  # after the drain: saves what Kafka acknowledged
        if self.stream is not None:
            with contextlib.suppress(Exception):
                await self.stream.close()
        if self.catalog is not None:
            with contextlib.suppress(Exception):
                await self.catalog.close()
        if self.registry is not None:
            with contextlib.suppress(Exception):
                await self.registry.aclose()
        self.stats.connected = False

    # ------------------------------------------------------------------ main loop

    async def loop(self, stop: asyncio.Event) -> None:
        stream = self.stream
        publisher = self.publisher
        assert stream is not None and publisher is not None
        max_frames = self.cfg.source.max_batch_events
        while not stop.is_set():
            busy = (
                self.checkpoint.in_flight > 0
                or self.snapshots.busy
                or (self.eos is not None and self.eos.open)
            )
            frames = await stream.read(max_frames=max_frames, timeout=0.005 if busy else 0.5)
            if frames:
                self.now_ms = time.time_ns() // 1_000_000
                decode = self.decoder.decode
                for frame in frames:
                    msg = decode(frame.data)
                    if isinstance(msg, (Insert, Update, Delete)) and self.stream_xid is None:
                        self.on_change(msg, frame.wal_start)  # the hot path
                    elif isinstance(msg, Relation):
                        if self.stream_xid is not None:
                            self.spool.append(self.stream_xid, frame.wal_start, msg)
                        else:
                            await self.on_relation(msg)
                    elif isinstance(msg, StreamCommit):
                        self.stream_xid = None
                        await self.replay_streamed(msg, stop)
                    else:
                        self.dispatch(msg, frame.wal_start)
            await self.snapshots.step()
            publisher.poll(0)
            publisher.check()
            cp = self.checkpoint
            if cp.failure is not None:
                raise BrokerUnavailable(f"a Kafka delivery failed: {cp.failure}")
            eos = self.eos
            if eos is not None and self.tx is None and eos.due(idle=not frames):
                await asyncio.to_thread(eos.commit)
            if self.tx is None and self.stream_xid is None and cp.in_flight == 0:
                cp.idle_advance(stream.server_wal_end)
            confirmable = self.confirmable()
            stream.confirm(confirmable)
            self.stats.flushed_lsn = confirmable
            self.stats.received_lsn = stream.received_lsn
            await self.capture.batch_done()
            watch = self.watch
            if watch is not None and watch.enabled:
                await watch.tick()
                self.stats.heartbeat_lag_ms = watch.heartbeat_lag_ms
                self.stats.retained_wal_bytes = watch.retained_bytes
            await self.backpressure(stop)

    def confirmable(self) -> Lsn:
        flush = self.checkpoint.flush_lsn
        return flush if self.eos is None else self.eos.confirmable(flush)

    async def backpressure(self, stop: asyncio.Event) -> None:
        """Hold reading while the producer's queue is near its cap; keep the slot alive."""
        publisher = self.publisher
        stream = self.stream
        assert publisher is not None and stream is not None
        while len(publisher) > _MAX_QUEUED_MESSAGES and not stop.is_set():
            publisher.poll(0)
            publisher.check()
            stream.maybe_send_status()
            await asyncio.sleep(0.05)

    def dispatch(self, msg: Any, lsn: Lsn) -> None:
        kind = type(msg)
        if kind is Insert or kind is Update or kind is Delete:
            if self.stream_xid is not None:
                self.spool.append(self.stream_xid, lsn, msg)
                return
            self.on_change(msg, lsn)
        elif kind is Begin:
            self.begin(TxContext(msg.xid, msg.final_lsn, msg.commit_ts_us, self.last_commit_lsn))
            self.tx_begin_lsn = lsn
        elif kind is Commit:
            self.commit(msg.end_lsn)
        elif kind is StreamStart:
            self.stream_xid = msg.xid
        elif kind is StreamStop:
            self.stream_xid = None
        elif kind is StreamAbort:
            self.stream_xid = None
            self.spool.abort(msg.xid, msg.subxid)
        elif kind is Truncate:
            if self.stream_xid is not None:
                self.spool.append(self.stream_xid, lsn, msg)
                return
            self.on_truncate(msg, lsn)
        elif kind is LogicalMessage:
            if self.stream_xid is not None and msg.transactional:
                self.spool.append(self.stream_xid, lsn, msg)
            elif self.snapshots.on_message(msg):
                pass  # a snapshot watermark or signal
            elif is_heartbeat(msg) and self.watch is not None:
                self.watch.on_heartbeat(msg)
            # Other logical messages are not published.
        elif kind is Origin and self.stream_xid is None:
            # A write made under a replication origin (cdcsync's inbound apply, or another
            # replicator): its events say so in a header, so sync can avoid echoes.
            self.headers = [(ORIGIN_HEADER, msg.name.encode())]
            if msg.origin_lsn:
                self.headers.append((ORIGIN_LSN_HEADER, str(int(msg.origin_lsn)).encode()))
            if self.tx is not None:  # Debezium's source.origin and origin_lsn
                self.tx = dataclasses.replace(
                    self.tx, origin=msg.name, origin_lsn=int(msg.origin_lsn)
                )
        # Type messages need no action: types are read from the catalog.

    def begin(self, tx: TxContext) -> None:
        self.tx = tx
        self.progress = None
        self.skipping = self.eos is not None and self.eos.already_committed(tx.commit_lsn)
        if self.skipping:
            self.stats.skipped_transactions += 1
        self.seq = 0
        self.table_seq = {}
        self.headers = None
        self.tx_frame = None
        self.tx_begin_lsn = None

    def commit(self, end_lsn: Lsn) -> None:
        frame = self.tx_frame
        if frame is not None:
            self.tx_frame = None
            self.produce_frame(*frame.end(int(end_lsn)))
        if self.progress is not None:
            self.checkpoint.seal(self.progress, end_lsn)
            self.stats.transactions += 1
            if self.eos is not None:
                self.eos.sealed(self.progress.commit_lsn, end_lsn)
        if self.tx is not None:
            self.stats.last_commit_ts_us = self.tx.commit_ts_us
        self.last_commit_lsn = end_lsn
        self.tx = None
        self.progress = None

    async def replay_streamed(self, msg: StreamCommit, stop: asyncio.Event) -> None:
        """Publish a committed streamed transaction from the spool."""
        self.begin(TxContext(msg.xid, msg.commit_lsn, msg.commit_ts_us, self.last_commit_lsn))
        for n, (lsn, item) in enumerate(self.spool.replay(msg.xid)):
            if type(item) is Relation:
                await self.on_relation(item)
            elif type(item) is Truncate:
                self.on_truncate(item, lsn)
            elif type(item) is LogicalMessage:
                continue
            else:
                self.on_change(item, lsn)
            if n % 1000 == 999:
                # Serve delivery reports and keep the slot alive during a long replay.
                await self.backpressure(stop)
                assert self.publisher is not None and self.stream is not None
                self.publisher.poll(0)
                self.stream.maybe_send_status()
        self.commit(msg.end_lsn)

    # ------------------------------------------------------------------ events

    def _progress(self) -> TxProgress:
        progress = self.progress
        if progress is None:
            tx = self.tx
            if tx is None:
                raise DecodeError("row change outside a transaction")
            progress = self.progress = self.checkpoint.begin(
                tx.commit_lsn, commit_ts_us=tx.commit_ts_us
            )
        return progress

    def on_change(self, msg: Insert | Update | Delete, lsn: Lsn) -> None:
        tx = self.tx
        if tx is None:
            raise DecodeError("row change outside a transaction")
        table = self.tables.get(msg.relation_oid)
        if table is None:
            raise DecodeError(f"change for relation {msg.relation_oid} before its Relation message")
        if self.tx_schemas is not None and self.tx_frame is None:
            self.start_frame(tx, lsn)
        if self.snapshots.watches(msg.relation_oid):
            self.snapshots.on_change(
                tx.xid,
                None if isinstance(msg, Delete) else msg.new,
                None if isinstance(msg, Insert) else msg.old,
            )
        seq = self._next(msg.relation_oid)
        if isinstance(msg, Insert):
            self.emit(table, Change(OP_CREATE, msg.relation_oid, lsn, seq, tx, None, msg.new))
            return
        if isinstance(msg, Delete):
            self.emit(table, Change.from_delete(msg, lsn=lsn, seq=seq, tx=tx))
            return
        enc = table.encoder
        new_key: dict[str, Any] | None = None  # built here only when the old tuple came too
        if msg.old is not None and enc.has_key:
            old_key = enc.key_record(msg.old)
            new_key = enc.key_record(msg.new)
            if old_key != new_key:
                # A primary-key change: delete (+ tombstone) the old key, create the new one.
                oid = msg.relation_oid
                delete = Change(OP_DELETE, oid, lsn, seq, tx, msg.old, None, msg.old_is_key)
                self.emit(table, delete, key=old_key)
                self.emit(
                    table,
                    Change.from_insert(
                        Insert(relation_oid=oid, new=msg.new), lsn=lsn, seq=self._next(oid), tx=tx
                    ),
                    key=new_key,
                )
                if any(v is UNCHANGED for v in msg.new):
                    # The new key's create holds a TOAST placeholder no event filled.
                    rel = enc.relation
                    self.snapshots.reread(f"{rel.namespace}.{rel.name}", msg.new)
                return
        change = Change(
            OP_UPDATE,
            msg.relation_oid,
            lsn,
            seq,
            tx,
            None if msg.old_is_key else msg.old,
            msg.new,
            msg.old_is_key,
        )
        self.emit(table, change, key=new_key)

    def _next(self, oid: int) -> int:
        self.seq += 1
        self.table_seq[oid] = self.table_seq.get(oid, 0) + 1
        return self.seq

    def emit(
        self, table: TableEncoding, change: Change, *, key: dict[str, Any] | None = None
    ) -> None:
        """Produce ``change`` (and its tombstone); ``key``: its key record, if already built."""
        if self.skipping:
            return  # exactly-once: this transaction is already committed to Kafka
        if change.op in self.skipped_ops:
            return  # source.skipped_operations (Debezium's default skips truncates)
        serializer = self.serializer
        publisher = self.publisher
        assert serializer is not None and publisher is not None
        enc = table.encoder
        value_bytes = table.writer.write(
            change, table_seq=self.table_seq[change.relation_oid], now_ms=self.now_ms
        )
        key_bytes = None
        if table.key is not None:
            if key is None and table.key_header is not None:
                row = change.after if change.after is not None else change.before
                if row is not None:
                    key_bytes = table.key_header + table.writer.key_bytes(row)
            else:
                if key is None:
                    key = enc.key_for(change)
                if key is not None:
                    key_bytes = serializer.serialize(table.key, key)
        progress = self.progress
        if progress is None:
            progress = self._progress()
        callback = progress.callback
        if callback is None:
            callback = self.delivery_callback(progress)
        eos = self.eos
        headers = self.headers
        if eos is not None:
            txn = eos.event_headers(self.confirmable())
            headers = txn if headers is None else [*txn, *headers]
        trace = self.trace
        if trace is not None and trace.due():  # a sampled change: its spans and traceparent
            headers, callback = trace.start(
                topic=enc.topic,
                table=f"{enc.relation.namespace}.{enc.relation.name}",
                op=change.op,
                commit_lsn=change.tx.commit_lsn,
                xid=change.tx.xid,
                decoded_ns=self.now_ms * 1_000_000,
                headers=headers,
                on_delivery=callback,
            )
        progress.pending += 1  # Checkpoint.sent, inline on the hot path
        publisher.produce(enc.topic, key_bytes, value_bytes, callback, headers=headers)
        self.stats.events += 1
        if self.tx_frame is not None:
            self.tx_frame.counted(enc.data_collection)
        # Debezium follows every delete with a tombstone, keyless tables' included.
        if change.op == OP_DELETE and self.cfg.source.tombstones_on_delete:
            Checkpoint.sent(progress)
            publisher.produce(enc.topic, key_bytes, None, callback, headers=headers)
            self.stats.tombstones += 1

    def start_frame(self, tx: TxContext, lsn: Lsn) -> None:
        """The transaction's first change (even a skipped one): its BEGIN record."""
        if self.skipping:
            return
        begin_lsn = self.tx_begin_lsn if self.tx_begin_lsn is not None else lsn
        self.tx_frame = TransactionFrame(tx.xid, int(begin_lsn), tx.commit_ts_us)
        self.produce_frame(*self.tx_frame.begin())

    def produce_frame(self, key: dict[str, Any], value: dict[str, Any]) -> None:
        """A BEGIN or END record, acknowledged as part of the transaction's progress."""
        serializer, publisher, schemas = self.serializer, self.publisher, self.tx_schemas
        assert serializer is not None and publisher is not None and schemas is not None
        progress = self._progress()
        headers = None
        if self.eos is not None:
            headers = self.eos.event_headers(self.confirmable())
        Checkpoint.sent(progress)
        publisher.produce(
            transaction_topic(self.cfg.kafka.topic_prefix),
            serializer.serialize(schemas[0], key),
            serializer.serialize(schemas[1], value),
            self.delivery_callback(progress),
            headers=headers,
        )

    def on_truncate(self, msg: Truncate, lsn: Lsn) -> None:
        tx = self.tx
        if tx is None:
            raise DecodeError("truncate outside a transaction")
        if self.tx_schemas is not None and self.tx_frame is None:
            self.start_frame(tx, lsn)
        for oid in msg.relation_oids:
            self.snapshots.on_truncate(oid)
            table = self.tables.get(oid)
            if table is None:
                continue  # a table outside the publication's schema cache: nothing to say
            if OP_TRUNCATE in self.skipped_ops:
                continue  # not numbered either: total_order counts published events
            self.emit(table, Change.truncate(oid, lsn=lsn, seq=self._next(oid), tx=tx))

    def delivery_callback(self, progress: TxProgress) -> Callable[[Any, Any], None]:
        cached: Callable[[Any, Any], None] | None = progress.callback
        if cached is None:
            cached = functools.partial(
                _on_delivery,
                self.checkpoint,
                progress,
                self.stats.delivery_latency,
                self.stats.latencies_us,
            )
            progress.callback = cached
        return cached

    # ------------------------------------------------------------------ schemas

    async def _prepare(self, enc: RelationEncoder) -> tuple[PreparedSchema | None, PreparedSchema]:
        serializer = self.serializer
        assert serializer is not None
        value = await serializer.prepare(enc.topic, enc.value_schema, is_key=False)
        key = None
        if enc.key_schema is not None:
            key = await serializer.prepare(enc.topic, enc.key_schema, is_key=True)
        return key, value

    async def catalog_facts(
        self, rel: Relation
    ) -> tuple[tuple[str, ...] | None, dict[str, ColumnFacts]]:
        """What the Relation message lacks, read from the catalog: the types it needs, the
        primary key under REPLICA IDENTITY FULL, NOT NULL and defaults. A lost catalog
        connection (the server restarting) is ``SourceUnavailable``: capture restarts."""
        try:
            missing = [
                c.type_oid
                for c in rel.columns
                if needs_catalog(c.type_oid) and c.type_oid not in self.types
            ]
            if missing:
                self.types.update(await source.load_types(self.catalog, missing))
            key_columns = None
            if rel.replica_identity == "f":
                key_columns = await source.primary_key(self.catalog, rel.namespace, rel.name)
            cur = await self.catalog.execute(COLUMN_FACTS_SQL, (rel.namespace, rel.name))
            return key_columns, column_facts_from_rows(await cur.fetchall())
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(
                f"lost the catalog connection reading {rel.namespace}.{rel.name}: {first_line(exc)}"
            ) from exc

    async def on_relation(self, rel: Relation) -> None:
        old = self.tables.get(rel.oid)
        if old is not None and old.encoder.relation == rel:
            return
        src = self.cfg.source
        key_columns, columns = await self.catalog_facts(rel)
        enc = RelationEncoder(
            rel,
            prefix=self.cfg.kafka.topic_prefix,
            database=self.database,
            types=self.types,
            options=self.capture.type_options,
            key_columns=key_columns,
            columns=columns,
            additive_fields=src.additive_fields,
            transaction_block=src.additive_fields or src.provide_transaction_metadata,
        )
        if enc.topic not in self.topics_ready:
            publisher = self.publisher
            assert publisher is not None
            await asyncio.to_thread(
                publisher.ensure_topics,
                [enc.topic],
                partitions=self.cfg.kafka.topic_partitions,
                replication_factor=self.cfg.kafka.topic_replication_factor,
            )
            self.topics_ready.add(enc.topic)
        serializer = self.serializer
        assert serializer is not None
        try:
            key, value = await self._prepare(enc)
        except IncompatibleSchemaError as exc:
            what = old.encoder.column_diff(rel) if old is not None else "new table"
            table = f"{rel.namespace}.{rel.name}"
            if src.on_incompatible_schema == "stop":
                raise IncompatibleSchemaError(
                    f"schema change of {table} ({what}) rejected by the registry as "
                    f"incompatible: {exc}"
                ) from exc
            # on_incompatible_schema: continue. The topic's subjects accept anything from
            # now on; consumers must cope with the break.
            log.warning(
                "schema change of %s (%s) is incompatible; setting compatibility NONE on "
                "its subjects and continuing: %s",
                table,
                what,
                exc,
            )
            registry = self.registry
            assert registry is not None
            for suffix in ("-key", "-value"):
                await registry.set_compatibility("NONE", subject=enc.topic + suffix)
            key, value = await self._prepare(enc)
        self.tables[rel.oid] = TableEncoding(
            enc, key, value, EnvelopeWriter(enc, header=value.header)
        )
        if old is not None:
            log.info(
                "schema of %s.%s changed: %s", rel.namespace, rel.name, old.encoder.column_diff(rel)
            )


def _on_delivery(
    checkpoint: Checkpoint,
    progress: TxProgress,
    histogram: LatencyHistogram,
    latencies: list[int] | None,
    err: Any,
    _msg: Any,
) -> None:
    if err is not None:
        checkpoint.failed(str(err))
        return
    latency_us = time.time_ns() // 1000 - progress.commit_ts_us
    histogram.observe_us(latency_us)
    if latencies is not None:
        latencies.append(latency_us)
    checkpoint.acked(progress)
