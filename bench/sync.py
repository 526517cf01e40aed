"""Sync benchmark: the two example integrations applying a captured backlog, then live.

Run: ``.venv/bin/python bench/sync.py [--events 20000] [--runs 3] [--rate 2000]
[--live-seconds 10] [--customers N] [--session-timeout-ms 6000]
[--consumer-property KEY=VALUE ...] [--split | --reconcile]``

Per run, on throwaway local servers (PostgreSQL, tansu, the registry, the CRM):
1. the sample tables get ``--customers`` customers (default: ``--events``) and
   ``--events`` orders referencing them, in transactions of 1,000 rows with
   synchronous_commit off, ended by a synchronously committed marker row;
   ``cdcsync capture`` (the real command, a child process) drains the slot into
   the broker; done when the slot's confirmed_flush_lsn reaches the end LSN, so
   every event sits in Kafka before sync starts;
2. HTTP sink: ``Sync(only=["crm"])`` runs in this process and puts every
   customer into the CRM (its own process, so it does not share the sync's GIL);
   timed from the start of ``Sync.run`` until the CRM has applied every contact
   (its ``/_stats``; the contact count is checked afterwards). This also fills the
   identity map, so orders never wait for the CRM: each customer's id is read from
   the identity map the first time one of its orders is mapped;
3. PostgreSQL sink: ``Sync(only=["analytics"])`` writes every order into
   ``analytics.orders``; timed from the start of ``Sync.run`` until the table
   holds ``--events`` rows (polled with count(*)).
Each sync figure comes with the time to the first entity (start-up: state store,
consumer group join) and this process's CPU time per entity.
4. the ceilings, on the same rows in the same run: for PostgreSQL, the rows the sink
   wrote to ``analytics.orders`` are written into a fresh copy of that table directly
   with psycopg in the best batched form (COPY into a temporary table, then one
   ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` with the same version guard; the median
   of three such writes, each into a fresh copy); for HTTP,
   the contacts the CRM received are sent again, as the same signed ``PUT``s with the same
   headers, to a fresh CRM process by a plain load generator (aiohttp) holding as many
   requests in flight as the sink (16). The ratio sync / ceiling compares the sink's rate
   after its first entity (consumer-group join excluded) with the ceiling's rate.
Then, on the first run, live: capture (child process) and sync of both
integrations (in process, ``record_latency=True``) run while pgbench commits
single-row transactions at ``--rate`` rows/s (synchronous_commit on, Poisson
arrivals; inserts and updates of orders and customers) for ``--live-seconds``; the
source commit -> applied latency is reported per integration, with how busy the
machine's cores were meanwhile, how many cores each process of the pipeline used and
(both integrations in this process) the garbage collector's longest pauses.
With ``--split`` each integration's sync runs in a process of its own (as ``cdcsync sync
--integration NAME`` would), reporting its latencies to this one at the end.
With ``--reconcile`` (both integrations in this process) the live load runs a second
time while ``reconcile`` of ``analytics`` runs over and over in the same process, at its
configured ``rows_per_s`` (5,000 by default), as ``cdcsync run`` would run a scheduled
one; latencies are then reported for both passes, with the rows reconciled per second.
Medians over runs are printed; nothing is asserted.

The sync consumers run with ``session.timeout.ms`` 6000 (``--session-timeout-ms``):
tansu holds a group join for part of the session timeout, about 23 s with
librdkafka's default of 45 s, which would otherwise dominate every start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import hmac
import inspect
import json
import multiprocessing
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import psycopg
import yaml
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.config import Config, parse_config
from cdc.core.gcfreeze import freeze_now
from cdc.demo.crm import CrmServer
from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry, find_pg_bin
from cdc.ops.reconcile.runner import reconcile
from cdc.sync.runtime import Sync
from cdc.sync.sinks.http import HttpSink
from mappers.examples import SAMPLE_SCHEMA_SQL, example_integrations

CRM_SECRET = "bench-crm-secret"
PREFIX = "bench"
SLOT = "cdcsync_bench"
PUBLICATION = "cdcsync_bench"
LIVE_ID_BASE = 10_000_000
POLL_S = 0.05
ROLE_PIDS: dict[int, str] = {}
"""This script's child processes by pid, named for the live CPU figures."""

