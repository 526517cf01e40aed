"""Snapshots inside capture: initial and incremental, by the DBLog watermark method.

Capture does all snapshot reading itself, so that one loop writes every event and the
order on Kafka is the stream's order. Per table, chunk after chunk in primary-key order:

1. write a low watermark into the stream (a transactional ``pg_logical_emit_message``
   with prefix ``cdcsync.watermark``: no table is written, and its commit flushes it);
2. when the stream brings the low watermark back, read the next chunk (keyset
   pagination, every column as text) in a REPEATABLE READ transaction together with its
   ``pg_current_snapshot()``, then write the high watermark;
3. drop from the chunk every key the stream changed after the low watermark, or changed
   by a transaction the chunk's snapshot did not see (``ChangeHistory``);
4. at the high watermark, publish the remaining rows as ``op=r`` events (``source.snapshot``
   ``"true"`` for the initial snapshot, ``"incremental"`` on demand), positioned at the
   high watermark's commit LSN and tracked by the checkpoint like a transaction;
5. once Kafka has acknowledged them, persist the progress (``snapshot_progress``).

A dropped read whose key's change left an unchanged TOAST value out (pgoutput sends a
placeholder for it) would leave no event carrying that value: the read was its only
carrier. Such keys are read again, by key, in a window of their own right after the chunk
(again until no such change interferes, at most ``_REREAD_ATTEMPTS`` times), and the
chunk's progress is saved only once the re-read is acknowledged. A primary-key change that
left a TOAST value out is re-read the same way (the new key's create carries the
placeholder), between two chunks of whatever snapshot is running.

Invariants:
- A published ``op=r`` row holds the row's state as of the high watermark: changes
  ordered before it are either visible to the read or dropped the row; later changes
  follow it on the topic. So the latest event per key equals the table, deletes
  included, with nothing missing at the seam between reads and streaming.
- Progress is saved only after the chunk's events are acknowledged, in chunk order: a
  crash re-reads (never skips) rows. ``snapshot_progress`` is the source of truth; a
  signal only wakes capture up, and capture resumes unfinished snapshots at start.
- Reads use their own connection and await it: the event loop keeps running while a
  chunk is read, and chunks are bounded (``source.snapshot_chunk_size``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import psycopg
from psycopg import sql

from cdc.capture.checkpoint import Checkpoint, TxProgress
from cdc.capture.encoding.envelope import TxContext
from cdc.capture.encoding.envelope_writer import EnvelopeWriter
from cdc.capture.encoding.table_encoding import TableEncoding
from cdc.capture.exactly_once import ExactlyOnce
from cdc.capture.pgoutput import UNCHANGED, Column, LogicalMessage, Relation, TupleValues
from cdc.capture.snapshot.plan import (
    SOURCE_SNAPSHOT,
    WATERMARK_PREFIX,
    ChangeHistory,
    ChunkBuffer,
    Key,
    PgSnapshot,
    ProgressKey,
    SnapshotKind,
    SnapshotMessageError,
    SnapshotSignal,
    Watermark,
    decode_signal,
    key_of,
    wants_initial,
)
from cdc.capture.source_setup import TableName
from cdc.capture.stats import CaptureStats
from cdc.config import Config
from cdc.config.names import ORIGIN_HEADER, ORIGIN_LSN_HEADER, origin_name
from cdc.core.errors import SourceUnavailable, first_line
from cdc.core.lsn import Lsn
from cdc.core.signals import SIGNAL_PREFIX, RereadSignal
from cdc.kafka.publisher import Publisher
from cdc.state.store import StateStore, pipeline_id
from schema_registry.serde import AvroSerializer

log = logging.getLogger("cdcsync.snapshot")


class SnapshotHost(Protocol):
    """What the snapshot runner uses of the capture session it runs in.

    Contract: ``tables`` holds the encoding of every relation the stream has announced
    (``on_relation`` adds one); ``publisher`` and ``serializer`` are set while the session
    is open; events produced with ``delivery_callback(progress)`` are tracked by
    ``checkpoint`` like a transaction's, so the confirmed LSN never passes them.
    """

    cfg: Config
    stats: CaptureStats
    tx: TxContext | None
    tables: dict[int, TableEncoding]
    checkpoint: Checkpoint
    publisher: Publisher | None
    serializer: AvroSerializer | None
    eos: ExactlyOnce | None

    async def on_relation(self, rel: Relation) -> None: ...

    def delivery_callback(self, progress: TxProgress) -> Callable[[Any, Any], None]: ...

    def confirmable(self) -> Lsn: ...


_SHAPE_SQL = """
SELECT c.oid, c.relreplident, a.attname, a.atttypid, a.atttypmod,
       format_type(a.atttypid, a.atttypmod),
       array_position(pk.indkey::int2[], a.attnum),
       coalesce(a.attnum = ANY(ri.indkey::int2[]), false)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
     AND a.attgenerated = ''
