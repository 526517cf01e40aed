"""Exactly-once capture (kafka.exactly_once): killed 20 times, each change is read once.

Read with ``isolation.level=read_committed``. Events are identified by (commit
LSN, sequence), as in test_capture_faults. The test broker (tansu) hides open
transactions from read_committed consumers but not aborted ones (its Fetch
answer lists no aborted transactions), so the reader also drops the events of
Kafka transactions that never wrote a position: each event names its Kafka
transaction in the ``cdcsync.txn`` header, and a transaction's position record
is its last message before the commit. On Apache Kafka the broker itself hides them.
The filter cannot hide a loss (a committed transaction always has its position)
nor a duplicate inside committed transactions. An aborted transaction that did
write its position stays visible on tansu; capture then skips it on restart
(its position is read back), so it is the one copy and is counted as such.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from cdc.capture.exactly_once import TXN_HEADER
from tests.integration.harness import (
    WORKLOAD_DDL,
    EosEnv,
    Event,
    EventReader,
    Expected,
    data_events,
    identity,
    run_workload,
    spawn_cdcsync,
)

TABLES = ["public.customers", "public.orders"]


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[EosEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(WORKLOAD_DDL)
    e = EosEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, TABLES, tmp_path)
    yield e
    e.stop_all()


class Writer(threading.Thread):
    """Commits the workload's transactions until stopped."""

    def __init__(self, dsn: str, *, pace: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.pace = dsn, pace
        self.stopping = threading.Event()
        self.result: Expected | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run_workload(
                self.dsn, changes=10**6, pace=self.pace, seed=11, stop=self.stopping.is_set
            )
        except BaseException as exc:
            self.error = exc


def _capture_metric(env: EosEnv, name: str) -> float:
    """A sample of the newest capture process's /metrics."""
    url = re.findall(r"admin API on (http://\S+)", env.log_text())[-1]
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in /metrics")


def _skipped_transactions(env: EosEnv) -> float:
    return _capture_metric(env, "cdcsync_capture_skipped_transactions_total")


def _txn(event: Event) -> str | None:
    for name, value in event.headers:
        if name == TXN_HEADER and value is not None:
            return value.decode()
    return None


def _read_committed(env: EosEnv, expected: Expected, *, timeout: float = 60) -> list[Event]:
    """The data events of committed Kafka transactions, once all expected changes are in."""
    reader = EventReader(
        env.bootstrap,
        env.registry_url,
        [env.topic(t) for t in TABLES],
        isolation="read_committed",
    )
    try:
        try:
            reader.read_until(
                lambda ev: len({identity(e) for e in data_events(ev)}) >= expected.changes,
                timeout=timeout,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; capture's log:\n{env.log_text()[-6000:]}") from exc
        time.sleep(1)
        events = reader.read_until(lambda ev: True, timeout=5)
    finally:
        reader.close()
    committed = {p.txn for p in env.positions()}
    assert all(_txn(e) is not None for e in events), "an event without its transaction header"
    return [e for e in data_events(events) if _txn(e) in committed]


def _assert_each_change_once(events: list[Event], expected: Expected) -> None:
    seen: dict[tuple[int, int], Event] = {}
    duplicates = []
    for e in sorted(events, key=lambda e: (e.topic, e.partition, e.offset)):
        ident = identity(e)
        if ident in seen:
            duplicates.append(ident)
        seen[ident] = e
    assert duplicates == [], f"{len(duplicates)} changes read more than once"
    assert len(seen) == expected.changes, f"{expected.changes - len(seen)} changes lost"
    ops: dict[tuple[str, int], list[str]] = {}
    for ident in sorted(seen):
        e = seen[ident]
        assert e.key is not None and e.value is not None
        ops.setdefault((e.topic.rsplit(".", 1)[1], e.key["id"]), []).append(e.value["op"])
    assert ops == expected.ops


def test_twenty_kills_under_load_leave_each_change_exactly_once_for_read_committed(
    env: EosEnv,
) -> None:
    rnd = random.Random(7)
    env.start()
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, pace=0.1)
    writer.start()
    env.kill_and_restart(20, rnd, within=(0.15, 0.7))
    writer.stopping.set()
    writer.join(60)
    assert writer.error is None and writer.result is not None
    _assert_each_change_once(_read_committed(env, writer.result), writer.result)


def test_under_kills_each_committed_transaction_has_one_begin_and_one_end_that_counts_it(
    env: EosEnv,
) -> None:
    # provide_transaction_metadata with exactly-once: BEGIN and END travel in the Kafka
    # transaction of the events they frame, so read_committed sees each once, right.
    rnd = random.Random(5)
    env.start(provide_transaction_metadata=True)
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, pace=0.1)
    writer.start()
    env.kill_and_restart(6, rnd, within=(0.2, 0.8), provide_transaction_metadata=True)
    writer.stopping.set()
    writer.join(60)
    assert writer.error is None and writer.result is not None
    events = _read_committed(env, writer.result)
    _assert_each_change_once(events, writer.result)
    # As Debezium's, an event's transaction id is "xid:its own LSN", BEGIN's and END's
    # "xid:the first change's LSN": they are matched by xid.
    per_transaction: dict[int, int] = {}
    for event in events:
        assert event.value is not None
        xid = event.value["source"]["txId"]
        assert event.value["transaction"]["id"].startswith(f"{xid}:")
        per_transaction[xid] = per_transaction.get(xid, 0) + 1

    committed = {p.txn for p in env.positions()}
    reader = EventReader(
        env.bootstrap, env.registry_url, [f"{env.prefix}.transaction"], isolation="read_committed"
    )
    try:
        frames = reader.read_until(
            lambda ev: (
                sum(1 for e in ev if e.value and e.value["status"] == "END") >= len(per_transaction)
            ),
            timeout=60,
        )
        time.sleep(1)
        frames = reader.read_until(lambda ev: True, timeout=5)
    finally:
        reader.close()
    begins: dict[int, int] = {}
    ends: dict[int, list[int]] = {}
    for frame in frames:
        assert frame.value is not None
        if _txn(frame) not in committed:
            continue  # an aborted Kafka transaction that tansu still shows (module docstring)
        xid = int(frame.value["id"].split(":")[0])
        if frame.value["status"] == "BEGIN":
            begins[xid] = begins.get(xid, 0) + 1
        else:
            ends.setdefault(xid, []).append(frame.value["event_count"])
    assert set(per_transaction) <= set(begins), "a transaction's events without its BEGIN"
    assert {x for x, n in begins.items() if n != 1} == set(), "a BEGIN read more than once"
    assert set(ends) == set(begins), "a BEGIN without its END, or an END without its BEGIN"
    counts = {xid: counted for xid, counted in ends.items() if xid in per_transaction}
    assert counts == {xid: [n] for xid, n in per_transaction.items()}
    assert all(counted == [0] for xid, counted in ends.items() if xid not in per_transaction)