EXTRA_DDL = f"""
CREATE TABLE marker (id int PRIMARY KEY);
CREATE SEQUENCE live_order_ids START {LIVE_ID_BASE};
CREATE SEQUENCE live_customer_ids START {LIVE_ID_BASE};
"""


# --------------------------------------------------------------------------- source


def write_backlog(dsn: str, *, customers: int, orders: int) -> int:
    """Write customers then orders; return the end LSN (as an int) after a synchronous marker."""
    per_tx = 1000
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for start in range(1, customers + 1, per_tx):
            end = min(start + per_tx - 1, customers)
            conn.execute(
                "INSERT INTO customers (id, name, email, phone)"
                " SELECT g, 'Customer ' || g, 'c' || g || '@example.com',"
                " CASE WHEN g %% 3 = 0 THEN NULL ELSE '+1-555-' || g END"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                (start, end),
            )
        for start in range(1, orders + 1, per_tx):
            end = min(start + per_tx - 1, orders)
            conn.execute(
                "INSERT INTO orders (id, customer_id, amount, status)"
                " SELECT g, (g * 7919) %% %s + 1, (g %% 100000) / 100.0, 'new'"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                (customers, start, end),
            )
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO marker VALUES (1)")
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def confirmed(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(confirmed_flush_lsn - '0/0'::pg_lsn, 0) FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (SLOT,),
        ).fetchone()
    return int(row[0]) if row else 0


