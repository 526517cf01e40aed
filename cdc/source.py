"""The source database: checks, publication and slot set-up, catalog look-ups.

Everything here runs ordinary SQL on a normal (non-replication) connection,
before or beside the stream; the decoder never queries anything.

Invariants:
- A slot or publication is created only when missing and allowed by the
  config; nothing here ever drops one.
- Every failure names what is wrong in plain words (``SourceSetupError``):
  wal_level, REPLICATION privilege, unknown tables, a slot in use or of
  another plugin, no free slot.
- Identifiers are always quoted with ``psycopg.sql``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import SourceSetupError, SourceUnavailable, first_line
from cdc.lsn import Lsn
from cdc.secrets import redact_dsn
from cdc.types import TYPE_CATALOG_SQL, PgType, pg_types_from_rows


@dataclass(frozen=True, slots=True)
class TableName:
    schema: str
    name: str

    @classmethod
    def parse(cls, text: str) -> TableName:
        schema, sep, name = text.partition(".")
        if not sep:
            schema, name = "public", text
        if not schema or not name:
            raise SourceSetupError(f"table {text!r} is not schema.table")
        return cls(schema, name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass
class SourceReport:
    """What ``prepare`` found and did."""

    database: str = ""
    created_publication: bool = False
    added_tables: list[str] = field(default_factory=list)
    created_slot: bool = False
    slot_confirmed_flush: Lsn | None = None
    warnings: list[str] = field(default_factory=list)


async def connect(dsn: str) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"cannot connect to {redact_dsn(dsn)}: {first_line(exc)}") from exc


async def prepare(
    dsn: str,
    *,
    slot: str,
    publication: str,
    tables: list[str],
    create_slot: bool,
    create_publication: bool,
) -> SourceReport:
    """Check the database and make sure the publication and slot exist."""
    report = SourceReport()
    conn = await connect(dsn)
    try:
        async with conn:
            report.database = str(await _one(conn, "SELECT current_database()"))
            wal_level = await _one(conn, "SHOW wal_level")
            if wal_level != "logical":
                raise SourceSetupError(
                    f"wal_level is {wal_level!r}: set wal_level = logical in postgresql.conf "
                    "and restart PostgreSQL"
                )
            can_replicate = await _one(
                conn, "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
            )
            if not can_replicate:
                user = await _one(conn, "SELECT current_user")
                raise SourceSetupError(
                    f"role {user!r} lacks the REPLICATION privilege: "
                    f"ALTER ROLE {user} WITH REPLICATION"
                )
            names = [TableName.parse(t) for t in tables]
            await _check_tables(conn, names, report)
            await _ensure_publication(conn, publication, names, create_publication, report)
            await _ensure_slot(conn, slot, create_slot, report)
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"lost connection to the source: {first_line(exc)}") from exc
    return report


async def _one(conn: psycopg.AsyncConnection[Any], query: str, params: Any = None) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else row[0]


async def _check_tables(
    conn: psycopg.AsyncConnection[Any], names: list[TableName], report: SourceReport
) -> None:
    for t in names:
        cur = await conn.execute(
            "SELECT c.relreplident, c.relkind,"
            " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s",
            (t.schema, t.name),
        )
        row = await cur.fetchone()
        if row is None:
            raise SourceSetupError(f"unknown table {t}: it does not exist in the source database")
        ident, kind, has_pk = row
        if kind not in ("r", "p"):
            raise SourceSetupError(f"{t} is not a table (relkind {kind!r})")
        if ident == "n":
            report.warnings.append(
                f"{t} has REPLICA IDENTITY NOTHING: updates and deletes cannot be published"
            )
        elif ident == "d" and not has_pk:
            report.warnings.append(
                f"{t} has no primary key and REPLICA IDENTITY DEFAULT: updates and deletes "
                "will fail on the source; add a primary key or set REPLICA IDENTITY FULL"
            )


async def _ensure_publication(
    conn: psycopg.AsyncConnection[Any],
    publication: str,
    names: list[TableName],
    create: bool,
    report: SourceReport,
) -> None:
    exists = await _one(
        conn, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (publication,)
    )
    if not exists:
        if not create:
            raise SourceSetupError(
                f"publication {publication!r} does not exist and source.create_publication is false"
            )
        if not names:
            raise SourceSetupError("source.tables is empty: nothing to publish")
        await conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(t.ident() for t in names)
            )
        )
        report.created_publication = True
        return
    cur = await conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    )
    present = {TableName(s, n) for s, n in await cur.fetchall()}
    missing = [t for t in names if t not in present]
    if not missing:
        return
    if not create:
        raise SourceSetupError(
            f"publication {publication!r} lacks {', '.join(map(str, missing))} and "
            "source.create_publication is false"
        )
    await conn.execute(
        sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(publication), sql.SQL(", ").join(t.ident() for t in missing)
        )
    )
    report.added_tables = [str(t) for t in missing]


async def _ensure_slot(
    conn: psycopg.AsyncConnection[Any], slot: str, create: bool, report: SourceReport
) -> None:
    cur = await conn.execute(
        "SELECT plugin, slot_type, database, active_pid, confirmed_flush_lsn::text"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    row = await cur.fetchone()
    if row is not None:
        plugin, slot_type, database, active_pid, confirmed = row
        if slot_type != "logical" or plugin != "pgoutput":
            raise SourceSetupError(
                f"replication slot {slot!r} exists but is a {slot_type} slot of plugin "
                f"{plugin!r}; cdcsync needs a logical pgoutput slot"
            )
        if database != report.database:
            raise SourceSetupError(
                f"replication slot {slot!r} belongs to database {database!r}, "
                f"not {report.database!r}"
            )
        if active_pid is not None:
            raise SourceSetupError(
                f"replication slot {slot!r} is in use by another process (pid {active_pid})"
            )
        report.slot_confirmed_flush = Lsn.parse(confirmed) if confirmed else None
        return
    if not create:
        raise SourceSetupError(
            f"replication slot {slot!r} does not exist and source.create_slot is false"
        )
    try:
        cur = await conn.execute(
            "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
        )
    except psycopg.errors.ConfigurationLimitExceeded as exc:
        raise SourceSetupError(
            f"cannot create replication slot {slot!r}: all slots are in use "
            "(raise max_replication_slots or drop an unused slot)"
        ) from exc
    except psycopg.errors.DuplicateObject:
        return
    row = await cur.fetchone()
    report.created_slot = True
    report.slot_confirmed_flush = Lsn.parse(row[0]) if row else None


async def load_types(conn: psycopg.AsyncConnection[Any], oids: list[int]) -> dict[int, PgType]:
    """Catalog facts for the given type OIDs (and their element/base types)."""
    cur = await conn.execute(TYPE_CATALOG_SQL, (oids,))
    return pg_types_from_rows(await cur.fetchall())


async def primary_key(
    conn: psycopg.AsyncConnection[Any], namespace: str, table: str
) -> tuple[str, ...]:
    """The primary key's column names of ``namespace.table``, in key order (empty if none)."""
    cur = await conn.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE i.indisprimary AND n.nspname = %s AND c.relname = %s ORDER BY k.ord",
        (namespace, table),
    )
    return tuple(row[0] for row in await cur.fetchall())
