"""PostgreSQL registry store, shareable by several registry processes.

Tables live in the schema ``schema_registry`` (created if missing) with the
layout described in ``schema_registry.storage``. Connections come from a
``psycopg_pool.ConnectionPool``. Invariants:

- every write transaction first takes ``pg_advisory_xact_lock(WRITER_LOCK)``,
  so id and version allocation (``MAX(id) + 1``, ``last_version + 1``) is
  serialised across every process sharing the database; the unique
  constraints (schema fingerprint, ``(subject, version)``, schema id) are the
  backstop should anything write without the lock;
- the DDL runs under the same lock, so instances starting together do not
  race on ``CREATE TABLE IF NOT EXISTS``;
- read transactions run at REPEATABLE READ so one request sees one snapshot;
- a connection is checked before it is handed out, and one left in a failed or
  open transaction is rolled back or discarded by the pool, never reused as is;
- an unreachable database is ``RegistryUnavailable``, its message without the password.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from cdc.core.errors import RegistryUnavailable
from cdc.core.secrets import redact_dsn
from schema_registry.storage import DDL, SqlTx, Tx

__all__ = ["NAMESPACE", "WRITER_LOCK", "PostgresStorage"]

NAMESPACE = "schema_registry"
WRITER_LOCK = 0x5C4E_0A_11  # any fixed 64-bit key; all registry processes use this one


class PostgresStorage:
    """``Storage`` over PostgreSQL, with a pool of connections."""

    def __init__(self, dsn: str, *, max_size: int = 8, connect_timeout: int = 10) -> None:
        self._timeout = float(connect_timeout)
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout},
            check=ConnectionPool.check_connection,
            open=False,
            name="schema-registry",
        )
        self._shown = redact_dsn(dsn)
        try:
            self._pool.open(wait=True, timeout=self._timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise RegistryUnavailable(
                f"registry database {self._shown} unreachable within {connect_timeout} s"
            ) from exc
        with self._transaction(write=True, create_tables=True):
            pass

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, create_tables: bool = False) -> Iterator[Tx]:
        try:
            with self._pool.connection(timeout=self._timeout) as conn, conn.cursor() as cur:
                if write:
                    cur.execute("BEGIN")
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
                    if create_tables:
                        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {NAMESPACE}")
                        for stmt in DDL:
                            cur.execute(stmt.replace("{ns}", f"{NAMESPACE}.").encode())
                else:
                    cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                try:
                    yield SqlTx(cur, ns=f"{NAMESPACE}.", param="%s")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
        except PoolTimeout as exc:
            raise RegistryUnavailable(f"registry database {self._shown}: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(f"registry database {self._shown} unreachable") from exc

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction(write=False)

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction(write=True)

    def close(self) -> None:
        self._pool.close()
