"""Reconcile benchmark: rows/s checked against a PostgreSQL target.

Run: ``.venv/bin/python bench/reconcile.py [--rows 1000000] [--runs 3]``

On a throwaway local PostgreSQL (capture, the broker and the registry are not involved:
a check of a PostgreSQL target reads only the source, the state store and the target):
1. ``public.orders`` gets ``--rows`` orders of 1,000 customers, the identity map every
   customer's CRM id (the analytics mapper links each order to it);
2. ``analytics.orders`` is filled with exactly what the mapper makes of each order, in
   the PostgreSQL sink's layout, so the target equals the source;
3. per run, ``reconcile`` of the ``analytics`` integration (in this process, with
   ``rows_per_s`` out of the way and no settle pause) is timed from start to its report.
The median rows/s is printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.config import parse_config
from cdc.demo.throwaway import LocalPostgres
from cdc.ops.reconcile.runner import reconcile
from cdc.state.store import StateStore
from mappers.entity import Version
from mappers.examples import SAMPLE_SCHEMA_SQL

CUSTOMERS = 1000

TARGET_DDL = """
CREATE SCHEMA analytics;
CREATE TABLE analytics.orders (
    _cdc_key text PRIMARY KEY,
    _cdc_version bytea NOT NULL,
    order_id bigint, customer_id bigint, customer_crm_id text, amount numeric, status text
);
CREATE TABLE analytics.orders__tombstones (_cdc_key text PRIMARY KEY, _cdc_version bytea NOT NULL);
"""


def fill(dsn: str, rows: int) -> None:
    asyncio.run(_open_state(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SAMPLE_SCHEMA_SQL)
        conn.execute(TARGET_DDL)
        conn.execute(
            "INSERT INTO customers (id, name) SELECT g, 'Customer ' || g"
            " FROM generate_series(1, %s) g",
            (CUSTOMERS,),
        )
        conn.execute(
            "INSERT INTO orders (id, customer_id, amount, status)"
            " SELECT g, 1 + g %% %s, (g %% 10000) / 100.0, 'new' FROM generate_series(1, %s) g",
            (CUSTOMERS, rows),
        )
        conn.execute(
            "INSERT INTO cdcsync_state.identities (integration, entity, key, external_id)"
            " SELECT 'crm', 'contact', g::text, 'crm-' || g FROM generate_series(1, %s) g",
            (CUSTOMERS,),
        )
        conn.execute(
            "INSERT INTO analytics.orders SELECT id::text, %s, id, customer_id,"
            " 'crm-' || customer_id, amount, status FROM orders",
            (Version.from_lsn(1, 0).to_bytes(),),
        )
        conn.execute("ANALYZE")


async def _open_state(dsn: str) -> None:
    store = await StateStore.open(dsn, schema="cdcsync_state")
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="orders in the table")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    pg = LocalPostgres().start()
    try:
        dsn = pg.dsn
        started = time.monotonic()
        fill(dsn, args.rows)
        print(f"filled {args.rows:,} rows in {time.monotonic() - started:.1f}s", flush=True)
        config = parse_config(
            {
                "source": {"dsn": dsn, "tables": ["public.orders"]},
                "kafka": {"bootstrap_servers": "127.0.0.1:9", "topic_prefix": "app"},
                "registry": {"url": "http://127.0.0.1:9"},
                "state": {"schema": "cdcsync_state"},
                "integrations": {
                    "analytics": {
                        "topics": ["app.public.orders"],
                        "mapper": "mappers.examples:order_to_fact",
                        "sink": {"type": "postgres", "dsn": dsn, "table": "analytics.orders"},
                        "reconcile": {"rows_per_s": 1e12, "settle_s": 0},
                    }
                },
            }
        )
        rates: list[float] = []
        for run in range(args.runs):
            t0 = time.monotonic()
            report = asyncio.run(reconcile(config, "analytics"))
            elapsed = time.monotonic() - t0
            rates.append(report.rows_checked / elapsed)
            print(
                f"run {run + 1}: {report.rows_checked:,} rows in {elapsed:.1f}s,"
                f" result {report.result} ({report.drift_rows} keys differ)",
                flush=True,
            )
        print()
        print(f"reconcile of {args.rows:,} rows against a PostgreSQL target, {args.runs} runs")
        print(f"  {statistics.median(rates):,.0f} rows/s (median)")
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
