"""The PostgreSQL sink's COPY path (large batches) against a real server: the same values,
the same version guard, the same rejections as the pipelined statements of small batches."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel

from cdc.core.errors import SinkRejected, SinkUnavailable
from cdc.sync.sinks.base import Outcome, Result
from cdc.sync.sinks.postgres import COPY_MIN_ROWS, PostgresSink
from mappers.entity import EntityOp
from tests.integration.test_postgres_sink import (
    Extended,
    Item,
    create_items_table,
    delete,
    rows,
    sink_for,
    upsert,
)


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Part(BaseModel):
    code: str
    weight: float


class AllTypes(BaseModel):
    """One field per column type ``sql_type`` derives; every one may be null."""

    count: int | None
    label: str | None
    amount: Decimal | None
    ratio: float | None
    active: bool | None
    seen_at: dt.datetime | None
    day: dt.date | None
    at: dt.time | None
    blob: bytes | None
    ident: uuid.UUID | None
    attrs: dict[str, Any] | None
    sizes: list[int] | None
    pair: tuple[int, str] | None
    part: Part | None
    colour: Colour | None
    span: dt.timedelta | None


def all_types(n: int) -> AllTypes:
    """Row ``n``: every value awkward somewhere (quotes, tabs, backslashes, NUL bytes,
    unicode, extremes, negative spans); field ``n % 16`` is null."""
    values: dict[str, Any] = {
        "count": -(2**62) + n if n % 2 else 2**62 - n,
        "label": f"tab\there, newline\n, back\\slash, quote \"'{n} é ✓" if n % 3 else "",
        "amount": Decimal(f"-{n}.000100") if n % 2 else Decimal("1e-20") * n,
        "ratio": n / 7 if n % 4 else float("inf") if n % 8 else -0.5,
        "active": n % 2 == 0,
        "seen_at": dt.datetime(2024, 5, 1, 12, n % 60, 7, n, tzinfo=dt.UTC),
        "day": dt.date(1999, 12, 31) + dt.timedelta(days=n),
        "at": dt.time(n % 24, 59, 58, 999_999),
        "blob": bytes([0, 92, 9, 10, n % 256]) * (n % 3),
        "ident": uuid.UUID(int=n * 7919),
        "attrs": {"n": n, "text": 'a\tb\\c"d', "nested": [n, None, {"x": True}]},
        "sizes": list(range(n % 5)),
        "pair": (n, f"p{n}"),
        "part": Part(code=f"c\\{n}", weight=n / 3),
        "colour": Colour.RED if n % 2 else Colour.BLUE,
        "span": dt.timedelta(days=n - 100, seconds=n * 37, microseconds=n)
        if n % 5
        else -dt.timedelta(microseconds=n),
    }
    values[list(values)[n % len(values)]] = None
    return AllTypes(**values)


def run_sink(sink: PostgresSink, batches: list[list[EntityOp]]) -> tuple[list[Result], bool]:
    """Apply ``batches``; also whether the sink's connection made a staging table (COPY)."""

    async def main() -> tuple[list[Result], bool]:
        try:
            await sink.start()
            results: list[Result] = []
            for batch in batches:
                results.extend(await sink.apply(batch))
            conn = sink._conn
            assert conn is not None
            cur = await conn.execute("SELECT to_regclass('pg_temp._cdc_stage') IS NOT NULL")
            row = await cur.fetchone()
            return results, bool(row and row[0])
        finally:
            await sink.close()

    return asyncio.run(main())


def models(dsn: str, table: str) -> list[AllTypes]:
    found = rows(dsn, table, columns=", ".join(AllTypes.model_fields))
    return [AllTypes(**dict(zip(AllTypes.model_fields, row, strict=True))) for row in found]


def test_every_column_type_and_null_reads_back_equal_through_copy_and_through_statements(
    pg_dsn: str,
) -> None:
    values = [all_types(n) for n in range(COPY_MIN_ROWS + 1)]
    ops: list[EntityOp] = [upsert(f"k{n:04d}", 10 + n, v) for n, v in enumerate(values)]
    # Small batches (one row as VALUES, the others as unnest arrays), after the table exists.
    small, staged_small = run_sink(
        sink_for(pg_dsn, "public.by_statements"),
        [ops[:1], *(ops[i : i + 9] for i in range(1, len(ops), 9))],
    )
    copied, staged_copy = run_sink(sink_for(pg_dsn, "public.by_copy"), [ops[:1], ops[1:]])
    assert not staged_small
    assert staged_copy
    assert small == copied == [Outcome.APPLIED] * len(ops)
    assert models(pg_dsn, "public.by_copy") == values
    assert models(pg_dsn, "public.by_statements") == values
    assert rows(pg_dsn, "public.by_copy") == rows(pg_dsn, "public.by_statements")