def start_capture(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """The real ``cdcsync capture`` command as a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "cdc.cli", "capture", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("ab"),
        stdin=subprocess.DEVNULL,
        env={**os.environ, "CRM_SECRET": CRM_SECRET},
    )


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def capture_backlog(config_path: Path, dsn: str, end: int, log_path: Path) -> float:
    """Run capture until the slot is confirmed past ``end``; return the seconds it took."""
    t0 = time.perf_counter()
    proc = start_capture(config_path, log_path)
    try:
        while confirmed(dsn) < end:
            if proc.poll() is not None:
                raise RuntimeError(f"capture exited:\n{log_path.read_text()[-3000:]}")
            time.sleep(POLL_S)
        return time.perf_counter() - t0
    finally:
        stop_process(proc)


# --------------------------------------------------------------------------- the CRM


def serve_crm(conn: Connection) -> None:
    """Child process: serve the CRM, send its URL, freeze its heap when told, stop when told."""
    server = CrmServer(secret=CRM_SECRET).start()
    conn.send(server.url)
    while conn.recv() == "freeze":
        conn.send(freeze_now())
    server.stop()


class CrmProcess:
    """The CRM server in a spawned process of its own."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve_crm, args=(child,), daemon=True)
        self._proc.start()
        ROLE_PIDS[self._proc.pid or 0] = "CRM"
        if not self._conn.poll(30):
            raise RuntimeError("the CRM process did not start")
        self.url: str = self._conn.recv()

    async def applied(self, client: httpx.AsyncClient) -> int:
        response = await client.get(self.url + "/_stats")
        return int(response.json()["applied"])

    def contacts(self) -> int:
        return len(httpx.get(self.url + "/contacts", timeout=30).json()["contacts"])

    def freeze(self) -> None:
        """Freeze the CRM's heap (``cdc.core.gcfreeze``) before the live phase: a full collection
        over the backlog's contacts paused it for about 65 ms, and the CRM plays an external
        system whose own pauses are not what the benchmark measures."""
        self._conn.send("freeze")
        if not self._conn.poll(30):
            raise RuntimeError("the CRM process did not answer")
        self._conn.recv()

    def cpu_seconds(self) -> float:
        """CPU time used so far by the CRM process (user + system)."""
        return cpu_ticks(self._proc.pid or 0) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._conn.send("stop")
        self._proc.join(15)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# --------------------------------------------------------------------------- config


def make_config(dsn: str, bootstrap: str, registry_url: str, crm_url: str) -> dict[str, Any]:
    """Capture and both example integrations (the shape of the sync test harness)."""
    integrations = example_integrations(
        topic_prefix=PREFIX,
        crm_url=crm_url,
        analytics_dsn=dsn,
        secret_env="CRM_SECRET",
        timeout_s=10,
    )
    for name, integration in integrations.items():
        integration["group_id"] = f"{PREFIX}.{name}"
    return {
        "source": {
            "dsn": dsn,
            "slot": SLOT,
            "publication": PUBLICATION,
            "tables": ["public.customers", "public.orders"],
            "snapshot": "never",
        },
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": PREFIX},
        "registry": {"url": registry_url},
        "logging": {"level": "WARNING"},
        "admin": {"listen": "127.0.0.1:0"},
        "integrations": integrations,
        "state": {"schema": "cdcsync_state"},
    }


def sync_config(config: dict[str, Any], args: argparse.Namespace) -> Config:
    """The sync's Config: ``config`` plus the consumer group session timeout and extras.

    A consumer joining a group waits for the group's rebalance, which tansu holds for a
    share of the session timeout (about 23 s with librdkafka's default of 45 s), so the
    benchmark sets it lower, for the sync only (capture has no consumer).
    ``--consumer-property KEY=VALUE`` adds librdkafka settings (integers stay integers).
    """
    properties: dict[str, str | int] = {
        "session.timeout.ms": args.session_timeout_ms,
        "heartbeat.interval.ms": max(100, args.session_timeout_ms // 10),
    }
    for item in args.consumer_property:
        key, _, value = item.partition("=")
        properties[key] = int(value) if value.isdigit() else value
    data = {**config, "kafka": {**config["kafka"], "properties": properties}}
    return parse_config(data, env={"CRM_SECRET": CRM_SECRET})


# --------------------------------------------------------------------------- backlog sync


async def analytics_rows(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT to_regclass('analytics.orders') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT count(*) FROM analytics.orders")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def timed_sync(
    config: Config, name: str, total: int, count: Callable[[], Awaitable[int]]
) -> dict[str, float]:
    """Run ``Sync(only=[name])`` until ``count()`` reaches ``total``; time it."""
    sync = Sync(config, only=[name])
    stop = asyncio.Event()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    task = asyncio.create_task(sync.run(stop))
    first: float | None = None
    at_first = 0
    try:
        while True:
            if task.done():
                task.result()
                raise RuntimeError(f"sync of {name} stopped before applying everything")
            done = await count()
            now = time.perf_counter()
            if first is None and done > 0:
                first, at_first = now - t0, done
            if done >= total:
                elapsed = now - t0
                break
            await asyncio.sleep(POLL_S)
        cpu = cpu_seconds() - cpu0
    finally:
        stop.set()
        await task
    stats = sync.workers[name].stats
    if stats.dead_lettered or stats.last_error:
        print(f"  {name}: {stats.dead_lettered} dead-lettered, last error {stats.last_error}")
    first = first or elapsed
    steady = (total - at_first) / (elapsed - first) if elapsed > first else total / elapsed
    return {"elapsed": elapsed, "first": first, "steady": steady, "cpu": cpu}


async def backlog_http(config: Config, crm: CrmProcess, customers: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def count() -> int:
            return await crm.applied(client)

        crm_cpu0 = crm.cpu_seconds()
        figures = await timed_sync(config, "crm", customers, count)
        figures["crm_server_cpu"] = crm.cpu_seconds() - crm_cpu0
        return figures


async def backlog_postgres(config: Config, dsn: str, orders: int) -> dict[str, float]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

        async def count() -> int:
            return await analytics_rows(conn)

        return await timed_sync(config, "analytics", orders, count)


# --------------------------------------------------------------------------- ceilings

# Requests the HTTP sink holds in flight; the load generator holds as many.
MAX_IN_FLIGHT: int = inspect.signature(HttpSink).parameters["max_in_flight"].default


def ceiling_postgres(dsn: str, repeats: int = 3) -> dict[str, float]:
    """The sink's rows written again into a fresh copy of the table, in the best batched form.

    Median of ``repeats`` writes (each into a fresh copy): one write of 20,000 rows takes
    about 0.15 s, and a single one moved between 100,000 and 200,000 rows/s from run to run.
    """
    with psycopg.connect(dsn) as conn:
        columns = [
            row[0]
            for row in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'analytics.orders'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        rows = conn.execute(
            sql.SQL("SELECT {} FROM analytics.orders").format(
                sql.SQL(", ").join(map(sql.Identifier, columns))
            )
        ).fetchall()
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        updates = sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
            for c in columns
            if c != "_cdc_key"
        )
        upsert = sql.SQL(
            "INSERT INTO analytics.orders_ceiling AS target ({names}) SELECT {names} FROM staged"
            " ON CONFLICT (_cdc_key) DO UPDATE SET {updates}"
            " WHERE target._cdc_version < EXCLUDED._cdc_version"
        ).format(names=names, updates=updates)
        rates: list[float] = []
        cpus: list[float] = []
        for _ in range(repeats):
            conn.execute("DROP TABLE IF EXISTS analytics.orders_ceiling")
            conn.execute(
                "CREATE TABLE analytics.orders_ceiling (LIKE analytics.orders INCLUDING ALL)"
            )
            conn.commit()
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            with conn.transaction():
                conn.execute(
                    "CREATE TEMP TABLE staged (LIKE analytics.orders INCLUDING DEFAULTS)"
                    " ON COMMIT DROP"
                )
                copying = sql.SQL("COPY staged ({}) FROM STDIN").format(names)
                with conn.cursor().copy(copying) as copy:
                    for row in rows:
                        copy.write_row(row)
                conn.execute(upsert)
            elapsed = time.perf_counter() - wall0
            cpus.append((cpu_seconds() - cpu0) / max(len(rows), 1))
            rates.append(len(rows) / elapsed)
            written = conn.execute("SELECT count(*) FROM analytics.orders_ceiling").fetchone()
            assert written is not None and written[0] == len(rows), (written, len(rows))
    return {"rate": statistics.median(rates), "cpu": statistics.median(cpus)}


async def ceiling_http(source: CrmProcess, target: CrmProcess) -> dict[str, float]:
    """The contacts ``source`` received, sent again as the sink sent them, to ``target``."""
    async with httpx.AsyncClient(timeout=30) as client:
        contacts = (await client.get(source.url + "/contacts")).json()["contacts"]
    requests = []
    for contact in contacts:
        key = contact["key"]
        body = json.dumps(contact["fields"], separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"contact:{key}:{contact['version_bytes']}",
            "X-Cdcsync-Version": contact["version"],
            "X-Cdcsync-Version-Bytes": contact["version_bytes"],
            "X-Signature": "sha256="
            + hmac.new(CRM_SECRET.encode(), body, hashlib.sha256).hexdigest(),
        }
        requests.append((f"{target.url}/contacts/{quote(key, safe='')}", body, headers))
    pending = iter(requests)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def lane() -> None:
            for url, body, headers in pending:
                async with session.put(url, data=body, headers=headers) as response:
                    assert response.status < 300, (response.status, await response.text())

        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(MAX_IN_FLIGHT)))
        elapsed = time.perf_counter() - wall0
        cpu = cpu_seconds() - cpu0
    return {"rate": len(requests) / elapsed, "cpu": cpu / max(len(requests), 1)}


# --------------------------------------------------------------------------- live latency


# The live mix, one single-row transaction each: (weight in %, pgbench script).
LIVE_SCRIPTS = {
    "new_order": (
        45,
        "\\set c random(1, :customers)\n\\set a random(100, 99999)\n"
        "INSERT INTO orders (id, customer_id, amount, status)"
        " VALUES (nextval('live_order_ids'), :c, :a / 100.0, 'new');\n",
    ),
    "update_order": (
        20,
        "\\set o random(1, :orders)\n"
        "UPDATE orders SET status = 'paid-' || clock_timestamp() WHERE id = :o;\n",
    ),
    "update_customer": (
        25,
        "\\set c random(1, :customers)\n"
        "UPDATE customers SET email = 'live-' || clock_timestamp() || '@example.com',"
        " updated_at = clock_timestamp() WHERE id = :c;\n",
    ),
    "new_customer": (
        10,
        "INSERT INTO customers (id, name, email)"
        " SELECT v, 'Live ' || v, 'l' || v || '@example.com'"
        " FROM nextval('live_customer_ids') v;\n",
    ),
}


def pgbench_command(
    dsn: str, rate: int, seconds: float, customers: int, orders: int, scripts: Path
) -> list[str]:
    """pgbench committing the live mix at ``rate`` transactions/s (synchronous_commit on).

    pgbench (C, shipped with PostgreSQL) generates the load so that the writer takes
    little of the CPU the measured pipeline runs on; its schedule is Poisson at ``rate``.
    """
    pgbench = find_pg_bin() / "pgbench"
    if not pgbench.exists():
        found = shutil.which("pgbench")
        if found is None:
            raise SystemExit("the live load needs pgbench (shipped with PostgreSQL)")
        pgbench = Path(found)
    cmd = [str(pgbench), "-n", "-c", "4", "-j", "1", "-R", str(rate), "-T", str(round(seconds))]
    cmd += ["-D", f"customers={customers}", "-D", f"orders={orders}"]
    for name, (weight, text) in LIVE_SCRIPTS.items():
        path = scripts / f"{name}.sql"
        path.write_text(text)
        cmd += ["-f", f"{path}@{weight}"]
    return [*cmd, dsn]


async def caught_up(conn: psycopg.AsyncConnection[Any], timeout: float) -> bool:
    """Wait until analytics.orders holds every source order (within ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await conn.execute("SELECT count(*) FROM orders")
        row = await cur.fetchone()
        if row is not None and await analytics_rows(conn) >= int(row[0]):
            return True
        await asyncio.sleep(0.2)
    return False


async def touch_probes(dsn: str) -> None:
    """Update one customer and one order: each integration has a record to apply."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "UPDATE customers SET name = name || ' (probe)', updated_at = clock_timestamp()"
            " WHERE id = 1"
        )
        await conn.execute("UPDATE orders SET status = 'probe' WHERE id = 1")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat (zeros where it does not exist)."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
        fields = [int(v) for v in line.split()[1:9]]  # guest time is already in user
    except OSError:
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def process_role(pid: int) -> str | None:
    """What one process is in the live pipeline (by name and command line), or None."""
    if pid in ROLE_PIDS:
        return ROLE_PIDS[pid]
    if pid == os.getpid():
        return "sync (this process)"
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None
    if comm == "postgres":
        return "walsender" if "walsender" in cmdline else "postgres"
    if comm in ("tansu", "pgbench"):
        return comm
    if "cdc.cli capture" in cmdline:
        return "capture"
    return None


