"""Sync's small state in PostgreSQL: identity map, versions and tombstones, dead letters, snapshots.

``StateStore.open(dsn, schema="cdcsync")`` opens a small ``AsyncConnectionPool`` and brings
the schema up to date. Tables (all in the one configured schema, which is never part of a
publication):

- ``schema_migrations(version, applied_at)``: which entries of ``MIGRATIONS`` ran.
- ``identities``: (integration, entity, key) -> the external id the target assigned.
- ``versions``: (integration, entity, key) -> the last applied ``Version`` (as
  ``Version.to_bytes()``, whose bytewise order is the version order) and whether it is a
  tombstone; for sinks that cannot hold versions themselves (HTTP APIs).
- ``dead_letters``: one row per message sent to a dead-letter topic, with its origin and
  where it landed, until it is marked replayed; a failed replay counts in
  ``replay_attempts`` and replaces ``error`` with the new one.
- ``snapshot_progress``: per (pipeline, table), the last primary key read, rows read, done.
  A pipeline is one capture's slot and topic prefix (``pipeline_id``): two pipelines on one
  database never resume or overwrite each other's snapshots. Rows written before pipelines
  were recorded (pipeline ``''``) are read by any pipeline that has no row of its own.
- ``inbound_changes``: per (integration, Idempotency-Key), what became of an inbound change
  (``applied``, ``lost`` to a newer write, ...), the transaction that applied it and its
  echo token; written by ``cdc.inbound.apply``, read by snapshots (``inbound_writers``).
- ``reconcile_runs``: one row per ``cdcsync reconcile`` run (or scheduled run): start, end,
  rows checked, missing, extra, different, repaired, mapper failures, result and error.

Invariants:

- Migrations run in one transaction under ``pg_advisory_xact_lock``, so processes starting
  together apply each migration exactly once; re-running them is a no-op. Migrations are
  only ever appended to ``MIGRATIONS``, never edited.
- ``guard(integration, keys)`` locks keys (transaction-scoped advisory locks, taken in hash
  order so two guards never deadlock) and holds them until the block ends, with the stored
  versions read under the lock and the versions saved in the same transaction: a sink that
  checks, sends and saves inside one guard is atomic per key against any other guard (a
  replay beside the live worker). A block that raises still commits what it saved.
- A stored version only moves forward: ``save_versions`` updates a key only when the new
  version is strictly greater (compared in SQL on the ``bytea``), in one statement.
- Every identifier goes through ``psycopg.sql.Identifier``; every value is a parameter.
- ``versions`` and ``identities`` are analyzed by the store itself each time the rows it
  wrote to one (directly or inside a ``guard``) doubled (from 1,000): lookups of many keys
  rely on statistics to probe the primary key per key, and before autovacuum's first
  analyze a freshly filled table was read in full for every batch (3-6 ms per 20,000 rows,
  and about 200 ms per 500-key lookup in ``bench/sync.py``).
- Connection failures raise ``StateUnavailable`` (retryable); messages never hold a password.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, LiteralString, Self

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cdc.core.errors import RetryableError, first_line
from cdc.core.secrets import redact_dsn
from cdc.core.text import storable
from mappers.entity import Origin, Version

__all__ = [
    "MIGRATIONS",
    "DeadLetter",
    "ReconcileRun",
    "SnapshotProgress",
    "StateStore",
    "StateUnavailable",
    "VersionGuard",
    "pipeline_id",
]

# Appended to, never edited: each entry's position (1-based) is its version number.
MIGRATIONS: Final[tuple[LiteralString, ...]] = (
    """
    CREATE TABLE {schema}.identities (
        integration text NOT NULL,
        entity text NOT NULL,
        key text NOT NULL,
        external_id text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (integration, entity, key)
    );
    CREATE TABLE {schema}.versions (
        integration text NOT NULL,
        entity text NOT NULL,
        key text NOT NULL,
        version bytea NOT NULL,
        deleted boolean NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (integration, entity, key)
    );
    """,
    """
    CREATE TABLE {schema}.dead_letters (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        integration text NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        key text,
        error text NOT NULL,
        attempts integer NOT NULL,
        payload bytea,
        dlq_topic text NOT NULL,
        dlq_partition integer,
        dlq_offset bigint,
        created_at timestamptz NOT NULL DEFAULT now(),
        replayed_at timestamptz
    );
    CREATE INDEX dead_letters_pending ON {schema}.dead_letters (integration, id)
        WHERE replayed_at IS NULL;
    """,
    """
    CREATE TABLE {schema}.snapshot_progress (
        table_name text PRIMARY KEY,
        last_key jsonb,
        rows bigint NOT NULL,
        done boolean NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    """
    ALTER TABLE {schema}.dead_letters
        ADD COLUMN replay_attempts integer NOT NULL DEFAULT 0,
        ADD COLUMN last_replay_at timestamptz;
    """,
    # Inbound changes (cdc.inbound.apply): one row per Idempotency-Key, written in the same
    # source-database transaction as the change itself; and the identity map read backwards.
    """
    CREATE TABLE {schema}.inbound_changes (
        integration text NOT NULL,
        idempotency_key text NOT NULL,
        entity text NOT NULL,
        external_id text NOT NULL,
        key text,
        op text NOT NULL,
        outcome text NOT NULL,
        version_us bigint NOT NULL,
        topic text NOT NULL,
        partition integer NOT NULL,
        "offset" bigint NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (integration, idempotency_key)
    );
    CREATE INDEX identities_by_external_id
        ON {schema}.identities (integration, entity, external_id);
    """,
    # Versions of the column clock (major = a version_column's value) become the commit
    # LSN they were applied at: targets are ordered by commit order only (mappers.lww).
    # Bytes: major + 2**63 (8), lsn (8), seq (4); an LSN-clock major is the lsn, top bit set.
    """
    UPDATE {schema}.versions
        SET version = set_byte(substring(version from 9 for 8), 0, get_byte(version, 8) | 128)
            || substring(version from 9)
        WHERE substring(version from 1 for 8)
            <> set_byte(substring(version from 9 for 8), 0, get_byte(version, 8) | 128);
    """,
    # Snapshot progress belongs to one pipeline (slot and topic prefix).
    """
    ALTER TABLE {schema}.snapshot_progress ADD COLUMN pipeline text NOT NULL DEFAULT '';
    ALTER TABLE {schema}.snapshot_progress DROP CONSTRAINT snapshot_progress_pkey;
    ALTER TABLE {schema}.snapshot_progress ADD PRIMARY KEY (pipeline, table_name);
    """,
    # Which transaction wrote an inbound change (the low 32 bits of its id, as a row's
    # xmin shows it) and its echo token: a snapshot read of a row an inbound write left
    # is marked with that write's origin (no echo).
    """
    ALTER TABLE {schema}.inbound_changes ADD COLUMN xid bigint;
    ALTER TABLE {schema}.inbound_changes ADD COLUMN echo_token bigint;
    CREATE INDEX inbound_changes_by_xid ON {schema}.inbound_changes (xid)
        WHERE xid IS NOT NULL;
    """,
    # Reconcile runs (cdc.ops.reconcile): the history of each integration's checks.
    """
    CREATE TABLE {schema}.reconcile_runs (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        integration text NOT NULL,
        started_at timestamptz NOT NULL,
        ended_at timestamptz,
        rows_checked bigint NOT NULL DEFAULT 0,
        missing bigint NOT NULL DEFAULT 0,
        extra bigint NOT NULL DEFAULT 0,
        different bigint NOT NULL DEFAULT 0,
        repaired bigint NOT NULL DEFAULT 0,
        mapper_failures bigint NOT NULL DEFAULT 0,
        result text NOT NULL,
        error text,
        scheduled boolean NOT NULL DEFAULT false
    );
    CREATE INDEX reconcile_runs_by_integration ON {schema}.reconcile_runs (integration, id);
    """,
)

