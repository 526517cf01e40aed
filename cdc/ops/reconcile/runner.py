"""``cdcsync reconcile``: compare an integration's target with its mapped source; repair.

One run, for one integration:

1. Check: each source table of the integration (its topics' tables) is read in primary-key
   chunks (``cdc.ops.reconcile.source``: no lock across chunks, rate-bounded) and mapped
   as a snapshot read; each chunk's entity keys are then looked up in the target
   (``cdc.ops.reconcile.targets``) and compared (``cdc.ops.reconcile.report``). Then every
   live key of the target no source row maps to is an ``extra``.
2. Settle: changes may be on their way while the run reads (capture and sync keep
   running). A key found different is checked again, source row and target, after
   ``reconcile.settle_s`` (up to three times) and reported only if it still differs. An
   extra entity whose version in the target is at or after the position where the run
   started was written by a change the read may not have seen: it is left out (a note says
   how many).
3. Repair (``--repair``), never by writing the target from the side:
   - a key whose source row exists (missing, different) is re-sent as an incremental
     snapshot of those keys: a ``RereadSignal`` (``cdc.core.signals``, the same request the
     sync worker makes for rows to read again) written into the source's stream; capture
     reads the rows between watermarks and publishes ``op=r`` events at the high
     watermark's commit LSN, which the integrations fed by the table map and apply like
     any other change, so ordering and last-writer-wins hold. More than
     ``max_repair_keys`` keys of one table: the whole table is snapshotted again
     (``cdcsync snapshot``'s request), unless a snapshot of it is under way (the run says
     so). With ``wait_s`` the run then checks the keys again until they are equal.
   - an extra entity has no source row, so no snapshot can produce its delete: it is
     deleted through the integration's own sink (``Sink.apply`` of an ``EntityDelete``:
     the same per-key locks and version guard as the worker) at the smallest version
     newer than the one the target holds. The delete wins only over the stray entity; any
     later change from the source (a newer commit) still wins over the delete's tombstone.
4. History: every run is appended to the state store's ``reconcile_runs``.

Failures: an unknown integration, a topic that is not a captured table's, a table without
a primary key are ``ConfigError`` (exit 2, nothing read); a target, the source or the state
store down ends the run as failed with the reason (``Report.error``, exit 1), recorded in
the history when the state store can take it; a row the mapper fails on is counted and
listed, and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from cdc.capture import source_setup
from cdc.capture.snapshot.plan import Key
from cdc.capture.snapshot.request import request_snapshot
from cdc.capture.source_setup import TableName
from cdc.config import Config, HttpSinkConfig, IntegrationConfig, PostgresSinkConfig
from cdc.core.errors import CdcsyncError, ConfigError, RetryableError, first_line
from cdc.core.lsn import Lsn
from cdc.core.signals import RereadSignal
from cdc.ops.reconcile.report import Drift, MapperFailure, Report, compare_fields
from cdc.ops.reconcile.source import MappedRow, RateLimit, SourceTable, map_rows
from cdc.ops.reconcile.targets import Held, Target, open_target
from cdc.state.store import StateStore, pipeline_id
from cdc.sync.reread import send_signal
from cdc.sync.sinks import build_sink
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Mapper, Version
from mappers.loader import load_mapper

__all__ = ["integration_tables", "reconcile", "run_reconcile_command", "sink_kind"]

log = logging.getLogger("cdcsync.reconcile")

_SETTLE_ROUNDS: Final = 3
_MAX_SEQ: Final = (1 << 32) - 1
_REPAIR_POLL_S: Final = 0.5


def sink_kind(integration: IntegrationConfig) -> str:
    sink = integration.sink
    if isinstance(sink, PostgresSinkConfig):
        return "postgres"
    return "http" if isinstance(sink, HttpSinkConfig) else "kafka"


def integration_tables(config: Config, name: str) -> list[TableName]:
    """The source tables feeding integration ``name`` (one per topic); ``ConfigError`` for an
    unknown integration or a topic that is not a captured table's."""
    integration = config.integrations.get(name)
    if integration is None:
        known = ", ".join(sorted(config.integrations)) or "none"
        raise ConfigError(f"unknown integration {name!r} (configured: {known})")
    prefix = config.kafka.topic_prefix + "."
    captured = {str(TableName.parse(t)): TableName.parse(t) for t in config.source.tables}
    out: list[TableName] = []
    for topic in integration.topics:
        table = captured.get(topic[len(prefix) :]) if topic.startswith(prefix) else None
        if table is None:
            raise ConfigError(
                f"cannot reconcile {name}: topic {topic!r} is not the topic of a table in"
                " source.tables"
            )
        out.append(table)
    return out