def cpu_ticks(pid: int) -> int:
    """User + system clock ticks process ``pid`` used so far (OSError once it is gone)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def process_ticks() -> dict[int, tuple[str, int]]:
    """Per pipeline process: (role, user + system clock ticks so far)."""
    found: dict[int, tuple[str, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        role = process_role(pid)
        if role is None:
            continue
        with contextlib.suppress(OSError):
            found[pid] = (role, cpu_ticks(pid))
    return found


async def cores_by_role(seconds: float) -> dict[str, float]:
    """Cores each pipeline role used over the middle ``seconds`` - 1 s of the live load."""
    # Read /proc in a thread: the in-process sync shares this event loop.
    await asyncio.sleep(0.5)
    before, t0 = await asyncio.to_thread(process_ticks), time.monotonic()
    await asyncio.sleep(max(0.5, seconds - 1.0))
    after, elapsed = await asyncio.to_thread(process_ticks), time.monotonic() - t0
    used: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for pid, (role, ticks) in after.items():
        start = before[pid][1] if pid in before else 0
        used[role] = used.get(role, 0.0) + (ticks - start) / tick / elapsed
    return used


async def write_and_catch_up(dsn: str, args: argparse.Namespace) -> None:
    """The live load (pgbench, so the writer takes little CPU), then wait for the targets."""
    with tempfile.TemporaryDirectory() as scripts:
        cmd = pgbench_command(
            dsn, args.rate, args.live_seconds, args.customers, args.events, Path(scripts)
        )
        before = cpu_times()
        roles = asyncio.create_task(cores_by_role(args.live_seconds))
        done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True)
        used = await roles
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip()}")
    busy = machine_busy(before, cpu_times())
    print(
        f"  live: the machine's {os.cpu_count()} cores were {busy:.0%} busy while the writer ran"
        " (every process: PostgreSQL, tansu, capture, sync, the CRM, the writer)"
    )
    shares = sorted(((r, c) for r, c in used.items() if c >= 0.005), key=lambda item: -item[1])
    print("  live: cores used by " + ", ".join(f"{role} {cores:.2f}" for role, cores in shares))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        if not await caught_up(conn, 60):
            print("  live: analytics did not catch up within 60 s")
    await asyncio.sleep(1)


async def warm_up(dsn: str, sync: Sync, *, timeout: float) -> None:
    """Touch a customer and an order; wait until both integrations applied something."""
    await touch_probes(dsn)
    before = {name: w.stats.applied for name, w in sync.workers.items()}
    deadline = time.monotonic() + timeout
    while any(w.stats.applied <= before[n] for n, w in sync.workers.items()):
        if time.monotonic() > deadline:
            raise RuntimeError("live: the probe rows were not applied in time")
        await asyncio.sleep(POLL_S)


class GcPauses:
    """The garbage collector's pauses in this process while in the ``with`` block."""

    def __init__(self) -> None:
        self.full: list[float] = []
        self.young: list[float] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        (self.full if info["generation"] == 2 else self.young).append(took)

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        def longest(pauses: list[float]) -> str:
            return f"{max(pauses, default=0) * 1000:.1f} ms"

        return (
            f"garbage collections: {len(self.full)} full (longest {longest(self.full)}),"
            f" {len(self.young)} young (longest {longest(self.young)})"
        )


