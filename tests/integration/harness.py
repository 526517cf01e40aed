"""Test harness for capture: configs, the capture process, a workload and a Kafka reader.

The capture process is the real command (``python -m cdc.cli capture``), so
tests can kill it with SIGKILL at any moment. Events are read back with
confluent-kafka's own Consumer and AvroDeserializer.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from cdc.capture.exactly_once import Position, positions_between, positions_topic


def slot_streaming(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Whether a walsender streams from ``slot`` and the slot is consistent.

    ``active`` alone is already true while the slot is being created, until its consistent
    point (PostgreSQL waits there for the transactions running at creation): a change
    committed meanwhile is not decoded, so a test must not write before this is true.
    """
    row = conn.execute(
        "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    return row is not None and bool(row[0])


def spawn_cdcsync(
    command: str, config: Path, log: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``cdcsync COMMAND --config CONFIG`` as a child process, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", command, "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def wait_while_running(
    proc: subprocess.Popen[bytes],
    log: Callable[[], str],
    what: str,
    predicate: Callable[[], bool],
    *,
    timeout: float = 60,
) -> None:
    """Poll ``predicate`` (an HTTP error counts as not yet) until true, while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"cdcsync run exited:\n{log()[-4000:]}"
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting until {what}\n{log()[-4000:]}")


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def terminate(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each live process; SIGKILL those that do not exit within 20 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class CaptureEnv:
    pg_dsn: str
    bootstrap: str
    registry_url: str
    prefix: str
    tables: list[str]
    workdir: Path
    slot: str = field(default_factory=lambda: f"s_{uuid.uuid4().hex[:10]}")
    publication: str = field(default_factory=lambda: f"p_{uuid.uuid4().hex[:10]}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The state schema, when capture shares it with a sync process (inbound markers).
    state_schema: str | None = None

    def config(self, **source_overrides: Any) -> dict[str, Any]:
        state = {} if self.state_schema is None else {"state": {"schema": self.state_schema}}
        return {
            **state,
            "source": {
                "dsn": self.pg_dsn,
                "slot": self.slot,
                "publication": self.publication,
                "tables": self.tables,
                "snapshot": "never",
                **source_overrides,
            },
            "kafka": {"bootstrap_servers": self.bootstrap, "topic_prefix": self.prefix},
            "registry": {"url": self.registry_url},
            # Every process serves its admin API; on a free port, as tests run side by side.
            "admin": {"listen": "127.0.0.1:0"},
        }

    def write_config(self, **source_overrides: Any) -> Path:
        path = self.workdir / "cdcsync.yaml"
        path.write_text(yaml.safe_dump(self.config(**source_overrides)))
        return path

    def start(self, **source_overrides: Any) -> subprocess.Popen[bytes]:
        path = self.write_config(**source_overrides)
        proc = spawn_cdcsync("capture", path, self.workdir / "capture.log")
        self.procs.append(proc)
        return proc

    def log_text(self) -> str:
        return read_log(self.workdir / "capture.log")

    def stop_all(self) -> None:
        terminate(self.procs)

    def topic(self, table: str) -> str:
        schema, _, name = table.partition(".")
        return f"{self.prefix}.{schema}.{name}"

    def confirmed_flush(self) -> int | None:
        with psycopg.connect(self.pg_dsn) as conn:
            row = conn.execute(
                "SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (self.slot,),
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def wait_for_slot(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.pg_dsn) as conn:
                if slot_streaming(conn, self.slot):
                    return
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode not in (0, -9):
                    raise AssertionError(f"capture exited {proc.returncode}:\n{self.log_text()}")
            time.sleep(0.1)
        raise AssertionError(f"capture did not start streaming:\n{self.log_text()}")

    def kill_and_restart(
        self,
        kills: int,
        rnd: random.Random,
        *,
        within: tuple[float, float],
        **source_overrides: Any,
    ) -> None:
        """kill -9 the newest capture ``kills`` times, each after a random pause ``within``,
        starting it again with ``source_overrides``."""
        for _ in range(kills):
            time.sleep(rnd.uniform(*within))
            proc = self.procs[-1]
            proc.kill()
            proc.wait()
            self.start(**source_overrides)
            self.wait_for_slot()


@dataclass
class EosEnv(CaptureEnv):
    """A capture environment whose config turns exactly-once on."""

    def config(self, **source_overrides: Any) -> dict[str, Any]:
        config = super().config(**source_overrides)
        config["kafka"]["exactly_once"] = True
        return config

    def positions(self) -> list[Position]:
        """Every record on the positions topic, read_committed, in offset order."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"positions-{self.slot}",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        try:
            return positions_between(
                consumer,
                positions_topic(self.prefix),
                self.slot.encode(),
                start=OFFSET_BEGINNING,
                timeout=30,
            )
        finally:
            consumer.close()


@dataclass(frozen=True)
class Event:
    topic: str
    partition: int
    offset: int
    key: dict[str, Any] | None
    value: dict[str, Any] | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


class EventReader:
    """Reads every message of some topics from the beginning, decoded with confluent-kafka.

    ``isolation``: the consumer's ``isolation.level`` (librdkafka's default is read_committed).
    """

    def __init__(
        self,
        bootstrap: str,
        registry_url: str,
        topics: list[str],
        *,
        isolation: str = "read_committed",
    ) -> None:
        self.topics = topics
        self.events: list[Event] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.max.bytes": 52_428_800,
                "max.partition.fetch.bytes": 52_428_800,
                "isolation.level": isolation,
            }
        )
        self._assigned: set[str] = set()
        self._deser = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))

    def _assign(self) -> None:
        missing = [t for t in self.topics if t not in self._assigned]
        if not missing:
            return
        meta = self._consumer.list_topics(timeout=10)
        parts = []
        for topic in missing:
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None or not tmeta.partitions:
                continue
            parts += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in tmeta.partitions]
            self._assigned.add(topic)
        if parts:
            self._consumer.incremental_assign(parts)

    def read_until(self, done: Callable[[list[Event]], bool], *, timeout: float) -> list[Event]:
        deadline = time.monotonic() + timeout
        while not done(self.events):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out with {len(self.events)} events")
            self._assign()
            for msg in self._consumer.consume(10000, 0.5):
                if msg.error() is not None:
                    continue
                topic = msg.topic()
                key = None
                if msg.key() is not None:
                    key = self._deser(msg.key(), SerializationContext(topic, MessageField.KEY))
                value = None
                if msg.value() is not None:
                    value = self._deser(
                        msg.value(), SerializationContext(topic, MessageField.VALUE)
                    )
                headers = tuple(msg.headers() or ())
                self.events.append(Event(topic, msg.partition(), msg.offset(), key, value, headers))
        return self.events

    def close(self) -> None:
        self._consumer.close()


