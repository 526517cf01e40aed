"""The PostgreSQL sink: entities written into a table with version-guarded upserts.

Layout of the target (``config.table``, "schema.table"):

- the target table holds the live entities only: one column per entity field, plus
  ``_cdc_key text PRIMARY KEY`` (the entity's external key) and ``_cdc_version bytea NOT
  NULL`` (``Version.to_bytes()``, whose bytewise order is version order, so PostgreSQL
  compares versions exactly as Python does);
- deletes are remembered in the side table ``{table}__tombstones(_cdc_key text PRIMARY KEY,
  _cdc_version bytea NOT NULL)`` in the same schema, so the target table compares equal to
  the source while an older upsert arriving late still cannot resurrect a deleted row.
  The side table is created if missing (the sink's role needs CREATE on the schema);
  with ``create_table`` the target table (and its schema) is created too, from the first
  upsert's pydantic model, and columns for new model fields are added as they appear.

``apply(ops)`` runs in ONE transaction: it takes a transaction-scoped advisory lock per key
(so concurrent writers of the same keys serialise), reads the versions held for the batch's
keys (live row or tombstone), decides every operation's outcome in order in Python exactly
as if the operations were applied one by one, then writes each key's final state with a few
batched statements (row deletes, tombstone upserts and deletes, and per set of columns one
upsert). The statements keep their own version guards (``WHERE target._cdc_version <
EXCLUDED._cdc_version``), so a row never moves back. How the upserts travel depends on size:

- a batch of fewer than ``COPY_MIN_ROWS`` operations is pipelined (two round trips: BEGIN,
  locks and the version read; then the writes and COMMIT), its rows sent per set of columns
  as one ``INSERT ... SELECT * FROM unnest(arrays) ON CONFLICT DO UPDATE`` (a single row, or
  columns whose type has no array type or is one, go as ``VALUES`` rows instead);
- in a larger batch (a backlog), a set of columns with at least ``COPY_MIN_ROWS`` rows is
  written with ``COPY`` into the connection's staging table (``pg_temp._cdc_stage``,
  ``ON COMMIT DELETE ROWS``, made from the target's columns, without its constraints, and
  made again when the target gains columns), then one ``INSERT ... SELECT FROM`` the stage
  with the same guard, and one guarded delete of those keys' older tombstones. COPY cannot
  be pipelined: these batches take a few more round trips and far less CPU per row. Values
  travel in PostgreSQL's text form and are read by the column's type, so a set of columns
  goes through COPY only if every value would land exactly as a statement's typed parameter
  lands after PostgreSQL's cast (a user's table may pair, say, a float with a numeric
  column or a timestamp with a text one: those rows go by statements).

- Upsert: applied only if its version is newer than both the live row's and the tombstone's;
  it sets only the fields present (fields in ``unavailable`` keep the row's value), and it
  removes an older tombstone. After a delete in the same batch the row starts afresh.
- Delete: applied only if newer; removes the row and moves the tombstone forward.
- Equal version: ``DUPLICATE``; older: ``OLDER``; nothing is written for either.

Values: the model's Python values (``model_dump()`` without ``mode="json"``) are sent as
query parameters so psycopg adapts them (int, str, Decimal, float, bool, datetime, date,
time, timedelta, bytes, UUID); dicts and lists are sent as ``jsonb`` (their JSON-mode
form); anything else goes in its JSON-mode form and PostgreSQL casts it to the column's
type.

Errors: a lost connection, a server shutdown or any other ``OperationalError`` raises
``SinkUnavailable`` for the call (the connection is dropped and re-opened on the next
``apply``). A data or constraint error makes the batch be retried op by op, each in a
savepoint, so only the offending operation gets a ``SinkRejected``. An operation carrying
a field the table has no column for is rejected with a message naming the column. A missing
target table (without ``create_table``) is a ``ConfigError``. Every identifier is quoted
with ``psycopg.sql.Identifier``; the DSN's password never appears in errors or logs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import logging
import types
import typing
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from cdc.config import PostgresSinkConfig
from cdc.core.errors import ConfigError, SinkRejected, SinkUnavailable, first_line
from cdc.core.secrets import redact_dsn
from cdc.sync.sinks.base import Outcome, Result
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version

__all__ = [
    "COPY_MIN_ROWS",
    "KEY_COLUMN",
    "TOMBSTONE_SUFFIX",
    "VERSION_COLUMN",
    "PostgresSink",
    "sql_type",
]

log = logging.getLogger(__name__)

KEY_COLUMN: Final = "_cdc_key"
VERSION_COLUMN: Final = "_cdc_version"
TOMBSTONE_SUFFIX: Final = "__tombstones"
_RESERVED: Final = frozenset({KEY_COLUMN, VERSION_COLUMN})
_CONNECT_TIMEOUT_S: Final = 5
COPY_MIN_ROWS: Final = 200
"""Rows of one set of columns from which a batch's upserts go through COPY (module docstring)."""
_STAGE: Final = sql.Identifier("pg_temp", "_cdc_stage")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

