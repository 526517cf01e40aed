"""Inbound benchmark: how fast the endpoint accepts external changes, and how fast they apply.

Run: ``.venv/bin/python bench/inbound.py [--requests 3000] [--concurrency 32] [--runs 3]
[--customers 1000] [--no-apply]``

On throwaway local servers (PostgreSQL, tansu), per run:
1. accept: the admin API with the example CRM integration's inbound endpoint runs in its
   own process (``AdminApi.serve``, as in ``cdcsync sync``); this process sends
   ``--requests`` signed ``PUT /inbound/crm/contact/{id}`` requests, ``--concurrency`` at a
   time (aiohttp), each with its own Idempotency-Key, over ``--customers`` known contacts.
   A request counts when answered 202, i.e. after Kafka acknowledged the record (acks=all).
   Reported: accepted requests/s (wall time of the whole batch) and the p50/p99 latency
   of one request as the client saw it;
2. apply (unless ``--no-apply``): ``InboundWorker`` (in this process) applies the queued
   changes to ``public.customers``; timed from its start until every change has its
   outcome row; also the rate after the first change (without the consumer-group join).
Medians over runs are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.config import Config, parse_config
from cdc.demo.throwaway import LocalBroker, LocalPostgres
from cdc.inbound.apply import InboundWorker
from cdc.inbound.endpoint import sign
from cdc.ops.admin_api import AdminApi
from cdc.state.store import StateStore
from mappers.examples import SAMPLE_SCHEMA_SQL
from mappers.examples_inbound import INBOUND_SCHEMA_SQL, crm_inbound_config

SECRET = "bench-inbound-secret"
ENV = {"BENCH_INBOUND_SECRET": SECRET}
STATE_SCHEMA = "cdcsync"


def make_config(dsn: str, bootstrap: str, prefix: str, port: int) -> dict[str, Any]:
    return {
        "source": {"dsn": dsn, "tables": ["public.customers"]},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix},
        "registry": {"url": "http://127.0.0.1:9"},  # not used by the endpoint
        "integrations": {
            "crm": {
                "topics": [f"{prefix}.public.customers"],
                "mapper": "mappers.examples:customer_to_contact",
                "sink": {"type": "http", "url": "http://127.0.0.1:9/contacts/{key}"},
                "group_id": f"{prefix}.crm",
                "inbound": {
                    **crm_inbound_config(secret_env="BENCH_INBOUND_SECRET"),
                    "group_id": f"{prefix}.inbound.crm",
                },
            }
        },
        "admin": {"listen": f"127.0.0.1:{port}", "probe_interval_s": 60},
        "state": {"schema": STATE_SCHEMA},
    }


def parsed(data: dict[str, Any]) -> Config:
    return parse_config(data, env=ENV)


def serve(data: dict[str, Any], ready: Any) -> None:
    """The endpoint's process: the admin API until terminated."""

    async def main() -> None:
        api = AdminApi(parsed(data))
        api.bind()
        ready.set()
        await api.serve(asyncio.Event())

    asyncio.run(main())