def test_restart_behind_kafka_skips_transactions_already_committed(env: EosEnv) -> None:
    env.start()
    env.wait_for_slot()
    # A copy of the slot at its current position: restoring it later rewinds capture.
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_copy_logical_replication_slot(%s, %s)", (env.slot, env.slot + "_bak")
        )
    first = run_workload(env.pg_dsn, changes=300, seed=3)
    _read_committed(env, first)
    env.stop_all()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (env.slot,))
        conn.execute(
            "SELECT pg_copy_logical_replication_slot(%s, %s)", (env.slot + "_bak", env.slot)
        )
        conn.execute("SELECT pg_drop_replication_slot(%s)", (env.slot + "_bak",))
    # PostgreSQL now sends every transaction of the workload again.
    env.start()
    env.wait_for_slot()
    more = run_workload(env.pg_dsn, changes=100, seed=4, id_base=100_000)
    total = Expected(changes=first.changes + more.changes)
    for src in (first, more):
        for key, ops in src.ops.items():
            total.ops.setdefault(key, []).extend(ops)
    _assert_each_change_once(_read_committed(env, total), total)
    assert "already in Kafka" in env.log_text()
    assert _skipped_transactions(env) > 0


def test_a_producer_fenced_mid_transaction_restarts_capture_within_seconds(env: EosEnv) -> None:
    env.start()
    env.wait_for_slot()
    writer = Writer(env.pg_dsn, pace=0.002)
    writer.start()
    time.sleep(1.5)
    # Another producer with capture's transactional.id fences capture's producer while the
    # writer keeps capture inside Kafka transactions. The test broker never answers a fenced
    # producer's abort, nor its commit when the fence lands during one (it closes the
    # connection instead of saying "fenced"): capture must not wait the transaction timeout
    # (60 s) for either, so every change is in within 30 s.
    usurper = Producer(
        {"bootstrap.servers": env.bootstrap, "transactional.id": f"cdcsync-{env.prefix}-{env.slot}"}
    )
    usurper.init_transactions(30)
    time.sleep(1.5)
    writer.stopping.set()
    writer.join()
    assert writer.error is None and writer.result is not None
    _assert_each_change_once(_read_committed(env, writer.result, timeout=30), writer.result)
    log = env.log_text()
    assert "capture interrupted" in log, log
    assert env.procs[-1].poll() is None, log


