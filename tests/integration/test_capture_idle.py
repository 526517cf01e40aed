"""Idle-slot safety: a quiet or unpublished-only database does not pile up WAL; the lag guard."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cdc.demo.throwaway import LocalBroker
from tests.integration.harness import CaptureEnv, data_events, read_events


def _lsn(dsn: str, query: str, slot: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, (slot,)).fetchone()
    assert row is not None and row[0] is not None
    return int(row[0])


def retained(env: CaptureEnv) -> int:
    """WAL the slot holds back from removal."""
    return _lsn(
        env.pg_dsn,
        "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = %s",
        env.slot,
    )


def unconfirmed(env: CaptureEnv) -> int:
    return _lsn(
        env.pg_dsn,
        "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots"
        " WHERE slot_name = %s",
        env.slot,
    )


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE published (id int PRIMARY KEY, note text)")
        conn.execute("CREATE TABLE unpublished (id int PRIMARY KEY, note text)")
    e = CaptureEnv(
        pg_dsn, kafka_bootstrap, registry_url, topic_prefix, ["public.published"], tmp_path
    )
    yield e
    e.stop_all()


def test_writes_only_to_unpublished_tables_keep_the_slot_advancing(env: CaptureEnv) -> None:
    env.start(heartbeat_interval_s=0.5, status_interval_s=1)
    env.wait_for_slot()
    written = 0
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        start = _lsn(env.pg_dsn, "SELECT pg_current_wal_lsn() - %s::pg_lsn", "0/0")
        for batch in range(20):
            conn.execute(
                "INSERT INTO unpublished SELECT g, repeat('x', 200) FROM generate_series(%s::int,"
                " %s::int) g",
                (batch * 5000, batch * 5000 + 4999),
            )
        written = _lsn(env.pg_dsn, "SELECT pg_current_wal_lsn() - %s::pg_lsn", "0/0") - start
        conn.execute("CHECKPOINT")  # logs the running transactions restart_lsn moves to
    assert written > 20 * 2**20
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (unconfirmed(env) > 2**20 or retained(env) > 4 * 2**20):
        time.sleep(0.5)
    assert unconfirmed(env) <= 2**20
    assert retained(env) <= 4 * 2**20, f"slot retains {retained(env)} of {written} bytes written"


def test_heartbeats_are_not_published_as_events(env: CaptureEnv) -> None:
    env.start(heartbeat_interval_s=0.2)
    env.wait_for_slot()
    time.sleep(2)
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO published VALUES (1, 'after heartbeats')")
    events = data_events(read_events(env, ["public.published"], at_least=1, timeout=60))
    assert [e.value["after"]["note"] for e in events] == ["after heartbeats"]  # type: ignore[index]


def test_capture_stops_plainly_when_the_slot_retains_too_much_wal(
    pg_dsn: str, private_broker: LocalBroker, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE published (id int PRIMARY KEY, note text)")
    env = CaptureEnv(
        pg_dsn, private_broker.bootstrap, registry_url, topic_prefix, ["public.published"], tmp_path
    )
    try:
        proc = env.start(slot_lag_stop_bytes=4 * 2**20, status_interval_s=0.5)
        env.wait_for_slot()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO published VALUES (0, 'first')")
        read_events(env, ["public.published"], at_least=1, timeout=60)
        private_broker.pause()  # nothing is acknowledged, so nothing is confirmed
        try:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO published SELECT g, repeat('y', 500)"
                    " FROM generate_series(1, 20000) g"
                )
            proc.wait(60)
        finally:
            private_broker.resume()
        assert proc.returncode == 1
        log = env.log_text()
        assert "retains" in log and "slot_lag_stop_bytes" in log
    finally:
        env.stop_all()