async def live_latency(
    config: dict[str, Any],
    config_path: Path,
    log_path: Path,
    args: argparse.Namespace,
) -> dict[str, list[int]]:
    dsn = config["source"]["dsn"]
    capture = start_capture(config_path, log_path)
    sync = Sync(sync_config(config, args), record_latency=True)
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop))
    try:
        await asyncio.wait_for(sync.ready.wait(), 30)
        # Capture streams and both consumer groups are joined once a probe reaches both
        # targets; what the probe took is not part of the figures.
        await warm_up(dsn, sync, timeout=60)
        freeze_now()  # as the cdcsync commands do once their roles run (cdc.core.gcfreeze)
        for worker in sync.workers.values():
            if worker.stats.latencies_us is not None:
                worker.stats.latencies_us.clear()
        with GcPauses() as pauses:
            await write_and_catch_up(dsn, args)
        print(f"  live: the sync process's {pauses}")
        result = {name: list(w.stats.latencies_us or []) for name, w in sync.workers.items()}
        if args.reconcile:
            for worker in sync.workers.values():
                if worker.stats.latencies_us is not None:
                    worker.stats.latencies_us.clear()
            done = asyncio.Event()
            reconciling = asyncio.create_task(reconcile_until(sync_config(config, args), done))
            try:
                await write_and_catch_up(dsn, args)
            finally:
                done.set()
                runs, rows, seconds = await reconciling
            print(
                f"  live: while reconcile of analytics ran {runs} time(s):"
                f" {rows / seconds:,.0f} rows/s checked"
            )
            for name, worker in sync.workers.items():
                result[f"{name}, reconciling"] = list(worker.stats.latencies_us or [])
    finally:
        stop.set()
        await task
        stop_process(capture)
    return result