def test_a_table_of_other_column_types_ends_as_the_statements_leave_it(pg_dsn: str) -> None:
    # A table made by the user, with column types other than the ones cdcsync would pick
    # (all text, a numeric with a scale, timestamp without time zone, json): PostgreSQL's own
    # casts of the statements' typed parameters are the reference the COPY path must match.
    columns = {
        "count": "numeric(30,2)",
        "amount": "numeric(40,20)",
        "ratio": "real",
        "seen_at": "timestamp",
        "day": "text",
        "at": "text",
        "ident": "text",
        "attrs": "json",
        "sizes": "text",
        "pair": "jsonb",
        "part": "text",
        "colour": "text",
        "span": "text",
        "label": "varchar(200)",
        "active": "text",
        "blob": "bytea",
    }
    assert set(columns) == set(AllTypes.model_fields)
    create_user_tables(pg_dsn, ["user_statements", "user_copy"], columns)
    values = [all_types(n) for n in range(COPY_MIN_ROWS + 1)]
    ops: list[EntityOp] = [upsert(f"k{n:04d}", 10 + n, v) for n, v in enumerate(values)]
    small, _ = run_sink(
        sink_for(pg_dsn, "public.user_statements", create_table=False),
        [ops[i : i + 9] for i in range(0, len(ops), 9)],
    )
    copied, _ = run_sink(sink_for(pg_dsn, "public.user_copy", create_table=False), [ops])
    assert small == copied == [Outcome.APPLIED] * len(ops)
    assert as_text(pg_dsn, "user_copy") == as_text(pg_dsn, "user_statements")


class Loose(BaseModel):
    """Fields whose user-chosen columns still read COPY's text as the statements' casts."""

    small: int
    wide: int
    digits: int
    when: str
    price: Decimal
    span: dt.timedelta


def test_pairings_that_copy_reads_alike_go_through_copy_and_match_the_statements(
    pg_dsn: str,
) -> None:
    kinds = {
        "small": "integer",
        "wide": "numeric(30,2)",
        "digits": "text",
        "when": "date",
        "price": "numeric(40,20)",
        "span": "interval",
    }
    create_user_tables(pg_dsn, ["loose_statements", "loose_copy"], kinds)
    ops: list[EntityOp] = [
        upsert(
            f"k{n:04d}",
            10 + n,
            Loose(
                small=n - 100,
                wide=-(2**63) + n,
                digits=n * 10**30,
                when=f"2024-02-{n % 28 + 1:02d}",
                price=Decimal(f"{n}.123456789012345678901234"),
                span=dt.timedelta(days=-n, microseconds=n),
            ),
        )
        for n in range(COPY_MIN_ROWS + 1)
    ]
    small, staged_small = run_sink(
        sink_for(pg_dsn, "public.loose_statements", create_table=False),
        [ops[i : i + 9] for i in range(0, len(ops), 9)],
    )
    copied, staged = run_sink(sink_for(pg_dsn, "public.loose_copy", create_table=False), [ops])
    assert (staged_small, staged) == (False, True)
    assert small == copied == [Outcome.APPLIED] * len(ops)
    assert as_text(pg_dsn, "loose_copy") == as_text(pg_dsn, "loose_statements")


def create_user_tables(dsn: str, tables: list[str], columns: dict[str, str]) -> None:
    """Target tables as a user would make them: the sink's two columns, then ``columns``
    (name: SQL type)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for table in tables:
            conn.execute(
                psycopg.sql.SQL(
                    "CREATE TABLE {} (_cdc_key text PRIMARY KEY, _cdc_version bytea NOT NULL, {})"
                ).format(
                    psycopg.sql.Identifier(table),
                    psycopg.sql.SQL(", ").join(
                        psycopg.sql.SQL("{} " + kind).format(psycopg.sql.Identifier(name))
                        for name, kind in columns.items()
                    ),
                )
            )


def as_text(dsn: str, table: str) -> list[str]:
    """Each row of ``public.table`` in PostgreSQL's text form, by key."""
    with psycopg.connect(dsn) as conn:
        query = psycopg.sql.SQL("SELECT t::text FROM {} AS t ORDER BY _cdc_key").format(
            psycopg.sql.Identifier("public", table)
        )
        return [row[0] for row in conn.execute(query)]


def test_older_and_equal_versions_in_a_copy_sized_batch_are_not_applied(pg_dsn: str) -> None:
    # A third of the second batch is newer: still enough rows for COPY.
    keys = [f"k{n:04d}" for n in range(3 * COPY_MIN_ROWS)]
    first = [upsert(k, 100, Item(name=f"v100-{k}", qty=1)) for k in keys[:-10]]
    first += [delete(k, 100) for k in keys[-10:]]  # tombstones at 100
    again = []
    for n, key in enumerate(keys):
        lsn = (50, 100, 150)[n % 3]  # older, equal, newer
        again.append(upsert(key, lsn, Item(name=f"v{lsn}-{key}", qty=2)))
    results, staged = run_sink(sink_for(pg_dsn, "public.items"), [first, again])
    assert staged
    second = results[len(first) :]
    assert second == [
        (Outcome.OLDER, Outcome.DUPLICATE, Outcome.APPLIED)[n % 3] for n in range(len(keys))
    ]
    # Newer rows won; older ones changed nothing; tombstoned keys came back only when newer.
    expected = []
    for n, key in enumerate(keys):
        newer = n % 3 == 2
        if newer:
            expected.append((key, f"v150-{key}", 2))
        elif key not in keys[-10:]:
            expected.append((key, f"v100-{key}", 1))
    assert rows(pg_dsn, "public.items", columns="_cdc_key, name, qty") == expected
    tombstones = rows(pg_dsn, "public.items__tombstones", columns="_cdc_key")
    assert tombstones == [(k,) for n, k in enumerate(keys) if k in keys[-10:] and n % 3 != 2]