def seed(dsn: str, customers: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SAMPLE_SCHEMA_SQL)
        conn.execute(INBOUND_SCHEMA_SQL)
    asyncio.run(_migrate(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO customers (id, name, email, updated_at)"
            " SELECT i, 'Customer ' || i, 'c' || i || '@example.com', now() - interval '1 day'"
            " FROM generate_series(1, %s) AS i ON CONFLICT (id) DO UPDATE"
            " SET updated_at = excluded.updated_at",
            (customers,),
        )
        conn.execute(
            f"INSERT INTO {STATE_SCHEMA}.identities (integration, entity, key, external_id)"
            " SELECT 'crm', 'contact', i::text, 'crm-' || i FROM generate_series(1, %s) AS i"
            " ON CONFLICT DO NOTHING",
            (customers,),
        )


async def _migrate(dsn: str) -> None:
    store = await StateStore.open(dsn, schema=STATE_SCHEMA)
    await store.close()


def bodies(count: int, customers: int) -> list[tuple[str, bytes, str]]:
    """(external id, body, signature) per request, prepared before timing."""
    out = []
    for n in range(count):
        stamp = datetime.now(UTC).isoformat()
        body = json.dumps(
            {"name": f"Customer {n}", "email": f"b{n}@example.com", "updated_at": stamp}
        ).encode()
        out.append((f"crm-{n % customers + 1}", body, sign(SECRET.encode(), body)))
    return out


async def accept(
    url: str, requests: list[tuple[str, bytes, str]], concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        while not queue.empty():
            external_id, body, signature = queue.get_nowait()
            headers = {
                "Content-Type": "application/json",
                "Idempotency-Key": uuid.uuid4().hex,
                "X-Signature": signature,
            }
            started = time.perf_counter()
            async with session.put(
                f"{url}/inbound/crm/contact/{external_id}", data=body, headers=headers
            ) as response:
                await response.read()
                if response.status != 202:
                    failures += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm up: the first request creates the topic and connects the producer.
        await client_once(session, url, requests[0])
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "failures": failures,
    }


async def client_once(
    session: aiohttp.ClientSession, url: str, item: tuple[str, bytes, str]
) -> None:
    external_id, body, signature = item
    headers = {"Idempotency-Key": "warm-up", "X-Signature": signature}
    async with session.put(
        f"{url}/inbound/crm/contact/{external_id}", data=body, headers=headers
    ) as response:
        await response.read()
        if response.status != 202:
            raise SystemExit(f"warm-up request answered {response.status}: {await response.text()}")


async def apply(config: Config, dsn: str, expected: int) -> dict[str, float]:
    stop = asyncio.Event()
    worker = InboundWorker("crm", config)
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(stop))
    first = None
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while True:
                cur = await conn.execute(f"SELECT count(*) FROM {STATE_SCHEMA}.inbound_changes")
                row = await cur.fetchone()
                done = int(row[0]) if row else 0
                if done and first is None:
                    first = time.perf_counter()
                if done >= expected:
                    break
                if task.done():
                    task.result()
                    raise SystemExit("the inbound worker stopped")
                await asyncio.sleep(0.05)
        end = time.perf_counter()
    finally:
        stop.set()
        await task
    assert first is not None
    return {
        "rate": expected / (end - started),
        "steady": (expected - 1) / max(end - first, 1e-6),
        "first_s": first - started,
    }


def one_run(
    args: argparse.Namespace, run: int, pg: LocalPostgres, broker: LocalBroker
) -> dict[str, float]:
    dbname = f"bench_inbound_{run}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {dbname}")
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = pg.dsn_for(dbname)
    seed(dsn, args.customers)
    from tests.integration.test_admin import free_port  # noqa: PLC0415

    port = free_port()
    data = make_config(dsn, broker.bootstrap, f"bench{uuid.uuid4().hex[:6]}", port)
    # Spawned, not forked: this process already runs librdkafka threads after a run.
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    server = spawn.Process(target=serve, args=(data, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the endpoint did not start")
        figures = asyncio.run(
            accept(
                f"http://127.0.0.1:{port}", bodies(args.requests, args.customers), args.concurrency
            )
        )
    finally:
        server.terminate()
        server.join(10)
    line = (
        f"run {run + 1}: accepted {figures['rate']:,.0f} requests/s, latency p50 "
        f"{figures['p50_ms']:.1f} ms, p99 {figures['p99_ms']:.1f} ms"
    )
    if figures["failures"]:
        line += f" ({figures['failures']:.0f} not accepted)"
    if not args.no_apply:
        applied = asyncio.run(apply(parsed(data), dsn, args.requests + 1))
        figures.update({f"apply_{k}": v for k, v in applied.items()})
        line += (
            f"; applied {applied['rate']:,.0f} changes/s ({applied['steady']:,.0f} after the "
            f"first, which took {applied['first_s']:.2f}s)"
        )
    print(line, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-apply", action="store_true")
    args = parser.parse_args()
    pg = LocalPostgres().start()
    broker = LocalBroker().start()
    try:
        results = [one_run(args, run, pg, broker) for run in range(args.runs)]
    finally:
        broker.stop()
        pg.stop()
    print(
        f"median of {args.runs}: accepted {statistics.median(r['rate'] for r in results):,.0f} "
        f"requests/s, p99 accept latency "
        f"{statistics.median(r['p99_ms'] for r in results):.1f} ms "
        f"(p50 {statistics.median(r['p50_ms'] for r in results):.1f} ms; "
        f"{args.requests} requests, {args.concurrency} concurrent)"
    )
    if not args.no_apply:
        print(
            f"median apply: {statistics.median(r['apply_rate'] for r in results):,.0f} changes/s "
            f"({statistics.median(r['apply_steady'] for r in results):,.0f} after the first)"
        )


if __name__ == "__main__":
    main()
