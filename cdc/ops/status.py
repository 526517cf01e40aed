"""``cdcsync status``: consumer lag, dead letters and slot figures, plus the live counters.

``collect_status(config)`` gathers what can be read without the running process, as a
JSON-ready dict (the admin API reuses it):

- per integration: each partition's committed offset of the live consumer group, the
  partition's end offset (read by a consumer of its own, see ``cdc.kafka.replay_plan.end_offset``)
  and the lag (``end - committed``, clamped at 0; a group that never committed lags by
  everything retained), the state store's dead-letter counts and its last reconcile run
  (``last_reconcile``: result, counts, error);
- for capture: the slot's ``confirmed_flush_lsn``, ``restart_lsn``, whether it is active,
  lag in bytes (``pg_current_wal_lsn() - confirmed_flush_lsn``), WAL retained by the slot
  (``pg_current_wal_lsn() - restart_lsn``) and, while a walsender streams it, the lag in
  seconds PostgreSQL measures (``pg_stat_replication.flush_lag``); and per table ever
  snapshotted, the rows read and whether the snapshot is done (the state store).

``collect_live(config)`` asks the running process's admin API (``GET /status``) for the
live counters; ``None`` and one line saying why when no process answers within 2 s.

Invariants: read-only everywhere (the group's offsets are fetched, never committed; no
group is joined); one unreachable part (broker, database, admin API) is reported in its
own ``error`` field and never hides the others; no secret appears in the output.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, TopicPartition

from cdc.config import Config
from cdc.core.errors import CdcsyncError, first_line
from cdc.core.secrets import redact_dsn
from cdc.kafka.client_log import with_logger
from cdc.kafka.consumer import producer_only
from cdc.kafka.replay_plan import end_offset, replay_consumer_config
from cdc.ops.admin_api import AdminError, AdminUnreachable, admin_url, call_admin
from cdc.state.store import StateStore

__all__ = ["collect_live", "collect_status", "full_status", "print_status"]

_TIMEOUT_S = 10.0
_ADMIN_TIMEOUT_S = 2.0

_SLOT_QUERY = """
SELECT s.active,
       s.confirmed_flush_lsn::text,
       s.restart_lsn::text,
       pg_current_wal_lsn()::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint,
       extract(epoch FROM r.flush_lag)::float8
FROM pg_replication_slots s
LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
WHERE s.slot_name = %s
"""


async def collect_status(config: Config) -> dict[str, Any]:
    """The non-live status; see the module docstring."""
    lag, (dead, snapshots), capture, reconciled = await asyncio.gather(
        asyncio.to_thread(_consumer_lag, config),
        _state_figures(config),
        _slot(config),
        _last_reconciles(config),
    )
    capture["snapshots"] = snapshots
    integrations: dict[str, Any] = {}
    for name in config.integrations:
        integrations[name] = {
            **lag[name],
            "dead_letters": dead.get(name),
            "last_reconcile": reconciled.get(name),
        }
    return {"capture": capture, "integrations": integrations}


async def collect_live(config: Config) -> tuple[dict[str, Any] | None, str | None]:
    """The running process's counters (``GET /status``), or ``None`` and why not."""
    try:
        live = await call_admin(config, "GET", "/status", timeout_s=_ADMIN_TIMEOUT_S)
    except AdminUnreachable as exc:
        return None, f"{exc}: live counters unknown"
    except AdminError as exc:
        return None, str(exc)
    if not isinstance(live, dict):
        return None, f"the admin API at {admin_url(config)} did not answer a JSON object"
    return live, None


async def full_status(config: Config) -> dict[str, Any]:
    """``collect_status`` with the live counters under ``live`` (and ``live_error``)."""
    status, (live, why) = await asyncio.gather(collect_status(config), collect_live(config))
    return {**status, "live": live, "live_error": why}


# --------------------------------------------------------------------------- parts


def _consumer_lag(config: Config) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    kafka = config.kafka
    base = {k: v for k, v in kafka.client_properties().items() if not producer_only(k)}
    for name, integration in config.integrations.items():
        group = integration.group_id or f"cdcsync.{name}"
        entry: dict[str, Any] = {"group_id": group, "partitions": [], "lag": None, "error": None}
        result[name] = entry
        consumer = Consumer(with_logger({**base, "group.id": group, "enable.auto.commit": False}))
        reader = Consumer(replay_consumer_config(config, name))
        try:
            entry["partitions"] = _group_lag(consumer, reader, list(integration.topics))
            entry["lag"] = sum(p["lag"] for p in entry["partitions"])
        except KafkaException as exc:
            entry["error"] = f"broker: {first_line(exc)}"
        finally:
            consumer.close()
            reader.close()
    return result


