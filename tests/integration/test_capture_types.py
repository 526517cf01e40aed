"""Every mapped type round-trips: what SELECT returns equals what Kafka's consumer decodes."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.harness import CaptureEnv, data_events, read_events

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN price AS numeric(8,3);
CREATE TABLE typed (
    id int PRIMARY KEY, s smallint, i int, b bigint, flag boolean, r real, d double precision,
    n numeric(10,2), t text, vc varchar(20), c char(3), raw bytea, u uuid, j json, jb jsonb,
    day date, tm time, ts timestamp, tstz timestamptz, iv interval, m mood, p price,
    ints int[], texts text[], ip inet, mac macaddr
);
"""

ROWS = [
    (
        1,
        1,
        2,
        3,
        True,
        1.5,
        2.25,
        Decimal("12.34"),
        "héllo wörld ✓",
        "v",
        "ab",
        b"\x00\xff",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        '{"a": 1}',
        '{"b": [1, 2]}',
        dt.date(2024, 2, 29),
        dt.time(13, 14, 15, 123456),
        dt.datetime(2024, 1, 2, 3, 4, 5, 6),
        dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=IST),
        dt.timedelta(days=3, hours=4),
        "happy",
        Decimal("1.500"),
        [1, None, 3],
        ['a "q"', "b,c", None],
        "10.0.0.1",
        "08:00:2b:01:02:03",
    ),
    (
        2,
        -32768,
        -2147483648,
        -9223372036854775808,
        False,
        float("nan"),
        float("-inf"),
        Decimal("-99999999.99"),
        "",
        "",
        "   ",
        b"",
        None,
        "[]",
        "{}",
        dt.date(1, 1, 1),
        dt.time(0, 0),
        dt.datetime(1970, 1, 1),
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
        dt.timedelta(0),
        "sad",
        Decimal("-0.001"),
        [],
        [],
        "::1",
        "ff:ff:ff:ff:ff:ff",
    ),
    (3,) + (None,) * 25,
]


@pytest.fixture
def env(
    pg_dsn: str, kafka_bootstrap: str, registry_url: str, topic_prefix: str, tmp_path: Path
) -> Iterator[CaptureEnv]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)
    e = CaptureEnv(pg_dsn, kafka_bootstrap, registry_url, topic_prefix, ["public.typed"], tmp_path)
    yield e
    e.stop_all()


def _expected(column: str, value: Any) -> Any:
    """SELECT's Python value, as the documented mapping turns it into an Avro value."""
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if column in ("j", "jb"):
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        utc = value.astimezone(dt.UTC).replace(tzinfo=None)
        text = utc.isoformat()
        return text + "Z"
    # Debezium's numbers without Avro logical types: microseconds and days since the epoch.
    if isinstance(value, dt.datetime):
        return (value.replace(tzinfo=dt.UTC) - EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return (value - EPOCH.date()).days
    if isinstance(value, dt.time):
        return (
            (value.hour * 60 + value.minute) * 60 + value.second
        ) * 1_000_000 + value.microsecond
    if isinstance(value, dt.timedelta):
        return value // dt.timedelta(microseconds=1)
    if isinstance(value, memoryview | bytes):
        return bytes(value)
    return value


def _same(column: str, got: Any, want: Any) -> bool:
    if isinstance(want, float) and want != want:
        return isinstance(got, float) and got != got
    if column in ("j", "jb") and want is not None:
        return json.loads(got) == json.loads(want)
    if column == "r" and isinstance(want, float):
        return abs(got - want) < 1e-6
    if column == "tstz" and want is not None:
        return dt.datetime.fromisoformat(got) == dt.datetime.fromisoformat(want)
    if column == "ip" and want is not None:
        return str(got).split("/")[0] == str(want).split("/")[0]
    return bool(got == want)


def test_every_type_read_back_from_kafka_equals_what_select_returns(env: CaptureEnv) -> None:
    env.start()
    env.wait_for_slot()
    with psycopg.connect(env.pg_dsn, autocommit=True) as conn:
        for row in ROWS:
            conn.execute(f"INSERT INTO typed VALUES ({', '.join(['%s'] * len(row))})", row)
        cur = conn.execute("SELECT * FROM typed ORDER BY id")
        assert cur.description is not None
        columns = [d.name for d in cur.description]
        selected = [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
    events = read_events(env, ["public.typed"], at_least=len(ROWS), timeout=60)
    afters = [e.value["after"] for e in data_events(events)]  # type: ignore[index]
    assert len(afters) == len(selected)
    for got_row, want_row in zip(afters, selected, strict=True):
        for column, value in want_row.items():
            want = _expected(column, value)
            got = got_row[column]
            assert _same(column, got, want), (want_row["id"], column, got, want)