def parse_keys(texts: Sequence[str]) -> tuple[Key, ...]:
    """``--keys`` values: a primary key's text, its columns separated by commas."""
    return tuple(tuple(part.strip() for part in text.split(",")) for text in texts)


def _after(version: Version) -> Version:
    """The smallest version newer than ``version``."""
    if version.seq < _MAX_SEQ:
        return Version(version.major, version.lsn, version.seq + 1)
    return Version(version.major, version.lsn + 1, 0)


@dataclass
class _Expected:
    """What the source says entity ``(entity, key)`` should be."""

    table: str
    source_key: Key
    op: EntityOp


class _Run:
    """One reconcile run's connections and findings."""

    def __init__(self, config: Config, name: str, *, report: Report) -> None:
        self.config = config
        self.name = name
        self.integration = config.integrations[name]
        self.settings = self.integration.reconcile
        self.report = report
        self.mapper: Mapper = load_mapper(self.integration.mapper, integration=name)
        self.known: dict[tuple[str, str, str], str] = {}
        self.state: StateStore | None = None
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.target: Target | None = None
        self.tables: dict[str, SourceTable] = {}
        self.expected: dict[tuple[str, str], _Expected] = {}
        self.keys_only: set[str] = set()  # entity keys seen (targets that keep no entity)
        self.start_lsn = 0
        self.rate = RateLimit(self.settings.rows_per_s)
        self.chunk = max(1, min(config.source.snapshot_chunk_size, 1000))
        # Source-keyed findings, per table and source key; extras without a source row.
        self.found: dict[tuple[str, Key], list[Drift]] = {}
        self.strays: dict[tuple[str, str], tuple[Drift, Held]] = {}
        self.skipped_recent = 0
        # Only the HTTP target's state keeps entities apart; a table or a topic holds keys.
        self.keeps_entity = isinstance(self.integration.sink, HttpSinkConfig)

    async def open(self) -> None:
        cfg = self.config
        self.state = await StateStore.open(
            cfg.state_dsn().get_secret_value(), schema=cfg.state.schema_
        )
        conn = await source_setup.connect(cfg.source.dsn.get_secret_value())
        self.conn = conn
        await conn.execute("SET TimeZone TO 'UTC'")
        await conn.execute("SET application_name TO 'cdcsync-reconcile'")
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        self.start_lsn = int(Lsn.parse(str(row[0])))
        self.target = await open_target(cfg, self.name, state=self.state)

    async def close(self) -> None:
        if self.target is not None:
            with contextlib.suppress(Exception):
                await self.target.close()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
        if self.state is not None:
            with contextlib.suppress(Exception):
                await self.state.close()

    # ------------------------------------------------------------------ check

    async def check(self, tables: list[TableName], only: tuple[Key, ...] | None) -> None:
        assert self.conn is not None
        for table in tables:
            st = await SourceTable.open(self.conn, self.config, table)
            self.tables[str(table)] = st
        for name, st in self.tables.items():
            async for rows in st.chunks(self.conn, size=self.chunk, rate=self.rate, only=only):
                mapped = await self._map(st, rows)
                self.report.rows_checked += len(rows)
                await self._compare(name, mapped)
            if only is not None:
                await self._compare_gone(name, st, only, set())
        if only is None:
            await self._find_strays()

    async def _map(self, st: SourceTable, rows: Sequence[Any]) -> list[MappedRow]:
        assert self.state is not None
        return await map_rows(
            st,
            rows,
            mapper=self.mapper,
            integration=self.name,
            state=self.state,
            known=self.known,
        )

    async def _compare(self, table: str, mapped: list[MappedRow]) -> None:
        """Compare one chunk's mapped rows with the target; record drift per source key."""
        assert self.target is not None
        wanted: dict[str, list[tuple[Key, EntityOp]]] = {}
        for row in mapped:
            self.found.pop((table, row.key), None)
            if row.error is not None:
                self.report.mapper_failures.append(MapperFailure(table, row.key, row.error))
                continue
            for op in row.ops:
                self.expected[(op.entity, op.key)] = _Expected(table, row.key, op)
                self.keys_only.add(op.key)
                wanted.setdefault(op.entity, []).append((row.key, op))
        for entity, items in wanted.items():
            held = await self.target.fetch(entity, [op.key for _, op in items])
            for source_key, op in items:
                drift = _judge(op, held.get(op.key), table=table, source_key=source_key)
                if drift is not None:
                    self.found.setdefault((table, source_key), []).append(drift)

    async def _compare_gone(
        self, table: str, st: SourceTable, keys: tuple[Key, ...], present: set[Key]
    ) -> None:
        """Source rows among ``keys`` that are gone: an entity they mapped to must be too."""
        assert self.target is not None
        gone = [k for k in keys if k not in present]
        if not gone:
            return
        assert self.conn is not None
        rows = await st.read(self.conn, after=None, limit=len(keys), only=tuple(keys))
        there = {st.key(r) for r in rows}
        for key in gone:
            if key in there:
                continue
            self.found.pop((table, key), None)
            stale = [e for e in self.expected.values() if e.table == table and e.source_key == key]
            for e in stale:
                held = (await self.target.fetch(e.op.entity, [e.op.key])).get(e.op.key)
                if held is not None and not _recent(held, self.start_lsn):
                    drift = Drift("extra", e.op.entity, e.op.key, table, key)
                    self.found.setdefault((table, key), []).append(drift)

    async def _find_strays(self) -> None:
        assert self.target is not None
        keeps_entity = self.keeps_entity
        candidates: dict[str, list[str]] = {}
        async for batch in self.target.live_keys():
            for entity, key in batch:
                known = (entity, key) in self.expected if keeps_entity else key in self.keys_only
                if not known:
                    candidates.setdefault(entity, []).append(key)
        default_entity = next((e for e, _ in self.expected), "entity")
        for entity, keys in candidates.items():
            held = await self.target.fetch(entity, keys)
            for key, h in held.items():
                if _recent(h, self.start_lsn):
                    self.skipped_recent += 1
                    continue
                name = entity or default_entity
                self.strays[(name, key)] = (Drift("extra", name, key), h)

    # ------------------------------------------------------------------ settle

    async def settle(self) -> None:
        """Check the differing keys again after ``settle_s``: changes may have been in flight."""
        for _ in range(_SETTLE_ROUNDS):
            if not (self.found or self.strays) or self.settings.settle_s <= 0:
                return
            await asyncio.sleep(self.settings.settle_s)
            await self.recheck()

    async def recheck(self) -> None:
        """Check the differing keys again: source rows, then the target (read afresh)."""
        assert self.target is not None
        await self.target.refresh()
        by_table: dict[str, list[Key]] = {}
        for table, key in self.found:
            by_table.setdefault(table, []).append(key)
        for table, keys in by_table.items():
            st = self.tables[table]
            assert self.conn is not None
            rows = await st.read(self.conn, after=None, limit=len(keys), only=tuple(keys))
            mapped = await self._map(st, rows)
            await self._compare(table, mapped)
            await self._compare_gone(table, st, tuple(keys), {m.key for m in mapped})
        await self._recheck_strays()

    async def _recheck_strays(self) -> None:
        assert self.target is not None
        by_entity: dict[str, list[str]] = {}
        for entity, key in self.strays:
            by_entity.setdefault(entity, []).append(key)
        for entity, keys in by_entity.items():
            fetch_entity = entity if self.keeps_entity else ""
            held = await self.target.fetch(fetch_entity, keys)
            for key in keys:
                h = held.get(key)
                before = self.strays[(entity, key)][1]
                if h is None or h.version != before.version:
                    del self.strays[(entity, key)]  # deleted, or written since: not a stray

    def findings(self) -> list[Drift]:
        drifts = [d for items in self.found.values() for d in items]
        drifts.extend(d for d, _ in self.strays.values())
        order = {"missing": 0, "extra": 1, "different": 2}
        return sorted(drifts, key=lambda d: (order[d.kind], d.entity, d.key))

    # ------------------------------------------------------------------ repair

    async def repair(self, *, wait_s: float) -> None:
        assert self.state is not None
        pipeline = pipeline_id(self.config.source.slot, self.config.kafka.topic_prefix)
        resend: dict[str, set[Key]] = {}
        sourceless: list[tuple[str, str, Held | None]] = []
        for (table, key), drifts in self.found.items():
            for d in drifts:
                if d.kind == "extra":
                    held = None
                    if self.target is not None:
                        fetch_entity = d.entity if self.keeps_entity else ""
                        held = (await self.target.fetch(fetch_entity, [d.key])).get(d.key)
                    sourceless.append((d.entity, d.key, held))
                else:
                    resend.setdefault(table, set()).add(key)
        sourceless.extend((e, k, h) for (e, k), (_, h) in self.strays.items())
        reread: dict[str, tuple[dict[str, str | None], ...]] = {}
        whole: list[str] = []
        for table, table_keys in sorted(resend.items()):
            if len(table_keys) <= self.settings.max_repair_keys:
                st = self.tables[table]
                reread[table] = tuple(st.key_map(k) for k in sorted(table_keys))
                continue
            row = await self.state.snapshot_progress(table, pipeline=pipeline)
            if row is not None and not row.done:
                self.report.notes.append(
                    f"{table}: {len(table_keys)} keys differ and a snapshot of it is under way;"
                    " not repaired now (run the repair again once it is done)"
                )
                continue
            whole.append(table)
            self.report.notes.append(
                f"{table}: {len(table_keys)} keys differ (more than max_repair_keys):"
                " the whole table is snapshotted again"
            )
        if reread:
            signal = RereadSignal(f"reconcile-{uuid.uuid4().hex[:12]}", reread)
            await send_signal(self.config.source.dsn.get_secret_value(), signal)
            self.report.repair_request = signal.request
            self.report.repaired += sum(len(keys) for keys in reread.values())
        if whole:
            request, _ = await request_snapshot(self.config, whole)
            self.report.repair_request = request
            self.report.repaired += sum(len(resend[t]) for t in whole)
        if sourceless:
            await self._delete_strays(sourceless)
        if wait_s > 0 and (reread or whole or sourceless):
            await self._wait_repaired(wait_s)

    async def _wait_repaired(self, wait_s: float) -> None:
        """Check the repaired keys again until they are equal or ``wait_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while (self.found or self.strays) and loop.time() < deadline:
            await asyncio.sleep(_REPAIR_POLL_S)
            await self.recheck()
        left = len(self.found) + len(self.strays)
        if left:
            self.report.notes.append(
                f"repair {self.report.repair_request}: {left} keys still differ after"
                f" {wait_s:g} s (is capture running?); the repair goes on when capture runs"
            )

    async def _delete_strays(self, items: list[tuple[str, str, Held | None]]) -> None:
        assert self.state is not None
        ops: list[EntityOp] = []
        for entity, key, held in items:
            if held is None or held.version is None:
                self.report.notes.append(
                    f"{entity} {key}: no version known in the target; not deleted"
                )
                continue
            ops.append(EntityDelete(entity=entity, key=key, version=_after(held.version)))
        if not ops:
            return
        sink = build_sink(self.name, self.config, state=self.state)
        try:
            await sink.start()
            results = await sink.apply(ops)
        finally:
            with contextlib.suppress(Exception):
                await sink.close()
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, CdcsyncError):
                self.report.notes.append(f"delete of {op.entity} {op.key} refused: {result}")
            else:
                self.report.repaired += 1


def _recent(held: Held, start_lsn: int) -> bool:
    """Written by a change committed after the run started (the read may not have seen it)."""
    return held.version is not None and held.version.lsn >= start_lsn


def _judge(op: EntityOp, held: Held | None, *, table: str, source_key: Key) -> Drift | None:
    if isinstance(op, EntityDelete):
        if held is None:
            return None
        return Drift("extra", op.entity, op.key, table, source_key)
    if held is None:
        return Drift("missing", op.entity, op.key, table, source_key)
    if held.fields is None:
        return None  # the target shows no fields (HTTP without verify_url): present is all
    differing = compare_fields(op.fields(), _normalised(op, held.fields))
    if differing:
        return Drift("different", op.entity, op.key, table, source_key, differing)
    return None


def _normalised(op: EntityUpsert, actual: dict[str, Any]) -> dict[str, Any]:
    """The target's values in the model's JSON form (``numeric`` 1.5 as the model has it);
    when the target's fields do not make a valid model, each value in its JSON form."""
    names = set(op.fields())
    subset = {k: v for k, v in actual.items() if k in names}
    try:
        model = type(op.model).model_validate(subset)
        return dict(model.model_dump(mode="json", include=set(subset)))
    except ValidationError:
        return {k: to_jsonable_python(v) for k, v in subset.items()}


