"""The source database: checks, publication and slot set-up, catalog look-ups.

Everything here runs ordinary SQL on a normal (non-replication) connection,
before or beside the stream; the decoder never queries anything.

Invariants:
- A slot or publication is created only when missing and allowed by the
  config; nothing here ever drops one.
- Every failure names what is wrong in plain words (``SourceSetupError``):
  wal_level, REPLICATION privilege, unknown tables, a slot in use or of
  another plugin, no free slot. A connection the server refuses for good
  (authentication, unknown role or database) is ``SourceRefused``, never retried.
- Identifiers are always quoted with ``psycopg.sql``.
- The look-ups (``wal_level``, ``replication_role``, ``table_facts``,
  ``publication_tables``, ``slot_facts``) and the wording of what they reveal
  (``wal_level_problem``, ``replication_problem``, ``replica_identity_warning``,
  ``slot_mismatch``) only read; ``prepare``
  and ``cdcsync check`` (``cdc.ops.check.source``) share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.encoding.type_mapping import TYPE_CATALOG_SQL, PgType, pg_types_from_rows
from cdc.core.errors import SourceRefused, SourceSetupError, SourceUnavailable, first_line
from cdc.core.lsn import Lsn
from cdc.core.secrets import redact_dsn


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


@dataclass(frozen=True, slots=True)
class TableFacts:
    """A source table as the catalog describes it.

    ``relkind`` is pg_class's (``r`` table, ``p`` partitioned, ``v`` view...);
    ``replica_identity`` is ``d`` (default), ``n`` (nothing), ``f`` (full) or ``i`` (index).
    """

    relkind: str
    replica_identity: str
    has_primary_key: bool

    @property
    def is_table(self) -> bool:
        return self.relkind in ("r", "p")


@dataclass(frozen=True, slots=True)
class SlotFacts:
    """A replication slot as ``pg_replication_slots`` shows it.

    ``retained_bytes`` is the WAL the slot holds back (``pg_current_wal_lsn() -
    restart_lsn``); ``wal_status`` is ``reserved``, ``extended``, ``unreserved`` or ``lost``.
    """

    plugin: str | None
    slot_type: str
    database: str | None
    active_pid: int | None
    confirmed_flush: Lsn | None
    retained_bytes: int | None
    wal_status: str | None


# What PostgreSQL (or libpq) says when it refuses a connection for good. Matched in the
# text: libpq reports no SQLSTATE for a failed connection attempt.
_REFUSALS = (
    "authentication failed",  # password, ident, peer, PAM, LDAP...
    "no password supplied",
    "no pg_hba.conf entry",
    "does not exist",  # role "x" / database "x" does not exist
    "is not permitted to log in",
    "permission denied for database",
)


def refusal(exc: psycopg.OperationalError) -> str | None:
    """The server's reason when ``exc`` refuses a connection for good, else None.

    Wrong credentials, an unknown role or database, a role without LOGIN or CONNECT:
    retrying cannot help. Anything else (refused port, timeout, a server starting or
    shutting down) may pass and is not a refusal.
    """
    text = str(exc)
    if not any(marker in text for marker in _REFUSALS):
        return None
    reason = text.rsplit("failed: ", 1)[-1].strip()
    return reason.removeprefix("FATAL:").strip().splitlines()[0]


async def connect(dsn: str) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """A connection to ``dsn``: ``SourceRefused`` when refused for good (see ``refusal``),
    ``SourceUnavailable`` when it may succeed later."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        reason = refusal(exc)
        if reason is not None:
            raise SourceRefused(f"{redact_dsn(dsn)} refuses the connection: {reason}") from exc
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
            problem = wal_level_problem(await wal_level(conn))
            if problem is None:
                problem = replication_problem(*await replication_role(conn))
            if problem is not None:
                raise SourceSetupError(problem)
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


async def wal_level(conn: psycopg.AsyncConnection[Any]) -> str:
    return str(await _one(conn, "SHOW wal_level"))


def wal_level_problem(level: str) -> str | None:
    if level == "logical":
        return None
    return (
        f"wal_level is {level!r}: set wal_level = logical in postgresql.conf and restart PostgreSQL"
    )


def replication_problem(user: str, can_replicate: bool) -> str | None:
    if can_replicate:
        return None
    return f"role {user!r} lacks the REPLICATION privilege: ALTER ROLE {user} WITH REPLICATION"


