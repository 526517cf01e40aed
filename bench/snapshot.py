"""Snapshot benchmark: cdcsync's initial snapshot against COPY on the same table.

Run: ``.venv/bin/python bench/snapshot.py [--rows 1000000] [--runs 3] [--chunk 20000]``

On throwaway local servers (PostgreSQL, tansu, the registry):
1. a table of ``--rows`` rows (bigint key, int, numeric, text, timestamptz, jsonb);
2. the ceiling: ``COPY bench TO STDOUT`` drained by psycopg (the bytes read and thrown
   away, as ``COPY ... TO '/dev/null'`` would), median of ``--runs``;
3. cdcsync: ``cdcsync capture`` (the real command, a child process) with
   ``snapshot: initial`` on a fresh slot, timed from the moment it records the snapshot
   as started until the last chunk is acknowledged by the broker and recorded as done
   (``snapshot_progress.done``); every row Avro-encoded and published. Median of runs.
Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry

DDL = """
CREATE TABLE bench (id bigint PRIMARY KEY, n int NOT NULL, amount numeric(12,2),
                    note text, at timestamptz NOT NULL DEFAULT now(), doc jsonb);
"""


def fill(dsn: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(
            "INSERT INTO bench (id, n, amount, note, doc)"
            " SELECT g, g %% 1000, (g %% 100000) / 100.0, 'note ' || g,"
            " jsonb_build_object('k', g, 'tags', jsonb_build_array('a', 'b'))"
            " FROM generate_series(1, %s::bigint) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE bench")


def copy_ceiling(dsn: str) -> tuple[float, int]:
    """Seconds to drain ``COPY bench TO STDOUT``, and the bytes read."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        t0 = time.perf_counter()
        size = 0
        with cur.copy("COPY bench TO STDOUT") as copy:
            for block in copy:
                size += len(block)
        return time.perf_counter() - t0, size


def progress(dsn: str) -> tuple[int, bool] | None:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(
                "SELECT rows, done FROM cdcsync.snapshot_progress WHERE table_name = 'public.bench'"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return None if row is None else (int(row[0]), bool(row[1]))


def run_cdcsync(config_path: Path, dsn: str) -> tuple[float, int]:
    """Seconds from the snapshot's start to its acknowledged end, and the rows published."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc.cli", "capture", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started: float | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
            state = progress(dsn)
            now = time.perf_counter()
            if state is not None and started is None and state == (0, False):
                started = now
            if state is not None and state[1] and started is not None:
                return now - started, state[0]
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args()

    pg = LocalPostgres().start()
    broker = LocalBroker().start()
    registry = LocalRegistry().start()
    workdir = Path(tempfile.mkdtemp(prefix="cdcsync-bench-snapshot-"))
    ceilings: list[float] = []
    ours: list[float] = []
    try:
        dsn = pg.dsn
        fill(dsn, args.rows)
        copy_ceiling(dsn)  # warm the cache
        for run in range(args.runs):
            seconds, size = copy_ceiling(dsn)
            ceilings.append(seconds)
            config: dict[str, Any] = {
                "source": {
                    "dsn": dsn,
                    "slot": f"bench_{run}",
                    "publication": "pub",
                    "tables": ["public.bench"],
                    "snapshot": "initial",
                    "snapshot_chunk_size": args.chunk,
                },
                "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": f"bench{run}"},
                "registry": {"url": registry.url},
                "logging": {"level": "WARNING"},
                "admin": {"listen": "127.0.0.1:0"},
            }
            config_path = workdir / f"cdcsync{run}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            elapsed, rows = run_cdcsync(config_path, dsn)
            ours.append(elapsed)
            print(
                f"run {run + 1}: COPY TO STDOUT {args.rows / seconds:,.0f} rows/s"
                f" ({size / seconds / 2**20:,.0f} MiB/s); cdcsync snapshot"
                f" {rows / elapsed:,.0f} rows/s ({rows:,} rows in {elapsed:.1f}s)",
                flush=True,
            )
    finally:
        registry.stop()
        broker.stop()
        pg.stop()

    med = statistics.median
    ceiling_rate = args.rows / med(ceilings)
    our_rate = args.rows / med(ours)
    print()
    print(f"table                      {args.rows:,} rows, {args.runs} runs (medians)")
    print(f"COPY TO STDOUT (ceiling)   {ceiling_rate:,.0f} rows/s")
    print(f"cdcsync snapshot           {our_rate:,.0f} rows/s (chunks of {args.chunk:,})")
    print(f"ratio                      {our_rate / ceiling_rate:.2f}")


if __name__ == "__main__":
    main()