async def reconcile_until(config: Config, done: asyncio.Event) -> tuple[int, int, float]:
    """Reconcile ``analytics`` again and again until ``done`` (the run under way finishes);
    (runs, rows checked, seconds)."""
    runs, rows, started = 0, 0, time.monotonic()
    while not done.is_set() or runs == 0:
        report = await reconcile(config, "analytics")
        runs += 1
        rows += report.rows_checked
    return runs, rows, time.monotonic() - started


def split_worker(
    config: dict[str, Any],
    args: argparse.Namespace,
    name: str,
    results: Any,
    warm: Any,
    measure: Any,
    stop: Any,
) -> None:
    """One integration's sync in a process of its own (``--split``): report its latencies."""

    async def main() -> list[int]:
        sync = Sync(sync_config(config, args), only=[name], record_latency=True)
        stopping = asyncio.Event()
        task = asyncio.create_task(sync.run(stopping))
        try:
            while name not in sync.workers or sync.workers[name].stats.applied == 0:
                if task.done():
                    task.result()
                await asyncio.sleep(POLL_S)
            warm.set()  # the parent's probe row reached this integration's target
            freeze_now()  # as the cdcsync commands do once their roles run (cdc.core.gcfreeze)
            while not measure.is_set():
                await asyncio.sleep(POLL_S)
            latencies = sync.workers[name].stats.latencies_us
            assert latencies is not None
            latencies.clear()
            while not stop.is_set():
                await asyncio.sleep(POLL_S)
            return list(latencies)
        finally:
            stopping.set()
            await task

    results.put((name, asyncio.run(main())))


