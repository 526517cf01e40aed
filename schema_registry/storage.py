"""Registry storage: a small transactional interface and its SQLite implementation.

The service runs every operation inside one storage transaction: ``read()``
for queries, ``write()`` for mutations. A write transaction holds the store's
single writer lock from its first statement to its commit (SQLite ``BEGIN
IMMEDIATE``; PostgreSQL ``pg_advisory_xact_lock`` in ``storage_pg``), so the
service's read-check-allocate-insert sequences (next schema id, next version)
are serialised across threads and processes. An exception inside the block
rolls everything back: nothing in the store changes on any error.

Tables (the same in both back ends):

- ``schemas(id, schema_type, canonical, normalized, refs, fingerprint)``: one
  row per distinct schema (type + canonical text + references); ``fingerprint``
  is unique, so a schema can never get two ids. Rows are never deleted, so a
  schema registered again after a permanent delete keeps its id.
- ``versions(subject, version, schema_id, deleted)``: primary key
  ``(subject, version)``.
- ``subjects(subject, last_version)``: the highest version ever given in the
  subject; versions are never reused, even after permanent deletes.
- ``settings(scope, key, value)``: compatibility level and mode; scope ``""``
  is the global scope, otherwise the subject name.

Invariant of the Tx methods: they do no validation and no policy; that is the
service's job. They only translate rows to values.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

GLOBAL_SCOPE = ""


@dataclass(frozen=True, slots=True)
class StoredSchema:
    """A row of ``schemas``: one distinct schema and its global id."""

    schema_id: int
    schema_type: str
    canonical: str
    normalized: str
    refs: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class VersionRow:
    """A row of ``versions``: ``subject`` version ``version`` is schema ``schema_id``."""

    subject: str
    version: int
    schema_id: int
    deleted: bool


class Tx(Protocol):
    """The operations available inside one storage transaction."""

    def schema_by_id(self, schema_id: int) -> StoredSchema | None: ...

    def schema_by_fingerprint(self, fingerprint: str) -> StoredSchema | None: ...

    def schemas_with_references(self) -> list[StoredSchema]: ...

    def max_schema_id(self) -> int: ...

    def insert_schema(self, schema: StoredSchema) -> None: ...

    def versions(self, subject: str) -> list[VersionRow]:
        """Every version of ``subject`` including soft-deleted ones, oldest first."""
        ...

    def versions_of_schema(self, schema_id: int) -> list[VersionRow]: ...

    def subjects(self) -> list[tuple[str, bool]]:
        """Every subject that has versions, with whether all of them are soft-deleted."""
        ...

    def last_version(self, subject: str) -> int:
        """The highest version ever given in ``subject`` (0 if none)."""
        ...

    def insert_version(self, row: VersionRow) -> None:
        """Insert a version and raise the subject's version counter to it."""
        ...

    def mark_deleted(self, subject: str, version: int) -> None: ...

    def remove_version(self, subject: str, version: int) -> None: ...

    def get_setting(self, scope: str, key: str) -> str | None: ...

    def set_setting(self, scope: str, key: str, *, value: str) -> None: ...

    def delete_setting(self, scope: str, key: str) -> None: ...


class Storage(Protocol):
    """A registry store: transactions, and ``close()``."""

    def read(self) -> contextlib.AbstractContextManager[Tx]: ...

    def write(self) -> contextlib.AbstractContextManager[Tx]: ...

    def close(self) -> None: ...


DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {ns}schemas (
        id BIGINT PRIMARY KEY,
        schema_type TEXT NOT NULL,
        canonical TEXT NOT NULL,
        normalized TEXT NOT NULL,
        refs TEXT NOT NULL,
        fingerprint TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE IF NOT EXISTS {ns}versions (
        subject TEXT NOT NULL,
        version INTEGER NOT NULL,
        schema_id BIGINT NOT NULL REFERENCES {ns}schemas (id),
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (subject, version)
    )""",
    "CREATE INDEX IF NOT EXISTS versions_by_schema ON {ns}versions (schema_id)",
    """CREATE TABLE IF NOT EXISTS {ns}subjects (
        subject TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS {ns}settings (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
)

_SCHEMA_COLUMNS = "id, schema_type, canonical, normalized, refs, fingerprint"


class SqlTx:
    """``Tx`` over a DB-API cursor; ``ns`` prefixes table names, ``param`` is the placeholder."""

    def __init__(self, cursor: Any, *, ns: str = "", param: str = "?") -> None:
        self._cur = cursor
        self._ns = ns
        self._param = param

    def _sql(self, text: str) -> str:
        return text.replace("{ns}", self._ns).replace("?", self._param)

    def _all(self, text: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        self._cur.execute(self._sql(text), tuple(args))
        return list(self._cur.fetchall())

    def _run(self, text: str, args: Sequence[object] = ()) -> None:
        self._cur.execute(self._sql(text), tuple(args))

    @staticmethod
    def _schema(row: tuple[Any, ...]) -> StoredSchema:
        return StoredSchema(
            int(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]), str(row[5])
        )

    @staticmethod
    def _version(row: tuple[Any, ...]) -> VersionRow:
        return VersionRow(str(row[0]), int(row[1]), int(row[2]), bool(row[3]))

    def schema_by_id(self, schema_id: int) -> StoredSchema | None:
        rows = self._all(f"SELECT {_SCHEMA_COLUMNS} FROM {{ns}}schemas WHERE id = ?", [schema_id])
        return self._schema(rows[0]) if rows else None

    def schema_by_fingerprint(self, fingerprint: str) -> StoredSchema | None:
        rows = self._all(
            f"SELECT {_SCHEMA_COLUMNS} FROM {{ns}}schemas WHERE fingerprint = ?", [fingerprint]
        )
        return self._schema(rows[0]) if rows else None

    def schemas_with_references(self) -> list[StoredSchema]:
        rows = self._all(f"SELECT {_SCHEMA_COLUMNS} FROM {{ns}}schemas WHERE refs <> '[]'")
        return [self._schema(r) for r in rows]

    def max_schema_id(self) -> int:
        rows = self._all("SELECT COALESCE(MAX(id), 0) FROM {ns}schemas")
        return int(rows[0][0])

    def insert_schema(self, schema: StoredSchema) -> None:
        self._run(
            f"INSERT INTO {{ns}}schemas ({_SCHEMA_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [
                schema.schema_id,
                schema.schema_type,
                schema.canonical,
                schema.normalized,
                schema.refs,
                schema.fingerprint,
            ],
        )

    def versions(self, subject: str) -> list[VersionRow]:
        rows = self._all(
            "SELECT subject, version, schema_id, deleted FROM {ns}versions"
            " WHERE subject = ? ORDER BY version",
            [subject],
        )
        return [self._version(r) for r in rows]

    def versions_of_schema(self, schema_id: int) -> list[VersionRow]:
        rows = self._all(
            "SELECT subject, version, schema_id, deleted FROM {ns}versions"
            " WHERE schema_id = ? ORDER BY subject, version",
            [schema_id],
        )
        return [self._version(r) for r in rows]

    def subjects(self) -> list[tuple[str, bool]]:
        rows = self._all(
            "SELECT subject, MIN(deleted) FROM {ns}versions GROUP BY subject ORDER BY subject"
        )
        return [(str(r[0]), bool(r[1])) for r in rows]

    def last_version(self, subject: str) -> int:
        rows = self._all("SELECT last_version FROM {ns}subjects WHERE subject = ?", [subject])
        return int(rows[0][0]) if rows else 0

    def insert_version(self, row: VersionRow) -> None:
        self._run(
            "INSERT INTO {ns}versions (subject, version, schema_id, deleted) VALUES (?, ?, ?, ?)",
            [row.subject, row.version, row.schema_id, int(row.deleted)],
        )
        last = max(self.last_version(row.subject), row.version)
        self._run(
            "INSERT INTO {ns}subjects (subject, last_version) VALUES (?, ?)"
            " ON CONFLICT (subject) DO UPDATE SET last_version = excluded.last_version",
            [row.subject, last],
        )

    def mark_deleted(self, subject: str, version: int) -> None:
        self._run(
            "UPDATE {ns}versions SET deleted = 1 WHERE subject = ? AND version = ?",
            [subject, version],
        )

    def remove_version(self, subject: str, version: int) -> None:
        self._run("DELETE FROM {ns}versions WHERE subject = ? AND version = ?", [subject, version])

    def get_setting(self, scope: str, key: str) -> str | None:
        rows = self._all("SELECT value FROM {ns}settings WHERE scope = ? AND key = ?", [scope, key])
        return str(rows[0][0]) if rows else None

    def set_setting(self, scope: str, key: str, *, value: str) -> None:
        self._run(
            "INSERT INTO {ns}settings (scope, key, value) VALUES (?, ?, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value",
            [scope, key, value],
        )

    def delete_setting(self, scope: str, key: str) -> None:
        self._run("DELETE FROM {ns}settings WHERE scope = ? AND key = ?", [scope, key])


class SqliteStorage:
    """SQLite file store: WAL journal, one connection per transaction, ``BEGIN IMMEDIATE`` writes.

    A connection per transaction keeps threads independent (the server runs
    storage calls in a thread pool) and costs little for a local file.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30_000) -> None:
        self._path = str(path)
        self._timeout = busy_timeout_ms / 1000
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in DDL:
                    conn.execute(stmt.replace("{ns}", ""))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        with contextlib.closing(self._connect()) as conn:
            conn.execute(begin)
            try:
                yield SqlTx(conn.cursor())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction("BEGIN")

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction("BEGIN IMMEDIATE")

    def close(self) -> None:
        """Nothing to release: connections live only as long as their transaction."""
