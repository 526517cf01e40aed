"""Capture end to end: real PostgreSQL, the tansu broker, our registry, the real command."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.harness import (
    WORKLOAD_DDL,
    CaptureEnv,
    Event,
    EventReader,
    data_events,
    identity,
    read_events,
    run_workload,
)


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(WORKLOAD_DDL)
    e = CaptureEnv(
        pg_dsn,
        kafka_bootstrap,
        registry_url,
        topic_prefix,
        ["public.customers", "public.orders"],
        tmp_path,
    )
    yield e
    e.stop_all()


def _ops_by_key(events: list[Event]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for e in sorted(data_events(events), key=lambda e: (e.topic, e.partition, e.offset)):
        assert e.key is not None and e.value is not None
        table = e.topic.rsplit(".", 1)[1]
        out.setdefault((table, e.key["id"]), []).append(e.value["op"])
    return out


def test_ten_thousand_mixed_changes_arrive_exactly_once_in_commit_order_per_key(
    env: CaptureEnv,
) -> None:
    env.start()
    env.wait_for_slot()
    started_ms = time.time() * 1000
    expected = run_workload(env.pg_dsn, changes=10_000)
    reader = EventReader(
        env.bootstrap, env.registry_url, [env.topic("public.customers"), env.topic("public.orders")]
    )
    try:
        events = reader.read_until(lambda ev: len(data_events(ev)) >= expected.changes, timeout=180)
        time.sleep(1)
        events = reader.read_until(lambda ev: True, timeout=5)
    finally:
        reader.close()
    data = data_events(events)
    assert len(data) == expected.changes
    assert len({identity(e) for e in data}) == expected.changes
    assert _ops_by_key(events) == expected.ops
    deletes = sum(ops.count("d") for ops in expected.ops.values())
    assert sum(1 for e in events if e.value is None) == deletes
    last: dict[tuple[str, int], Event] = {}
    for e in data:
        assert e.key is not None
        last[(e.topic.rsplit(".", 1)[1], e.key["id"])] = e
    for key, row in expected.final.items():
        ev = last[key]
        assert ev.value is not None
        if row is None:
            assert ev.value["op"] == "d"
            assert ev.value["after"] is None
            assert ev.value["before"]["id"] == key[1]
            continue
        after = ev.value["after"]
        for column, value in row.items():
            assert after[column] == value, (key, column)
    for e in data:
        assert e.value is not None
        src = e.value["source"]
        assert src["connector"] == "postgresql"
        assert src["name"] == env.prefix
        assert src["schema"] == "public"
        assert src["txId"] > 0
        assert src["lsn"] > 0
        assert src["commit_lsn"] >= src["lsn"]
        assert started_ms - 5000 <= src["ts_ms"] <= time.time() * 1000
    # Events of one transaction share txId and commit LSN; the commit LSN grows with txId order.
    commit_lsns = sorted(
        {
            (e.value["source"]["commit_lsn"], e.value["source"]["txId"])  # type: ignore[index]
            for e in data
        }
    )
    assert len({c for c, _ in commit_lsns}) == len(commit_lsns)
    flushed = env.confirmed_flush()
    assert flushed is not None and flushed >= max(c for c, _ in commit_lsns)


def test_unchanged_toast_values_are_marked_unavailable_never_sent_as_values(
    env: CaptureEnv,
) -> None:
    big = "x" * 100_000 + "é"
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE customers ALTER COLUMN name SET STORAGE EXTERNAL")
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (id, name, balance) VALUES (1, %s, 1.50)", (big,))
        conn.execute("UPDATE customers SET balance = 2.75 WHERE id = 1")
    events = read_events(env, ["public.customers"], at_least=2, timeout=60)
    insert, update = (e.value for e in data_events(events))
    assert insert is not None and update is not None
    assert insert["after"]["name"] == big
    assert insert["unavailable_columns"] is None
    assert update["after"]["balance"] == Decimal("2.75")
    assert update["unavailable_columns"] == ["name"]
    assert update["after"]["name"] != big


def test_replica_identity_full_gives_the_whole_before_image(env: CaptureEnv) -> None:
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        conn.execute("DELETE FROM orders WHERE id = 1")
    events = read_events(env, ["public.orders"], at_least=3, timeout=60)
    c, u, d = (e.value for e in data_events(events))
    assert c is not None and u is not None and d is not None
    assert [c["op"], u["op"], d["op"]] == ["c", "u", "d"]
    assert u["before"] == {"id": 1, "customer_id": 5, "amount": Decimal("9.99"), "status": "new"}
    assert u["after"]["status"] == "paid"
    assert d["before"]["status"] == "paid"
    assert d["after"] is None


def test_primary_key_change_becomes_delete_of_old_key_and_create_of_new_key(
    env: CaptureEnv,
) -> None:
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
        conn.execute("UPDATE orders SET id = 2 WHERE id = 1")
    events = read_events(env, ["public.orders"], at_least=3, timeout=60)
    ops = [(e.key, e.value["op"] if e.value else None) for e in events]
    assert ops == [({"id": 1}, "c"), ({"id": 1}, "d"), ({"id": 1}, None), ({"id": 2}, "c")]


def test_adding_a_column_mid_stream_registers_a_new_schema_version_and_continues(
    env: CaptureEnv,
) -> None:
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
        conn.execute("ALTER TABLE orders ADD COLUMN channel text")
        conn.execute("INSERT INTO orders VALUES (2, 6, 1.00, 'new', 'web')")
        conn.execute("ALTER TABLE orders DROP COLUMN customer_id")
        conn.execute("INSERT INTO orders VALUES (3, 2.00, 'new', 'shop')")
    events = read_events(env, ["public.orders"], at_least=3, timeout=60)
    afters = [e.value["after"] for e in data_events(events)]  # type: ignore[index]
    assert "channel" not in afters[0]
    assert afters[1]["channel"] == "web"
    assert "customer_id" not in afters[2] and afters[2]["channel"] == "shop"
    import httpx

    versions = httpx.get(f"{env.registry_url}/subjects/{env.topic('public.orders')}-value/versions")
    assert versions.json() == [1, 2, 3]


def _change_orders_incompatibly(env: CaptureEnv, **source_overrides: Any) -> str:
    """Capture one order under FULL compatibility, then change a column's type; the subject."""
    import httpx

    subject = f"{env.topic('public.orders')}-value"
    env.start(**source_overrides)
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
    read_events(env, ["public.orders"], at_least=1, timeout=60)
    r = httpx.put(f"{env.registry_url}/config/{subject}", json={"compatibility": "FULL"})
    assert r.status_code == 200
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ALTER COLUMN customer_id TYPE text")
        conn.execute("INSERT INTO orders VALUES (2, 'abc', 1.00, 'new')")
    return subject


