"""Capture benchmark: cdcsync capture against pg_recvlogical on the same backlog.

Run: ``.venv/bin/python bench/capture.py [--changes 200000] [--runs 3]
[--exactly-once both|off|on] [--tracing 1,100] [--restarts 4]``

Per run, on throwaway local servers (PostgreSQL, tansu, the registry):
1. two slots are created on one publication, then a backlog of ``--changes``
   changes is written (80% inserts, 15% updates, 5% deletes, transactions of
   1,000 rows; int/numeric/text/timestamptz/jsonb columns) with
   synchronous_commit off, ended by a synchronously committed marker row at
   ``pg_current_wal_insert_lsn()``;
2. ``pg_recvlogical`` drains slot A to /dev/null (the ceiling);
3. ``cdcsync capture`` (the real command, a child process) drains slot B
   into the broker, Avro-encoded and acknowledged; done when the slot's
   confirmed_flush_lsn reaches the end LSN. Its peak RSS (VmHWM), CPU time
   and time to the first confirmed transaction are read from /proc.
   With ``--exactly-once both`` (the default) a third slot C is drained the
   same way with ``kafka.exactly_once: true`` (Kafka transactions; done when
   the last one is committed and confirmed), into a topic prefix of its own.
   With ``--tracing P[,P...]`` the backlog is also drained once per sampling
   percentage P with ``tracing.enabled`` (each on a slot of its own), spans
   exported over OTLP/HTTP to a receiver in the bench process that discards
   them, for the cost of tracing next to the exactly-once-off run.
With ``--restarts N`` capture is then started again N times on slot B and its existing
topics, each time with one committed row to carry: the time from the process start to
that row's confirmation is the first event after a restart.
Then, live: a writer commits single-row transactions at ``--rate`` rows/s
(synchronous_commit on) and capture records commit-to-Kafka-ack latency.
Medians over runs are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.capture.runtime import Capture
from cdc.config import load_config
from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry, find_pg_bin

DDL = """
CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, amount numeric(12,2),
                    note text, at timestamptz NOT NULL DEFAULT now(), doc jsonb);
CREATE TABLE marker (id int PRIMARY KEY);
"""


def write_backlog(dsn: str, changes: int) -> int:
    """Write the backlog; return the end LSN (as an int) after a synchronous marker."""
    per_tx = 1000
    inserts_per_tx, updates_per_tx, deletes_per_tx = 800, 150, 50
    next_id = 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        done = 0
        while done < changes:
            with conn.transaction():
                start = next_id
                conn.execute(
                    "INSERT INTO bench (id, n, amount, note, doc)"
                    " SELECT g, g %% 1000, (g %% 100000) / 100.0, 'note ' || g,"
                    " jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'))"
                    " FROM generate_series(%s::bigint, %s::bigint) g",
                    (start, start + inserts_per_tx - 1),
                )
                next_id += inserts_per_tx
                conn.execute(
                    "UPDATE bench SET n = n + 1, note = 'updated' WHERE id BETWEEN %s AND %s",
                    (start, start + updates_per_tx - 1),
                )
                conn.execute(
                    "DELETE FROM bench WHERE id BETWEEN %s AND %s",
                    (start + inserts_per_tx - deletes_per_tx, start + inserts_per_tx - 1),
                )
            done += per_tx
        conn.execute("SET synchronous_commit = on")
        conn.execute("INSERT INTO marker VALUES (1)")
        row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


def confirmed(dsn: str, slot: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(confirmed_flush_lsn - '0/0'::pg_lsn, 0) FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return int(row[0]) if row else 0


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def run_recvlogical(pg: LocalPostgres, dsn: str, end: int) -> float:
    binary = shutil.which("pg_recvlogical") or str(find_pg_bin() / "pg_recvlogical")
    t0 = time.perf_counter()
    subprocess.run(
        [
            binary,
            "-d",
            dsn,
            "--slot",
            "slot_a",
            "--start",
            "-o",
            "proto_version=2",
            "-o",
            "publication_names=pub",
            "-f",
            "/dev/null",
            "-E",
            lsn_text(end),
            "--no-loop",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def proc_stats(pid: int) -> tuple[int, float]:
    """(peak RSS in bytes, CPU seconds) of a live process."""
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return hwm, cpu


def run_cdcsync(
    config_path: Path, dsn: str, end: int, *, profile: Path | None = None, slot: str = "slot_b"
) -> dict[str, float]:
    start_lsn = confirmed(dsn, slot)
    t0 = time.perf_counter()
    command = [sys.executable, "-m", "cdc.cli", "capture", "--config", str(config_path)]
    if profile is not None:
        # py-spy samples the capture process; collapsed stacks go to ``profile``.
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        command = [spy, "record", "--format", "raw", "-o", str(profile), "--", *command]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    first = None
    rss, cpu, cpu_first = 0, 0.0, 0.0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
            rss, cpu = proc_stats(proc.pid)
            pos = confirmed(dsn, slot)
            now = time.perf_counter()
            if first is None and pos > start_lsn:
                first = now - t0
                cpu_first = cpu
            if pos >= end:
                elapsed = now - t0
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGINT if profile is not None else signal.SIGTERM)
        proc.wait(30)
    return {
        "elapsed": elapsed,
        "first": first or elapsed,
        "rss": rss,
        "cpu": cpu,
        # CPU from the first confirmed transaction on (start-up excluded).
        "steady_cpu": cpu - cpu_first,
    }


class _Discard(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that reads and drops every export."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


def otlp_sink() -> str:
    """Start the discarding receiver; its traces URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/v1/traces"


