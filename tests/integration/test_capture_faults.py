"""Capture under failure: killed process, frozen broker, restarted PostgreSQL. Nothing lost."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.demo.throwaway import LocalBroker
from tests.fix_pg import PgServer
from tests.integration.harness import (
    WORKLOAD_DDL,
    CaptureEnv,
    Event,
    EventReader,
    Expected,
    data_events,
    identity,
    run_workload,
)


def _env(pg_dsn: str, bootstrap: str, registry_url: str, prefix: str, tmp: Path) -> CaptureEnv:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(WORKLOAD_DDL)
    return CaptureEnv(
        pg_dsn, bootstrap, registry_url, prefix, ["public.customers", "public.orders"], tmp
    )


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    e = _env(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, tmp_path)
    yield e
    e.stop_all()


def _read_everything(env: CaptureEnv, expected: Expected, timeout: float = 180) -> list[Event]:
    reader = EventReader(
        env.bootstrap, env.registry_url, [env.topic("public.customers"), env.topic("public.orders")]
    )
    try:
        reader.read_until(
            lambda ev: len({identity(e) for e in data_events(ev)}) >= expected.changes,
            timeout=timeout,
        )
        time.sleep(1)
        return reader.read_until(lambda ev: True, timeout=5)
    finally:
        reader.close()


def _assert_nothing_lost(events: list[Event], expected: Expected) -> None:
    """Every committed change is present; duplicates are exact copies with the same identity."""
    by_identity: dict[tuple[int, int], Event] = {}
    for e in sorted(data_events(events), key=lambda e: (e.topic, e.partition, e.offset)):
        ident = identity(e)
        seen = by_identity.get(ident)
        if seen is None:
            by_identity[ident] = e
            continue
        assert seen.key == e.key
        assert seen.value is not None and e.value is not None
        assert seen.value["after"] == e.value["after"]
        assert seen.value["op"] == e.value["op"]
    assert len(by_identity) == expected.changes
    ops: dict[tuple[str, int], list[str]] = {}
    for ident in sorted(by_identity):
        e = by_identity[ident]
        assert e.key is not None and e.value is not None
        ops.setdefault((e.topic.rsplit(".", 1)[1], e.key["id"]), []).append(e.value["op"])
    assert ops == expected.ops


class Writer(threading.Thread):
    def __init__(self, dsn: str, changes: int, pace: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.changes, self.pace = dsn, changes, pace
        self.result: Expected | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run_workload(self.dsn, changes=self.changes, pace=self.pace, seed=11)
        except BaseException as exc:
            self.error = exc


def test_kill_9_at_random_moments_loses_no_committed_change(env: CaptureEnv) -> None:
    rnd = random.Random(5)
    env.start()
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, changes=6000, pace=0.004)
    writer.start()
    env.kill_and_restart(10, rnd, within=(0.3, 1.5))
    writer.join(300)
    assert writer.error is None and writer.result is not None
    events = _read_everything(env, writer.result)
    _assert_nothing_lost(events, writer.result)


def test_broker_frozen_for_30_seconds_delays_but_loses_nothing(
    pg_dsn: str, private_broker: LocalBroker, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    env = _env(pg_dsn, private_broker.bootstrap, registry_url, topic_prefix, tmp_path)
    try:
        env.start()
        env.wait_for_slot()
        first = run_workload(env.pg_dsn, changes=200, seed=1)
        _read_everything(env, first)
        time.sleep(1.5)
        flushed_before = env.confirmed_flush()
        private_broker.pause()
        try:
            more = run_workload(env.pg_dsn, changes=300, seed=2, id_base=100_000)
            time.sleep(30)
            # Nothing could be delivered, so nothing more may be confirmed.
            assert env.confirmed_flush() == flushed_before
        finally:
            private_broker.resume()
        total = Expected(changes=first.changes + more.changes)
        for src in (first, more):
            for key, ops in src.ops.items():
                total.ops.setdefault(key, []).extend(ops)
        events = _read_everything(env, total)
        assert len({identity(e) for e in data_events(events)}) == total.changes
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            flushed = env.confirmed_flush()
            if flushed is not None and flushed_before is not None and flushed > flushed_before:
                break
            time.sleep(0.5)
        assert env.confirmed_flush() > flushed_before  # type: ignore[operator]
    finally:
        env.stop_all()


def test_postgres_restart_mid_stream_reconnects_and_continues(
    env: CaptureEnv, pg_server: PgServer
) -> None:
    env.start()
    env.wait_for_slot()
    first = run_workload(env.pg_dsn, changes=300, seed=3)
    pg_server.restart()
    second_rows: dict[str, Any] = {}
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        for i in range(1000, 1100):
            conn.execute("INSERT INTO orders VALUES (%s, 1, 1.00, 'after-restart')", (i,))
            second_rows[str(i)] = True
    reader = EventReader(
        env.bootstrap, env.registry_url, [env.topic("public.customers"), env.topic("public.orders")]
    )
    try:
        events = reader.read_until(
            lambda ev: len({identity(e) for e in data_events(ev)}) >= first.changes + 100,
            timeout=120,
        )
    finally:
        reader.close()
    after_restart = {
        e.key["id"]
        for e in data_events(events)  # type: ignore[index]
        if e.value and e.value["after"] and e.value["after"].get("status") == "after-restart"
    }
    assert after_restart == set(range(1000, 1100))
    assert env.procs[-1].poll() is None, env.log_text()