async def live_latency_split(
    config: dict[str, Any],
    config_path: Path,
    log_path: Path,
    args: argparse.Namespace,
) -> dict[str, list[int]]:
    """``live_latency`` with each integration in its own process (``cdcsync sync
    --integration NAME`` each), as a deployment that scales sync out would run them."""
    dsn = config["source"]["dsn"]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    measure, stop = ctx.Event(), ctx.Event()
    capture = start_capture(config_path, log_path)
    workers: list[tuple[Any, Any]] = []
    try:
        for name in config["integrations"]:
            warm = ctx.Event()
            proc = ctx.Process(
                target=split_worker, args=(config, args, name, results, warm, measure, stop)
            )
            proc.start()
            ROLE_PIDS[proc.pid or 0] = f"sync {name}"
            workers.append((proc, warm))
        await touch_probes(dsn)
        for _, warm in workers:
            if not await asyncio.to_thread(warm.wait, 60):
                raise RuntimeError("live (split): a sync process did not apply the probe")
        measure.set()
        await write_and_catch_up(dsn, args)
        stop.set()
        found: dict[str, list[int]] = {}
        for _ in workers:
            name, values = await asyncio.to_thread(results.get, True, 60)
            found[name] = values
    finally:
        stop.set()
        for proc, _ in workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        stop_process(capture)
    return found


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] / 1000


# --------------------------------------------------------------------------- main


