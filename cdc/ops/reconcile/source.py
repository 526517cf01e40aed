"""The source side of a reconcile run: a table read in primary-key chunks, mapped.

``SourceTable.open`` reads the table's shape from the catalog (the snapshot's
``load_shape``) and refuses a table without a primary key. ``chunks`` reads it with the
snapshot's keyset pagination (``TableShape.chunk_query``; given keys with ``keys_query``),
each chunk in its own short
REPEATABLE READ transaction: no lock is held between chunks and nothing is written, so it
is safe while capture streams. The read rate is bounded (``rows_per_s``).

Each row becomes the ``op=r`` ``TableEvent`` a snapshot read of it would be: its values go
through the capture's own encoder (``RelationEncoder``: same type mapping, same options)
and an Avro round trip with the value schema, so the mapper sees what the sync worker would
see. ``map_rows`` applies the integration's mapper; a related entity's external id is
looked up in the state store's identity map (one query per round); a row the mapper fails
on is returned as a failure with its message, never raised.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from cdc.capture import source_setup
from cdc.capture.encoding.envelope import COLUMN_FACTS_SQL, RelationEncoder, column_facts_from_rows
from cdc.capture.encoding.type_mapping import PgType, needs_catalog
from cdc.capture.pgoutput import TupleValues
from cdc.capture.runtime import type_options
from cdc.capture.snapshot.plan import Key, key_of
from cdc.capture.snapshot.runner import TableShape, load_shape, split_xmin
from cdc.capture.source_setup import TableName
from cdc.config import Config
from cdc.core.errors import ConfigError, RelationPending, SourceUnavailable, first_line
from cdc.state.store import StateStore
from cdc.sync.worker import IdentityContext
from mappers.entity import EntityOp, Mapper, Origin, TableEvent

__all__ = ["MappedRow", "RateLimit", "SourceTable", "map_rows"]

_MAX_RELATION_ROUNDS = 3


class RateLimit:
    """At most ``per_s`` rows a second on average, waited out after each chunk."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self.rows = 0
        self.started = time.monotonic()

    async def took(self, rows: int) -> None:
        self.rows += rows
        due = self.started + self.rows / self.per_s
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


@dataclass
class SourceTable:
    """One captured table as reconcile reads it."""

    name: TableName
    shape: TableShape
    encoder: RelationEncoder
    parsed_row: Any
    parsed_key: Any
    topic: str

    @classmethod
    async def open(
        cls, conn: psycopg.AsyncConnection[Any], config: Config, table: TableName
    ) -> SourceTable:
        shape = await load_shape(conn, table)
        if not shape.pk_positions:
            raise ConfigError(
                f"cannot reconcile {table}: it has no primary key (rows are compared by key)"
            )
        rel = shape.relation
        missing = [c.type_oid for c in rel.columns if needs_catalog(c.type_oid)]
        types: dict[int, PgType] = {}
        if missing:
            types = await source_setup.load_types(conn, missing)
        cur = await conn.execute(COLUMN_FACTS_SQL, (table.schema, table.name))
        facts = column_facts_from_rows(await cur.fetchall())
        key_columns = tuple(rel.columns[i].name for i in shape.pk_positions)
        encoder = RelationEncoder(
            rel,
            prefix=config.kafka.topic_prefix,
            database="",
            types=types,
            options=type_options(config),
            key_columns=key_columns,
            columns=facts,
            additive_fields=config.source.additive_fields,
        )
        assert encoder.key_schema is not None
        return cls(
            table,
            shape,
            encoder,
            parse_schema(encoder.value_row_schema),
            parse_schema(encoder.key_schema),
            encoder.topic,
        )

    async def read(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        after: Key | None,
        limit: int,
        only: tuple[Key, ...] | None = None,
    ) -> list[TupleValues]:
        """One chunk (every column as text), in its own short transaction: the next ``limit``
        rows after ``after``, or with ``only``, the rows of those keys that exist."""
        if only is not None:
            query, params = self.shape.keys_query(list(only))
        else:
            query, params = self.shape.chunk_query(after=after, limit=limit)
        try:
            async with conn.transaction():
                cur = await conn.execute(query, params)
                rows, _xmins = split_xmin(list(await cur.fetchall()))
                return rows
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"reading {self.name}: {first_line(exc)}") from exc

    async def chunks(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        size: int,
        rate: RateLimit,
        only: tuple[Key, ...] | None = None,
    ) -> AsyncIterator[list[TupleValues]]:
        """The table (or the rows of ``only``) in primary-key chunks of ``size`` rows."""
        if only is not None:
            for i in range(0, len(only), size):
                rows = await self.read(conn, after=None, limit=size, only=only[i : i + size])
                if rows:
                    yield rows
                    await rate.took(len(rows))
            return
        after: Key | None = None
        while True:
            rows = await self.read(conn, after=after, limit=size)
            if rows:
                yield rows
                await rate.took(len(rows))
            if len(rows) < size:
                return
            after = self.key(rows[-1])

    def key_map(self, key: Key) -> dict[str, str | None]:
        """``key`` as ``{column: text}`` (a ``RereadSignal``'s form)."""
        columns = self.shape.relation.columns
        return {columns[i].name: v for i, v in zip(self.shape.pk_positions, key, strict=True)}

    def key(self, row: TupleValues) -> Key:
        return key_of(row, self.shape.pk_positions)

    def event(self, row: TupleValues) -> TableEvent:
        """The ``op=r`` event a snapshot read of ``row`` would carry, as sync decodes it."""
        enc = self.encoder
        after = _round_trip(self.parsed_row, enc.row_record(row, unavailable=None))
        key = _round_trip(self.parsed_key, enc.key_record(row))
        return TableEvent(
            origin=Origin(self.topic, -1, -1),
            op="r",
            schema=self.name.schema,
            table=self.name.name,
            key=key,
            before=None,
            after=after,
            unavailable=frozenset(),
            commit_lsn=0,
            seq=0,
            ts_us=time.time_ns() // 1000,
            snapshot=True,
        )