def test_a_streamed_transaction_is_published_whole_in_one_kafka_transaction(env: EosEnv) -> None:
    # A tiny decoding memory makes PostgreSQL stream the big transaction in chunks.
    path = env.write_config()
    env.procs.append(
        spawn_cdcsync(
            "capture",
            path,
            env.workdir / "capture.log",
            env={"PGOPTIONS": "-c logical_decoding_work_mem=64kB"},
        )
    )
    env.wait_for_slot()
    rows = 3000
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO customers (id, name) VALUES (-1, 'before')")
        conn.execute(
            "INSERT INTO orders SELECT g, 1, 2.50, repeat('x', 200) FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("INSERT INTO customers (id, name) VALUES (-2, 'after')")
    expected = Expected(changes=rows + 2)
    expected.ops = {("orders", i): ["c"] for i in range(1, rows + 1)}
    expected.ops.update({("customers", -1): ["c"], ("customers", -2): ["c"]})
    events = _read_committed(env, expected)
    _assert_each_change_once(events, expected)
    big = {_txn(e) for e in events if e.topic == env.topic("public.orders")}
    assert len(big) == 1, f"the transaction was split over {len(big)} Kafka transactions"
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while True:  # slot statistics are reported a little after decoding
            row = conn.execute(
                "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = %s",
                (env.slot,),
            ).fetchone()
            if (row is not None and row[0] > 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert row is not None and row[0] > 0, "PostgreSQL did not stream the transaction"


def test_stopping_inside_a_large_transaction_confirms_nothing_of_the_aborted_kafka_one(
    env: EosEnv,
) -> None:
    # A large transaction is open while small ones commit, then it commits: PostgreSQL sends
    # the small ones, then at once the large one (decoded meanwhile), so with a long
    # transaction_max_ms they share one open Kafka transaction. Capture is stopped (SIGTERM)
    # while the large one comes in and aborts that Kafka transaction on the way out. Kafka
    # had acknowledged the small transactions' events, but they are aborted: confirming them
    # to the slot would lose them. A new capture must send them again, each once.
    config = env.config()
    config["kafka"]["transaction_max_ms"] = 600_000
    config["kafka"]["transaction_max_events"] = 10_000_000
    path = env.workdir / "long-transactions.yaml"
    path.write_text(yaml.safe_dump(config))
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (env.slot,))
        conn.execute(f"CREATE PUBLICATION {env.publication} FOR TABLE customers, orders")
    big = range(1_000_000, 1_300_000)
    with psycopg.connect(env.pg_dsn) as conn:  # one transaction, committed on leaving
        conn.execute(
            "INSERT INTO orders SELECT g, 1, 2.50, 'big' FROM generate_series(%s, %s) g",
            (big.start, big.stop - 1),
        )
        expected = run_workload(env.pg_dsn, changes=300, seed=5, tx_size=(1, 5))
    expected.changes += len(big)
    expected.ops.update({("orders", i): ["c"] for i in big})
    # Decoding memory large enough that PostgreSQL sends the large transaction unstreamed.
    env.procs.append(
        spawn_cdcsync(
            "capture",
            path,
            env.workdir / "capture.log",
            env={"PGOPTIONS": "-c logical_decoding_work_mem=1GB"},
        )
    )
    deadline = time.monotonic() + 60
    while True:  # until capture is well inside the large transaction
        assert time.monotonic() < deadline, env.log_text()
        try:
            if _capture_metric(env, "cdcsync_captured_events_total") > 10_000:
                break
        except (IndexError, httpx.HTTPError, AssertionError):
            pass  # not serving yet
        time.sleep(0.05)
    capture = env.procs[-1]
    capture.send_signal(signal.SIGTERM)
    capture.wait(30)
    assert "aborting" in env.log_text().lower() or capture.returncode == 0, env.log_text()
    env.start()
    env.wait_for_slot()
    _assert_each_change_once(_read_committed(env, expected, timeout=120), expected)
