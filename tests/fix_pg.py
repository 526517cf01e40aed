"""PostgreSQL fixtures: a throwaway cluster (wal_level=logical) or CDCSYNC_TEST_PG_DSN.

``pg_server`` is one cluster per session; ``pg_dsn`` is a fresh database per
test, dropped afterwards together with any replication slot created in it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc.demo.throwaway import EmbeddedServerError, LocalPostgres
from tests.fix_servers import unavailable


@dataclass
class PgServer:
    """A PostgreSQL server for tests; ``local`` is None for an external server."""

    dsn: str
    local: LocalPostgres | None

    def dsn_for(self, dbname: str) -> str:
        return make_conninfo(self.dsn, dbname=dbname)

    def restart(self) -> None:
        if self.local is None:
            pytest.skip("cannot restart an external PostgreSQL")
        self.local.restart()

    def stop(self) -> None:
        if self.local is None:
            pytest.skip("cannot stop an external PostgreSQL")
        self.local.stop_server()

    def start(self) -> None:
        assert self.local is not None
        self.local.start_server()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    external = os.environ.get("CDCSYNC_TEST_PG_DSN")
    if external:
        yield PgServer(dsn=external, local=None)
        return
    try:
        local = LocalPostgres().start()
    except EmbeddedServerError as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield PgServer(dsn=local.dsn, local=local)
    finally:
        local.stop()


def drop_database(admin_dsn: str, dbname: str) -> None:
    """Drop a test database and the replication slots that live in it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
            " WHERE database = %s AND active_pid IS NOT NULL",
            (dbname,),
        )
        for _ in range(50):
            rows = conn.execute(
                "SELECT slot_name, active FROM pg_replication_slots WHERE database = %s",
                (dbname,),
            ).fetchall()
            if not rows:
                break
            for name, active in rows:
                if not active:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
            import time

            time.sleep(0.1)
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for one test."""
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    admin = pg_server.dsn
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.Error as exc:
        unavailable("PostgreSQL", exc)
    try:
        yield pg_server.dsn_for(dbname)
    finally:
        drop_database(admin, dbname)


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])
