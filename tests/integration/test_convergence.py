"""Last writer wins, proven by generated schedules: every target converges to the source.

One ``cdcsync run`` (capture and sync in one process) against real PostgreSQL, the broker
and the registry feeds three integrations of one table, ``public.lww_items``, through one
declarative mapping (``item`` keyed by ``id``; its ``version_column: updated_at`` must not
change anything):

- ``pg``: the PostgreSQL sink (``public.lww_target_items``);
- ``http``: the HTTP sink against ``tests.naive_target.NaiveTarget``, which applies whatever
  arrives in arrival order with no version check of its own;
- ``kafka``: the Kafka sink, read from the beginning as compaction leaves it (the last
  record per key; a tombstone removes the key).

Hypothesis generates schedules of steps: transactions of inserts, updates, deletes, a
delete and re-insert of one key, primary-key changes, writes setting ``updated_at`` an hour
ahead or behind (as an inbound write from a skewed clock would); two overlapping
transactions committed in the reverse order of their start; a re-insert in a transaction
that began before another one deleted the key; ``cdcsync replay INTEGRATION
--from-beginning`` running beside live sync; ``kill -9`` of the process and a restart
(re-delivering what was not committed); a bulk step, one transaction over 600 keys
written while the ``pg`` integration is paused, so that it arrives as a backlog whose
batches the PostgreSQL sink writes through COPY (the ``copied`` figure printed at the end
counts those rows on the sink's last connection). After each schedule, once every replay
ended, every target must equal the mapping of the source's final state (``SELECT`` of the
table).

Size: ``LWW_SCHEDULES`` schedules (default 6 in CI, about 2 minutes on 2 cores; each has
up to 12 steps, and at most one kill). A longer run::

    LWW_SCHEDULES=200 CI=true PYTHONPATH=. pytest -q -s tests/integration/test_convergence.py

(it prints the schedules and steps run; 25 schedules, 179 steps: 137 s, no divergence).
On the versioning by ``updated_at`` it failed with ``[kill, late_reinsert 1]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.demo.throwaway import free_port
from tests.fix_pg import drop_database
from tests.integration.harness import slot_streaming, spawn_cdcsync, terminate
from tests.naive_target import NaiveTarget

SCHEDULES = int(os.environ.get("LWW_SCHEDULES", "6"))
KEYS = range(1, 7)
BULK_KEYS = range(100, 1300)  # a bulk step's keys: enough for the PostgreSQL sink's COPY path
BULK_ROWS = 600
TABLE = "public.lww_items"
TARGET_TABLE = "public.lww_target_items"
INTEGRATIONS = ("pg", "http", "kafka")
QUIESCENCE_S = 90.0


@dataclass
class Env:
    dsn: str
    bootstrap: str
    prefix: str
    workdir: Path
    target: NaiveTarget
    config_path: Path
    admin_port: int
    run: subprocess.Popen[bytes] | None = None
    replays: list[subprocess.Popen[bytes]] = field(default_factory=list)
    figures: dict[str, int] = field(
        default_factory=lambda: {"schedules": 0, "steps": 0, "bulk": 0, "copied": 0}
    )

    @property
    def kafka_topic(self) -> str:
        return f"{self.prefix}.lww.items"

    def start(self) -> None:
        self.run = spawn_cdcsync("run", self.config_path, self.workdir / "run.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with psycopg.connect(self.dsn) as conn:
                if slot_streaming(conn, self.slot):
                    return
            assert self.run.poll() is None, self.log()
            time.sleep(0.1)
        raise AssertionError(f"cdcsync run did not start streaming:\n{self.log()}")

    @contextmanager
    def paused(self, integration: str) -> Iterator[None]:
        """``integration`` consumes nothing inside the block (the admin API's pause), so
        what the block writes reaches it afterwards as one backlog."""
        self._control(integration, "pause")
        try:
            yield
        finally:
            self._control(integration, "resume")

    def _control(self, integration: str, action: str) -> None:
        url = f"http://127.0.0.1:{self.admin_port}/integrations/{integration}/{action}"
        deadline = time.monotonic() + 30
        while True:  # the sync roles may still be starting after a restart
            response = httpx.post(url, timeout=5)
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert response.status_code == 200, f"{action}: {response.text}\n{self.log()}"

    def wait_captured(self, conn: psycopg.Connection[Any]) -> None:
        """Wait until capture has confirmed everything committed so far (it is in Kafka)."""
        end = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert end is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots WHERE slot_name = %s",
                (end[0], self.slot),
            ).fetchone()
            conn.commit()
            if row and row[0]:
                return
            time.sleep(0.05)
        raise AssertionError(f"capture did not confirm {end[0]}:\n{self.log()}")

    @property
    def slot(self) -> str:
        return f"lww_{self.prefix.replace('.', '_').replace('-', '_')}"

    def kill_and_restart(self) -> None:
        assert self.run is not None
        self.run.kill()
        self.run.wait()
        self.start()

    def replay(self, name: str) -> None:
        with (self.workdir / "replay.log").open("ab") as out:
            self.replays.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "cdc.cli",
                        "replay",
                        "--config",
                        str(self.config_path),
                        name,
                        "--from-beginning",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )

    def log(self) -> str:
        path = self.workdir / "run.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""


def _config(env: Env) -> dict[str, Any]:
    mapping = {
        "entity": "item",
        "key": "id",
        "fields": {"name": "name", "n": "n"},
        "version_column": "updated_at",
    }
    topic = f"{env.prefix}.public.lww_items"
    retry = {"attempts": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.5}
    slot = f"lww_{env.prefix.replace('.', '_').replace('-', '_')}"
    return {
        "source": {
            "dsn": env.dsn,
            "slot": slot,
            "publication": f"pub_{slot}",
            "tables": [TABLE],
            "snapshot": "never",
        },
        "kafka": {"bootstrap_servers": env.bootstrap, "topic_prefix": env.prefix},
        "registry": {"url": os.environ["LWW_REGISTRY_URL"]},
        "admin": {"listen": f"127.0.0.1:{env.admin_port}"},
        "state": {"schema": f"state_{slot}"},
        "integrations": {
            "pg": {
                "topics": [topic],
                "mapper": mapping,
                "retry": retry,
                "sink": {"type": "postgres", "dsn": env.dsn, "table": TARGET_TABLE},
            },
            "http": {
                "topics": [topic],
                "mapper": mapping,
                "retry": retry,
                "sink": {"type": "http", "url": env.target.url + "/item/{key}", "timeout_s": 5},
            },
            "kafka": {
                "topics": [topic],
                "mapper": mapping,
                "retry": retry,
                "sink": {"type": "kafka", "topic": env.kafka_topic},
            },
        },
    }


@pytest.fixture(scope="module")
def env(
    pg_server: Any,
    kafka_bootstrap: str,
    registry_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    os.environ["LWW_REGISTRY_URL"] = registry_url
    prefix = f"lww{uuid.uuid4().hex[:8]}"
    dbname = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    pg_dsn = pg_server.dsn_for(dbname)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TARGET_TABLE}, {TARGET_TABLE}__tombstones")
        conn.execute(
            f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, name text NOT NULL,"
            " n integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            f"CREATE TABLE {TARGET_TABLE} (_cdc_key text PRIMARY KEY, _cdc_version bytea NOT NULL,"
            " name text, n bigint)"
        )
    workdir = tmp_path_factory.mktemp("lww")
    with NaiveTarget() as target:
        built = Env(
            pg_dsn, kafka_bootstrap, prefix, workdir, target, workdir / "cdcsync.yaml", free_port()
        )
        built.config_path.write_text(yaml.safe_dump(_config(built)))
        built.start()
        try:
            yield built
        finally:
            terminate([*built.replays, *([built.run] if built.run else [])])
            drop_database(pg_server.dsn, dbname)
            print(f"convergence figures: {built.figures}")


# --------------------------------------------------------------------------- schedules

keys = st.sampled_from(list(KEYS))
names = st.text("abcdefgh", min_size=1, max_size=4)
row_ops = st.one_of(
    st.tuples(st.just("upsert"), keys, names),
    st.tuples(st.just("update"), keys, names),
    st.tuples(st.just("delete"), keys, st.just("")),
    st.tuples(st.just("reinsert"), keys, names),
    st.tuples(st.just("rekey"), keys, st.sampled_from([str(k) for k in KEYS])),
    st.tuples(st.just("ahead"), keys, names),
    st.tuples(st.just("behind"), keys, names),
)
steps = st.one_of(
    st.tuples(st.just("tx"), st.lists(row_ops, min_size=1, max_size=5)),
    st.tuples(st.just("overlap"), st.lists(row_ops, min_size=1, max_size=3), st.booleans()),
    st.tuples(st.just("late_reinsert"), keys, names),
    st.tuples(st.just("replay"), st.sampled_from(INTEGRATIONS)),
    st.tuples(st.just("pause"), st.floats(0, 0.3)),
    st.tuples(
        st.just("bulk"),
        st.sampled_from(["upsert", "update", "delete"]),
        st.integers(0, len(BULK_KEYS) - BULK_ROWS),
        names,
    ),
)


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    chosen: list[tuple[Any, ...]] = draw(st.lists(steps, min_size=1, max_size=12))
    if draw(st.integers(0, 3)) == 0:
        chosen.insert(draw(st.integers(0, len(chosen))), ("kill",))
    return chosen


def _row_op(cur: psycopg.Cursor[Any], op: tuple[str, int, str], n: int) -> None:
    kind, key, arg = op
    t = TABLE
    if kind == "upsert":
        cur.execute(
            f"INSERT INTO {t} (id, name, n) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, n = excluded.n,"
            " updated_at = now()",
            (key, arg, n),
        )
    elif kind == "update":
        cur.execute(
            f"UPDATE {t} SET name = %s, n = n + 1, updated_at = now() WHERE id = %s", (arg, key)
        )
    elif kind == "delete":
        cur.execute(f"DELETE FROM {t} WHERE id = %s", (key,))
    elif kind == "reinsert":
        cur.execute(f"DELETE FROM {t} WHERE id = %s", (key,))
        cur.execute(f"INSERT INTO {t} (id, name, n) VALUES (%s, %s, %s)", (key, arg, n))
    elif kind == "rekey":
        cur.execute(
            f"UPDATE {t} SET id = %s WHERE id = %s"
            f" AND NOT EXISTS (SELECT 1 FROM {t} WHERE id = %s)",
            (int(arg), key, int(arg)),
        )
    elif kind in ("ahead", "behind"):
        shift = "+" if kind == "ahead" else "-"
        cur.execute(
            f"INSERT INTO {t} (id, name, n, updated_at) VALUES (%s, %s, %s,"
            f" now() {shift} interval '1 hour')"
            " ON CONFLICT (id) DO UPDATE SET name = excluded.name, n = excluded.n,"
            " updated_at = excluded.updated_at",
            (key, arg, n),
        )


def _run_step(env: Env, step: tuple[Any, ...], n: int) -> None:
    kind = step[0]
    if kind == "tx":
        with psycopg.connect(env.dsn) as conn, conn.cursor() as cur:
            for op in step[1]:
                _row_op(cur, op, n)
    elif kind == "overlap":
        # Two transactions on disjoint keys: the one that began first commits last.
        ops: list[tuple[str, int, str]] = step[1]
        first = [op for op in ops if op[1] % 2 == 1 and op[0] != "rekey"]
        second = [op for op in ops if op[1] % 2 == 0 and op[0] != "rekey"]
        with psycopg.connect(env.dsn) as a, psycopg.connect(env.dsn) as b:
            with a.cursor() as ca, b.cursor() as cb:
                ca.execute("SELECT now()")
                for op in first:
                    _row_op(ca, op, n)
                cb.execute("SELECT now()")
                for op in second:
                    _row_op(cb, op, n + 1)
            if step[2]:
                b.commit()
                a.commit()
            else:
                a.commit()
                b.commit()
    elif kind == "late_reinsert":
        # The re-insert's transaction (and its updated_at) began before the delete committed.
        _, key, name = step
        with psycopg.connect(env.dsn) as late, psycopg.connect(env.dsn) as deleter:
            late.execute("SELECT now()")
            deleter.execute(f"DELETE FROM {TABLE} WHERE id = %s", (key,))
            deleter.commit()
            late.execute(
                f"INSERT INTO {TABLE} (id, name, n) VALUES (%s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, n = excluded.n",
                (key, name, n),
            )
            late.commit()
    elif kind == "bulk":
        # One transaction over BULK_ROWS keys: consumed (and replayed) in batches large
        # enough for the PostgreSQL sink to write them through COPY.
        _, op, offset, name = step
        low = BULK_KEYS[offset]
        high = low + BULK_ROWS - 1
        with env.paused("pg"), psycopg.connect(env.dsn) as conn:
            if op == "upsert":
                conn.execute(
                    f"INSERT INTO {TABLE} (id, name, n)"
                    " SELECT g, %s || g, %s FROM generate_series(%s::int, %s::int) g"
                    " ON CONFLICT (id) DO UPDATE SET name = excluded.name, n = excluded.n,"
                    " updated_at = now()",
                    (name, n, low, high),
                )
            elif op == "update":
                conn.execute(
                    f"UPDATE {TABLE} SET name = %s || id, n = n + 1, updated_at = now()"
                    " WHERE id BETWEEN %s AND %s",
                    (name, low, high),
                )
            else:
                conn.execute(
                    f"DELETE FROM {TABLE} WHERE id BETWEEN %s AND %s AND id %% 3 <> 0",
                    (low, high),
                )
            conn.commit()
            env.wait_captured(conn)
        env.figures["bulk"] += 1
    elif kind == "replay":
        env.replay(step[1])
    elif kind == "pause":
        time.sleep(step[1])
    elif kind == "kill":
        env.kill_and_restart()


# --------------------------------------------------------------------------- targets


def _expected(env: Env) -> dict[str, dict[str, Any]]:
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(f"SELECT id, name, n FROM {TABLE}").fetchall()
    return {str(i): {"name": name, "n": n} for i, name, n in rows}


def _postgres_target(env: Env) -> dict[str, dict[str, Any]]:
    with psycopg.connect(env.dsn) as conn:
        rows = conn.execute(f"SELECT _cdc_key, name, n FROM {TARGET_TABLE}").fetchall()
    return {k: {"name": name, "n": n} for k, name, n in rows}


def _kafka_target(env: Env) -> dict[str, dict[str, Any]]:
    """The topic as compaction leaves it: the last record per key, tombstones removing it."""
    consumer = Consumer(
        {
            "bootstrap.servers": env.bootstrap,
            "group.id": f"lww-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    state: dict[str, dict[str, Any]] = {}
    try:
        metadata = consumer.list_topics(env.kafka_topic, timeout=10).topics[env.kafka_topic]
        partitions = list(metadata.partitions)
        consumer.assign([TopicPartition(env.kafka_topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        deadline = time.monotonic() + 20
        while len(at_end) < len(partitions) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                at_end.add(msg.partition() or 0)
                continue
            key = (msg.key() or b"").decode()
            value = msg.value()
            if value is None:
                state.pop(key, None)
            else:
                body = json.loads(value)
                state[key] = {"name": body["name"], "n": body["n"]}
    finally:
        consumer.close()
    return state


def _targets(env: Env) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        "pg": _postgres_target(env),
        "http": {
            k: {"name": v.get("name"), "n": v.get("n")} for k, v in env.target.state().items()
        },
        "kafka": _kafka_target(env),
    }


def _staged_rows(env: Env) -> int:
    """Rows the PostgreSQL sink has written through COPY on its current connection (the
    staging table's insert count; it starts again when the sink reconnects)."""
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_all_tables"
            " WHERE relname = '_cdc_stage'"
        ).fetchone()
    return int(row[0]) if row else 0


def _quiesce(env: Env) -> None:
    for proc in env.replays:
        assert proc.wait(120) == 0, (env.workdir / "replay.log").read_text(errors="replace")
    env.replays.clear()
    expected = _expected(env)
    deadline = time.monotonic() + QUIESCENCE_S
    while True:
        found = _targets(env)
        if all(found[name] == expected for name in INTEGRATIONS):
            env.figures["copied"] = max(env.figures["copied"], _staged_rows(env))
            return
        if time.monotonic() > deadline:
            for name in INTEGRATIONS:
                assert found[name] == expected, f"{name} diverged from the source\n{env.log()}"
        time.sleep(0.5)


@settings(
    max_examples=SCHEDULES,
    deadline=None,
    derandomize=os.environ.get("LWW_SCHEDULES") is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(schedule=schedules())
def test_every_target_converges_to_the_mapping_of_the_source_whatever_the_schedule(
    env: Env, schedule: list[tuple[Any, ...]]
) -> None:
    for number, step in enumerate(schedule):
        _run_step(env, step, number)
    _quiesce(env)
    env.figures["schedules"] += 1
    env.figures["steps"] += len(schedule)
