"""The state store against a real PostgreSQL: migrations, versions, identities, dead letters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cdc.state.store import MIGRATIONS, StateStore, StateUnavailable
from mappers.entity import Origin, Version

T = TypeVar("T")


def run(dsn: str, body: Callable[[StateStore], Awaitable[T]], *, schema: str = "cdcsync") -> T:
    async def main() -> T:
        async with await StateStore.open(dsn, schema=schema) as store:
            return await body(store)

    return asyncio.run(main())


def test_opening_twice_applies_each_migration_once(pg_dsn: str) -> None:
    async def main() -> list[int]:
        async with await StateStore.open(pg_dsn) as store:
            again = await store.migrate()
            assert await store.schema_version() == len(MIGRATIONS)
            return again

    assert asyncio.run(main()) == []
    assert asyncio.run(main()) == []
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT version FROM cdcsync.schema_migrations ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))


def test_stores_opening_at_the_same_time_both_succeed_with_one_schema(pg_dsn: str) -> None:
    async def main() -> None:
        stores = await asyncio.gather(
            *(StateStore.open(pg_dsn, schema="sync_state") for _ in range(4))
        )
        try:
            versions = [await s.schema_version() for s in stores]
        finally:
            for s in stores:
                await s.close()
        assert versions == [len(MIGRATIONS)] * 4

    asyncio.run(main())
    with psycopg.connect(pg_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM sync_state.schema_migrations").fetchone()
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'sync_state'"
        ).fetchall()
    assert count == (len(MIGRATIONS),)
    # Each table once (no duplicate schema), whatever later migrations add.
    names = [t[0] for t in tables]
    assert len(names) == len(set(names))
    assert {
        "schema_migrations",
        "identities",
        "versions",
        "dead_letters",
        "snapshot_progress",
        "inbound_changes",
    } <= set(names)


def test_a_stored_version_only_moves_forward(pg_dsn: str) -> None:
    v1, v2, v3 = Version.from_lsn(100, 0), Version.from_lsn(100, 1), Version.from_lsn(200, 0)

    async def body(store: StateStore) -> dict[str, tuple[Version, bool]]:
        await store.save_versions("crm", "contact", items=[("a", v2, False), ("b", v1, False)])
        moved = await store.save_versions(
            "crm", "contact", items=[("a", v1, True), ("b", v3, True), ("c", v1, False)]
        )
        assert moved == 2
        return await store.versions("crm", "contact", keys=["a", "b", "c", "missing"])

    assert run(pg_dsn, body) == {"a": (v2, False), "b": (v3, True), "c": (v1, False)}


def test_several_versions_of_one_key_in_a_batch_keep_the_newest(pg_dsn: str) -> None:
    older, newer = Version(5_000, 10, 0), Version(7_000, 9, 0)

    async def body(store: StateStore) -> dict[str, tuple[Version, bool]]:
        await store.save_versions("crm", "contact", items=[("k", newer, True), ("k", older, False)])
        return await store.versions("crm", "contact", keys=["k"])

    assert run(pg_dsn, body) == {"k": (newer, True)}


def test_versions_are_kept_apart_per_integration_and_entity(pg_dsn: str) -> None:
    v = Version.from_lsn(1, 0)

    async def body(store: StateStore) -> list[dict[str, tuple[Version, bool]]]:
        await store.save_versions("crm", "contact", items=[("1", v, False)])
        return [
            await store.versions("crm", "company", keys=["1"]),
            await store.versions("desk", "contact", keys=["1"]),
            await store.versions("crm", "contact", keys=["1"]),
        ]

    assert run(pg_dsn, body) == [{}, {}, {"1": (v, False)}]


def test_identity_map_round_trips_and_the_latest_id_wins(pg_dsn: str) -> None:
    async def body(store: StateStore) -> dict[str, str]:
        await store.record_identity("crm", "contact", key="1", external_id="crm-1")
        await store.record_identity("crm", "contact", key="2", external_id="crm-2")
        await store.record_identity("crm", "contact", key="2", external_id="crm-20")
        await store.record_identity("desk", "contact", key="3", external_id="d-3")
        return await store.external_ids("crm", "contact", keys=["1", "2", "3"])

    assert run(pg_dsn, body) == {"1": "crm-1", "2": "crm-20"}


def test_dead_letters_are_listed_until_marked_replayed(pg_dsn: str) -> None:
    async def body(store: StateStore) -> None:
        first = await store.record_dead_letter(
            "crm",
            origin=Origin("app.public.customers", 0, 41),
            key="7",
            error="HTTP 400: bad email",
            attempts=5,
            payload=b"\x00\x00\x00\x00\x01raw",
            dlq_topic="app.dlq.crm",
            dlq_partition=0,
            dlq_offset=3,
        )
        second = await store.record_dead_letter(
            "crm",
            origin=Origin("app.public.customers", 1, 9),
            key=None,
            error="mapping failed",
            attempts=1,
            payload=None,
            dlq_topic="app.dlq.crm",
            dlq_partition=None,
            dlq_offset=None,
        )
        await store.record_dead_letter(
            "desk",
            origin=Origin("app.public.tickets", 0, 1),
            key="x",
            error="e",
            attempts=1,
            payload=None,
            dlq_topic="app.dlq.desk",
            dlq_partition=0,
            dlq_offset=0,
        )
        pending = await store.dead_letters("crm")
        assert [d.id for d in pending] == [first, second]
        letter = pending[0]
        assert letter.origin == Origin("app.public.customers", 0, 41)
        assert (letter.key, letter.error, letter.attempts) == ("7", "HTTP 400: bad email", 5)
        assert letter.payload == b"\x00\x00\x00\x00\x01raw"
        assert (letter.dlq_topic, letter.dlq_partition, letter.dlq_offset) == ("app.dlq.crm", 0, 3)
        assert letter.replayed_at is None
        assert [d.id for d in await store.dead_letters("crm", ids=[second])] == [second]

        assert await store.mark_replayed("crm", [first]) == 1
        assert await store.mark_replayed("crm", [first]) == 0
        assert [d.id for d in await store.dead_letters("crm")] == [second]
        everything = await store.dead_letters("crm", include_replayed=True)
        assert [d.id for d in everything] == [first, second]
        assert everything[0].replayed_at is not None

    run(pg_dsn, body)


def test_snapshot_progress_resumes_from_the_last_saved_key(pg_dsn: str) -> None:
    async def body(store: StateStore) -> None:
        assert await store.snapshot_progress("public.orders") is None
        await store.save_snapshot_progress(
            "public.orders", last_key={"id": 500, "region": "eu"}, rows=500, done=False
        )
        await store.save_snapshot_progress(
            "public.orders", last_key={"id": 1000, "region": "eu"}, rows=1000, done=True
        )
        progress = await store.snapshot_progress("public.orders")
        assert progress is not None
        assert (progress.last_key, progress.rows, progress.done) == (
            {"id": 1000, "region": "eu"},
            1000,
            True,
        )

    run(pg_dsn, body)


def test_an_unreachable_database_is_reported_without_its_password(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        port = conn.info.port
    dsn = make_conninfo(pg_dsn, port=port + 1 if port < 65535 else 1, password="s3cr3t-pw")

    async def main() -> None:
        await StateStore.open(dsn, timeout_s=1.0)

    with pytest.raises(StateUnavailable) as caught:
        asyncio.run(main())
    assert "s3cr3t-pw" not in str(caught.value)


@pytest.mark.parametrize("written", ["directly", "in_a_guard"])
def test_key_lookups_stay_index_probes_on_a_freshly_filled_table(pg_dsn: str, written: str) -> None:
    keys = [str(n) for n in range(20_000)]
    wanted = ["5", "777", "19999", "absent"]

    async def body(store: StateStore) -> list[tuple[Any, Any]]:
        versions = [(key, Version.from_lsn(n + 1, 0), False) for n, key in enumerate(keys)]
        identities = [(k, f"crm-{k}") for k in keys]
        if written == "directly":
            await store.save_versions("crm", "contact", items=versions)
            await store.record_identities("crm", "contact", items=identities)
        else:  # as the HTTP and Kafka sinks write them
            async with store.guard("crm", [("contact", "0")]) as guard:
                await guard.save_versions("contact", items=versions)
                await guard.record_identities("contact", items=identities)
        sent: list[tuple[Any, Any]] = []
        fetch = store._fetch

        async def recording(query: Any, params: Any) -> Any:
            sent.append((query, params))
            return await fetch(query, params)

        store._fetch = recording  # type: ignore[method-assign]
        assert set(await store.versions("crm", "contact", keys=wanted)) == set(wanted[:3])
        assert set(await store.external_ids("crm", "contact", keys=wanted)) == set(wanted[:3])
        return sent

    sent = run(pg_dsn, body, schema=f"lookups_{written}")
    assert len(sent) == 2
    with psycopg.connect(pg_dsn) as conn:
        for query, params in sent:
            explain = sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) ") + query
            row = conn.execute(explain, params).fetchone()
            assert row is not None
            scans = [n for n in plan_nodes(row[0][0]["Plan"]) if n["Node Type"].endswith("Scan")]
            # Each key is one probe: no scan reads the integration's other rows.
            read = sum(
                (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
                for n in scans
                if n["Node Type"] != "Function Scan"
            )
            assert read <= len(wanted), json.dumps(row[0], indent=1)


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from plan_nodes(child)


def test_column_clock_versions_become_the_commit_lsn_they_were_applied_at(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cdc.state.store as store_module

    column_clock = Version(1_772_359_200_000_000, 0x16B374D848, 3)
    lsn_clock = Version.from_lsn(0x16B374D900, 1)

    async def before(store: StateStore) -> None:
        await store.save_versions(
            "crm", "contact", items=[("1", column_clock, False), ("2", lsn_clock, True)]
        )

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:5])
    run(pg_dsn, before, schema="clock_upgrade")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)

    async def after(store: StateStore) -> dict[str, tuple[Version, bool]]:
        return await store.versions("crm", "contact", keys=["1", "2"])

    assert run(pg_dsn, after, schema="clock_upgrade") == {
        "1": (Version.from_lsn(0x16B374D848, 3), False),
        "2": (lsn_clock, True),
    }


def test_snapshot_progress_belongs_to_one_pipeline_of_slot_and_topic_prefix(pg_dsn: str) -> None:
    """Issue 16.6: two pipelines (slots and prefixes) on one database: one's unfinished
    initial snapshot is neither resumed nor overwritten by the other."""
    from cdc.state.store import pipeline_id

    a, b = pipeline_id("slot_a", "app_a"), pipeline_id("slot_b", "app_b")

    async def body(store: StateStore) -> tuple[Any, Any]:
        await store.save_snapshot_progress(
            "public.orders", last_key={"id": 4600}, rows=4600, done=False, pipeline=a
        )
        unseen = await store.snapshot_progress("public.orders", pipeline=b)
        await store.save_snapshot_progress(
            "public.orders", last_key=None, rows=10, done=True, pipeline=b
        )
        own = await store.snapshot_progress("public.orders", pipeline=a)
        return unseen, (own.rows, own.done) if own else None

    assert run(pg_dsn, body) == (None, (4600, False))