LEFT JOIN pg_index pk ON pk.indrelid = c.oid AND pk.indisprimary
LEFT JOIN pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
WHERE n.nspname = %s AND c.relname = %s
ORDER BY a.attnum
"""


_WATERMARK_TIMEOUT_S = 120.0
_REREAD_ATTEMPTS = 20


class SnapshotError(SourceUnavailable):
    """A snapshot read failed (retryable: capture restarts and resumes)."""


@dataclass(frozen=True, slots=True)
class TableShape:
    """A table as the chunk reads see it: its Relation (as pgoutput would announce it)
    and its primary key (positions in key order, and SQL types for the keyset bound)."""

    name: TableName
    relation: Relation
    pk_positions: tuple[int, ...]
    pk_types: tuple[str, ...]

    @property
    def oid(self) -> int:
        return self.relation.oid

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.relation.columns)

    def chunk_query(self, *, after: Key | None, limit: int) -> tuple[sql.Composed, list[Any]]:
        """Keyset pagination: the next ``limit`` rows after ``after``, every column as text,
        then the row's ``xmin`` (see ``split_xmin``)."""
        # Qualified: a bare name in ORDER BY would mean the (text) output column.
        cols = [sql.Identifier("t", c.name) for c in self.relation.columns]
        pk = [cols[i] for i in self.pk_positions]
        select = _select_list(cols)
        order = sql.SQL(", ").join(pk)
        params: list[Any] = []
        where: sql.Composable = sql.SQL("")
        if after is not None:
            bound = sql.SQL(", ").join(
                sql.SQL("CAST(%s AS {})").format(sql.SQL(t)) for t in self.pk_types
            )
            where = sql.SQL(" WHERE ({}) > ({})").format(order, bound)
            params = list(after)
        query = sql.SQL("SELECT {} FROM {} AS t{} ORDER BY {} LIMIT {}").format(
            select, self.name.ident(), where, order, sql.Literal(limit)
        )
        return query, params

    def keys_query(self, keys: list[Key]) -> tuple[sql.Composed, list[Any]]:
        """The rows of ``keys`` (those that still exist), every column as text."""
        cols = [sql.Identifier("t", c.name) for c in self.relation.columns]
        pk = sql.SQL(", ").join(cols[i] for i in self.pk_positions)
        one = sql.SQL("({})").format(
            sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(sql.SQL(t)) for t in self.pk_types)
        )
        query = sql.SQL("SELECT {} FROM {} AS t WHERE ({}) IN ({}) ORDER BY {}").format(
            _select_list(cols),
            self.name.ident(),
            pk,
            sql.SQL(", ").join([one] * len(keys)),
            pk,
        )
        return query, [v for key in keys for v in key]


def _select_list(cols: list[sql.Identifier]) -> sql.Composed:
    """Every column as text, then ``xmin`` (the transaction that wrote the row version)."""
    return sql.SQL(", ").join(
        [*(sql.SQL("{}::text").format(c) for c in cols), sql.SQL("t.xmin::text")]
    )


def split_xmin(rows: list[tuple[Any, ...]]) -> tuple[list[TupleValues], list[int]]:
    """A chunk query's rows as tuples of the table's columns, and each row's ``xmin``."""
    return [tuple(r[:-1]) for r in rows], [int(r[-1]) for r in rows]