def test_incompatible_schema_change_stops_capture_naming_the_table_and_column(
    env: CaptureEnv,
) -> None:
    _change_orders_incompatibly(env)
    proc = env.procs[-1]
    proc.wait(60)
    assert proc.returncode == 1
    log = env.log_text()
    assert "public.orders" in log and "customer_id" in log and "incompatible" in log


def test_incompatible_schema_change_continues_when_configured_to(env: CaptureEnv) -> None:
    import httpx

    subject = _change_orders_incompatibly(env, on_incompatible_schema="continue")
    events = data_events(read_events(env, ["public.orders"], at_least=2, timeout=60))
    assert [e.value["after"]["customer_id"] for e in events] == [5, "abc"]  # type: ignore[index]
    assert env.procs[-1].poll() is None
    assert httpx.get(f"{env.registry_url}/config/{subject}").json()["compatibilityLevel"] == "NONE"
    assert "incompatible" in env.log_text()


def test_truncate_is_published_as_an_op_t_event_when_not_skipped(env: CaptureEnv) -> None:
    env.start(skipped_operations=["none"])  # Debezium's default skips truncates
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
        conn.execute("TRUNCATE orders")
    events = read_events(env, ["public.orders"], at_least=2, timeout=60)
    last = data_events(events)[-1]
    assert last.value is not None and last.value["op"] == "t"
    assert last.key is None


def test_truncate_is_skipped_by_default_as_debezium_does(env: CaptureEnv) -> None:
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 5, 9.99, 'new')")
        conn.execute("TRUNCATE orders")
        conn.execute("INSERT INTO orders VALUES (2, 5, 1.00, 'marker')")
    events = data_events(read_events(env, ["public.orders"], at_least=2, timeout=60))
    assert [e.value["op"] for e in events] == ["c", "c"]  # type: ignore[index]