def _group_lag(consumer: Consumer, reader: Consumer, topics: list[str]) -> list[dict[str, Any]]:
    """The group's offsets (fetched only) against each partition's end (read by ``reader``)."""
    metadata = consumer.list_topics(timeout=_TIMEOUT_S)
    tps: list[TopicPartition] = []
    missing: list[dict[str, Any]] = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None:
            missing.append(
                {"topic": topic, "partition": None, "committed": None, "end": None, "lag": 0}
            )
            continue
        tps.extend(TopicPartition(topic, p) for p in sorted(meta.partitions))
    committed = consumer.committed(tps, timeout=_TIMEOUT_S) if tps else []
    rows: list[dict[str, Any]] = []
    for tp in committed:
        low, high = end_offset(reader, tp.topic, tp.partition)
        offset = None if tp.offset in (OFFSET_INVALID,) or tp.offset < 0 else int(tp.offset)
        lag = max(int(high) - (int(low) if offset is None else offset), 0)
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": offset,
                "end": int(high),
                "lag": lag,
            }
        )
    return rows + missing


async def _state_figures(
    config: Config,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]] | dict[str, str]]:
    """From one state store connection: dead-letter counts per integration, and per table
    snapshotted the rows read, done or not, when last saved (or the error, in each)."""
    try:
        state = await StateStore.open(
            config.state_dsn().get_secret_value(), schema=config.state.schema_
        )
    except CdcsyncError as exc:
        error = first_line(exc)
        return {name: {"error": error} for name in config.integrations}, {"error": error}
    try:
        counts = await state.dead_letter_counts()
        progresses = await state.snapshot_progresses()
    except CdcsyncError as exc:
        error = first_line(exc)
        return {name: {"error": error} for name in config.integrations}, {"error": error}
    finally:
        await state.close()
    dead = {
        name: {"pending": counts.get(name, (0, 0))[0], "replayed": counts.get(name, (0, 0))[1]}
        for name in config.integrations
    }
    snapshots = [
        {"table": p.table, "rows": p.rows, "done": p.done, "updated_at": p.updated_at.isoformat()}
        for p in progresses
    ]
    return dead, snapshots


async def _last_reconciles(config: Config) -> dict[str, dict[str, Any]]:
    """The last reconcile run of each integration (the state store's history)."""
    try:
        state = await StateStore.open(
            config.state_dsn().get_secret_value(), schema=config.state.schema_
        )
    except CdcsyncError as exc:
        return {name: {"error": first_line(exc)} for name in config.integrations}
    out: dict[str, dict[str, Any]] = {}
    try:
        for name in config.integrations:
            runs = await state.reconcile_runs(name, limit=1)
            if runs:
                run = runs[0]
                out[name] = {
                    "result": run.result,
                    "started_at": run.started_at.isoformat(),
                    "ended_at": None if run.ended_at is None else run.ended_at.isoformat(),
                    "rows_checked": run.rows_checked,
                    "missing": run.missing,
                    "extra": run.extra,
                    "different": run.different,
                    "repaired": run.repaired,
                    "error": run.error,
                    "scheduled": run.scheduled,
                }
    except CdcsyncError as exc:
        return {name: {"error": first_line(exc)} for name in config.integrations}
    finally:
        await state.close()
    return out


async def _slot(config: Config) -> dict[str, Any]:
    source = config.source
    entry: dict[str, Any] = {"slot": source.slot, "exists": None, "error": None}
    dsn = source.dsn.get_secret_value()
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=int(_TIMEOUT_S)
        ) as conn:
            cur = await conn.execute(_SLOT_QUERY, (source.slot,))
            row = await cur.fetchone()
    except psycopg.Error as exc:
        entry["error"] = f"source database: {redact_dsn(first_line(exc))}"
        return entry
    entry["exists"] = row is not None
    if row is not None:
        active, flushed, restart, current, lag, retained, seconds = row
        entry.update(
            {
                "active": bool(active),
                "confirmed_flush_lsn": flushed,
                "restart_lsn": restart,
                "current_wal_lsn": current,
                "lag_bytes": None if lag is None else max(int(lag), 0),
                "retained_wal_bytes": None if retained is None else max(int(retained), 0),
                "lag_seconds": None if seconds is None else float(seconds),
            }
        )
    return entry


# --------------------------------------------------------------------------- output