def _round_trip(parsed: Any, record: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed, record)
    buf.seek(0)
    out = schemaless_reader(buf, parsed, None)
    assert isinstance(out, dict)
    return out


@dataclass
class MappedRow:
    """One source row and what the mapper made of it (``error`` when it failed)."""

    key: Key
    ops: list[EntityOp] = field(default_factory=list)
    error: str | None = None


async def map_rows(
    table: SourceTable,
    rows: Sequence[TupleValues],
    *,
    mapper: Mapper,
    integration: str,
    state: StateStore,
    known: dict[tuple[str, str, str], str],
) -> list[MappedRow]:
    """Map ``rows``; related ids come from the identity map (``known`` caches them)."""
    ctx = IdentityContext(integration, known)
    out: list[MappedRow] = []
    pending: list[tuple[MappedRow, TableEvent, RelationPending]] = []
    for row in rows:
        mapped = MappedRow(table.key(row))
        out.append(mapped)
        try:
            event = table.event(row)
        except Exception as exc:  # a value the encoder cannot take: this row only
            mapped.error = f"cannot decode the row: {first_line(exc)}"
            continue
        _map_one(mapper, event, ctx, mapped, pending)
    for _ in range(_MAX_RELATION_ROUNDS):
        if not pending:
            break
        wanted: dict[tuple[str, str], set[str]] = {}
        for _mapped, _event, waiting in pending:
            wanted.setdefault((waiting.integration, waiting.entity), set()).add(waiting.key)
        for (other, entity), keys in wanted.items():
            found = await state.external_ids(other, entity, keys=sorted(keys))
            for key, external in found.items():
                known[(other, entity, key)] = external
        retry, pending = pending, []
        for mapped, event, _exc in retry:
            _map_one(mapper, event, ctx, mapped, pending)
    return out


def _map_one(
    mapper: Mapper,
    event: TableEvent,
    ctx: IdentityContext,
    mapped: MappedRow,
    pending: list[tuple[MappedRow, TableEvent, RelationPending]],
) -> None:
    try:
        mapped.ops = list(mapper(event, ctx))
        mapped.error = None
    except RelationPending as exc:
        mapped.error = str(exc)
        pending.append((mapped, event, exc))
    except Exception as exc:  # a mapper's failure on this row: counted, never fatal
        mapped.error = f"{type(exc).__name__}: {first_line(exc)}"