# Scalars psycopg adapts itself; other values are sent in their JSON-mode form.
_NATIVE: Final = (
    bool,
    int,
    float,
    str,
    decimal.Decimal,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    bytes,
    uuid.UUID,
)


def sql_type(annotation: object) -> str:
    """The column type for a pydantic field annotation (``Optional``/``Annotated`` unwrapped).

    int -> bigint, str -> text, Decimal -> numeric, float -> double precision, bool ->
    boolean, datetime -> timestamptz, date -> date, time -> time, timedelta -> interval,
    bytes -> bytea, UUID -> uuid, dict/list/tuple/set/nested models -> jsonb, anything else -> text.
    """
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if origin in (list, dict, tuple, set, frozenset):
        return "jsonb"
    if not isinstance(annotation, type):
        return "text"
    if issubclass(annotation, enum.Enum):
        return "text"
    for kind, name in (
        (bool, "boolean"),
        (int, "bigint"),
        (decimal.Decimal, "numeric"),
        (float, "double precision"),
        (str, "text"),
        (dt.datetime, "timestamptz"),
        (dt.date, "date"),
        (dt.time, "time"),
        (dt.timedelta, "interval"),
        (bytes, "bytea"),
        (uuid.UUID, "uuid"),
        (dict, "jsonb"),
        (list, "jsonb"),
        (tuple, "jsonb"),
        (BaseModel, "jsonb"),
    ):
        if issubclass(annotation, kind):
            return name
    return "text"


def _unwrap(annotation: object) -> object:
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


# COPY sends a value as psycopg's text for it, read by the column's input function; a
# statement sends it as a typed parameter that PostgreSQL then casts to the column's type.
# Both end equal for str (an untyped parameter), for int into a number or text column, and
# for the other values below only into a column of exactly their own type. A set of rows
# with any other pairing is written by statements (``_copies_like_statements``).
_NUMBER_OR_TEXT: Final = frozenset(
    {"smallint", "integer", "bigint", "numeric", "text", "character varying", "character"}
)
_COPY_EXACT: Final[dict[object, frozenset[str]]] = {
    int: _NUMBER_OR_TEXT,
    bool: frozenset({"boolean"}),
    float: frozenset({"double precision"}),
    decimal.Decimal: frozenset({"numeric"}),
    (dt.datetime, True): frozenset({"timestamp with time zone"}),
    (dt.datetime, False): frozenset({"timestamp without time zone"}),
    dt.date: frozenset({"date"}),
    (dt.time, True): frozenset({"time with time zone"}),
    (dt.time, False): frozenset({"time without time zone"}),
    dt.timedelta: frozenset({"interval"}),
    bytes: frozenset({"bytea"}),
    uuid.UUID: frozenset({"uuid"}),
    Jsonb: frozenset({"jsonb"}),
}


def _copies_like_statements(values: Sequence[object], column_type: str) -> bool:
    """Whether COPY writes ``values`` into a column of ``column_type`` (its
    ``format_type``) exactly as the statements would (see ``_COPY_EXACT``)."""
    for kind in set(map(type, values)):
        if kind is str or kind is type(None):
            continue
        if kind is dt.datetime or kind is dt.time:
            kinds: set[object] = {(kind, v.tzinfo is not None) for v in values if type(v) is kind}
        else:
            kinds = {kind}
        if any(column_type not in _COPY_EXACT.get(k, ()) for k in kinds):
            return False
    return True