async def reconcile(
    config: Config,
    name: str,
    *,
    keys: Sequence[str] = (),
    repair: bool = False,
    scheduled: bool = False,
    wait_s: float = 0.0,
) -> Report:
    """Run one reconcile of integration ``name``; see the module docstring."""
    tables = integration_tables(config, name)
    report = Report(name, sink_kind(config.integrations[name]))
    run = _Run(config, name, report=report)
    only = parse_keys(keys) if keys else None
    try:
        await run.open()
        await run.check(tables, only)
        await run.settle()
        report.drifts = run.findings()
        if run.skipped_recent:
            report.notes.append(
                f"{run.skipped_recent} target entities written since the run started were"
                " not judged"
            )
        if isinstance(config.integrations[name].sink, HttpSinkConfig) and (
            config.integrations[name].verify_url is None
        ):
            report.notes.append(
                "fields not compared: the HTTP target is known from the state store only"
                " (set verify_url to compare fields)"
            )
        if repair and report.drifts:
            await run.repair(wait_s=wait_s)
    except ConfigError as exc:
        report.error = first_line(exc)  # recorded as a failed run, then raised (exit 2)
        raise
    except RetryableError as exc:
        report.error = first_line(exc)
    except psycopg.Error as exc:
        report.error = f"{type(exc).__name__}: {first_line(exc)}"
    finally:
        failed = {(f.table, f.source_key): f for f in report.mapper_failures}
        report.mapper_failures = list(failed.values())
        report.ended_at = datetime.now(UTC)
        await _record(run, report, scheduled=scheduled)
        await run.close()
    return report


