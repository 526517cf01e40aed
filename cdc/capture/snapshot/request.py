"""``cdcsync snapshot``: ask the running capture for incremental snapshots, show progress.

The request is recorded where capture looks for work: one ``snapshot_progress`` row per
table (not done, no key yet, tagged with a fresh request id), then a signal wakes
capture up: a transactional ``pg_logical_emit_message`` with prefix ``cdcsync.signal``
(no table written; like Debezium's signal table without the table). Capture reads the
tables itself (``cdc.capture.snapshot.runner``) and records its progress in those rows, which this
command polls for the progress bar (rows, rows/s, ETA against the planner's row
estimate) until every table is done.

Invariants: only tables in ``source.tables`` with a primary key are accepted (the
stream must carry their changes, and chunks are read in key order); a later request
for the same table supersedes this one (the rows then carry another request id, and
this command says so). Waiting can be interrupted: the snapshot goes on in capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.capture.snapshot.plan import ProgressKey, SnapshotSignal
from cdc.capture.source_setup import TableName, table_facts
from cdc.config import Config
from cdc.core.errors import ConfigError, SourceUnavailable, first_line
from cdc.core.secrets import redact_dsn
from cdc.core.signals import SIGNAL_PREFIX
from cdc.state.store import StateStore, pipeline_id

_HINT_AFTER_S = 15.0


@dataclass
class TableStatus:
    table: str
    estimate: int
    rows: int = 0
    done: bool = False
    superseded: bool = False


def resolve_tables(config: Config, names: tuple[str, ...]) -> list[str]:
    """The requested tables as ``schema.table``; each must be captured."""
    captured = {str(TableName.parse(t)) for t in config.source.tables}
    out: list[str] = []
    for name in names:
        table = str(TableName.parse(name))
        if table not in captured:
            raise ConfigError(
                f"cannot snapshot {table}: it is not in source.tables "
                f"({', '.join(sorted(captured))})"
            )
        if table not in out:
            out.append(table)
    return out


async def request_snapshot(config: Config, tables: list[str]) -> tuple[str, list[TableStatus]]:
    """Record the request and signal capture; returns the request id and row estimates."""
    dsn = config.source.dsn.get_secret_value()
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise SourceUnavailable(f"cannot connect to {redact_dsn(dsn)}: {first_line(exc)}") from exc
    request = f"snapshot-{uuid.uuid4().hex[:12]}"
    statuses: list[TableStatus] = []
    async with conn:
        for table in tables:
            facts = await table_facts(conn, TableName.parse(table))
            if facts is None:
                raise ConfigError(f"cannot snapshot {table}: it does not exist")
            if not facts.has_primary_key:
                raise ConfigError(
                    f"cannot snapshot {table}: it has no primary key (chunks are read in key order)"
                )
            statuses.append(TableStatus(table, await _estimate(conn, TableName.parse(table))))
        store = await StateStore.open(
            config.state_dsn().get_secret_value(), schema=config.state.schema_
        )
        async with store:
            for table in tables:
                key = ProgressKey("incremental", request, None)
                await store.save_snapshot_progress(
                    table,
                    last_key=key.to_json(),
                    rows=0,
                    done=False,
                    pipeline=pipeline_id(config.source.slot, config.kafka.topic_prefix),
                )
        await conn.execute(
            "SELECT pg_logical_emit_message(true, %s, %s)",
            (SIGNAL_PREFIX, SnapshotSignal(request, tuple(tables)).encode()),
        )
    return request, statuses


async def _estimate(conn: psycopg.AsyncConnection[Any], table: TableName) -> int:
    """The planner's row count; an exact count when the table was never analysed."""
    cur = await conn.execute(
        "SELECT c.reltuples::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s",
        (table.schema, table.name),
    )
    row = await cur.fetchone()
    if row is not None and row[0] is not None and int(row[0]) >= 0:
        return int(row[0])
    from psycopg import sql  # noqa: PLC0415

    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.ident()))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def poll_progress(
    store: StateStore, request: str, statuses: list[TableStatus], *, pipeline: str = ""
) -> None:
    """Refresh ``statuses`` from the state store (``pipeline``'s rows)."""
    for status in statuses:
        row = await store.snapshot_progress(status.table, pipeline=pipeline)
        key = None if row is None else ProgressKey.from_json(row.last_key)
        if row is None or key is None or key.request != request:
            status.superseded = True
            continue
        status.rows, status.done = row.rows, row.done


def run_snapshot_command(
    config: Config, names: tuple[str, ...], *, wait: bool, quiet: bool, interval_s: float = 0.5
) -> int:
    """The command: request, then (unless ``wait`` is false) show progress until done."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    tables = resolve_tables(config, names)
    request, statuses = asyncio.run(request_snapshot(config, tables))
    out = Console(file=sys.stdout, highlight=False)
    out.print(f"snapshot {request} requested: {', '.join(tables)}")
    if not wait:
        return 0
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
    )
    tasks = {
        s.table: progress.add_task(s.table, total=max(s.estimate, 1), rate="") for s in statuses
    }
    started = time.monotonic()

    async def watch() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        store = await StateStore.open(
            config.state_dsn().get_secret_value(), schema=config.state.schema_
        )
        hinted = False
        async with store:
            while not stop.is_set():
                await poll_progress(
                    store,
                    request,
                    statuses,
                    pipeline=pipeline_id(config.source.slot, config.kafka.topic_prefix),
                )
                for s in statuses:
                    task = tasks[s.table]
                    speed = progress.tasks[task].speed
                    total = s.rows if s.done else max(s.estimate, s.rows + 1)
                    rate = f"{speed:,.0f} rows/s" if speed else ""
                    progress.update(task, completed=s.rows, total=total, rate=rate)
                if all(s.done or s.superseded for s in statuses):
                    return
                if not hinted and time.monotonic() - started > _HINT_AFTER_S:
                    if not any(s.rows for s in statuses):
                        progress.console.print(
                            "no progress yet: is capture (cdcsync capture or run) running"
                            " with this config? The request waits for it."
                        )
                    hinted = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval_s)

    with progress:
        asyncio.run(watch())
    elapsed = max(time.monotonic() - started, 1e-6)
    code = 0
    for s in statuses:
        if s.superseded:
            out.print(f"  {s.table}: superseded by a later snapshot request")
            code = 1
        elif s.done:
            out.print(f"  {s.table}: {s.rows:,} rows ({s.rows / elapsed:,.0f} rows/s)")
        else:
            out.print(f"  {s.table}: {s.rows:,} rows so far; capture goes on with it")
            code = 1
    return code
