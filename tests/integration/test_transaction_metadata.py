"""Debezium's transaction metadata topic under kill -9: every transaction framed, counts right.

With ``provide_transaction_metadata`` capture writes a BEGIN before a transaction's events
and an END after them on ``{prefix}.transaction``. Capture is killed with SIGKILL at
random moments while a writer commits small transactions over two tables (and some that
only truncate, which are not published but still framed); after it restarts from the
slot, re-sent transactions repeat their records (at-least-once, as Debezium), so:

- every transaction whose events reached Kafka has a BEGIN and an END, with the same xid;
- every END counts exactly the distinct events of its transaction, per table;
- a truncate-only transaction has BEGIN and END with 0 events.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.harness import CaptureEnv, EventReader, data_events, identity

TABLES = ["public.tm_a", "public.tm_b", "public.tm_done"]
TRANSACTIONS = 150


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for table in ("tm_a", "tm_b", "tm_done"):
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")  # type: ignore[arg-type]
    e = CaptureEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, TABLES, tmp_path)
    yield e
    e.stop_all()


def write(dsn: str, truncates: list[int], errors: list[BaseException]) -> None:
    """Small transactions of 1 to 4 rows over tm_a and tm_b; every 25th only truncates."""
    try:
        _write(dsn, truncates)
    except BaseException as exc:
        errors.append(exc)


def _write(dsn: str, truncates: list[int]) -> None:
    rnd = random.Random(3)
    next_id = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in range(TRANSACTIONS):
            with conn.transaction():
                if n % 25 == 24:
                    conn.execute("TRUNCATE tm_b")
                    row = conn.execute("SELECT txid_current()").fetchone()
                    assert row is not None
                    truncates.append(int(row[0]))
                    continue
                for _ in range(rnd.randint(1, 4)):
                    next_id += 1
                    table = rnd.choice(["tm_a", "tm_b"])
                    conn.execute(
                        f"INSERT INTO {table} VALUES (%s, %s)",  # type: ignore[arg-type]
                        (next_id, n),
                    )
            time.sleep(0.01)
        conn.execute("INSERT INTO tm_done VALUES (1)")


def test_every_transaction_is_framed_by_begin_and_end_with_its_counts_across_kill_9(
    env: CaptureEnv,
) -> None:
    env.start(provide_transaction_metadata=True)
    env.wait_for_slot()
    truncates: list[int] = []
    errors: list[BaseException] = []
    writer = threading.Thread(target=write, args=(env.pg_dsn, truncates, errors))
    writer.start()
    rnd = random.Random(7)
    for _ in range(3):  # kill -9, then start again with the same settings
        time.sleep(rnd.uniform(0.3, 0.8))
        env.procs[-1].kill()
        env.procs[-1].wait()
        env.start(provide_transaction_metadata=True)
        env.wait_for_slot()
    writer.join(120)
    assert not writer.is_alive()
    assert errors == []

    transactions = f"{env.prefix}.transaction"
    reader = EventReader(
        env.bootstrap, env.registry_url, [*(env.topic(t) for t in TABLES), transactions]
    )
    try:
        events = reader.read_until(
            lambda ev: (
                any(e.topic == env.topic("public.tm_done") for e in ev)
                and any(
                    e.topic == transactions
                    and e.value is not None
                    and e.value["status"] == "END"
                    and {"data_collection": "public.tm_done", "event_count": 1}
                    in e.value["data_collections"]
                    for e in ev
                )
            ),
            timeout=120,
        )
    finally:
        reader.close()

    # The distinct events of each transaction, per table.
    counted: dict[int, Counter[str]] = defaultdict(Counter)
    seen: set[tuple[int, int]] = set()
    for event in data_events(events):
        if event.topic == transactions or identity(event) in seen:
            continue
        seen.add(identity(event))
        assert event.value is not None
        source = event.value["source"]
        counted[source["txId"]][f"{source['schema']}.{source['table']}"] += 1

    begins: dict[int, int] = {}
    ends: dict[int, list[dict[str, int]]] = defaultdict(list)
    for event in events:
        if event.topic != transactions:
            continue
        assert event.value is not None and event.key == {"id": event.value["id"]}
        xid = int(event.value["id"].split(":")[0])
        if event.value["status"] == "BEGIN":
            begins.setdefault(xid, len(begins))
        else:
            assert xid in begins, f"END of {xid} before any BEGIN"
            per_table = {
                c["data_collection"]: c["event_count"] for c in event.value["data_collections"]
            }
            assert event.value["event_count"] == sum(per_table.values())
            ends[xid].append(per_table)

    assert len(counted) > TRANSACTIONS // 2
    for xid, per_table in counted.items():
        assert xid in begins and ends[xid], f"transaction {xid} is not framed"
        for end in ends[xid]:  # a re-sent transaction repeats its END, with the same counts
            assert end == dict(per_table), xid
    for xid in truncates:
        assert ends[xid] and all(end == {} for end in ends[xid]), xid