def read_events(
    env: CaptureEnv, tables: list[str], *, at_least: int, timeout: float = 60
) -> list[Event]:
    """Every message of the tables' topics, read until ``at_least`` data events have arrived."""
    reader = EventReader(env.bootstrap, env.registry_url, [env.topic(t) for t in tables])
    try:
        return reader.read_until(lambda ev: len(data_events(ev)) >= at_least, timeout=timeout)
    finally:
        reader.close()


def data_events(events: list[Event]) -> list[Event]:
    return [e for e in events if e.value is not None]


def identity(event: Event) -> tuple[int, int]:
    """(commit LSN, order in transaction): the identity of an event."""
    assert event.value is not None
    return (event.value["source"]["commit_lsn"], event.value["transaction"]["total_order"])


# ---------------------------------------------------------------------------- workload

WORKLOAD_DDL = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, balance numeric(12,2),
                        updated_at timestamptz NOT NULL DEFAULT now(), tags jsonb);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount numeric(10,2), status text);
"""


@dataclass
class Expected:
    """What the workload committed: per (table, id) the ops in commit order, and final rows."""

    ops: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    final: dict[tuple[str, int], dict[str, Any] | None] = field(default_factory=dict)
    changes: int = 0


def run_workload(
    dsn: str,
    *,
    changes: int,
    seed: int = 7,
    tx_size: tuple[int, int] = (1, 20),
    stop: Callable[[], bool] | None = None,
    pace: float = 0.0,
    id_base: int = 0,
) -> Expected:
    """Commit ``changes`` random inserts/updates/deletes on customers and orders."""
    rnd = random.Random(seed)
    expected = Expected()
    live: dict[str, set[int]] = {"customers": set(), "orders": set()}
    next_id = {"customers": id_base + 1, "orders": id_base + 1}
    with psycopg.connect(dsn) as conn:
        while expected.changes < changes and not (stop and stop()):
            n = rnd.randint(*tx_size)
            pending: list[tuple[tuple[str, int], str, dict[str, Any] | None]] = []
            with conn.transaction():
                for _ in range(n):
                    table = rnd.choice(("customers", "orders"))
                    roll = rnd.random()
                    if roll < 0.6 or len(live[table]) < 5:
                        pk = next_id[table]
                        next_id[table] += 1
                        row = _insert(conn, table, pk, rnd)
                        live[table].add(pk)
                        pending.append(((table, pk), "c", row))
                    elif roll < 0.9:
                        pk = rnd.choice(sorted(live[table]))
                        row = _update(conn, table, pk, rnd)
                        pending.append(((table, pk), "u", row))
                    else:
                        pk = rnd.choice(sorted(live[table]))
                        conn.execute(f"DELETE FROM {table} WHERE id = %s", (pk,))
                        live[table].discard(pk)
                        pending.append(((table, pk), "d", None))
            for key, op, row in pending:
                expected.ops.setdefault(key, []).append(op)
                expected.final[key] = row
                expected.changes += 1
            if pace:
                time.sleep(pace)
    return expected


def _insert(
    conn: psycopg.Connection[Any], table: str, pk: int, rnd: random.Random
) -> dict[str, Any]:
    if table == "customers":
        row = {
            "id": pk,
            "name": f"c{pk}-{rnd.randint(0, 999)}",
            "balance": Decimal(rnd.randint(-(10**6), 10**6)) / 100,
        }
        conn.execute(
            "INSERT INTO customers (id, name, balance, tags) VALUES (%s, %s, %s, '[1]')",
            (pk, row["name"], row["balance"]),
        )
        return row
    row = {
        "id": pk,
        "customer_id": rnd.randint(1, 100),
        "amount": Decimal(rnd.randint(0, 10**6)) / 100,
        "status": "new",
    }
    conn.execute(
        "INSERT INTO orders VALUES (%s, %s, %s, %s)",
        (pk, row["customer_id"], row["amount"], row["status"]),
    )
    return row


def _update(
    conn: psycopg.Connection[Any], table: str, pk: int, rnd: random.Random
) -> dict[str, Any]:
    if table == "customers":
        name = f"c{pk}-{rnd.randint(0, 999)}"
        cur = conn.execute(
            "UPDATE customers SET name = %s, updated_at = now() WHERE id = %s"
            " RETURNING id, name, balance",
            (name, pk),
        )
    else:
        status = rnd.choice(("paid", "shipped", "cancelled"))
        cur = conn.execute(
            "UPDATE orders SET status = %s WHERE id = %s RETURNING id, customer_id, amount, status",
            (status, pk),
        )
    assert cur.description is not None
    names = [d.name for d in cur.description]
    fetched = cur.fetchone()
    assert fetched is not None
    return dict(zip(names, fetched, strict=True))