def write_live(dsn: str, rate: int, seconds: float) -> None:
    """Single-row transactions at ``rate`` rows/s, synchronously committed."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        interval = 1.0 / rate
        t_next = time.perf_counter()
        base = 10_000_000
        for i in range(int(rate * seconds)):
            conn.execute(
                "INSERT INTO bench (id, n, amount, note) VALUES (%s, 1, 1.5, 'live')",
                (base + i,),
            )
            t_next += interval
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)


def restart_first_events(config_path: Path, dsn: str, restarts: int) -> list[float]:
    """Start capture again ``restarts`` times on its slot and topics, one committed row to
    carry each time; seconds from the process start to that row's confirmation."""
    seconds = []
    for n in range(restarts):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO bench (id, n) VALUES (%s, 0)", (-1 - n,))
            row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        seconds.append(run_cdcsync(config_path, dsn, int(row[0]))["elapsed"])
    return seconds


async def live_latency(config_path: Path, dsn: str, rate: int, seconds: float) -> list[int]:
    config = load_config(config_path)
    capture = Capture(config, record_latency=True)
    stop = asyncio.Event()
    task = asyncio.create_task(capture.run(stop))
    await asyncio.sleep(2)

    # The writer runs in its own process so that it does not share capture's GIL.
    proc = multiprocessing.get_context("spawn").Process(
        target=write_live, args=(dsn, rate, seconds)
    )
    proc.start()
    await asyncio.to_thread(proc.join)
    await asyncio.sleep(1)
    stop.set()
    await task
    assert capture.stats.latencies_us is not None
    return capture.stats.latencies_us


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--live-seconds", type=float, default=10)
    parser.add_argument(
        "--exactly-once",
        choices=("both", "off", "on"),
        default="both",
        help="measure capture without Kafka transactions, with them, or both (default)",
    )
    parser.add_argument(
        "--tracing",
        default="",
        help="also drain with tracing on, once per sampling percentage (e.g. 1,100)",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=0,
        help="after each exactly-once-off drain, start capture again N times (first event)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the capture process with py-spy; collapsed stacks to PROFILE.runN",
    )
    args = parser.parse_args()

    modes = {"both": ["off", "on"], "off": ["off"], "on": ["on"]}[args.exactly_once]
    results: list[dict[str, float]] = []
    eos_results: list[dict[str, float]] = []
    latencies: list[int] = []
    restarted: list[float] = []
    percents = [float(p) for p in args.tracing.split(",") if p.strip()]
    traced: dict[float, list[dict[str, float]]] = {p: [] for p in percents}
    otlp = otlp_sink() if percents else ""
    for run in range(args.runs):
        pg = LocalPostgres().start()
        broker = LocalBroker().start()
        registry = LocalRegistry().start()
        workdir = Path(tempfile.mkdtemp(prefix="cdcsync-bench-"))
        try:
            dsn = pg.dsn
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(DDL)
                conn.execute("CREATE PUBLICATION pub FOR TABLE bench")
                conn.execute("SELECT pg_create_logical_replication_slot('slot_a', 'pgoutput')")
                conn.execute("SELECT pg_create_logical_replication_slot('slot_b', 'pgoutput')")
                conn.execute("SELECT pg_create_logical_replication_slot('slot_c', 'pgoutput')")
                for n in range(len(percents)):
                    conn.execute(
                        "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (f"slot_t{n}",)
                    )
            end = write_backlog(dsn, args.changes)
            config: dict[str, Any] = {
                "source": {
                    "dsn": dsn,
                    "slot": "slot_b",
                    "publication": "pub",
                    "tables": ["public.bench"],
                    "snapshot": "never",
                },
                "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": "bench"},
                "registry": {"url": registry.url},
                "logging": {"level": "WARNING"},
                "admin": {"listen": "127.0.0.1:0"},
            }
            config_path = workdir / "cdcsync.yaml"
            config_path.write_text(yaml.safe_dump(config))
            ceiling = run_recvlogical(pg, dsn, end)
            profile = None if args.profile is None else Path(f"{args.profile}.run{run + 1}")
            line = f"run {run + 1}: pg_recvlogical {args.changes / ceiling:,.0f} changes/s"
            if "off" in modes:
                ours = run_cdcsync(config_path, dsn, end, profile=profile)
                ours["ceiling"] = ceiling
                results.append(ours)
                line += (
                    f", cdcsync {args.changes / ours['elapsed']:,.0f} changes/s, "
                    f"RSS {ours['rss'] / 2**20:.1f} MiB, first event {ours['first']:.2f}s"
                )
                if args.restarts:
                    again = restart_first_events(config_path, dsn, args.restarts)
                    restarted += again
                    line += ", after a restart " + " ".join(f"{t:.2f}s" for t in again)
            if "on" in modes:
                eos_config = {
                    **config,
                    "source": {**config["source"], "slot": "slot_c"},
                    "kafka": {**config["kafka"], "topic_prefix": "bencheos", "exactly_once": True},
                }
                eos_path = workdir / "cdcsync-eos.yaml"
                eos_path.write_text(yaml.safe_dump(eos_config))
                eos = run_cdcsync(eos_path, dsn, end, slot="slot_c")
                eos["ceiling"] = ceiling
                eos_results.append(eos)
                line += (
                    f", exactly-once {args.changes / eos['elapsed']:,.0f} changes/s, "
                    f"RSS {eos['rss'] / 2**20:.1f} MiB"
                )
            for n, percent in enumerate(percents):
                traced_config = {
                    **config,
                    "source": {**config["source"], "slot": f"slot_t{n}"},
                    "kafka": {**config["kafka"], "topic_prefix": f"benchtrace{n}"},
                    "tracing": {
                        "enabled": True,
                        "sampling_ratio": percent / 100,
                        "exporter": {"endpoint": otlp},
                    },
                }
                traced_path = workdir / f"cdcsync-trace{n}.yaml"
                traced_path.write_text(yaml.safe_dump(traced_config))
                result = run_cdcsync(traced_path, dsn, end, slot=f"slot_t{n}")
                traced[percent].append(result)
                line += f", tracing {percent:g}% {args.changes / result['elapsed']:,.0f} changes/s"
            print(line, flush=True)
            if run == 0 and "off" in modes:
                latencies = asyncio.run(
                    live_latency(config_path, dsn, args.rate, args.live_seconds)
                )
        finally:
            registry.stop()
            broker.stop()
            pg.stop()

    med = statistics.median
    ceiling_rate = med(args.changes / r["ceiling"] for r in results or eos_results)
    print()
    print(f"backlog                    {args.changes:,} changes, {args.runs} runs (medians)")
    print(f"pg_recvlogical (ceiling)   {ceiling_rate:,.0f} changes/s")
    if eos_results:
        eos_rate = med(args.changes / r["elapsed"] for r in eos_results)
        print(
            f"cdcsync, exactly-once on   {eos_rate:,.0f} changes/s, peak RSS "
            f"{med(r['rss'] for r in eos_results) / 2**20:.1f} MiB, CPU per event "
            f"{med(r['cpu'] / args.changes for r in eos_results) * 1e6:.1f} us"
        )
    if not results:
        return
    our_rate = med(args.changes / r["elapsed"] for r in results)
    print(f"cdcsync, exactly-once off  {our_rate:,.0f} changes/s")
    print(f"ratio                      {our_rate / ceiling_rate:.2f}  (target >= 0.5)")
    print(
        f"peak RSS                   {med(r['rss'] for r in results) / 2**20:.1f} MiB (target < 80)"
    )
    cpu_all = med(r["cpu"] / args.changes for r in results) * 1e6
    cpu_steady = med(r["steady_cpu"] / args.changes for r in results) * 1e6
    print(
        f"CPU per event              {cpu_all:.1f} us; {cpu_steady:.1f} us after the first event "
        "(target <= 10)"
    )
    print(f"start-up to first event    {med(r['first'] for r in results):.2f} s (target < 0.3)")
    if restarted:
        print(
            f"first event after restart  {med(restarted):.2f} s"
            f" (median of {len(restarted)} restarts on existing topics)"
        )
    if traced:
        # Start-up excluded: CPU and time from the first confirmed transaction to the end.
        def steady(runs: list[dict[str, float]]) -> tuple[float, float]:
            rate = med(args.changes / max(r["elapsed"] - r["first"], 1e-9) for r in runs)
            return rate, med(r["steady_cpu"] / args.changes for r in runs) * 1e6

        rate_off, cpu_off = steady(results)
        print(
            f"tracing off (steady)       {rate_off:,.0f} changes/s, CPU per event {cpu_off:.1f} us"
        )
        for percent, runs in traced.items():
            rate, cpu = steady(runs)
            print(
                f"tracing at {percent:g}% (steady){'':<{6 - len(f'{percent:g}')}}{rate:,.0f} "
                f"changes/s ({rate / rate_off - 1:+.0%}), CPU per event {cpu:.1f} us "
                f"({cpu / cpu_off - 1:+.0%})"
            )
    if latencies:
        lat = sorted(latencies)
        p50 = lat[len(lat) // 2] / 1000
        p99 = lat[int(len(lat) * 0.99)] / 1000
        print(
            f"live {args.rate} rows/s         commit->ack p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"(target p99 < 10), {len(lat)} events"
        )


if __name__ == "__main__":
    main()