async def replication_role(conn: psycopg.AsyncConnection[Any]) -> tuple[str, bool]:
    """The current role's name and whether it may replicate (REPLICATION or superuser)."""
    cur = await conn.execute(
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), bool(row[1])


async def table_facts(conn: psycopg.AsyncConnection[Any], table: TableName) -> TableFacts | None:
    """What the catalog says of ``table``, or None when it does not exist."""
    cur = await conn.execute(
        "SELECT c.relkind, c.relreplident,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.name),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    kind, ident, has_pk = row
    return TableFacts(relkind=str(kind), replica_identity=str(ident), has_primary_key=bool(has_pk))


def replica_identity_warning(table: TableName, facts: TableFacts) -> str | None:
    """Why ``table``'s replica identity loses data, or None when it does not (FULL is fine)."""
    if facts.replica_identity == "n":
        return f"{table} has REPLICA IDENTITY NOTHING: updates and deletes cannot be published"
    if facts.replica_identity == "d" and not facts.has_primary_key:
        return (
            f"{table} has no primary key and REPLICA IDENTITY DEFAULT: updates and deletes "
            "will fail on the source; add a primary key or set REPLICA IDENTITY FULL"
        )
    return None


async def publication_tables(
    conn: psycopg.AsyncConnection[Any], publication: str
) -> set[TableName] | None:
    """The tables ``publication`` holds, or None when it does not exist."""
    exists = await _one(
        conn, "SELECT count(*) FROM pg_publication WHERE pubname = %s", (publication,)
    )
    if not exists:
        return None
    cur = await conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,)
    )
    return {TableName(s, n) for s, n in await cur.fetchall()}


async def slot_facts(conn: psycopg.AsyncConnection[Any], slot: str) -> SlotFacts | None:
    """The slot named ``slot``, or None when there is none."""
    cur = await conn.execute(
        "SELECT plugin, slot_type, database, active_pid, confirmed_flush_lsn::text,"
        " (pg_current_wal_lsn() - restart_lsn)::bigint, wal_status"
        " FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    plugin, slot_type, database, active_pid, confirmed, retained, wal_status = row
    return SlotFacts(
        plugin=plugin,
        slot_type=str(slot_type),
        database=database,
        active_pid=active_pid,
        confirmed_flush=Lsn.parse(confirmed) if confirmed else None,
        retained_bytes=None if retained is None else int(retained),
        wal_status=wal_status,
    )


def slot_mismatch(slot: str, facts: SlotFacts, *, database: str) -> str | None:
    """Why capture cannot use the existing ``slot`` (type, plugin, database), or None."""
    if facts.slot_type != "logical" or facts.plugin != "pgoutput":
        return (
            f"replication slot {slot!r} exists but is a {facts.slot_type} slot of plugin "
            f"{facts.plugin!r}; cdcsync needs a logical pgoutput slot"
        )
    if facts.database != database:
        return f"replication slot {slot!r} belongs to database {facts.database!r}, not {database!r}"
    return None


async def _check_tables(
    conn: psycopg.AsyncConnection[Any], names: list[TableName], report: SourceReport
) -> None:
    for t in names:
        facts = await table_facts(conn, t)
        if facts is None:
            raise SourceSetupError(f"unknown table {t}: it does not exist in the source database")
        if not facts.is_table:
            raise SourceSetupError(f"{t} is not a table (relkind {facts.relkind!r})")
        warning = replica_identity_warning(t, facts)
        if warning is not None:
            report.warnings.append(warning)


async def _ensure_publication(
    conn: psycopg.AsyncConnection[Any],
    publication: str,
    names: list[TableName],
    create: bool,
    report: SourceReport,
) -> None:
    present = await publication_tables(conn, publication)
    if present is None:
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
    facts = await slot_facts(conn, slot)
    if facts is not None:
        mismatch = slot_mismatch(slot, facts, database=report.database)
        if mismatch is not None:
            raise SourceSetupError(mismatch)
        if facts.active_pid is not None:
            raise SourceSetupError(
                f"replication slot {slot!r} is in use by another process (pid {facts.active_pid})"
            )
        report.slot_confirmed_flush = facts.confirmed_flush
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
