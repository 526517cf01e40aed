"""The PostgreSQL sink against a real server: last-writer-wins, tombstones, isolation, faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
import pytest
from pydantic import BaseModel

from cdc.config import PostgresSinkConfig
from cdc.core.errors import ConfigError, SinkRejected, SinkUnavailable
from cdc.sync.sinks.base import Outcome, Result
from cdc.sync.sinks.postgres import PostgresSink
from mappers.entity import EntityDelete, EntityOp, EntityUpsert, Version
from tests.fix_pg import PgServer

T = TypeVar("T")


class Item(BaseModel):
    name: str
    qty: int
    price: Decimal | None = None
    tags: list[str] = []


class Everything(BaseModel):
    count: int
    label: str
    amount: Decimal
    ratio: float
    active: bool
    seen_at: dt.datetime
    day: dt.date
    attrs: dict[str, Any]
    sizes: list[int]
    maybe: int | None = None


def sink_for(dsn: str, table: str, *, create_table: bool = True) -> PostgresSink:
    config = PostgresSinkConfig(type="postgres", dsn=dsn, table=table, create_table=create_table)
    return PostgresSink("target", config, integration="analytics")


def with_sink(sink: PostgresSink, body: Callable[[PostgresSink], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await body(sink)
        finally:
            await sink.close()

    return asyncio.run(main())


def apply_all(sink: PostgresSink, batches: Sequence[Sequence[EntityOp]]) -> list[Result]:
    async def body(s: PostgresSink) -> list[Result]:
        await s.start()
        results: list[Result] = []
        for batch in batches:
            results.extend(await s.apply(batch))
        return results

    return with_sink(sink, body)


def upsert(
    key: str, lsn: int, model: BaseModel, *, unavailable: Sequence[str] = ()
) -> EntityUpsert:
    return EntityUpsert("item", key, Version.from_lsn(lsn, 0), model, frozenset(unavailable))


def delete(key: str, lsn: int) -> EntityDelete:
    return EntityDelete("item", key, Version.from_lsn(lsn, 0))


def rows(dsn: str, table: str, *, columns: str = "*") -> list[tuple[Any, ...]]:
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn) as conn:
        query = psycopg.sql.SQL("SELECT {} FROM {} ORDER BY _cdc_key").format(
            psycopg.sql.SQL(columns), psycopg.sql.Identifier(schema, name)
        )
        return conn.execute(query).fetchall()


def history(rng: random.Random, *, keys: int, length: int) -> list[EntityOp]:
    """A plausible capture history: versions increase, keys are created, changed, deleted."""
    ops: list[EntityOp] = []
    for lsn in range(100, 100 + length * 10, 10):
        key = f"k{rng.randrange(keys)}"
        if rng.random() < 0.2:
            ops.append(delete(key, lsn))
        else:
            model = Item(name=f"n{lsn}", qty=rng.randrange(100), price=Decimal(lsn) / 100)
            ops.append(upsert(key, lsn, model, unavailable=["tags"] if rng.random() < 0.3 else ()))
    return ops


def in_random_batches(rng: random.Random, ops: list[EntityOp]) -> list[list[EntityOp]]:
    batches: list[list[EntityOp]] = []
    i = 0
    while i < len(ops):
        size = rng.randint(1, 7)
        batches.append(ops[i : i + size])
        i += size
    return batches


# ------------------------------------------------------------------------ LWW


def test_shuffled_and_duplicated_delivery_gives_the_same_table_as_in_order_delivery(
    pg_dsn: str,
) -> None:
    rng = random.Random(20240611)
    ops = [
        op
        if isinstance(op, EntityDelete)
        else upsert(op.key, op.version.lsn, op.model)  # full rows: LWW must commute
        for op in history(rng, keys=6, length=60)
    ]
    apply_all(sink_for(pg_dsn, "public.in_order"), [[op] for op in ops])
    expected = rows(pg_dsn, "public.in_order")
    latest = {op.key: op for op in ops}
    live = sorted(k for k, op in latest.items() if isinstance(op, EntityUpsert))
    assert [row[0] for row in expected] == live  # the table holds exactly the live entities

    for attempt in range(4):
        delivered = ops + rng.sample(ops, len(ops) // 2)  # every op, some twice
        rng.shuffle(delivered)
        table = f"public.shuffled_{attempt}"
        apply_all(sink_for(pg_dsn, table), in_random_batches(rng, delivered))
        assert rows(pg_dsn, table) == expected


def test_a_batch_gives_the_same_table_and_outcomes_as_applying_its_ops_one_by_one(
    pg_dsn: str,
) -> None:
    rng = random.Random(7)
    for attempt in range(3):
        ops = history(rng, keys=3, length=25)
        delivered = ops + rng.sample(ops, 8)
        rng.shuffle(delivered)
        one_by_one = apply_all(
            sink_for(pg_dsn, f"public.single_{attempt}"), [[op] for op in delivered]
        )
        batched = apply_all(sink_for(pg_dsn, f"public.batch_{attempt}"), [delivered])
        assert batched == one_by_one
        assert rows(pg_dsn, f"public.batch_{attempt}") == rows(pg_dsn, f"public.single_{attempt}")


def test_replaying_the_whole_history_applies_nothing(pg_dsn: str) -> None:
    ops = history(random.Random(3), keys=4, length=30)
    sink = sink_for(pg_dsn, "public.items")
    first = apply_all(sink, [ops])
    before = rows(pg_dsn, "public.items")
    again = apply_all(sink_for(pg_dsn, "public.items"), in_random_batches(random.Random(4), ops))
    assert Outcome.APPLIED in first
    assert Outcome.APPLIED not in again
    last_index = {op.key: i for i, op in enumerate(ops)}
    assert all(again[i] is Outcome.DUPLICATE for i in last_index.values())
    assert rows(pg_dsn, "public.items") == before


def test_a_delete_is_not_undone_by_a_late_older_upsert(pg_dsn: str) -> None:
    table = "public.items"
    results = apply_all(
        sink_for(pg_dsn, table),
        [
            [upsert("a", 10, Item(name="first", qty=1))],
            [delete("a", 30)],
            [upsert("a", 20, Item(name="late", qty=2))],
            [delete("a", 30)],
        ],
    )
    assert results == [Outcome.APPLIED, Outcome.APPLIED, Outcome.OLDER, Outcome.DUPLICATE]
    assert rows(pg_dsn, table) == []
    assert rows(pg_dsn, "public.items__tombstones", columns="_cdc_key") == [("a",)]


def test_a_newer_upsert_after_a_delete_recreates_the_row_and_clears_the_tombstone(
    pg_dsn: str,
) -> None:
    table = "public.items"
    results = apply_all(
        sink_for(pg_dsn, table),
        [
            [upsert("a", 10, Item(name="first", qty=1, tags=["x"]))],
            [delete("a", 20), upsert("a", 30, Item(name="again", qty=3), unavailable=["tags"])],
        ],
    )
    assert results == [Outcome.APPLIED, Outcome.APPLIED, Outcome.APPLIED]
    # The row starts afresh: the tags of the deleted row do not come back.
    assert rows(pg_dsn, table, columns="_cdc_key, name, qty, tags") == [("a", "again", 3, None)]
    assert rows(pg_dsn, "public.items__tombstones") == []


def test_unavailable_fields_keep_their_previous_value(pg_dsn: str) -> None:
    table = "public.items"
    apply_all(
        sink_for(pg_dsn, table),
        [
            [
                upsert(
                    "a", 10, Item(name="first", qty=1, price=Decimal("9.50"), tags=["big", "red"])
                )
            ],
            [upsert("a", 20, Item(name="second", qty=2), unavailable=["tags", "price"])],
            [upsert("a", 30, Item(name="third", qty=3), unavailable=["tags", "price"])],
        ],
    )
    assert rows(pg_dsn, table, columns="name, qty, price, tags") == [
        ("third", 3, Decimal("9.50"), ["big", "red"])
    ]


def test_an_equal_version_is_a_duplicate_and_writes_nothing(pg_dsn: str) -> None:
    table = "public.items"
    results = apply_all(
        sink_for(pg_dsn, table),
        [[upsert("a", 10, Item(name="kept", qty=1))], [upsert("a", 10, Item(name="other", qty=9))]],
    )
    assert results == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert rows(pg_dsn, table, columns="name, qty") == [("kept", 1)]


def test_the_version_column_holds_the_version_bytes(pg_dsn: str) -> None:
    version = Version(1_700_000_000_000_000, 0x16_B374D848, 3)
    op = EntityUpsert("item", "a", version, Item(name="x", qty=1))
    apply_all(sink_for(pg_dsn, "public.items"), [[op]])
    [(raw,)] = rows(pg_dsn, "public.items", columns="_cdc_version")
    assert Version.from_bytes(raw) == version


# ----------------------------------------------------------------- the table


def test_create_table_derives_column_types_from_the_model(pg_dsn: str) -> None:
    value = Everything(
        count=2**40,
        label="x",
        amount=Decimal("12345.678901"),
        ratio=0.25,
        active=True,
        seen_at=dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
        day=dt.date(2024, 5, 1),
        attrs={"a": [1, 2], "b": None},
        sizes=[3, 4],
    )
    apply_all(sink_for(pg_dsn, "public.everything"), [[upsert("e", 10, value)]])
    with psycopg.connect(pg_dsn) as conn:
        types: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'everything'"
            ).fetchall()
        )
    assert types == {
        "_cdc_key": "text",
        "_cdc_version": "bytea",
        "count": "bigint",
        "label": "text",
        "amount": "numeric",
        "ratio": "double precision",
        "active": "boolean",
        "seen_at": "timestamp with time zone",
        "day": "date",
        "attrs": "jsonb",
        "sizes": "jsonb",
        "maybe": "bigint",
    }
    [row] = rows(pg_dsn, "public.everything", columns=", ".join(Everything.model_fields))
    assert Everything(**dict(zip(Everything.model_fields, row, strict=True))) == value


def test_a_batch_of_many_rows_keeps_every_type_and_null_exactly(pg_dsn: str) -> None:
    # Many rows of one column set go in one statement, a column of values per parameter.
    values = [
        Everything(
            count=2**40 + n,
            label=f"x{n}" if n % 3 else "",
            amount=Decimal(f"{n}.000100"),
            ratio=n / 7,
            active=n % 2 == 0,
            seen_at=dt.datetime(2024, 5, 1, 12, n, tzinfo=dt.UTC),
            day=dt.date(2024, 5, 1 + n),
            attrs={"n": n, "nested": [n, None]},
            sizes=list(range(n)),
            maybe=None if n % 2 else n,
        )
        for n in range(1, 9)
    ]
    results = apply_all(
        sink_for(pg_dsn, "public.many"),
        [
            [upsert("first", 1, values[0])],
            [upsert(f"k{n}", 10 + n, v) for n, v in enumerate(values)],
        ],
    )
    assert results == [Outcome.APPLIED] * 9
    found = rows(pg_dsn, "public.many", columns=", ".join(Everything.model_fields))
    assert [
        Everything(**dict(zip(Everything.model_fields, row, strict=True))) for row in found
    ] == [
        values[0],
        *values,
    ]


class Blob(BaseModel):
    data: bytes
    meta: dict[str, int]


def test_bytes_that_are_not_utf8_are_written_as_they_are(pg_dsn: str) -> None:
    # Beside a field that needs its JSON form: only such fields are dumped as JSON.
    value = Blob(data=b"\x00\x82\xff\\", meta={"n": 1})
    assert apply_all(sink_for(pg_dsn, "public.blobs"), [[upsert("b", 10, value)]]) == [
        Outcome.APPLIED
    ]
    assert rows(pg_dsn, "public.blobs", columns="data, meta") == [(value.data, {"n": 1})]


def test_odd_identifiers_are_quoted_everywhere(pg_dsn: str) -> None:
    table = "my-schema.Order Items"
    results = apply_all(
        sink_for(pg_dsn, table),
        [
            [upsert("o'1", 10, Item(name="quote \" and '", qty=1)), delete("o;2", 11)],
            [upsert("o;2", 5, Item(name="late", qty=2)), delete("o'1", 12)],
            [upsert("o'1", 13, Item(name="back", qty=3))],
        ],
    )
    assert results == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.OLDER,
        Outcome.APPLIED,
        Outcome.APPLIED,
    ]
    assert rows(pg_dsn, table, columns="_cdc_key, name") == [("o'1", "back")]
    assert rows(pg_dsn, "my-schema.Order Items__tombstones", columns="_cdc_key") == [("o;2",)]


def test_deletes_before_the_table_exists_are_remembered(pg_dsn: str) -> None:
    results = apply_all(
        sink_for(pg_dsn, "public.items"),
        [
            [delete("a", 20)],
            [upsert("a", 10, Item(name="stale", qty=1))],
            [upsert("b", 10, Item(name="b", qty=1))],
        ],
    )
    assert results == [Outcome.APPLIED, Outcome.OLDER, Outcome.APPLIED]
    assert rows(pg_dsn, "public.items", columns="_cdc_key") == [("b",)]


def test_a_missing_table_without_create_table_is_a_config_error(pg_dsn: str) -> None:
    sink = sink_for(pg_dsn, "public.nowhere", create_table=False)
    with pytest.raises(ConfigError, match=r"public\.nowhere"):
        with_sink(sink, lambda s: s.start())


def create_items_table(dsn: str, *, extra: str = "") -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE public.items (_cdc_key text PRIMARY KEY, _cdc_version bytea NOT NULL,"
            f" name text NOT NULL, qty bigint CHECK (qty >= 0){extra})"
        )


class Extended(BaseModel):
    name: str
    qty: int
    colour: str


def test_a_field_without_a_column_is_rejected_naming_the_column(pg_dsn: str) -> None:
    create_items_table(pg_dsn)
    sink = sink_for(pg_dsn, "public.items", create_table=False)
    results = apply_all(
        sink,
        [
            [
                upsert("a", 10, Extended(name="a", qty=1, colour="red")),
                upsert("b", 10, Item(name="b", qty=2), unavailable=["price", "tags"]),
            ]
        ],
    )
    assert isinstance(results[0], SinkRejected)
    assert "colour" in str(results[0])
    assert results[1] is Outcome.APPLIED
    assert rows(pg_dsn, "public.items", columns="_cdc_key, name, qty") == [("b", "b", 2)]


def test_with_create_table_new_model_fields_become_new_columns(pg_dsn: str) -> None:
    sink = sink_for(pg_dsn, "public.items")
    apply_all(
        sink,
        [
            [upsert("a", 10, Item(name="a", qty=1))],
            [upsert("b", 20, Extended(name="b", qty=2, colour="red"))],
        ],
    )
    assert rows(pg_dsn, "public.items", columns="_cdc_key, colour") == [("a", None), ("b", "red")]


def test_one_bad_row_is_rejected_alone(pg_dsn: str) -> None:
    create_items_table(pg_dsn)
    sink = sink_for(pg_dsn, "public.items", create_table=False)
    only = ["price", "tags"]
    results = apply_all(
        sink,
        [
            [
                upsert("a", 10, Item(name="good", qty=1), unavailable=only),
                upsert("b", 11, Item(name="bad", qty=-5), unavailable=only),
                delete("c", 12),
                upsert("a", 13, Item(name="better", qty=2), unavailable=only),
            ]
        ],
    )
    assert results[0] is Outcome.APPLIED
    assert isinstance(results[1], SinkRejected)
    assert "check constraint" in str(results[1])
    assert results[2:] == [Outcome.APPLIED, Outcome.APPLIED]
    assert rows(pg_dsn, "public.items", columns="_cdc_key, name, qty") == [("a", "better", 2)]


# -------------------------------------------------------------------- faults


def test_a_server_restart_raises_sink_unavailable_then_the_next_apply_recovers(
    pg_server: PgServer, pg_dsn: str
) -> None:
    async def body(sink: PostgresSink) -> None:
        await sink.start()
        assert await sink.apply([upsert("a", 10, Item(name="before", qty=1))]) == [Outcome.APPLIED]
        await asyncio.to_thread(pg_server.restart)
        with pytest.raises(SinkUnavailable):
            await sink.apply([upsert("a", 20, Item(name="after", qty=2))])
        assert await sink.apply([upsert("a", 20, Item(name="after", qty=2))]) == [Outcome.APPLIED]
        await sink.probe()

    with_sink(sink_for(pg_dsn, "public.items"), body)
    assert rows(pg_dsn, "public.items", columns="name") == [("after",)]


def test_an_unreachable_server_is_unavailable_and_the_password_stays_secret() -> None:
    sink = sink_for("postgresql://cdc:Sup3rS3cret@127.0.0.1:1/app", "public.items")

    async def body(s: PostgresSink) -> None:
        for attempt in (s.start(), s.probe(), s.apply([delete("a", 1)])):
            with pytest.raises(SinkUnavailable) as caught:
                await attempt
            assert "Sup3rS3cret" not in str(caught.value)

    with_sink(sink, body)
