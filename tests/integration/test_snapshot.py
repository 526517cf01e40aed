"""Snapshots against real servers: the initial snapshot's seam with streaming, and an
incremental snapshot under a concurrent writer, killed with SIGKILL and resumed.

The outcome a consumer cares about: the latest event per key on the topic equals the
table's final state (deletes included), and no streamed change is missing or doubled.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc.capture.exactly_once import TXN_HEADER
from tests.integration.harness import CaptureEnv, EosEnv, Event, EventReader

TABLE = "public.items"


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    create_items(pg_dsn)
    e = CaptureEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, [TABLE], tmp_path)
    yield e
    e.stop_all()


ROWS = 3000


def create_items(dsn: str) -> None:
    """The ``items`` table with ``ROWS`` rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, n bigint)")
        conn.execute(
            "INSERT INTO items SELECT i, 'row ' || i, i * 10 FROM generate_series(1, %s) i",
            (ROWS,),
        )


class Writer(threading.Thread):
    """Inserts, updates and deletes rows of ``items`` (old and new keys) until stopped."""

    def __init__(self, dsn: str, *, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.rnd = random.Random(seed)
        self.stop = threading.Event()
        self.changes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = self.rnd
        next_id = ROWS + 1
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    pending = 0
                    with conn.transaction():
                        for _ in range(rnd.randint(1, 5)):
                            roll = rnd.random()
                            pk = rnd.randint(1, next_id)
                            if roll < 0.3:
                                cur = conn.execute(
                                    "INSERT INTO items VALUES (%s, %s, 0)", (next_id, "new")
                                )
                                next_id += 1
                            elif roll < 0.8:
                                cur = conn.execute(
                                    "UPDATE items SET n = n + 1, name = %s WHERE id = %s",
                                    (f"upd {rnd.random():.6f}", pk),
                                )
                            else:
                                cur = conn.execute("DELETE FROM items WHERE id = %s", (pk,))
                            pending += cur.rowcount
                    self.changes += pending
                    time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        """Stop writing; the writer must have ended without an error."""
        self.stop.set()
        self.join(30)
        assert self.error is None


def table_state(dsn: str) -> dict[int, tuple[str, int | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, name, n FROM items").fetchall()
    return {pk: (name, n) for pk, name, n in rows}


def latest_per_key(events: list[Event]) -> dict[int, tuple[str, int | None]]:
    """The state a compacted topic converges to: the last event per key, deletes removed."""
    state: dict[int, tuple[str, int | None]] = {}
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        assert e.key is not None
        pk = e.key["id"]
        after = None if e.value is None else e.value["after"]
        if after is None:
            state.pop(pk, None)
        else:
            state[pk] = (after["name"], after["n"])
    return state


def converge(env: CaptureEnv, *, timeout: float = 150) -> list[Event]:
    """Read the topic until its latest-per-key state equals the table's."""
    expected = table_state(env.pg_dsn)
    reader = EventReader(env.bootstrap, env.registry_url, [env.topic(TABLE)])
    try:
        return reader.read_until(lambda ev: latest_per_key(ev) == expected, timeout=timeout)
    except AssertionError:
        got = latest_per_key(reader.events)
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        sample = [(k, expected.get(k), got.get(k)) for k in wrong[:5]]
        raise AssertionError(
            f"{len(wrong)} keys differ, e.g. {sample}\n{env.log_text()[-3000:]}"
        ) from None
    finally:
        reader.close()


def progress_row(dsn: str) -> tuple[int, bool] | None:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(
                "SELECT rows, done FROM cdcsync.snapshot_progress WHERE table_name = %s", (TABLE,)
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None  # the state store is not set up yet
    return None if row is None else (int(row[0]), bool(row[1]))


def wait_progress(env: CaptureEnv, *, at_least: int = 0, done: bool = False) -> tuple[int, bool]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = progress_row(env.pg_dsn)
        if row is not None and row[0] >= at_least and (row[1] or not done):
            return row
        time.sleep(0.05)
    raise AssertionError(f"snapshot progress stuck at {row}:\n{env.log_text()[-3000:]}")


def snapshot_reads(events: list[Event]) -> list[Event]:
    """The events a snapshot published (``op=r``)."""
    return [e for e in events if e.value is not None and e.value["op"] == "r"]


def streamed_identities(events: list[Event]) -> dict[tuple[int, int], dict[str, Any]]:
    """Streamed (non-snapshot) events by (commit LSN, order); duplicates must be copies."""
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    for e in events:
        if e.value is None or e.value["op"] == "r":
            continue
        ident = (e.value["source"]["commit_lsn"], e.value["transaction"]["total_order"])
        if ident in seen:
            assert seen[ident]["after"] == e.value["after"]
        seen[ident] = e.value
    return seen


def test_initial_snapshot_reads_every_row_and_streaming_continues_without_gap_or_double(
    env: CaptureEnv,
) -> None:
    env.start(snapshot="initial", snapshot_chunk_size=400)
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, seed=3)
    writer.start()  # the slot exists: every change from here on must be streamed once
    wait_progress(env, done=True)
    time.sleep(0.5)
    writer.finish()
    events = converge(env)
    reads = snapshot_reads(events)
    assert {e.value["source"]["snapshot"] for e in reads if e.value} == {"true"}
    streamed = streamed_identities(events)
    assert {v["source"]["snapshot"] for v in streamed.values()} == {"false"}
    assert len(streamed) == writer.changes  # nothing missing, nothing doubled
    # Rows the writer never touched are present exactly as read.
    read_keys = {e.key["id"] for e in reads if e.key}
    assert len(read_keys) == len(reads)
    assert len(read_keys) > ROWS // 2


def test_incremental_snapshot_under_a_writer_survives_kill_9_and_matches_the_table(
    env: CaptureEnv,
) -> None:
    capture = env.start(snapshot="never", snapshot_chunk_size=50)
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, seed=9)
    writer.start()
    config = env.workdir / "cdcsync.yaml"
    waiter = subprocess.Popen(
        [sys.executable, "-m", "cdc.cli", "snapshot", "--config", str(config), "--quiet", TABLE],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        rows, done = wait_progress(env, at_least=600)
        assert not done, "the snapshot finished before it could be killed"
        capture.kill()
        capture.wait()
        env.start(snapshot="never", snapshot_chunk_size=50)
        env.wait_for_slot()
        final_rows, _ = wait_progress(env, done=True)
        out, _ = waiter.communicate(timeout=60)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, out.decode()
    assert f"{TABLE}: " in out.decode()
    assert "resuming the incremental snapshot" in env.log_text()
    assert final_rows >= rows
    writer.finish()
    events = converge(env)
    reads = snapshot_reads(events)
    assert {e.value["source"]["snapshot"] for e in reads if e.value} == {"incremental"}
    assert len({e.key["id"] for e in reads if e.key}) > ROWS // 2
    assert len(streamed_identities(events)) == writer.changes
    status = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    (snap,) = json.loads(status.stdout)["capture"]["snapshots"]
    assert (snap["table"], snap["rows"], snap["done"]) == (TABLE, final_rows, True)


def test_snapshot_command_refuses_a_table_that_is_not_captured(env: CaptureEnv) -> None:
    config = env.write_config()
    proc = subprocess.run(
        [sys.executable, "-m", "cdc.cli", "snapshot", "--config", str(config), "public.nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "public.nope" in proc.stderr and "source.tables" in proc.stderr


def test_on_a_terminal_the_snapshot_command_shows_rows_per_second_and_eta(
    env: CaptureEnv,
) -> None:
    env.start(snapshot="never", snapshot_chunk_size=400)
    env.wait_for_slot()
    config = env.workdir / "cdcsync.yaml"
    command = shlex.join(
        [sys.executable, "-m", "cdc.cli", "snapshot", "--config", str(config), "items"]
    )
    done = subprocess.run(
        ["script", "-qefc", command, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
        check=False,
    )
    assert done.returncode == 0, done.stdout
    assert "ETA" in done.stdout and "rows/s" in done.stdout
    assert f"{TABLE}: {ROWS:,} rows" in done.stdout
    events = converge(env)
    assert len(events) == ROWS
    assert {e.value["source"]["snapshot"] for e in events if e.value} == {"incremental"}


def test_with_exactly_once_the_initial_snapshot_is_read_once_inside_committed_transactions(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    create_items(pg_dsn)
    env = EosEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, [TABLE], tmp_path)
    try:
        env.start(snapshot="initial", snapshot_chunk_size=400)
        env.wait_for_slot()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE items SET n = -1 WHERE id <= 10")
            conn.execute("DELETE FROM items WHERE id BETWEEN 11 AND 20")
        wait_progress(env, done=True)
        events = converge(env)
        committed = {p.txn for p in env.positions()}
        reads = snapshot_reads(events)
        assert reads, "no snapshot reads were published"
        # Each read sits in a Kafka transaction that committed with a position record.
        txns = {(dict(e.headers).get(TXN_HEADER) or b"").decode() for e in reads}
        assert txns <= committed, txns - committed
        read_keys = [e.key["id"] for e in reads if e.key]
        assert len(read_keys) == len(set(read_keys))  # no chunk published twice
    finally:
        env.stop_all()