async def load_shape(conn: psycopg.AsyncConnection[Any], table: TableName) -> TableShape:
    """Read ``table``'s columns, replica identity and primary key from the catalog."""
    cur = await conn.execute(_SHAPE_SQL, (table.schema, table.name))
    rows = await cur.fetchall()
    if not rows:
        raise SnapshotError(f"cannot snapshot {table}: it does not exist")
    oid, ident = int(rows[0][0]), str(rows[0][1])
    columns: list[Column] = []
    pk: list[tuple[int, int, str]] = []
    for i, (_, _, name, type_oid, typmod, type_text, pk_pos, in_ri) in enumerate(rows):
        is_key = ident == "f" or (ident == "d" and pk_pos is not None) or (ident == "i" and in_ri)
        columns.append(Column(bool(is_key), str(name), int(type_oid), int(typmod)))
        if pk_pos is not None:
            pk.append((int(pk_pos), i, str(type_text)))
    pk.sort()
    relation = Relation(oid, table.schema, table.name, ident, tuple(columns))
    return TableShape(table, relation, tuple(i for _, i, _ in pk), tuple(t for _, _, t in pk))


@dataclass
class _Job:
    """One table's snapshot under way in this capture session."""

    table: str
    kind: SnapshotKind
    request: str
    last_key: Key | None
    rows: int
    shape: TableShape | None = None
    phase: str = "idle"  # idle -> low (awaiting it) -> read -> high (awaiting it) -> idle
    chunk: str = ""
    low_seq: int = 0
    buffer: ChunkBuffer | None = None
    history: ChangeHistory = field(default_factory=ChangeHistory)
    started: float = field(default_factory=time.monotonic)
    published: int = 0
    truncated: bool = False  # since the low watermark: the chunk read is void
    waiting_since: float = 0.0  # when the awaited watermark was written
    # A re-read of single keys (None: the table in key order after ``last_key``); the keys
    # are known once the shape is, from ``tuples`` (stream tuples) when not given.
    keys: list[Key] | None = None
    tuples: list[TupleValues] = field(default_factory=list)
    key_maps: list[Mapping[str, str | None]] = field(default_factory=list)  # {column: text}
    # Keys of this read dropped for a change that left a TOAST value out: read again.
    reread: set[Key] = field(default_factory=set)
    held: _Save | None = None  # the chunk progress a re-read completes
    attempts: int = 0
    # Rows of the chunk in hand last written by an inbound apply: their origin headers.
    written_back: dict[Key, list[tuple[str, str | bytes | None]]] = field(default_factory=dict)

    def progress_key(self) -> ProgressKey:
        return ProgressKey(self.kind, self.request, self.last_key)


@dataclass(frozen=True, slots=True)
class _Save:
    """Progress to persist once ``tx`` (the chunk's events; None: none) is acknowledged."""

    tx: TxProgress | None
    table: str
    key: ProgressKey
    rows: int
    done: bool


