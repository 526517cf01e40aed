"""Replay benchmark: 200,000 captured order events replayed into the PostgreSQL sink.

Run: ``.venv/bin/python bench/replay.py [--events 200000] [--customers 1000] [--runs 3]``

On throwaway local servers (PostgreSQL, tansu, the registry):
1. the sample tables get ``--customers`` customers and ``--events`` orders (the backlog
   writer of ``bench/sync.py``); the real ``cdcsync capture`` command drains the slot into
   the broker, so every event sits in Kafka, encoded exactly as capture encodes it;
2. the identity map gets every customer's CRM id (the analytics mapper links each order to
   it), written straight into the state store: the CRM is not part of this benchmark;
3. per run, ``Replay`` of the ``analytics`` integration ``--from-beginning`` (in this
   process, no progress bar): first into an empty target (``analytics.orders`` and its
   tombstones dropped), then again into the now up-to-date target, where every event is a
   duplicate. Each is timed from ``Replay.run`` start (planning included) to its return.
Medians over runs are printed (events/s = records replayed / seconds); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sync import (  # type: ignore[import-not-found]  # bench/sync.py
    CRM_SECRET,
    EXTRA_DDL,
    PUBLICATION,
    SLOT,
    capture_backlog,
    make_config,
    write_backlog,
)

from cdc.config import Config, parse_config
from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry
from cdc.state.store import StateStore
from cdc.sync.replay import Replay, ReplayRequest, ReplaySummary
from mappers.examples import SAMPLE_SCHEMA_SQL


async def fill_identity_map(dsn: str, customers: int) -> None:
    store = await StateStore.open(dsn, schema="cdcsync_state")
    await store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cdcsync_state.identities (integration, entity, key, external_id)"
            " SELECT 'crm', 'contact', g::text, 'crm-' || g FROM generate_series(1, %s) g",
            (customers,),
        )


def empty_target(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'analytics'"
        ).fetchall()
        for (name,) in tables:
            conn.execute(f"DROP TABLE {name}")


async def timed_replay(config: Config) -> tuple[float, ReplaySummary]:
    t0 = time.perf_counter()
    summary = await Replay(config, "analytics", ReplayRequest(from_beginning=True)).run(
        asyncio.Event()
    )
    return time.perf_counter() - t0, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000, help="orders in the topic")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    pg = LocalPostgres().start()
    broker = LocalBroker().start()
    registry = LocalRegistry().start()
    workdir = Path(tempfile.mkdtemp(prefix="cdcsync-bench-replay-"))
    try:
        dsn = pg.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SAMPLE_SCHEMA_SQL)
            conn.execute(EXTRA_DDL)
            conn.execute(
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE public.customers, public.orders"
            )
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        raw = make_config(dsn, broker.bootstrap, registry.url, "http://127.0.0.1:9")
        config_path = workdir / "cdcsync.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        end = write_backlog(dsn, customers=args.customers, orders=args.events)
        captured = capture_backlog(config_path, dsn, end, workdir / "capture.log")
        print(f"captured {args.events + args.customers:,} events in {captured:.1f}s", flush=True)
        asyncio.run(fill_identity_map(dsn, args.customers))
        config = parse_config(raw, env={"CRM_SECRET": CRM_SECRET})

        empty: list[float] = []
        full: list[float] = []
        for run in range(args.runs):
            empty_target(dsn)
            elapsed, first = asyncio.run(timed_replay(config))
            empty.append(first.records / elapsed)
            elapsed2, second = asyncio.run(timed_replay(config))
            full.append(second.records / elapsed2)
            print(
                f"run {run + 1}: empty target {first.records:,} records in {elapsed:.1f}s"
                f" (applied {first.applied:,}); up-to-date target {second.records:,} records in"
                f" {elapsed2:.1f}s (applied {second.applied:,}, duplicate {second.duplicate:,},"
                f" older {second.older:,})",
                flush=True,
            )
        med = statistics.median
        print()
        print(f"replay of {args.events:,} order events into PostgreSQL, {args.runs} runs (medians)")
        print(f"  into an empty target       {med(empty):,.0f} events/s")
        print(f"  into an up-to-date target  {med(full):,.0f} events/s (all duplicates)")
    finally:
        registry.stop()
        broker.stop()
        pg.stop()


if __name__ == "__main__":
    main()
