"""Unchanged TOAST values where no earlier event holds them: the topic still equals the table.

pgoutput leaves an unchanged out-of-line (TOAST) value out of an update's new tuple; the
event carries Debezium's placeholder and consumers keep the value they had. Two places
have no earlier value to keep: a snapshot read dropped because its key changed while its
chunk was read (the read was the value's only carrier), and the create of a primary-key
change. Real PostgreSQL, broker, registry and ``cdcsync capture``; ``body`` is stored
out of line (``STORAGE EXTERNAL``) and never changes, while a writer keeps updating ``n``
of a few hot rows during the initial snapshot.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.harness import CaptureEnv, Event, EventReader

TABLE = "public.docs"
ROWS = 120


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE docs (id int PRIMARY KEY, n bigint NOT NULL, body text)")
        conn.execute("ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
        conn.execute(
            "INSERT INTO docs SELECT i, 0, (SELECT string_agg(md5(i::text || ':' || j), '')"
            " FROM generate_series(1, 100) j) FROM generate_series(1, %s) i",
            (ROWS,),
        )
    e = CaptureEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, [TABLE], tmp_path)
    yield e
    e.stop_all()


class HotWriter(threading.Thread):
    """Updates ``n`` (never ``body``) of random rows, a few per transaction, until stopped."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rnd = random.Random(7)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    ids = [rnd.randint(1, ROWS) for _ in range(4)]
                    conn.execute("UPDATE docs SET n = n + 1 WHERE id = ANY(%s)", (ids,))
                    time.sleep(0.003)
        except BaseException as exc:
            self.error = exc


def table_state(dsn: str) -> dict[int, tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id, n, body FROM docs").fetchall()
    return {pk: (n, body) for pk, n, body in rows}


PLACEHOLDER = "__debezium_unavailable_value"


def latest_per_key(events: list[Event]) -> dict[int, tuple[int, str]]:
    """What a consumer holds after the events: the placeholder keeps the value it had
    (none if no earlier event of the key carried one)."""
    state: dict[int, tuple[int, str]] = {}
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        assert e.key is not None
        after = None if e.value is None else e.value["after"]
        if after is None:
            state.pop(e.key["id"], None)
            continue
        body = after["body"]
        if body == PLACEHOLDER:
            body = state.get(e.key["id"], (0, PLACEHOLDER))[1]
        state[e.key["id"]] = (after["n"], body)
    return state


def assert_topic_equals_table(env: CaptureEnv) -> list[Event]:
    expected = table_state(env.pg_dsn)
    reader = EventReader(env.bootstrap, env.registry_url, [env.topic(TABLE)])
    try:
        return reader.read_until(lambda ev: latest_per_key(ev) == expected, timeout=90)
    except AssertionError:
        got = latest_per_key(reader.events)
        wrong = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        sample = [
            (k, expected.get(k, (None, ""))[1][:20], got.get(k, (None, ""))[1][:30])
            for k in wrong[:3]
        ]
        raise AssertionError(
            f"{len(wrong)} of {len(expected)} keys differ (key, table body, topic body): "
            f"{sample}\n{env.log_text()[-3000:]}"
        ) from None
    finally:
        reader.close()


def test_rows_whose_snapshot_read_was_dropped_for_a_toast_placeholder_are_read_again(
    env: CaptureEnv,
) -> None:
    # The writer is busy before capture starts: the snapshot's first chunk begins as soon
    # as the slot is consistent, so a writer started after that could miss every chunk.
    writer = HotWriter(env.pg_dsn)
    writer.start()
    env.start(snapshot="initial", snapshot_chunk_size=10)
    env.wait_for_slot()
    deadline = time.monotonic() + 120
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        while True:
            try:
                row = conn.execute(
                    "SELECT done FROM cdcsync.snapshot_progress WHERE table_name = %s", (TABLE,)
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if row == (True,):
                break
            assert time.monotonic() < deadline, env.log_text()[-3000:]
            time.sleep(0.1)
    writer.stop.set()
    writer.join(30)
    assert writer.error is None
    events = assert_topic_equals_table(env)
    # The seam was exercised: some keys' first event is a placeholder update, whose
    # read was dropped and came again after it.
    first: dict[int, Event] = {}
    for e in sorted(events, key=lambda e: (e.partition, e.offset)):
        if e.key is not None and e.value is not None:
            first.setdefault(e.key["id"], e)
    seam = [k for k, e in first.items() if e.value and e.value["after"]["body"] == PLACEHOLDER]
    assert seam, "no read was dropped for a placeholder: nothing was proven"


def test_the_new_key_of_a_primary_key_change_gets_its_unchanged_toast_value(
    env: CaptureEnv,
) -> None:
    env.start(snapshot="never")
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE docs SET id = id + 1000, n = n + 1 WHERE id IN (3, 4)")
        conn.execute("UPDATE docs SET n = n + 1 WHERE id = 5")  # an ordinary toasted update
    expected = table_state(env.pg_dsn)
    reader = EventReader(env.bootstrap, env.registry_url, [env.topic(TABLE)])
    try:
        events = reader.read_until(
            lambda ev: all(latest_per_key(ev).get(k) == expected[k] for k in (1003, 1004)),
            timeout=60,
        )
    except AssertionError:
        raise AssertionError(f"{latest_per_key(reader.events)}\n{env.log_text()[-3000:]}") from None
    finally:
        reader.close()
    creates = [e for e in events if e.key and e.key["id"] in (1003, 1004)]
    assert [e.value["op"] for e in creates if e.value][:2] == ["c", "c"]  # then the re-reads
