"""Rows to read again: an upsert that would create an entity without fields it cannot see.

An update whose unchanged TOAST values pgoutput left out maps to an upsert without those
fields (``EntityUpsert.unavailable``); a target that holds the entity keeps its values. A
target that does not (the update made the row match a declarative ``where`` for the first
time, or the entity was deleted there) would be created without them, and no later event
carries them. Before such a batch is applied, the worker asks the sink which of those keys
it holds (``Sink.holding``) and, for the others, asks capture to read the rows again by key
(``RereadSignal`` on the source): the read comes later in the stream with every column, as
an incremental snapshot of those keys would, and fills the fields.

Invariant: the signal is written before the batch is applied, so a crash in between at
worst asks for a read that was not needed (a read is always safe to apply again).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from typing import Any

import psycopg

from cdc.core.errors import SourceUnavailable, first_line
from cdc.core.secrets import redact_dsn
from cdc.core.signals import SIGNAL_PREFIX, RereadSignal
from cdc.sync.sinks.base import Sink
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, TableEvent

__all__ = ["blind_creates", "reread_signal", "send_signal"]


async def blind_creates(sink: Sink, ops: Sequence[EntityOp]) -> list[int]:
    """Indexes of the upserts in ``ops`` that leave fields out and would create their
    entity (the target does not hold it when they come, in batch order)."""
    wanted: dict[str, set[str]] = {}
    for op in ops:
        if isinstance(op, EntityUpsert) and op.unavailable:
            wanted.setdefault(op.entity, set()).add(op.key)
    if not wanted:
        return []
    held = {entity: await sink.holding(entity, sorted(keys)) for entity, keys in wanted.items()}
    live: dict[tuple[str, str], bool] = {}
    out: list[int] = []
    for index, op in enumerate(ops):
        if op.key not in wanted.get(op.entity, ()):
            continue
        group = (op.entity, op.key)
        present = live.get(group, op.key in held[op.entity])
        if isinstance(op, EntityDelete):
            live[group] = False
            continue
        if op.unavailable and not present:
            out.append(index)
        live[group] = True
    return out


def _text(value: Any) -> str | None:
    """A key value as the text PostgreSQL casts back to the column's type."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return "\\x" + bytes(value).hex()
    return str(value)


def reread_signal(events: Sequence[TableEvent]) -> RereadSignal | None:
    """The re-read request for the rows of ``events`` (those with a key)."""
    keys: dict[str, list[Mapping[str, str | None]]] = {}
    seen: set[tuple[str, tuple[tuple[str, str | None], ...]]] = set()
    for event in events:
        if not event.key:
            continue
        table = f"{event.schema}.{event.table}"
        key = {column: _text(value) for column, value in event.key.items()}
        marker = (table, tuple(sorted(key.items())))
        if marker not in seen:
            seen.add(marker)
            keys.setdefault(table, []).append(key)
    if not keys:
        return None
    return RereadSignal(f"reread-{uuid.uuid4().hex[:12]}", {t: tuple(k) for t, k in keys.items()})


async def send_signal(dsn: str, signal: RereadSignal) -> None:
    """Write ``signal`` into the source's stream (a transactional logical message)."""
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name="cdcsync-reread"
        ) as conn:
            await conn.execute(
                "SELECT pg_logical_emit_message(true, %s, %s)", (SIGNAL_PREFIX, signal.encode())
            )
    except psycopg.Error as exc:
        raise SourceUnavailable(
            f"asking capture to re-read rows: {redact_dsn(first_line(exc))}"
        ) from None