async def _record(run: _Run, report: Report, *, scheduled: bool) -> None:
    """Append the run to the history; a state store that is down is only logged."""
    state = run.state
    try:
        if state is None:
            cfg = run.config
            state = await StateStore.open(
                cfg.state_dsn().get_secret_value(), schema=cfg.state.schema_
            )
            run.state = state
        await state.record_reconcile_run(
            report.integration,
            started_at=report.started_at,
            ended_at=report.ended_at,
            counts={
                "rows_checked": report.rows_checked,
                "missing": report.missing,
                "extra": report.extra,
                "different": report.different,
                "repaired": report.repaired,
                "mapper_failures": len(report.mapper_failures),
            },
            result=report.result,
            error=report.error,
            scheduled=scheduled,
        )
    except CdcsyncError as exc:
        log.warning("reconcile %s: the run could not be recorded: %s", report.integration, exc)


def run_reconcile_command(
    config: Config,
    name: str,
    *,
    keys: Sequence[str],
    repair: bool,
    as_json: bool,
    wait_s: float,
) -> int:
    """``cdcsync reconcile``: run, print the report (text or JSON), return the exit code."""
    report = asyncio.run(reconcile(config, name, keys=keys, repair=repair, wait_s=wait_s))
    print(report.to_json() if as_json else report.to_text())
    return report.exit_code
