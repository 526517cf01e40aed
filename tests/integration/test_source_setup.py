"""Source set-up: each misconfiguration of the database gets an error that says what to do."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.capture import source_setup as source
from cdc.capture.replication import ReplicationStream
from cdc.core.errors import SourceSetupError
from cdc.demo.throwaway import LocalPostgres


def prepare(dsn: str, **overrides: Any) -> source.SourceReport:
    options: dict[str, Any] = {
        "slot": "s_setup",
        "publication": "p_setup",
        "tables": ["public.items"],
        "create_slot": True,
        "create_publication": True,
        **overrides,
    }
    return asyncio.run(source.prepare(dsn, **options))


@pytest.fixture
def items_dsn(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    yield pg_dsn
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE database = current_database() AND NOT active"
        )


def test_a_fresh_database_gets_its_publication_and_slot(items_dsn: str) -> None:
    report = prepare(items_dsn)
    assert report.warnings == []
    with psycopg.connect(items_dsn) as conn:
        slot = conn.execute(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = 's_setup'"
        ).fetchone()
        tables = conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables"
            " WHERE pubname = 'p_setup'"
        ).fetchall()
    assert slot == ("pgoutput",)
    assert tables == [("public.items",)]


def test_an_unknown_table_is_named(items_dsn: str) -> None:
    with pytest.raises(SourceSetupError, match=r"unknown table public\.nope"):
        prepare(items_dsn, tables=["public.items", "public.nope"])


def test_a_table_without_primary_key_is_reported(items_dsn: str) -> None:
    with psycopg.connect(items_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE loose (a int, b text)")
    report = prepare(items_dsn, tables=["public.loose"])
    assert any("public.loose" in w for w in report.warnings), report.warnings


def test_a_role_without_replication_privilege_is_told_how_to_fix_it(items_dsn: str) -> None:
    role = f"r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(items_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        dsn = psycopg.conninfo.make_conninfo(items_dsn, user=role)
        with pytest.raises(SourceSetupError, match="REPLICATION privilege") as err:
            prepare(dsn)
        assert f"ALTER ROLE {role} WITH REPLICATION" in str(err.value)
    finally:
        with psycopg.connect(items_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_slot_in_use_by_another_process_is_refused(items_dsn: str) -> None:
    prepare(items_dsn)

    async def hold_then_prepare() -> None:
        stream = await ReplicationStream.start(items_dsn, slot="s_setup", publication="p_setup")
        try:
            with pytest.raises(SourceSetupError, match=r"'s_setup' is in use by another process"):
                await source.prepare(
                    items_dsn,
                    slot="s_setup",
                    publication="p_setup",
                    tables=["public.items"],
                    create_slot=True,
                    create_publication=True,
                )
        finally:
            await stream.close()

    asyncio.run(hold_then_prepare())


def test_a_slot_of_another_plugin_is_refused(items_dsn: str) -> None:
    with psycopg.connect(items_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('s_setup', 'test_decoding')")
    with pytest.raises(SourceSetupError, match="plugin 'test_decoding'"):
        prepare(items_dsn)


def test_a_missing_slot_is_an_error_when_creation_is_off(items_dsn: str) -> None:
    with pytest.raises(SourceSetupError, match=r"does not exist and source\.create_slot is false"):
        prepare(items_dsn, create_slot=False)


@pytest.fixture(scope="module")
def small_server() -> Iterator[LocalPostgres]:
    """A cluster with wal_level=replica and room for a single slot."""
    server = LocalPostgres(settings={"wal_level": "replica", "max_replication_slots": "1"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_wal_level_other_than_logical_is_refused_with_the_fix(
    small_server: LocalPostgres,
) -> None:
    with psycopg.connect(small_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY)")
    with pytest.raises(SourceSetupError, match="wal_level is 'replica'") as err:
        prepare(small_server.dsn)
    assert "wal_level = logical" in str(err.value)


def test_no_free_slot_is_reported_plainly() -> None:
    server = LocalPostgres(settings={"max_replication_slots": "1"})
    server.start()
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
            conn.execute("SELECT pg_create_logical_replication_slot('other', 'pgoutput')")
        with pytest.raises(SourceSetupError, match="all slots are in use"):
            prepare(server.dsn)
    finally:
        server.stop()
