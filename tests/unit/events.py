"""Building ``TableEvent`` values for mapper tests, as the sync worker would decode them."""

from __future__ import annotations

from typing import Any

from mappers.entity import Origin, TableEvent


def table_event(
    table: str,
    op: str,
    *,
    after: dict[str, Any] | None = None,
    before: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
    unavailable: frozenset[str] = frozenset(),
    lsn: int,
    seq: int = 1,
    offset: int = 0,
    ts_us: int = 0,
) -> TableEvent:
    """An event of ``public.{table}`` read at ``offset``; the key defaults to the row's id."""
    row = after or before or key or {}
    return TableEvent(
        origin=Origin(f"app.public.{table}", 0, offset),
        op=op,
        schema="public",
        table=table,
        key=key if key is not None else {"id": row.get("id")},
        before=before,
        after=after,
        unavailable=unavailable,
        commit_lsn=lsn,
        seq=seq,
        ts_us=ts_us,
    )
