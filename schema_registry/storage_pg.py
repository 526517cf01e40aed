"""PostgreSQL registry store, shareable by several registry processes.

Tables live in the schema ``schema_registry`` (created if missing) with the
layout described in ``schema_registry.storage``. Invariants:

- every write transaction first takes ``pg_advisory_xact_lock(WRITER_LOCK)``,
  so id and version allocation (``MAX(id) + 1``, ``last_version + 1``) is
  serialised across every process sharing the database; the unique
  constraints (schema fingerprint, ``(subject, version)``, schema id) are the
  backstop should anything write without the lock;
- the DDL runs under the same lock, so instances starting together do not
  race on ``CREATE TABLE IF NOT EXISTS``;
- read transactions run at REPEATABLE READ so one request sees one snapshot;
- a connection that saw an error is closed, never reused.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Iterator

import psycopg
from psycopg.pq import TransactionStatus

from cdc.core.errors import RegistryUnavailable
from schema_registry.storage import DDL, SqlTx, Tx

NAMESPACE = "schema_registry"
WRITER_LOCK = 0x5C4E_0A_11  # any fixed 64-bit key; all registry processes use this one


class PostgresStorage:
    """``Storage`` over PostgreSQL with a small pool of idle connections."""

    def __init__(self, dsn: str, *, max_idle: int = 8, connect_timeout: int = 10) -> None:
        self._dsn = dsn
        self._connect_timeout = connect_timeout
        self._idle: queue.LifoQueue[psycopg.Connection[tuple[object, ...]]] = queue.LifoQueue(
            maxsize=max_idle
        )
        with self._transaction(write=True, create_tables=True):
            pass

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout
            )
        except psycopg.OperationalError as exc:
            raise RegistryUnavailable(f"registry database unreachable: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self, *, write: bool, create_tables: bool = False) -> Iterator[Tx]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
        try:
            with conn.cursor() as cur:
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
        finally:
            self._release(conn)

    def _release(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Pool a connection that is idle and healthy; close any other."""
        healthy = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
        if healthy:
            try:
                self._idle.put_nowait(conn)
            except queue.Full:
                conn.close()
        else:
            conn.close()

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction(write=False)

    def write(self) -> contextlib.AbstractContextManager[Tx]:
        return self._transaction(write=True)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