_POOL_MAX: Final = 8
_ANALYZED_TABLES: Final = ("versions", "identities")
_ANALYZE_AFTER_ROWS: Final = 1000


class StateUnavailable(RetryableError):
    """The state database is unreachable or the connection was lost."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that was sent to a dead-letter topic, and where it came from."""

    id: int
    integration: str
    origin: Origin
    key: str | None
    error: str
    attempts: int
    payload: bytes | None
    dlq_topic: str
    dlq_partition: int | None
    dlq_offset: int | None
    created_at: datetime
    replayed_at: datetime | None
    replay_attempts: int = 0


@dataclass(frozen=True, slots=True)
class ReconcileRun:
    """One row of ``reconcile_runs``."""

    id: int
    integration: str
    started_at: datetime
    ended_at: datetime | None
    rows_checked: int
    missing: int
    extra: int
    different: int
    repaired: int
    mapper_failures: int
    result: str
    error: str | None
    scheduled: bool


@dataclass(frozen=True, slots=True)
class SnapshotProgress:
    """How far an incremental snapshot of ``table`` has read."""

    table: str
    last_key: dict[str, Any] | None
    rows: int
    done: bool
    updated_at: datetime


class StateStore:
    """The state store; build with ``await StateStore.open(dsn)`` and ``close()`` it."""

    def __init__(self, pool: AsyncConnectionPool, schema: str) -> None:
        self._pool = pool
        self.schema = schema
        # Rows this store wrote per table, and how many it had written at its last ANALYZE.
        self._written = dict.fromkeys(_ANALYZED_TABLES, 0)
        self._analyzed_at = dict.fromkeys(_ANALYZED_TABLES, 0)

    @classmethod
    async def open(
        cls, dsn: str, *, schema: str = "cdcsync", timeout_s: float = 10.0
    ) -> StateStore:
        """Connect to ``dsn`` and apply the migrations not yet applied to ``schema``."""
        pool: AsyncConnectionPool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=_POOL_MAX,
            open=False,
            timeout=timeout_s,
            kwargs={"autocommit": True},
            name=f"cdcsync-state-{schema}",
        )
        try:
            await pool.open(wait=True, timeout=timeout_s)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            await pool.close()
            raise StateUnavailable(
                f"state database {redact_dsn(dsn)!r} is unreachable: {redact_dsn(first_line(exc))}"
            ) from None
        store = cls(pool, schema)
        try:
            await store.migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ----------------------------------------------------------------- plumbing

    def _q(self, text: LiteralString) -> sql.Composed:
        return sql.SQL(text).format(schema=sql.Identifier(self.schema))

    async def _fetch(self, query: sql.Composed, params: Sequence[Any]) -> list[TupleRow]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None

    async def _run(self, query: sql.Composed, params: Sequence[Any]) -> int:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return cur.rowcount
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None

    async def _wrote(self, table: str, rows: int) -> None:
        """Count ``rows`` written to ``table``; ANALYZE it once they doubled since the last."""
        written = self._written[table] = self._written[table] + rows
        if written >= max(_ANALYZE_AFTER_ROWS, 2 * self._analyzed_at[table]):
            self._analyzed_at[table] = written
            await self._run(sql.SQL("ANALYZE {}").format(sql.Identifier(self.schema, table)), ())

    def _unavailable(self, exc: Exception) -> StateUnavailable:
        return StateUnavailable(f"state database: {redact_dsn(first_line(exc))}")

    async def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied now (empty when up to date)."""
        applied: list[int] = []
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cdcsync.state:{self.schema}",)
                )
                await conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {schema}"))
                await conn.execute(
                    self._q(
                        "CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                        " version integer PRIMARY KEY,"
                        " applied_at timestamptz NOT NULL DEFAULT now())"
                    )
                )
                cur = await conn.execute(
                    self._q("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations")
                )
                row = await cur.fetchone()
                current = int(row[0]) if row else 0
                for number, text in enumerate(MIGRATIONS, start=1):
                    if number <= current:
                        continue
                    await conn.execute(self._q(text))
                    await conn.execute(
                        self._q("INSERT INTO {schema}.schema_migrations (version) VALUES (%s)"),
                        (number,),
                    )
                    applied.append(number)
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        return applied

    async def schema_version(self) -> int:
        """The number of the newest migration applied."""
        rows = await self._fetch(
            self._q("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"), ()
        )
        return int(rows[0][0])

    # ----------------------------------------------------------------- identity map

    async def record_identity(
        self, integration: str, entity: str, *, key: str, external_id: str
    ) -> None:
        """Remember that ``integration``'s target calls entity ``key`` ``external_id``."""
        await self.record_identities(integration, entity, items=[(key, external_id)])

    async def record_identities(
        self, integration: str, entity: str, *, items: Sequence[tuple[str, str]]
    ) -> None:
        """``record_identity`` for many ``(key, external_id)`` pairs in one statement (of
        several pairs for one key, the last counts)."""
        statement = self._identities_statement(integration, entity, items)
        if statement is None:
            return
        written = await self._run(*statement)
        await self._wrote("identities", written)

    def _identities_statement(
        self, integration: str, entity: str, items: Sequence[tuple[str, str]]
    ) -> tuple[sql.Composed, Sequence[Any]] | None:
        latest = dict(items)
        if not latest:
            return None
        return (
            self._q(
                "INSERT INTO {schema}.identities (integration, entity, key, external_id)"
                " SELECT %s, %s, k, e FROM unnest(%s::text[], %s::text[]) AS t(k, e)"
                " ON CONFLICT (integration, entity, key) DO UPDATE"
                " SET external_id = excluded.external_id, updated_at = now()"
                " WHERE identities.external_id IS DISTINCT FROM excluded.external_id"
            ),
            (integration, entity, list(latest), list(latest.values())),
        )

    async def external_ids(
        self, integration: str, entity: str, *, keys: Sequence[str]
    ) -> dict[str, str]:
        """The known external ids of ``keys`` (keys without one are absent)."""
        if not keys:
            return {}
        rows = await self._fetch(
            self._q(
                "SELECT key, external_id FROM {schema}.identities"
                " WHERE integration = %s AND entity = %s AND key = ANY(%s)"
            ),
            (integration, entity, list(set(keys))),
        )
        return {str(k): str(v) for k, v in rows}

    # ----------------------------------------------------------------- reconcile

    async def record_reconcile_run(
        self,
        integration: str,
        *,
        started_at: datetime,
        ended_at: datetime | None,
        counts: dict[str, int],
        result: str,
        error: str | None,
        scheduled: bool,
    ) -> int:
        """Append one reconcile run to the history; returns its id. ``counts``:
        rows_checked, missing, extra, different, repaired, mapper_failures."""
        names = ("rows_checked", "missing", "extra", "different", "repaired", "mapper_failures")
        rows = await self._fetch(
            self._q(
                "INSERT INTO {schema}.reconcile_runs (integration, started_at, ended_at,"
                " rows_checked, missing, extra, different, repaired, mapper_failures, result,"
                " error, scheduled) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " RETURNING id"
            ),
            (
                integration,
                started_at,
                ended_at,
                *(counts.get(c, 0) for c in names),
                result,
                None if error is None else storable(error),
                scheduled,
            ),
        )
        return int(rows[0][0])

    async def reconcile_runs(
        self, integration: str | None = None, *, limit: int = 20
    ) -> list[ReconcileRun]:
        """The newest runs first (of ``integration``, or of all)."""
        rows = await self._fetch(
            self._q(
                "SELECT id, integration, started_at, ended_at, rows_checked, missing, extra,"
                " different, repaired, mapper_failures, result, error, scheduled"
                " FROM {schema}.reconcile_runs WHERE %s::text IS NULL OR integration = %s"
                " ORDER BY id DESC LIMIT %s"
            ),
            (integration, integration, limit),
        )
        return [ReconcileRun(*row) for row in rows]

    async def live_keys(
        self, integration: str, *, after: tuple[str, str] | None, limit: int
    ) -> list[tuple[str, str]]:
        """``(entity, key)`` of live (not deleted) versions, in order, after ``after``."""
        entity, key = after if after is not None else ("", "")
        rows = await self._fetch(
            self._q(
                "SELECT entity, key FROM {schema}.versions WHERE integration = %s"
                " AND NOT deleted AND (%s::boolean OR (entity, key) > (%s, %s))"
                " ORDER BY entity, key LIMIT %s"
            ),
            (integration, after is None, entity, key, limit),
        )
        return [(str(e), str(k)) for e, k in rows]

    # ----------------------------------------------------------------- versions

    async def versions(
        self, integration: str, entity: str, *, keys: Sequence[str]
    ) -> dict[str, tuple[Version, bool]]:
        """The stored ``(version, deleted)`` of ``keys`` (keys never applied are absent)."""
        if not keys:
            return {}
        rows = await self._fetch(
            self._q(
                "SELECT key, version, deleted FROM {schema}.versions"
                " WHERE integration = %s AND entity = %s AND key = ANY(%s)"
            ),
            (integration, entity, list(set(keys))),
        )
        return {str(k): (Version.from_bytes(v), bool(d)) for k, v, d in rows}

    async def save_versions(
        self, integration: str, entity: str, *, items: Sequence[tuple[str, Version, bool]]
    ) -> int:
        """Store ``(key, version, deleted)`` items where newer than stored; returns keys moved.

        One statement for the whole batch; of several items for one key the newest counts.
        """
        statement = self._save_versions_statement(integration, entity, items)
        if statement is None:
            return 0
        moved = await self._run(*statement)
        await self._wrote("versions", moved)
        return moved

    def _save_versions_statement(
        self, integration: str, entity: str, items: Sequence[tuple[str, Version, bool]]
    ) -> tuple[sql.Composed, Sequence[Any]] | None:
        newest: dict[str, tuple[Version, bool]] = {}
        for key, version, deleted in items:
            held = newest.get(key)
            if held is None or version > held[0]:
                newest[key] = (version, deleted)
        if not newest:
            return None
        keys = list(newest)
        return (
            self._q(
                "INSERT INTO {schema}.versions AS stored"
                " (integration, entity, key, version, deleted)"
                " SELECT %s, %s, k, v, d FROM unnest(%s::text[], %s::bytea[], %s::boolean[])"
                " AS t(k, v, d)"
                " ON CONFLICT (integration, entity, key) DO UPDATE"
                " SET version = excluded.version, deleted = excluded.deleted, updated_at = now()"
                " WHERE stored.version < excluded.version"
            ),
            (
                integration,
                entity,
                keys,
                [newest[k][0].to_bytes() for k in keys],
                [newest[k][1] for k in keys],
            ),
        )

    @asynccontextmanager
    async def guard(
        self, integration: str, keys: Sequence[tuple[str, str]]
    ) -> AsyncIterator[VersionGuard]:
        """Lock ``(entity, key)`` pairs of ``integration`` until the block ends (see above)."""
        pairs = sorted(set(keys))
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(
                    "SELECT count(pg_advisory_xact_lock(h)) FROM"
                    " (SELECT DISTINCT hashtextextended("
                    "   %s || chr(31) || e || chr(31) || k, 0) AS h"
                    "  FROM unnest(%s::text[], %s::text[]) AS t(e, k) ORDER BY h) AS locks",
                    (
                        f"cdcsync.versions{chr(31)}{integration}",
                        [e for e, _ in pairs],
                        [k for _, k in pairs],
                    ),
                )
                held: dict[tuple[str, str], tuple[Version, bool]] = {}
                if pairs:
                    cur = await conn.execute(
                        self._q(
                            "SELECT entity, key, version, deleted FROM {schema}.versions"
                            " WHERE integration = %s AND (entity, key) IN"
                            " (SELECT * FROM unnest(%s::text[], %s::text[]))"
                        ),
                        (integration, [e for e, _ in pairs], [k for _, k in pairs]),
                    )
                    for entity, key, version, deleted in await cur.fetchall():
                        held[(str(entity), str(key))] = (Version.from_bytes(version), bool(deleted))
                guard = VersionGuard(self, conn, integration, held)
                yield guard
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._unavailable(exc) from None
        await self._wrote("versions", guard.moved)
        await self._wrote("identities", guard.identities_written)

    # ----------------------------------------------------------------- dead letters

    async def keep_dead_letter(
        self,
        integration: str,
        *,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        origin: Origin,
        key: str | None,
        error: str,
        attempts: int,
        payload: bytes | None,
        dlq_topic: str,
        dlq_partition: int | None,
        dlq_offset: int | None,
    ) -> None:
        """``record_dead_letter``, where a refusal for good is logged with the record's origin
        and dead-letter position instead of raised (the offset must still move on); a
        transient failure (``RetryableError``) is raised, so the worker restarts."""
        try:
            await self.record_dead_letter(
                integration,
                origin=origin,
                key=key,
                error=error,
                attempts=attempts,
                payload=payload,
                dlq_topic=dlq_topic,
                dlq_partition=dlq_partition,
                dlq_offset=dlq_offset,
            )
        except RetryableError:
            raise
        except Exception as exc:
            log.error(
                "%s: dead letter of %s not recorded (%s); on %s at %s/%s",
                integration,
                origin,
                storable(first_line(exc)),
                dlq_topic,
                dlq_partition,
                dlq_offset,
            )

    async def record_dead_letter(
        self,
        integration: str,
        *,
        origin: Origin,
        key: str | None,
        error: str,
        attempts: int,
        payload: bytes | None,
        dlq_topic: str,
        dlq_partition: int | None,
        dlq_offset: int | None,
    ) -> int:
        """Record a dead-lettered message; returns its id."""
        rows = await self._fetch(
            self._q(
                'INSERT INTO {schema}.dead_letters (integration, topic, partition, "offset",'
                " key, error, attempts, payload, dlq_topic, dlq_partition, dlq_offset)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
            ),
            (
                integration,
                origin.topic,
                origin.partition,
                origin.offset,
                key,
                error,
                attempts,
                payload,
                dlq_topic,
                dlq_partition,
                dlq_offset,
            ),
        )
        return int(rows[0][0])

    async def dead_letters(
        self,
        integration: str,
        *,
        include_replayed: bool = False,
        ids: Sequence[int] | None = None,
    ) -> list[DeadLetter]:
        """``integration``'s dead letters, oldest first; only pending ones unless told."""
        query = (
            'SELECT id, integration, topic, partition, "offset", key, error, attempts,'
            " payload, dlq_topic, dlq_partition, dlq_offset, created_at, replayed_at,"
            " replay_attempts"
            " FROM {schema}.dead_letters WHERE integration = %s"
            " AND (%s OR replayed_at IS NULL)"
            " AND (%s::bigint[] IS NULL OR id = ANY(%s::bigint[]))"
            " ORDER BY id"
        )
        id_list = None if ids is None else list(ids)
        rows = await self._fetch(self._q(query), (integration, include_replayed, id_list, id_list))
        return [
            DeadLetter(
                id=int(r[0]),
                integration=r[1],
                origin=Origin(topic=r[2], partition=int(r[3]), offset=int(r[4])),
                key=r[5],
                error=r[6],
                attempts=int(r[7]),
                payload=None if r[8] is None else bytes(r[8]),
                dlq_topic=r[9],
                dlq_partition=r[10],
                dlq_offset=r[11],
                created_at=r[12],
                replayed_at=r[13],
                replay_attempts=int(r[14]),
            )
            for r in rows
        ]

    async def mark_replayed(self, integration: str, ids: Sequence[int]) -> int:
        """Mark pending dead letters replayed; returns how many were pending."""
        if not ids:
            return 0
        return await self._run(
            self._q(
                "UPDATE {schema}.dead_letters SET replayed_at = now()"
                " WHERE integration = %s AND id = ANY(%s::bigint[]) AND replayed_at IS NULL"
            ),
            (integration, list(ids)),
        )

    async def record_replay_failure(
        self, integration: str, dead_letter: int, *, error: str
    ) -> None:
        """A replay of a pending dead letter failed again: keep it pending, with ``error``."""
        await self._run(
            self._q(
                "UPDATE {schema}.dead_letters SET error = %s,"
                " replay_attempts = replay_attempts + 1, last_replay_at = now()"
                " WHERE integration = %s AND id = %s AND replayed_at IS NULL"
            ),
            (error, integration, dead_letter),
        )

    async def dead_letter_counts(self) -> dict[str, tuple[int, int]]:
        """Per integration, ``(pending, replayed)`` dead letters."""
        rows = await self._fetch(
            self._q(
                "SELECT integration, count(*) FILTER (WHERE replayed_at IS NULL),"
                " count(*) FILTER (WHERE replayed_at IS NOT NULL)"
                " FROM {schema}.dead_letters GROUP BY integration"
            ),
            (),
        )
        return {str(name): (int(p), int(r)) for name, p, r in rows}

    # ----------------------------------------------------------------- snapshots

    async def save_snapshot_progress(
        self,
        table: str,
        *,
        last_key: dict[str, Any] | None,
        rows: int,
        done: bool,
        pipeline: str = "",
    ) -> None:
        """Record how far ``pipeline``'s snapshot of ``table`` has read (JSON-able key)."""
        await self._run(
            self._q(
                "INSERT INTO {schema}.snapshot_progress"
                " (pipeline, table_name, last_key, rows, done) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (pipeline, table_name) DO UPDATE SET last_key = excluded.last_key,"
                " rows = excluded.rows, done = excluded.done, updated_at = now()"
            ),
            (
                pipeline,
                table,
                None if last_key is None else Jsonb(last_key, dumps=_dumps),
                rows,
                done,
            ),
        )

    async def inbound_writers(self, xids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """``xid`` (32-bit, a row's ``xmin``) -> (integration, echo token) of the inbound
        change that transaction applied, for those of ``xids`` that applied one."""
        if not xids:
            return {}
        rows = await self._fetch(
            self._q(
                "SELECT DISTINCT ON (xid) xid, integration, coalesce(echo_token, 0)"
                " FROM {schema}.inbound_changes WHERE xid = ANY(%s)"
                " AND outcome IN ('applied', 'created') ORDER BY xid, applied_at DESC"
            ),
            (list(xids),),
        )
        return {int(x): (str(name), int(token)) for x, name, token in rows}

    async def snapshot_progresses(self) -> list[SnapshotProgress]:
        """The progress of every table ever snapshotted, by table name (every pipeline)."""
        rows = await self._fetch(
            self._q(
                "SELECT table_name, last_key, rows, done, updated_at"
                " FROM {schema}.snapshot_progress ORDER BY table_name, pipeline"
            ),
            (),
        )
        return [
            SnapshotProgress(
                table=name, last_key=last_key, rows=int(count), done=bool(done), updated_at=at
            )
            for name, last_key, count, done, at in rows
        ]

    async def snapshot_progress(self, table: str, *, pipeline: str = "") -> SnapshotProgress | None:
        """``pipeline``'s snapshot progress of ``table`` (else a row from before pipelines
        were recorded), or None if it never started."""
        rows = await self._fetch(
            self._q(
                "SELECT table_name, last_key, rows, done, updated_at"
                " FROM {schema}.snapshot_progress WHERE table_name = %s"
                " AND pipeline IN (%s, '') ORDER BY pipeline DESC LIMIT 1"
            ),
            (table, pipeline),
        )
        if not rows:
            return None
        name, last_key, count, done, updated_at = rows[0]
        return SnapshotProgress(
            table=name, last_key=last_key, rows=int(count), done=bool(done), updated_at=updated_at
        )


def pipeline_id(slot: str, topic_prefix: str) -> str:
    """The pipeline a snapshot belongs to: one capture's replication slot and topic prefix."""
    return f"{slot}/{topic_prefix}"


class VersionGuard:
    """Keys locked by ``StateStore.guard``: their stored versions, and saving new ones."""

    def __init__(
        self,
        store: StateStore,
        conn: psycopg.AsyncConnection[TupleRow],
        integration: str,
        held: dict[tuple[str, str], tuple[Version, bool]],
    ) -> None:
        self._store = store
        self._conn = conn
        self.integration = integration
        self.held = held
        self.moved = 0
        self.identities_written = 0

    def version(self, entity: str, key: str) -> Version | None:
        """The stored version of ``(entity, key)``, None if never applied."""
        found = self.held.get((entity, key))
        return None if found is None else found[0]

    async def save_versions(
        self, entity: str, *, items: Sequence[tuple[str, Version, bool]]
    ) -> None:
        """``StateStore.save_versions`` inside the guard's transaction."""
        statement = self._store._save_versions_statement(self.integration, entity, items)
        if statement is not None:
            cur = await self._conn.execute(*statement)
            self.moved += cur.rowcount

    async def record_identities(self, entity: str, *, items: Sequence[tuple[str, str]]) -> None:
        """``StateStore.record_identities`` inside the guard's transaction."""
        statement = self._store._identities_statement(self.integration, entity, items)
        if statement is not None:
            cur = await self._conn.execute(*statement)
            self.identities_written += cur.rowcount


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))