def _row_values(op: EntityUpsert) -> dict[str, object]:
    """The column values of an upsert: present fields only, adapted for psycopg."""
    python = op.model.model_dump(exclude=set(op.unavailable) or None)
    others = {
        name
        for name, value in python.items()
        if not (value is None or (isinstance(value, _NATIVE) and not isinstance(value, enum.Enum)))
    }
    if not others:
        return python
    # The JSON-mode form of those fields only (bytes that are not UTF-8 have none).
    json_ready = op.model.model_dump(mode="json", include=others)
    for name in others:
        value = python[name]
        if isinstance(value, (dict, list, tuple, set, frozenset)):
            python[name] = Jsonb(json_ready[name])
        else:
            python[name] = json_ready[name]
    return python


class _Final(enum.Enum):
    LIVE = "live"
    TOMBSTONE = "tombstone"


@dataclass(slots=True)
class _KeyPlan:
    """What one batch does to one key, decided op by op from the held version."""

    held: Version | None
    final: _Final | None = None
    delete_version: Version | None = None
    upsert_version: Version | None = None
    fields: dict[str, object] = field(default_factory=dict)


class PostgresSink:
    """A PostgreSQL table kept in sync with version-guarded upserts. See the module docstring."""

    def __init__(self, name: str, config: PostgresSinkConfig, *, integration: str) -> None:
        self.name = name
        self.integration = integration
        self._config = config
        schema, _, table = config.table.partition(".")
        self._schema = schema
        self._table_name = table
        self._table = sql.Identifier(schema, table)
        self._tombstones = sql.Identifier(schema, table + TOMBSTONE_SUFFIX)
        self._lock_seed = zlib.crc32(config.table.encode())
        self._conn: Connection | None = None
        self._columns: set[str] | None = None  # the target's columns, None until known
        # Per column, the SQL of its array type when rows can be sent as arrays (unnest).
        self._array_types: dict[str, str] = {}
        # Per column, its type without modifiers (``format_type(atttypid, NULL)``).
        self._column_types: dict[str, str] = {}
        # The columns of this connection's staging table for COPY, None until it is made.
        self._stage: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"PostgresSink({self.name!r}, table={self._config.table!r})"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect, check (or prepare) the target table and create the tombstone table."""
        await self._connection()

    async def probe(self) -> None:
        conn = await self._connection()
        try:
            await conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise await self._unavailable(exc) from None

    async def holding(self, entity: str, keys: Sequence[str]) -> set[str]:
        if not keys:
            return set()
        conn = await self._connection()
        if not self._columns:
            return set()  # no table yet: nothing held
        try:
            cur = await conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE {} = ANY(%s)").format(
                    sql.Identifier(KEY_COLUMN), self._table, sql.Identifier(KEY_COLUMN)
                ),
                (list(keys),),
            )
            return {str(row[0]) for row in await cur.fetchall()}
        except psycopg.errors.UndefinedTable:
            return set()
        except psycopg.Error as exc:
            raise await self._unavailable(exc) from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # ---------------------------------------------------------------------- apply

    async def apply(self, ops: Sequence[EntityOp]) -> list[Result]:
        """Apply ``ops`` in one transaction; one result per operation, in order."""
        if not ops:
            return []
        conn = await self._connection()
        results: list[Result | None] = [None] * len(ops)
        try:
            try:
                rejections = await self._check_columns(conn, ops)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.Error as exc:  # creating the table or a column was refused
                raise ConfigError(
                    f"postgres sink {self.name}: cannot prepare {self._config.table}:"
                    f" {first_line(exc)}"
                ) from None
            for index, rejection in rejections.items():
                results[index] = rejection
            todo = [i for i, r in enumerate(results) if r is None]
            try:
                if len(todo) >= COPY_MIN_ROWS:
                    # Large: COPY cannot be pipelined (module docstring).
                    try:
                        async with conn.transaction():
                            done = await self._apply_batch(conn, [ops[i] for i in todo], bulk=True)
                    except BaseException:
                        self._stage = None  # if this transaction made it, it is rolled back
                        raise
                else:
                    # Pipelined: BEGIN, the locks and the version read travel together, then
                    # the writes and COMMIT; two round trips per batch instead of six.
                    async with conn.pipeline(), conn.transaction():
                        done = await self._apply_batch(conn, [ops[i] for i in todo])
                for i, outcome in zip(todo, done, strict=True):
                    results[i] = outcome
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except psycopg.errors.UndefinedTable as exc:
                raise ConfigError(
                    f"postgres sink {self.name}: table {self._config.table} is missing"
                    f" ({first_line(exc)})"
                ) from None
            except psycopg.Error:
                # Some operation is bad: redo them one by one so that only it is refused.
                async with conn.transaction():
                    for i in todo:
                        results[i] = await self._apply_isolated(conn, ops[i])
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise await self._unavailable(exc) from None
        return [r for r in results if r is not None]

    async def _apply_isolated(self, conn: Connection, op: EntityOp) -> Result:
        try:
            async with conn.transaction():  # a savepoint inside the outer transaction
                return (await self._apply_batch(conn, [op]))[0]
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            log.warning("postgres sink %s rejected %s: %s", self.name, op.key, first_line(exc))
            return SinkRejected(
                f"postgres sink {self.name}: {type(op).__name__} of {op.entity} {op.key!r}"
                f" refused: {first_line(exc)}"
            )

    async def _apply_batch(
        self, conn: Connection, ops: Sequence[EntityOp], *, bulk: bool = False
    ) -> list[Result]:
        """Decide and write ``ops`` inside the caller's transaction (see module docstring).

        ``bulk``: the connection is not in pipeline mode, so large sets of rows may go
        through COPY; the locks and the version read are pipelined here.
        """
        if not ops:
            return []
        keys = sorted({op.key for op in ops})
        plans = {key: _KeyPlan(held=None) for key in keys}
        if bulk:
            async with conn.pipeline():
                held_rows = await self._lock_and_read(conn, keys)
        else:
            held_rows = await self._lock_and_read(conn, keys)
        for key, raw in held_rows:
            held = Version.from_bytes(raw)
            plan = plans[key]
            if plan.held is None or held > plan.held:
                plan.held = held

        results: list[Result] = [self._decide(plans[op.key], op) for op in ops]
        await self._write(conn, plans, bulk=bulk)
        return results

    async def _lock_and_read(self, conn: Connection, keys: list[str]) -> list[tuple[Any, ...]]:
        """Lock ``keys`` (in hash order) and read the versions held for them."""
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(h)) FROM"
            " (SELECT DISTINCT hashtextextended(k, %s) AS h FROM unnest(%s::text[]) AS k"
            "  ORDER BY h) AS locks",
            (self._lock_seed, keys),
        )
        # With create_table, deletes may come before the first upsert created the table.
        held_in = [self._tombstones] if self._columns is None else [self._table, self._tombstones]
        cursor = await conn.execute(
            sql.SQL(" UNION ALL ").join(
                sql.SQL("SELECT {key}, {version} FROM {table} WHERE {key} = ANY(%(keys)s)").format(
                    key=sql.Identifier(KEY_COLUMN),
                    version=sql.Identifier(VERSION_COLUMN),
                    table=table,
                )
                for table in held_in
            ),
            {"keys": keys},
        )
        return await cursor.fetchall()

    @staticmethod
    def _decide(plan: _KeyPlan, op: EntityOp) -> Outcome:
        if plan.held is not None:
            if op.version < plan.held:
                return Outcome.OLDER
            if op.version == plan.held:
                return Outcome.DUPLICATE
        plan.held = op.version
        if isinstance(op, EntityDelete):
            plan.final = _Final.TOMBSTONE
            plan.delete_version = op.version
            plan.fields = {}
        else:
            values = _row_values(op)
            if plan.final is _Final.LIVE:
                plan.fields = {**plan.fields, **values}
            else:
                plan.fields = values
            plan.final = _Final.LIVE
            plan.upsert_version = op.version
        return Outcome.APPLIED

    async def _write(
        self, conn: Connection, plans: dict[str, _KeyPlan], *, bulk: bool = False
    ) -> None:
        key_col = sql.Identifier(KEY_COLUMN)
        version_col = sql.Identifier(VERSION_COLUMN)
        guarded_delete = sql.SQL(
            "DELETE FROM {table} AS target USING unnest(%s::text[], %s::bytea[]) AS d(k, v)"
            " WHERE target.{key} = d.k AND target.{version} < d.v"
        )
        row_deletes = [(k, p.delete_version) for k, p in plans.items() if p.delete_version]
        if row_deletes and self._columns is not None:
            await conn.execute(
                guarded_delete.format(table=self._table, key=key_col, version=version_col),
                _unzip(row_deletes),
            )
        tombstones = [(k, p.held) for k, p in plans.items() if p.final is _Final.TOMBSTONE]
        if tombstones:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {tomb} AS target ({key}, {version})"
                    " SELECT * FROM unnest(%s::text[], %s::bytea[])"
                    " ON CONFLICT ({key}) DO UPDATE SET {version} = EXCLUDED.{version}"
                    " WHERE target.{version} < EXCLUDED.{version}"
                ).format(tomb=self._tombstones, key=key_col, version=version_col),
                _unzip(tombstones),
            )
        live = {k: p for k, p in plans.items() if p.final is _Final.LIVE}
        if not live:
            return
        groups: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
        shapes: dict[str, tuple[str, ...]] = {}  # each key's set of columns
        for key, plan in live.items():
            assert plan.upsert_version is not None
            columns = shapes[key] = tuple(sorted(plan.fields))
            row = (key, plan.upsert_version.to_bytes(), *(plan.fields[c] for c in columns))
            groups.setdefault(columns, []).append(row)
        copied = {
            columns: rows
            for columns, rows in groups.items()
            if bulk and len(rows) >= COPY_MIN_ROWS and self._copyable(columns, rows)
        }
        for staged, (columns, rows) in enumerate(copied.items()):
            await self._copy_upsert(conn, columns, rows, again=staged > 0)
        rest = [(k, p.upsert_version) for k, p in live.items() if shapes[k] not in copied]
        if rest:
            await conn.execute(
                guarded_delete.format(table=self._tombstones, key=key_col, version=version_col),
                _unzip(rest),
            )
        async with conn.cursor() as cur:
            for columns, rows in groups.items():
                if columns in copied:
                    continue
                arrays = [self._array_types.get(c) for c in columns]
                if len(rows) > 1 and all(arrays):
                    # One statement for the group: a column of values per parameter.
                    types = ["text[]", "bytea[]", *(a for a in arrays if a)]
                    await cur.execute(
                        self._upsert_statement(columns, unnest=types),
                        [list(values) for values in zip(*rows, strict=True)],
                    )
                else:
                    await cur.executemany(self._upsert_statement(columns), rows)

    def _copyable(self, columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> bool:
        """Whether COPY writes these rows exactly as the statements would, column by column."""
        types = self._column_types
        values = zip(*rows, strict=True)
        next(values), next(values)  # the key and the version: text and bytea
        return all(
            _copies_like_statements(column, types.get(name, ""))
            for name, column in zip(columns, values, strict=True)
        )

    async def _copy_upsert(
        self,
        conn: Connection,
        columns: tuple[str, ...],
        rows: list[tuple[object, ...]],
        *,
        again: bool,
    ) -> None:
        """``rows`` (key, version bytes, then ``columns``) through the staging table: COPY,
        then the guarded tombstone delete and upsert from it. ``again``: the stage holds an
        earlier set of columns' rows in this transaction, removed first."""
        if self._stage is None or not self._stage.issuperset(columns):
            await self._create_stage(conn)
        elif again:
            await conn.execute(sql.SQL("DELETE FROM {}").format(_STAGE))
        names = sql.SQL(", ").join(
            sql.Identifier(c) for c in (KEY_COLUMN, VERSION_COLUMN, *columns)
        )
        copying = sql.SQL("COPY {} ({}) FROM STDIN").format(_STAGE, names)
        async with conn.cursor() as cur, cur.copy(copying) as copy:
            for row in rows:
                await copy.write_row(row)
        async with conn.pipeline(), conn.cursor() as cur:  # both in one round trip
            await cur.execute(
                sql.SQL(
                    "DELETE FROM {tomb} AS target USING {stage} AS s"
                    " WHERE target.{key} = s.{key} AND target.{version} < s.{version}"
                ).format(
                    tomb=self._tombstones,
                    stage=_STAGE,
                    key=sql.Identifier(KEY_COLUMN),
                    version=sql.Identifier(VERSION_COLUMN),
                )
            )
            await cur.execute(self._upsert_statement(columns, stage=True))

    async def _create_stage(self, conn: Connection) -> None:
        """(Re)make this connection's staging table from the target's current columns."""
        self._stage = None
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(_STAGE))
        await conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT * FROM {} WITH NO DATA"
            ).format(_STAGE, self._table)
        )
        self._stage = frozenset(self._columns or ())

    def _upsert_statement(
        self, columns: tuple[str, ...], *, unnest: list[str] | None = None, stage: bool = False
    ) -> sql.Composed:
        """The guarded upsert of one row (``VALUES``), or of many (``unnest`` of arrays of
        the given types), or of the staging table's rows (``stage``)."""
        names = [sql.Identifier(c) for c in (KEY_COLUMN, VERSION_COLUMN, *columns)]
        updates = [
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in (VERSION_COLUMN, *columns)
        ]
        if stage:
            rows = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(names), _STAGE)
        elif unnest is None:
            rows = sql.SQL("VALUES ({})").format(sql.SQL(", ").join(sql.Placeholder() * len(names)))
        else:
            rows = sql.SQL("SELECT * FROM unnest({})").format(
                sql.SQL(", ").join(sql.SQL("%s::" + a.replace("%", "%%")) for a in unnest)
            )
        return sql.SQL(
            "INSERT INTO {table} AS target ({names}) {rows}"
            " ON CONFLICT ({key}) DO UPDATE SET {updates}"
            " WHERE target.{version} < EXCLUDED.{version}"
        ).format(
            table=self._table,
            names=sql.SQL(", ").join(names),
            rows=rows,
            key=sql.Identifier(KEY_COLUMN),
            updates=sql.SQL(", ").join(updates),
            version=sql.Identifier(VERSION_COLUMN),
        )

    # ----------------------------------------------------------- table and columns

    async def _check_columns(
        self, conn: Connection, ops: Sequence[EntityOp]
    ) -> dict[int, SinkRejected]:
        """Create the table or columns if allowed; reject ops with fields it lacks."""
        upserts = [(i, op) for i, op in enumerate(ops) if isinstance(op, EntityUpsert)]
        if not upserts:
            return {}
        if self._columns is None:
            if not self._config.create_table:
                raise ConfigError(
                    f"postgres sink {self.name}: table {self._config.table} is missing"
                )
            await self._create_table(conn, upserts[0][1].model)
        assert self._columns is not None
        rejected: dict[int, SinkRejected] = {}
        refreshed = False
        present_fields: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}
        for index, op in upserts:
            shape = (type(op.model), frozenset(op.unavailable))  # a set given as one, too
            present = present_fields.get(shape)
            if present is None:
                present = present_fields[shape] = set(shape[0].model_fields) - set(op.unavailable)
            reserved = sorted(present & _RESERVED)
            if reserved:
                rejected[index] = SinkRejected(
                    f"postgres sink {self.name}: field {reserved[0]!r} of {op.entity} is a name"
                    " the sink reserves for itself"
                )
                continue
            missing = present - self._columns
            if missing and not refreshed:
                self._columns = await self._read_columns(conn) or set()
                refreshed = True
                missing = present - self._columns
            if missing and self._config.create_table:
                await self._add_columns(conn, op.model, sorted(missing))
                missing = present - self._columns
            if missing:
                rejected[index] = SinkRejected(
                    f"postgres sink {self.name}: table {self._config.table} has no column"
                    f" {sorted(missing)[0]!r} (field of {op.entity})"
                )
        return rejected

    async def _read_columns(self, conn: Connection) -> set[str] | None:
        """The target table's column names, or None if the table does not exist.

        Also notes each column's array type (``_array_types``), for columns that are not
        arrays themselves and have one: only those take part in ``unnest`` upserts.
        """
        cursor = await conn.execute(
            "SELECT a.attname, format_type(t.typarray, NULL),"
            "  t.typarray <> 0 AND t.typcategory <> 'A', format_type(a.atttypid, NULL)"
            " FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (self._schema, self._table_name),
        )
        rows = await cursor.fetchall()
        self._array_types = {name: array for name, array, usable, _ in rows if usable}
        self._column_types = {name: kind for name, _, _, kind in rows}
        return {row[0] for row in rows} or None

    async def _prepare(self, conn: Connection) -> None:
        """Check the target table (if it exists) and create the tombstone table."""
        columns = await self._read_columns(conn)
        if columns is None and not self._config.create_table:
            raise ConfigError(
                f"postgres sink {self.name}: table {self._config.table} does not exist"
                " (create it, or set create_table: true)"
            )
        if columns is not None:
            lacking = sorted(_RESERVED - columns)
            if lacking:
                raise ConfigError(
                    f"postgres sink {self.name}: table {self._config.table} lacks column"
                    f" {lacking[0]!r} ({KEY_COLUMN} text primary key and {VERSION_COLUMN}"
                    " bytea not null are required)"
                )
        if columns is not None or self._config.create_table:
            if columns is None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
                )
            await self._create_tombstones(conn)
        self._columns = columns

    async def _create_tombstones(self, conn: Connection) -> None:
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {tomb} ({key} text PRIMARY KEY,"
                " {version} bytea NOT NULL)"
            ).format(
                tomb=self._tombstones,
                key=sql.Identifier(KEY_COLUMN),
                version=sql.Identifier(VERSION_COLUMN),
            )
        )

    async def _create_table(self, conn: Connection, model: BaseModel) -> None:
        fields = type(model).model_fields
        columns = [
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(sql_type(info.annotation)))
            for name, info in fields.items()
            if name not in _RESERVED
        ]
        async with conn.transaction():
            await conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self._schema))
            )
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {table} ({key} text PRIMARY KEY,"
                    " {version} bytea NOT NULL{sep}{columns})"
                ).format(
                    table=self._table,
                    key=sql.Identifier(KEY_COLUMN),
                    version=sql.Identifier(VERSION_COLUMN),
                    sep=sql.SQL(", " if columns else ""),
                    columns=sql.SQL(", ").join(columns),
                )
            )
            await self._create_tombstones(conn)
        log.info("postgres sink %s: created table %s", self.name, self._config.table)
        self._columns = await self._read_columns(conn)

    async def _add_columns(self, conn: Connection, model: BaseModel, names: list[str]) -> None:
        fields = type(model).model_fields
        for name in names:
            await conn.execute(
                sql.SQL("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {type}").format(
                    table=self._table,
                    column=sql.Identifier(name),
                    type=sql.SQL(sql_type(fields[name].annotation)),
                )
            )
            log.info("postgres sink %s: added column %s", self.name, name)
        self._columns = await self._read_columns(conn) or set()

    # ----------------------------------------------------------------- connection

    async def _connection(self) -> Connection:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        self._conn = None
        dsn = self._config.dsn.get_secret_value()
        extra: dict[str, Any] = {"application_name": f"cdcsync-sink-{self.name}"}
        try:
            if "connect_timeout" not in conninfo_to_dict(dsn):
                extra["connect_timeout"] = _CONNECT_TIMEOUT_S
        except psycopg.ProgrammingError:
            raise ConfigError(f"postgres sink {self.name}: the dsn is not valid") from None
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise SinkUnavailable(
                f"postgres sink {self.name}: cannot connect: {redact_dsn(first_line(exc))}"
            ) from None
        try:
            await self._prepare(conn)
        except psycopg.Error as exc:
            await conn.close()
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                raise SinkUnavailable(
                    f"postgres sink {self.name}: {redact_dsn(first_line(exc))}"
                ) from None
            raise ConfigError(
                f"postgres sink {self.name}: cannot prepare {self._config.table}:"
                f" {redact_dsn(first_line(exc))}"
            ) from None
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._stage = None  # temporary tables live and die with their connection
        return conn

    async def _unavailable(self, exc: psycopg.Error) -> SinkUnavailable:
        """Translate a connection-level failure; drop the connection if it is broken."""
        conn = self._conn
        if conn is not None and (conn.broken or conn.closed):
            self._conn = None
            await conn.close()
        return SinkUnavailable(f"postgres sink {self.name}: {redact_dsn(first_line(exc))}")


def _unzip(pairs: Sequence[tuple[str, Version | None]]) -> tuple[list[str], list[bytes]]:
    """``[(key, version)]`` as the two arrays an ``unnest(text[], bytea[])`` takes."""
    keys: list[str] = []
    versions: list[bytes] = []
    for key, version in pairs:
        assert version is not None
        keys.append(key)
        versions.append(version.to_bytes())
    return keys, versions