class Snapshotter:
    """The snapshot side of one capture session; see the module docstring."""

    def __init__(self, session: SnapshotHost, *, created_slot: bool) -> None:
        self._session = session
        self._cfg = session.cfg
        self._created_slot = created_slot
        self._chunk_size = session.cfg.source.snapshot_chunk_size
        self._tables = [str(TableName.parse(t)) for t in session.cfg.source.tables]
        self._pipeline = pipeline_id(session.cfg.source.slot, session.cfg.kafka.topic_prefix)
        self._store: StateStore | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._queue: deque[_Job] = deque()
        self._job: _Job | None = None
        self._saves: deque[_Save] = deque()
        self._signals: list[SnapshotSignal | RereadSignal] = []
        self._writers: dict[tuple[int, str], tuple[TableEncoding, EnvelopeWriter]] = {}
        self._session_id = uuid.uuid4().hex[:12]
        self._chunks = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, then queue the snapshots to run: initial ones and unfinished ones."""
        cfg = self._cfg
        state = cfg.state_dsn().get_secret_value()
        self._store = await StateStore.open(state, schema=cfg.state.schema_)
        dsn = cfg.source.dsn.get_secret_value()
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="cdcsync-snapshot"
            )
            await conn.execute("SET TimeZone TO 'UTC'")
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        except psycopg.OperationalError as exc:
            raise SnapshotError(f"snapshot connection failed: {first_line(exc)}") from exc
        self._conn = conn
        mode = cfg.source.snapshot
        request = f"initial-{uuid.uuid4().hex[:12]}"
        for table in self._tables:
            row = await self._store.snapshot_progress(table, pipeline=self._pipeline)
            key = None if row is None else ProgressKey.from_json(row.last_key)
            if wants_initial(mode, created_slot=self._created_slot, ever_started=row is not None):
                key = ProgressKey("initial", request, None)
                await self._store.save_snapshot_progress(
                    table, last_key=key.to_json(), rows=0, done=False, pipeline=self._pipeline
                )
                self._queue.append(_Job(table, "initial", request, None, 0))
            elif row is not None and not row.done and key is not None:
                log.info("resuming the %s snapshot of %s after %d rows", key.kind, table, row.rows)
                self._queue.append(_Job(table, key.kind, key.request, key.key, row.rows))

    async def close(self) -> None:
        """Save the progress Kafka has acknowledged by now, then disconnect."""
        if self._store is not None and self._saves:
            with contextlib.suppress(Exception):
                await self._save_acknowledged()
        if self._conn is not None:
            await self._conn.close()
        if self._store is not None:
            await self._store.close()

    @property
    def busy(self) -> bool:
        """Work is due now (the capture loop should not wait long for the stream)."""
        job = self._job
        return bool(
            self._signals
            or self._saves
            or (job is None and self._queue)
            or (job is not None and job.phase in ("idle", "read"))
        )

    # ------------------------------------------------------------------ stream side (sync)

    def on_message(self, msg: LogicalMessage) -> bool:
        """Handle our watermark and signal messages; False for anybody else's."""
        if msg.prefix == WATERMARK_PREFIX:
            try:
                mark = Watermark.decode(msg.content)
            except SnapshotMessageError as exc:
                log.warning("ignoring a malformed watermark: %s", exc)
                return True
            job = self._job
            if job is None or mark.chunk != job.chunk:
                return True  # an earlier session's, re-sent after a restart
            if not mark.high and job.phase == "low":
                job.low_seq = job.history.seq
                job.phase = "read"
            elif mark.high and job.phase == "high":
                tx = self._session.tx
                self._publish(job, tx.commit_lsn if tx is not None else msg.lsn)
            return True
        if msg.prefix == SIGNAL_PREFIX:
            try:
                self._signals.append(decode_signal(msg.content))
            except SnapshotMessageError as exc:
                log.warning("ignoring a malformed signal: %s", exc)
            return True
        return False

    def watches(self, oid: int) -> bool:
        job = self._job
        return job is not None and job.shape is not None and job.shape.oid == oid

    def on_change(self, xid: int, new: TupleValues | None, old: TupleValues | None) -> None:
        """A change of the table being read (call only when ``watches`` its oid)."""
        job = self._job
        assert job is not None and job.shape is not None
        positions = job.shape.pk_positions
        toast = new is not None and any(v is UNCHANGED for v in new)
        for values in (new, old):
            if values is None:
                continue
            key = key_of(values, positions)
            left_out = toast and values is new
            job.history.add(xid, key, toast=left_out)
            # drop() first: every changed key leaves the chunk, toasted or not.
            if job.phase == "high" and job.buffer is not None and job.buffer.drop(key) and left_out:
                job.reread.add(key)

    def reread(self, table: str, new: TupleValues) -> None:
        """Read the row ``new`` (a stream tuple) is about again, by key, soon: its event
        carries a TOAST placeholder that no earlier event of that key filled."""
        if table not in self._tables or self._conn is None:
            return
        for job in self._queue:
            if job.table == table and job.keys is None and job.tuples and job.held is None:
                job.tuples.append(new)
                return
        request = f"reread-{uuid.uuid4().hex[:12]}"
        self._queue.appendleft(_Job(table, "incremental", request, None, 0, tuples=[new]))

    def on_truncate(self, oid: int) -> None:
        """The table being read was truncated: the chunk in hand is void."""
        # The truncate event follows the rows already published; later rows come from
        # the stream, so the key range read so far stays read.
        if self.watches(oid):
            job = self._job
            assert job is not None
            if job.phase in ("read", "high"):
                job.truncated = True

    # ------------------------------------------------------------------ async side

    async def step(self) -> None:
        """Advance whatever is due: signals, acknowledged progress, the next read."""
        if self._signals:
            await self._take_signals()
        if self._saves:
            await self._save_acknowledged()
        job = self._job
        if (
            job is not None
            and job.phase == "idle"
            and job.keys is None
            and not job.tuples
            and self._queue
            and (self._queue[0].tuples or self._queue[0].key_maps)
        ):
            # Between two chunks: a key re-read (a primary-key change) goes first.
            self._queue.appendleft(job)
            job = self._job = None
        if job is None:
            if not self._queue:
                return
            job = self._job = self._queue.popleft()
            if job.keys is None and not job.tuples and not job.key_maps and job.published == 0:
                job.started = time.monotonic()
                log.info("%s snapshot of %s starting", job.kind, job.table)
        try:
            if job.shape is None:
                job.shape = await self._shape(job)
                if job.shape is None:
                    self._job = None
                    return
            if job.tuples or job.key_maps:
                positions = job.shape.pk_positions
                names = [job.shape.relation.columns[i].name for i in positions]
                wanted = {key_of(t, positions) for t in job.tuples}
                wanted.update(tuple(m.get(n) for n in names) for m in job.key_maps)
                job.keys = sorted(wanted, key=repr)
                job.tuples, job.key_maps = [], []
            if job.phase == "idle":
                job.truncated = False
                self._chunks += 1
                job.chunk = f"{self._session_id}-{self._chunks}"
                job.phase = "low"
                await self._emit(Watermark(job.chunk, high=False))
            elif job.phase == "read":
                await self._read(job)
            elif time.monotonic() - job.waiting_since > _WATERMARK_TIMEOUT_S:
                # A watermark that never came back (it would have to be part of a
                # transaction streamed in progress): read this chunk again.
                log.warning(
                    "%s: watermark %s did not come back; reading again", job.table, job.chunk
                )
                job.phase, job.buffer = "idle", None
        except psycopg.OperationalError as exc:
            raise SnapshotError(f"snapshot of {job.table}: {first_line(exc)}") from exc

    async def _shape(self, job: _Job) -> TableShape | None:
        assert self._conn is not None
        shape = await load_shape(self._conn, TableName.parse(job.table))
        if not shape.pk_positions:
            log.error("cannot snapshot %s: it has no primary key; skipping it", job.table)
            return None
        if shape.oid not in self._session.tables:
            # No change of the table has come through yet: announce it from the catalog.
            await self._session.on_relation(shape.relation)
        return shape

    async def _emit(self, mark: Watermark) -> None:
        assert self._conn is not None
        if self._job is not None:
            self._job.waiting_since = time.monotonic()
        await self._conn.execute(
            "SELECT pg_logical_emit_message(true, %s, %s)", (WATERMARK_PREFIX, mark.encode())
        )

    async def _read(self, job: _Job) -> None:
        conn = self._conn
        assert conn is not None and job.shape is not None
        if job.keys is not None:
            query, params = job.shape.keys_query(job.keys)
        else:
            query, params = job.shape.chunk_query(after=job.last_key, limit=self._chunk_size)
        async with conn.transaction():
            cur = await conn.execute("SELECT pg_current_snapshot()::text")
            row = await cur.fetchone()
            assert row is not None
            snapshot = PgSnapshot.parse(str(row[0]))
            cur = await conn.execute(query, params)
            rows, xmins = split_xmin(await cur.fetchall())
        positions = job.shape.pk_positions
        job.written_back = await self._written_back(rows, xmins, positions)
        buffer = ChunkBuffer(rows, positions)
        if job.truncated:
            buffer = ChunkBuffer((), job.shape.pk_positions)
            buffer.last_key, buffer.read = job.last_key, len(rows)
        for key, left_out in job.history.conflicting(
            after_seq=job.low_seq, snapshot=snapshot
        ).items():
            if buffer.drop(key) and left_out:
                job.reread.add(key)
        job.buffer = buffer
        job.phase = "high"
        await self._emit(Watermark(job.chunk, high=True))

    async def _written_back(
        self, rows: list[TupleValues], xmins: list[int], positions: tuple[int, ...]
    ) -> dict[Key, list[tuple[str, str | bytes | None]]]:
        """The origin headers of the rows an inbound apply wrote last (key -> headers), so
        the integration they came from treats their reads as its own writes (no echo)."""
        assert self._store is not None
        writers = await self._store.inbound_writers(sorted(set(xmins)))
        out: dict[Key, list[tuple[str, str | bytes | None]]] = {}
        for row, xmin in zip(rows, xmins, strict=True):
            found = writers.get(xmin)
            if found is None:
                continue
            integration, token = found
            headers: list[tuple[str, str | bytes | None]] = [
                (ORIGIN_HEADER, origin_name(integration).encode())
            ]
            if token:
                headers.append((ORIGIN_LSN_HEADER, str(token).encode()))
            out[key_of(row, positions)] = headers
        return out

    def _writer(self, table: TableEncoding, kind: SnapshotKind) -> EnvelopeWriter:
        slot = (table.encoder.relation.oid, kind)
        cached = self._writers.get(slot)
        if cached is None or cached[0] is not table:
            writer = EnvelopeWriter(
                table.encoder, header=table.value.header, snapshot=SOURCE_SNAPSHOT[kind]
            )
            cached = self._writers[slot] = (table, writer)
        return cached[1]

    def _publish(self, job: _Job, commit_lsn: Lsn) -> None:
        """At the high watermark: the chunk's remaining rows become ``op=r`` events."""
        session = self._session
        buffer, shape = job.buffer, job.shape
        assert buffer is not None and shape is not None
        table = session.tables.get(shape.oid)
        job.buffer = None
        job.phase = "idle"
        columns = None if table is None else tuple(c.name for c in table.encoder.relation.columns)
        if table is None or columns != shape.column_names:
            # The table changed shape while the chunk was read: read it again.
            log.info("%s changed shape during a snapshot read; reading the chunk again", job.table)
            job.shape = None
            return
        rows = [] if job.truncated else list(buffer)
        log.debug(
            "%s chunk %s at %s: read %d, dropped %d, publishing %d",
            job.table,
            job.chunk,
            commit_lsn,
            buffer.read,
            buffer.dropped,
            len(rows),
        )
        job.truncated = False
        progress: TxProgress | None = None
        if rows:
            back = job.written_back
            origins = [back.get(key_of(r, shape.pk_positions)) for r in rows] if back else None
            progress = self._produce(table, job.kind, rows, commit_lsn, origins)
        job.written_back = {}
        job.rows += len(rows)
        job.published += len(rows)
        if job.keys is not None:
            self._reread_published(job, progress)
            return
        if buffer.last_key is not None:
            job.last_key = buffer.last_key
        done = buffer.read < self._chunk_size
        save = _Save(progress, job.table, job.progress_key(), job.rows, done)
        if job.reread:
            # Some reads were dropped for changes that left TOAST values out: read those
            # keys again first; this chunk's progress is saved once that is acknowledged.
            self._job = _Job(
                job.table,
                job.kind,
                job.request,
                None,
                0,
                shape=job.shape,
                keys=sorted(job.reread, key=repr),
                held=save,
            )
            job.reread = set()
            if not done:
                self._queue.appendleft(job)
            return
        self._saves.append(save)
        if done:
            elapsed = max(time.monotonic() - job.started, 1e-6)
            log.info(
                "%s snapshot of %s done: %d rows (%.0f rows/s)",
                job.kind,
                job.table,
                job.rows,
                job.published / elapsed,
            )
            self._job = None

    def _reread_published(self, job: _Job, progress: TxProgress | None) -> None:
        """A key re-read was published: again for keys dropped again, else done."""
        held = job.held
        if held is not None and progress is not None:
            held = replace(held, tx=progress)  # saved once the re-read is acknowledged too
        if job.reread and job.attempts + 1 < _REREAD_ATTEMPTS:
            self._job = _Job(
                job.table,
                job.kind,
                job.request,
                None,
                0,
                shape=job.shape,
                keys=sorted(job.reread, key=repr),
                held=held,
                attempts=job.attempts + 1,
            )
            return
        if job.reread:
            log.warning(
                "%s: %d keys changed during each of %d re-reads; their latest event may hold "
                "a TOAST placeholder until they change again",
                job.table,
                len(job.reread),
                _REREAD_ATTEMPTS,
            )
        if held is not None:
            self._saves.append(held)
        self._job = None
        if held is not None and held.done:
            log.info("%s snapshot of %s done (with key re-reads)", job.kind, job.table)

    def _produce(
        self,
        table: TableEncoding,
        kind: SnapshotKind,
        rows: list[TupleValues],
        commit_lsn: Lsn,
        origins: list[list[tuple[str, str | bytes | None]] | None] | None = None,
    ) -> TxProgress:
        """Produce ``rows`` as reads at ``commit_lsn``; ``origins``: per row, the origin
        headers of an inbound write it holds (None: none)."""
        session = self._session
        publisher, serializer = session.publisher, session.serializer
        assert publisher is not None and serializer is not None
        writer = self._writer(table, kind)
        enc = table.encoder
        now_us = time.time_ns() // 1000
        now_ms = now_us // 1000
        tx = TxContext(0, commit_lsn, now_us)
        progress = session.checkpoint.begin(commit_lsn, commit_ts_us=now_us)
        callback = session.delivery_callback(progress)
        topic, key_schema = enc.topic, table.key
        assert key_schema is not None
        keys = serializer.serialize_many(key_schema, map(enc.key_record, rows))
        values = writer.write_reads(rows, tx=tx, now_ms=now_ms)
        # Counted up front: a delivery report served while the producer's queue is full
        # must not find the chunk's count at zero before its last row is queued.
        Checkpoint.sent(progress, len(rows))
        # Exactly-once: the chunk goes into the open Kafka transaction (opened if needed),
        # which then names the watermark as its position.
        eos = session.eos
        headers = None if eos is None else eos.event_headers(session.confirmable())
        produce = publisher.produce
        if origins is not None:
            for origin, key, value in zip(origins, keys, values, strict=True):
                row_headers = headers if origin is None else [*(headers or ()), *origin]
                produce(topic, key, value, callback, headers=row_headers)
        else:
            for key, value in zip(keys, values, strict=True):
                produce(topic, key, value, callback, headers=headers)
        session.checkpoint.seal(progress, commit_lsn)
        if eos is not None:
            eos.sealed(commit_lsn, commit_lsn)
        session.stats.events += len(rows)
        return progress

    async def _save_acknowledged(self) -> None:
        store = self._store
        assert store is not None
        if self._session.checkpoint.failure is not None:
            return  # capture restarts from the slot and re-reads these chunks
        saves = self._saves
        while saves:
            save = saves[0]
            tx = save.tx
            if tx is not None and (
                not tx.sealed or tx.pending > 0 or self._session.confirmable() < tx.commit_lsn
            ):
                return  # not acknowledged yet (or, exactly-once, its Kafka transaction is open)
            saves.popleft()
            row = await store.snapshot_progress(save.table, pipeline=self._pipeline)
            current = None if row is None else ProgressKey.from_json(row.last_key)
            if current is not None and current.request != save.key.request:
                # ``cdcsync snapshot`` asked again meanwhile: its row is not ours to
                # overwrite (its signal follows in the stream and restarts the table).
                continue
            await store.save_snapshot_progress(
                save.table,
                last_key=save.key.to_json(),
                rows=save.rows,
                done=save.done,
                pipeline=self._pipeline,
            )

    async def _take_signals(self) -> None:
        store = self._store
        assert store is not None
        signals, self._signals = self._signals, []
        for signal in signals:
            if isinstance(signal, RereadSignal):
                self._take_reread(signal)
                continue
            for table in signal.tables:
                if table not in self._tables:
                    log.warning("snapshot of %s requested, but it is not in source.tables", table)
                    continue
                row = await store.snapshot_progress(table, pipeline=self._pipeline)
                key = None if row is None else ProgressKey.from_json(row.last_key)
                if row is None or row.done or key is None or key.request != signal.request:
                    continue  # an old signal re-sent, or one already served
                if self._job is not None and self._job.request == signal.request:
                    continue
                if any(j.request == signal.request and j.table == table for j in self._queue):
                    continue
                self._cancel(table)
                log.info("incremental snapshot of %s requested (%s)", table, signal.request)
                self._queue.append(_Job(table, key.kind, key.request, key.key, row.rows))

    def _take_reread(self, signal: RereadSignal) -> None:
        """Queue the re-read of the signal's keys, before the next chunk of anything."""
        for table, keys in signal.keys.items():
            if table not in self._tables:
                log.warning("re-read of %s requested, but it is not in source.tables", table)
                continue
            if keys:
                job = _Job(table, "incremental", signal.request, None, 0, key_maps=list(keys))
                self._queue.appendleft(job)

    def _cancel(self, table: str) -> None:
        """Forget an earlier snapshot of ``table``: a new request supersedes it."""
        if self._job is not None and self._job.table == table:
            self._job = None
        self._queue = deque(j for j in self._queue if j.table != table)
        self._saves = deque(s for s in self._saves if s.table != table)