def one_run(args: argparse.Namespace, run: int) -> tuple[dict[str, float], dict[str, list[int]]]:
    pg = LocalPostgres().start()
    broker = LocalBroker().start()
    registry = LocalRegistry().start()
    crm = CrmProcess()
    workdir = Path(tempfile.mkdtemp(prefix="cdcsync-bench-sync-"))
    log_path = workdir / "capture.log"
    try:
        dsn = pg.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SAMPLE_SCHEMA_SQL)
            conn.execute(EXTRA_DDL)
            conn.execute(
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE public.customers, public.orders"
            )
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (SLOT,))
        config = make_config(dsn, broker.bootstrap, registry.url, crm.url)
        config_path = workdir / "cdcsync.yaml"
        config_path.write_text(yaml.safe_dump(config))
        end = write_backlog(dsn, customers=args.customers, orders=args.events)
        captured = capture_backlog(config_path, dsn, end, log_path)
        syncing = sync_config(config, args)
        http = asyncio.run(backlog_http(syncing, crm, args.customers))
        contacts = crm.contacts()
        if contacts != args.customers:
            print(f"  crm holds {contacts} contacts, expected {args.customers}")
        pg_sink = asyncio.run(backlog_postgres(syncing, dsn, args.events))
        pg_ceiling = ceiling_postgres(dsn)
        fresh = CrmProcess()
        try:
            http_ceiling = asyncio.run(ceiling_http(crm, fresh))
        finally:
            fresh.stop()
        figures = {
            "capture": captured,
            **{f"pg_{k}": v for k, v in pg_sink.items()},
            **{f"http_{k}": v for k, v in http.items()},
            **{f"pg_ceiling_{k}": v for k, v in pg_ceiling.items()},
            **{f"http_ceiling_{k}": v for k, v in http_ceiling.items()},
        }
        print(
            f"run {run + 1}: capture {args.events + args.customers:,} events in {captured:.1f}s; "
            f"postgres sink {args.events / figures['pg_elapsed']:,.0f} entities/s "
            f"({figures['pg_steady']:,.0f} after the first, {figures['pg_first']:.2f}s); "
            f"http sink {args.customers / figures['http_elapsed']:,.0f} entities/s "
            f"({figures['http_steady']:,.0f} after the first, {figures['http_first']:.2f}s); "
            f"ceilings: postgres {figures['pg_ceiling_rate']:,.0f}/s, "
            f"http {figures['http_ceiling_rate']:,.0f}/s",
            flush=True,
        )
        latencies: dict[str, list[int]] = {}
        if run == 0 and args.live_seconds > 0:
            live = live_latency_split if args.split else live_latency
            crm.freeze()
            latencies = asyncio.run(live(config, config_path, log_path, args))
        return figures, latencies
    finally:
        crm.stop()
        registry.stop()
        broker.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="orders in the backlog")
    parser.add_argument(
        "--customers", type=int, default=None, help="customers in the backlog (default: --events)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--live-seconds", type=float, default=10)
    parser.add_argument(
        "--split",
        action="store_true",
        help="live: each integration's sync in a process of its own (default: both in one)",
    )
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="live: a second pass with reconcile of analytics running in the sync's process",
    )
    parser.add_argument(
        "--session-timeout-ms",
        type=int,
        default=6000,
        help="the sync consumers' session.timeout.ms (tansu holds a join for part of it)",
    )
    parser.add_argument(
        "--consumer-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra librdkafka setting for the sync (repeatable), e.g. fetch.wait.max.ms=10",
    )
    args = parser.parse_args()
    if args.split and args.reconcile:
        parser.error("--reconcile runs in the sync's own process: not with --split")
    if args.customers is None:
        args.customers = args.events

    results: list[dict[str, float]] = []
    latencies: dict[str, list[int]] = {}
    for run in range(args.runs):
        figures, live = one_run(args, run)
        results.append(figures)
        latencies = latencies or live

    med = statistics.median
    print()
    print(
        f"backlog                    {args.events:,} orders, {args.customers:,} customers, "
        f"{args.runs} runs (medians); session.timeout.ms {args.session_timeout_ms}"
        + "".join(f", {item}" for item in args.consumer_property)
    )
    print(f"capture of the backlog     {med(r['capture'] for r in results):.2f} s")
    sinks = (
        ("pg", "postgres sink (analytics)", args.events),
        ("http", "http sink (crm)", args.customers),
    )
    for tag, label, total in sinks:
        rate = med(total / r[f"{tag}_elapsed"] for r in results)
        print(f"{label:<27}{rate:,.0f} entities/s from Sync.run start")
        print(
            f"  after the first entity   {med(r[f'{tag}_steady'] for r in results):,.0f} entities/s"
        )
        print(f"  start-up to first entity {med(r[f'{tag}_first'] for r in results):.2f} s")
        cpu = med(r[f"{tag}_cpu"] / total for r in results) * 1e6
        print(f"  CPU per entity           {cpu:.0f} us (this process)")
        if tag == "http":
            server = med(r["http_crm_server_cpu"] / total for r in results) * 1e6
            print(f"  CRM server CPU per entity {server:.0f} us (the test CRM's own process)")
        ceiling = med(r[f"{tag}_ceiling_rate"] for r in results)
        ceiling_cpu = med(r[f"{tag}_ceiling_cpu"] for r in results) * 1e6
        ratio = med(r[f"{tag}_steady"] / r[f"{tag}_ceiling_rate"] for r in results)
        print(
            f"  ceiling                  {ceiling:,.0f} entities/s, {ceiling_cpu:.0f} us CPU each"
            + (" (COPY + one INSERT ... ON CONFLICT)" if tag == "pg" else " (plain PUTs)")
        )
        print(f"  sync / ceiling           x{ratio:.2f} (after the first entity)")
    if latencies:
        mode = "one sync process per integration" if args.split else "both in one sync process"
        print(f"live ({mode}; capture in its own process)")
    for name, values in sorted(latencies.items()):
        if not values:
            print(f"live {args.rate} rows/s {name:<10} no events applied")
            continue
        print(
            f"live {args.rate} rows/s {name:<10} commit->applied p50 "
            f"{percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms "
            f"(target p99 < 100), {len(values)} events"
        )


if __name__ == "__main__":
    main()