def test_a_bad_row_in_a_copy_sized_batch_is_rejected_alone(pg_dsn: str) -> None:
    create_items_table(pg_dsn)
    only = ["price", "tags"]
    batch: list[EntityOp] = [
        upsert(f"k{n:04d}", 10 + n, Item(name=f"n{n}", qty=-5 if n == 7 else n), unavailable=only)
        for n in range(COPY_MIN_ROWS)
    ]
    results, _ = run_sink(sink_for(pg_dsn, "public.items", create_table=False), [batch])
    assert isinstance(results[7], SinkRejected)
    assert "check constraint" in str(results[7])
    assert results[:7] + results[8:] == [Outcome.APPLIED] * (COPY_MIN_ROWS - 1)
    assert len(rows(pg_dsn, "public.items", columns="_cdc_key")) == COPY_MIN_ROWS - 1


def test_copy_sized_sets_of_columns_and_a_new_column_all_land(pg_dsn: str) -> None:
    n = COPY_MIN_ROWS
    # Two sets of columns, each copied, in one batch; then a model with a new field.
    full = [upsert(f"a{i:04d}", 10, Item(name=f"a{i}", qty=i, tags=["t"])) for i in range(n)]
    partial = [
        upsert(f"b{i:04d}", 10, Item(name=f"b{i}", qty=i), unavailable=["tags", "price"])
        for i in range(n)
    ]
    wider = [upsert(f"c{i:04d}", 10, Extended(name=f"c{i}", qty=i, colour="red")) for i in range(n)]
    results, staged = run_sink(sink_for(pg_dsn, "public.items"), [full + partial, wider])
    assert staged
    assert results == [Outcome.APPLIED] * (3 * n)
    found = rows(pg_dsn, "public.items", columns="_cdc_key, name, qty, tags, colour")
    assert found == [
        *((f"a{i:04d}", f"a{i}", i, ["t"], None) for i in range(n)),
        *((f"b{i:04d}", f"b{i}", i, None, None) for i in range(n)),
        *((f"c{i:04d}", f"c{i}", i, None, "red") for i in range(n)),
    ]


def test_a_reconnected_sink_makes_its_staging_table_again(pg_dsn: str) -> None:
    def batch(lsn: int) -> list[EntityOp]:
        return [upsert(f"k{i:04d}", lsn, Item(name=f"v{lsn}", qty=i)) for i in range(COPY_MIN_ROWS)]

    async def main() -> list[Result]:
        sink = sink_for(pg_dsn, "public.items")
        try:
            await sink.start()
            results = await sink.apply(batch(10))
            assert sink._conn is not None
            pid = sink._conn.info.backend_pid
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            with pytest.raises(SinkUnavailable):
                await sink.apply(batch(20))
            return results + await sink.apply(batch(20))
        finally:
            await sink.close()

    results = asyncio.run(main())
    assert results == [Outcome.APPLIED] * (2 * COPY_MIN_ROWS)
    assert {r[0] for r in rows(pg_dsn, "public.items", columns="name")} == {"v20"}


def test_a_copy_batch_that_times_out_leaves_the_next_one_working(pg_dsn: str) -> None:
    # The first COPY-sized batch makes the staging table, then its upsert waits for a lock
    # past lock_timeout: the transaction, stage included, is rolled back on a live
    # connection, and the next batch must make the stage again.
    create_items_table(pg_dsn)
    dsn = make_conninfo(pg_dsn, options="-c lock_timeout=300")
    batch: list[EntityOp] = [
        upsert(f"k{i:04d}", 10, Item(name=f"n{i}", qty=i), unavailable=["price", "tags"])
        for i in range(COPY_MIN_ROWS)
    ]

    async def main() -> list[Result]:
        sink = sink_for(dsn, "public.items", create_table=False)
        try:
            await sink.start()
            with psycopg.connect(pg_dsn) as blocker:
                blocker.execute("LOCK TABLE public.items IN SHARE MODE")  # reads pass, writes wait
                with pytest.raises(SinkUnavailable, match="lock timeout"):
                    await sink.apply(batch)
            results = await sink.apply(batch)
            assert sink._conn is not None
            cur = await sink._conn.execute("SELECT to_regclass('pg_temp._cdc_stage')")
            assert await cur.fetchone() != (None,)  # through COPY again, not op by op
            return results
        finally:
            await sink.close()

    assert asyncio.run(main()) == [Outcome.APPLIED] * COPY_MIN_ROWS
    assert len(rows(pg_dsn, "public.items", columns="_cdc_key")) == COPY_MIN_ROWS