def print_status(status: dict[str, Any]) -> None:
    """Human output: one table for capture, one per integration, then the live counters."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console()
    capture = status["capture"]
    console.print(f"[bold]capture[/bold] (slot {capture['slot']})")
    if capture.get("error"):
        console.print(f"  {capture['error']}")
    elif not capture.get("exists"):
        console.print("  the slot does not exist (capture has not run yet)")
    else:
        table = Table(show_header=True)
        for column in ("active", "confirmed_flush_lsn", "lag", "lag (s)", "WAL retained"):
            table.add_column(column)
        seconds = capture["lag_seconds"]
        table.add_row(
            "yes" if capture["active"] else "no",
            capture["confirmed_flush_lsn"] or "-",
            _bytes(capture["lag_bytes"]),
            "-" if seconds is None else f"{seconds:.3f}",
            _bytes(capture["retained_wal_bytes"]),
        )
        console.print(table)
    snapshots = capture.get("snapshots")
    if isinstance(snapshots, dict):
        console.print(f"  snapshots: {snapshots.get('error')}")
    for snap in snapshots or []:
        state = "done" if snap["done"] else "in progress"
        console.print(f"  snapshot of {snap['table']}: {snap['rows']:,} rows, {state}")
    live = status.get("live") or {}
    live_integrations = live.get("integrations") or {}
    for name, entry in status["integrations"].items():
        dead = entry.get("dead_letters") or {}
        dead_text = (
            dead["error"]
            if "error" in dead
            else f"dead letters {dead.get('pending', 0)} pending, {dead.get('replayed', 0)} done"
        )
        console.print(
            f"[bold]{name}[/bold] (group {entry['group_id']}): lag {entry['lag']}; {dead_text}"
        )
        if entry.get("error"):
            console.print(f"  {entry['error']}")
        recon = entry.get("last_reconcile")
        if recon:
            console.print(f"  last reconcile: {_reconcile_line(recon)}", highlight=False)
        table = Table(show_header=True)
        for column in ("topic", "partition", "committed", "end", "lag"):
            table.add_column(column)
        for p in entry["partitions"]:
            table.add_row(
                p["topic"],
                "-" if p["partition"] is None else str(p["partition"]),
                "-" if p["committed"] is None else str(p["committed"]),
                "-" if p["end"] is None else str(p["end"]),
                str(p["lag"]),
            )
        console.print(table)
        counters = live_integrations.get(name)
        if counters:
            console.print(f"  live: {_live_integration(counters)}", highlight=False, soft_wrap=True)
    if status.get("live_error"):
        console.print(status["live_error"])
    elif live.get("capture"):
        console.print(
            f"live capture: {_live_capture(live['capture'])}", highlight=False, soft_wrap=True
        )


def _reconcile_line(run: dict[str, Any]) -> str:
    if "result" not in run:
        return str(run.get("error"))
    line = (
        f"{run['result']} at {run['ended_at'] or run['started_at']}: {run['rows_checked']:,} rows,"
        f" {run['missing']} missing, {run['extra']} extra, {run['different']} different,"
        f" {run['repaired']} repaired"
    )
    return line if not run.get("error") else f"{line} ({run['error']})"


def _live_integration(counters: dict[str, Any]) -> str:
    """One line of a running integration's counters, as words and numbers."""
    parts = [
        f"{key.replace('_', ' ')} {_word(counters.get(key))}"
        for key in ("applied", "older", "duplicate", "retried", "dead_lettered", "circuit")
    ]
    parts.append(f"paused {_word(counters.get('paused'))}")
    parts.append(f"last version {_word(counters.get('last_version'))}")
    parts.append(f"apply p99 {_seconds(counters.get('apply_latency_p99_s'))}")
    parts.append(f"last error {_word(counters.get('last_error'))}")
    return ", ".join(parts)


def _live_capture(capture: dict[str, Any]) -> str:
    """One line of the running capture's counters, as words and numbers."""
    return ", ".join(
        [
            f"connected {_word(capture.get('connected'))}",
            f"events {_word(capture.get('events'))}",
            f"transactions {_word(capture.get('transactions'))}",
            f"tombstones {_word(capture.get('tombstones'))}",
            f"restarts {_word(capture.get('restarts'))}",
            f"confirmed {_word(capture.get('flushed_lsn'))}",
            f"received {_word(capture.get('received_lsn'))}",
            f"lag {_bytes(capture.get('lag_bytes'))}",
            f"lag (s) {_seconds(capture.get('lag_seconds'))}",
            f"delivery p99 {_seconds(capture.get('delivery_latency_p99_s'))}",
            f"last error {_word(capture.get('last_error'))}",
        ]
    )


def _word(value: Any) -> str:
    """A JSON value as an operator reads it: yes/no, ``-`` for none, grouped integers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _seconds(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f} s"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"
