"""Type mapping against a real PostgreSQL: decode(col::text) equals the server's own value.

Each column's text form (what pgoutput sends) is decoded with the codec built from the
column's type OID, typmod and catalog facts (TYPE_CATALOG_SQL), then compared with the
value psycopg loads natively, or, where Python cannot hold the value (BC dates,
infinities, years past 9999), with a number the server computes itself.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import struct
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import psycopg
import pytest

from cdc.capture.encoding.pg_text import days_from_civil
from cdc.capture.encoding.type_mapping import (
    NEGATIVE_INFINITY_DATE_DAYS,
    POSITIVE_INFINITY_DATE_DAYS,
    POSITIVE_INFINITY_TIMESTAMP_MICROS,
    TYPE_CATALOG_SQL,
    ColumnCodec,
    DecimalHandling,
    TypeOptions,
    codec_for,
    needs_catalog,
    pg_types_from_rows,
    share_named_types,
)

SETUP = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN price AS numeric(8,3);
CREATE TYPE address AS (street text, city text);
CREATE TABLE every_type (
    id serial PRIMARY KEY,
    c_int2 smallint, c_int4 integer, c_int8 bigint, c_bool boolean,
    c_real real, c_double double precision,
    c_num numeric(10,2), c_numu numeric, c_money money,
    c_text text, c_varchar varchar(40), c_char char(5), c_name name,
    c_bytea bytea, c_uuid uuid, c_json json, c_jsonb jsonb, c_xml xml,
    c_date date, c_time time, c_timetz timetz, c_ts timestamp,
    c_tstz timestamptz, c_tstz3 timestamptz(3), c_interval interval,
    c_inet inet, c_cidr cidr, c_mac macaddr, c_mac8 macaddr8,
    c_mood mood, c_price price,
    c_int_arr int[], c_text_arr text[], c_num_arr numeric(6,2)[], c_mood_arr mood[],
    c_price_arr price[], c_grid int[][], c_point point, c_range int4range, c_address address
);
INSERT INTO every_type (
    c_int2, c_int4, c_int8, c_bool, c_real, c_double, c_num, c_numu, c_money,
    c_text, c_varchar, c_char, c_name, c_bytea, c_uuid, c_json, c_jsonb, c_xml,
    c_date, c_time, c_timetz, c_ts, c_tstz, c_tstz3, c_interval,
    c_inet, c_cidr, c_mac, c_mac8, c_mood, c_price,
    c_int_arr, c_text_arr, c_num_arr, c_mood_arr, c_price_arr, c_grid, c_point, c_range, c_address
) VALUES (
    -32768, 2147483647, -9223372036854775808, true, 0.1, 'Infinity', -12345678.90,
    '-123456789012345678901234567890.000100', -1234.56,
    'héllo ✓ 日本語 🎉', 'quote '' and \\ backslash', 'ab', 'a_name', '\\x00ff10'::bytea,
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, "é"]}', '{"b": {"c": null}}', '<a>x</a>',
    '2024-02-29', '13:45:07.25', '10:15:30.5+05:30', '2024-01-01 10:00:00.123456',
    '2024-01-01 10:00:00.5+02', '2024-06-30 23:59:59.999+00', '1 year 2 mons -3 days 04:05:06.789',
    '2001:db8::1/64', '10.1.0.0/16', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', 'happy',
    12345.678,
    '{1,NULL,-3}', ARRAY['a b', NULL, 'NULL', '', 'x"y', 'c\\d', '{}', 'é', ' x '],
    '{1.50,NULL,-2.25}', '{sad,NULL,happy}', '{1.5,2}', '{{1,2},{3,4}}', '(1.5,2)', '[1,5)',
    ROW('1 Main St, "Apt 2"', 'Springfield')
), (
    0, 0, 0, false, 'NaN', -0.0, 0, 0, 0,
    '', '', '', '', '\\x'::bytea, '00000000-0000-0000-0000-000000000000', '[]', '[]', '',
    '1970-01-01', '24:00:00', '00:00:00-03', '1969-12-31 23:59:59.999999',
    '1883-11-18 12:00:00-04:56:02', '2000-01-01 00:00:00+00', '-00:00:01',
    '192.168.0.1', '192.168.0.0/24', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', 'sad', -0.001,
    '{}', '{}', '{}', '{}', '{}', '[0:1][1:1]={{5},{6}}', '(0,0)', 'empty', ROW(NULL, '')
), (
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
);
"""

EPOCH_DATE = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def from_variable_scale(value: dict[str, Any]) -> Decimal:
    unscaled = int.from_bytes(value["value"], "big", signed=True)
    return Decimal(f"{unscaled}e-{value['scale']}")


def utc_time_text(value: dt.time) -> str:
    offset = value.utcoffset() or dt.timedelta(0)
    moment = (dt.datetime.combine(EPOCH_DATE, value.replace(tzinfo=None)) - offset).time()
    fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
    return moment.strftime("%H:%M:%S") + fraction + "Z"


def flatten(items: Any) -> list[Any]:
    if not isinstance(items, list):
        return [items]
    return [leaf for item in items for leaf in flatten(item)]


# How each column's decoded value compares with what psycopg loads (after an optional
# server-side cast, for types psycopg does not know).
EXPECTED: dict[str, tuple[str, Any]] = {
    "c_int2": ("c_int2", lambda v: v),
    "c_int4": ("c_int4", lambda v: v),
    "c_int8": ("c_int8", lambda v: v),
    "c_bool": ("c_bool", lambda v: v),
    "c_real": ("c_real", lambda v: v),
    "c_double": ("c_double", lambda v: v),
    "c_num": ("c_num", lambda v: v),
    "c_money": ("c_money::numeric", lambda v: v),
    "c_text": ("c_text", lambda v: v),
    "c_varchar": ("c_varchar", lambda v: v),
    "c_char": ("c_char", lambda v: v),
    "c_name": ("c_name", lambda v: v),
    "c_bytea": ("c_bytea", bytes),
    "c_uuid": ("c_uuid", str),
    "c_xml": ("c_xml", lambda v: v),
    "c_date": ("c_date", lambda v: (v - EPOCH_DATE).days),
    "c_time": ("(extract(epoch FROM c_time) * 1000000)::int8", lambda v: v),  # 24:00:00 too
    "c_ts": ("c_ts", lambda v: (v.replace(tzinfo=dt.UTC) - EPOCH) // dt.timedelta(microseconds=1)),
    "c_inet": ("c_inet", str),
    "c_cidr": ("c_cidr", str),
    "c_mac": ("c_mac", lambda v: v),
    "c_mac8": ("c_mac8", lambda v: v),
    "c_mood": ("c_mood::text", lambda v: v),
    "c_price": ("c_price::numeric", lambda v: v),
    "c_int_arr": ("c_int_arr", lambda v: v),
    "c_text_arr": ("c_text_arr", lambda v: v),
    "c_num_arr": ("c_num_arr", lambda v: v),
    # Debezium's enum array elements are required: one holding a NULL is null.
    "c_mood_arr": ("c_mood_arr::text[]", lambda v: None if v is None or None in v else v),
    "c_price_arr": ("c_price_arr::numeric[]", lambda v: v),
    # As Debezium writes them: one null per sub-array; a Point record with its WKB.
    "c_grid": ("c_grid", lambda v: [None] * len(v)),
    "c_point": (
        "CASE WHEN c_point IS NOT NULL THEN ARRAY[c_point[0], c_point[1]] END",
        lambda v: {"x": v[0], "y": v[1], "wkb": struct.pack("<BIdd", 1, 1, *v), "srid": None},
    ),
    "c_range": ("c_range::text", lambda v: v),
    "c_address": ("c_address::text", lambda v: v),
    # interval: Debezium's 30.4375-day month, from the server's own fields
    "c_interval": (
        "((extract(year from c_interval) * 12 + extract(month from c_interval)) * 2629800000000"
        " + extract(day from c_interval) * 86400000000"
        " + (extract(hour from c_interval) * 3600 + extract(minute from c_interval) * 60) * 1000000"
        " + extract(microseconds from c_interval))::int8",
        lambda v: v,
    ),
}
# Columns compared after decoding on both sides.
SPECIAL = {"c_numu", "c_json", "c_jsonb", "c_timetz", "c_tstz", "c_tstz3"}


def relation_columns(conn: psycopg.Connection[Any], table: str) -> list[tuple[str, int, int]]:
    """(name, type OID, typmod) per column: what pgoutput's Relation message carries."""
    rows = conn.execute(
        "SELECT attname::text, atttypid::int8, atttypmod FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [(str(name), int(oid), int(typmod)) for name, oid, typmod in rows]


def build_codecs(
    conn: psycopg.Connection[Any], table: str, options: TypeOptions
) -> dict[str, ColumnCodec]:
    columns = relation_columns(conn, table)
    wanted = sorted({oid for _, oid, _ in columns if needs_catalog(oid)})
    types = pg_types_from_rows(conn.execute(TYPE_CATALOG_SQL, (wanted,)).fetchall())
    return {
        name: codec_for(oid, typmod, types=types, options=options) for name, oid, typmod in columns
    }


def write_row(codecs: dict[str, ColumnCodec], row: dict[str, Any]) -> dict[str, Any]:
    """Write one decoded row as an Avro record with every column nullable; read it back."""
    names = list(codecs)
    avro_types = share_named_types(codecs[name].avro_type for name in names)
    fields = [
        {"name": n, "type": ["null", t], "default": None}
        for n, t in zip(names, avro_types, strict=True)
    ]
    schema = fastavro.parse_schema({"type": "record", "name": "every_type", "fields": fields})
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, row)
    buffer.seek(0)
    record: dict[str, Any] = fastavro.schemaless_reader(buffer, schema, None)  # type: ignore[assignment]
    return record


@pytest.fixture
def conn(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute(SETUP)
        yield connection


def output_texts(conn: psycopg.Connection[Any], query: str) -> list[list[str | None]]:
    """Each value's text output form (the type's output function: what pgoutput sends)."""
    result = conn.pgconn.exec_(query.encode())
    assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
    return [
        [
            None if (raw := result.get_value(r, c)) is None else bytes(raw).decode()
            for c in range(result.nfields)
        ]
        for r in range(result.ntuples)
    ]


def decoded_rows(
    conn: psycopg.Connection[Any], codecs: dict[str, ColumnCodec]
) -> list[dict[str, Any]]:
    names = list(codecs)
    rows = output_texts(conn, f"SELECT {', '.join(names)} FROM every_type ORDER BY id")
    return [
        {
            name: None if text is None else codecs[name].decode(text)
            for name, text in zip(names, row, strict=True)
        }
        for row in rows
    ]


def test_every_column_decodes_to_the_value_postgres_holds(conn: psycopg.Connection[Any]) -> None:
    codecs = build_codecs(conn, "every_type", TypeOptions())
    decoded = decoded_rows(conn, codecs)
    natives = conn.execute(
        f"SELECT {', '.join(sql for sql, _ in EXPECTED.values())}, c_numu, c_json, c_jsonb,"
        " c_timetz, c_tstz, c_tstz3 FROM every_type ORDER BY id"
    ).fetchall()
    for ours, native_row in zip(decoded, natives, strict=True):
        native = dict(
            zip(
                [*EXPECTED, "c_numu", "c_json", "c_jsonb", "c_timetz", "c_tstz", "c_tstz3"],
                native_row,
                strict=True,
            )
        )
        for name, (_, transform) in EXPECTED.items():
            expected = None if native[name] is None else transform(native[name])
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(ours[name]), name
            else:
                assert ours[name] == expected, name
        if native["c_numu"] is None:
            assert all(ours[name] is None for name in SPECIAL)
            continue
        assert from_variable_scale(ours["c_numu"]) == native["c_numu"]
        assert json.loads(ours["c_json"]) == native["c_json"]
        assert json.loads(ours["c_jsonb"]) == native["c_jsonb"]
        assert ours["c_timetz"] == utc_time_text(native["c_timetz"])
        for name in ("c_tstz", "c_tstz3"):
            assert ours[name].endswith("Z")
            assert dt.datetime.fromisoformat(ours[name]) == native[name]
        assert re.fullmatch(r".*T\d\d:\d\d:\d\d\.\d{3}Z", ours["c_tstz3"])
    assert uuid.UUID(decoded[0]["c_uuid"])


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def test_every_decoded_row_survives_an_avro_round_trip(conn: psycopg.Connection[Any]) -> None:
    # Without logical types, so that 24:00:00 and other values fastavro's datetime
    # conversion cannot hold come back as the numbers that were written.
    codecs = build_codecs(conn, "every_type", TypeOptions(temporal_logical_types=False))
    for row in decoded_rows(conn, codecs):
        back = write_row(codecs, row)
        if row["c_real"] is not None:  # Avro float is 32 bits wide
            row["c_real"] = struct.unpack("<f", struct.pack("<f", row["c_real"]))[0]
        assert [name for name in codecs if not same(row[name], back[name])] == []


def test_timestamptz_in_any_session_time_zone_decodes_to_the_same_utc_string(
    conn: psycopg.Connection[Any],
) -> None:
    codecs = build_codecs(conn, "every_type", TypeOptions())
    utc = [row["c_tstz"] for row in decoded_rows(conn, codecs)]
    for zone in ("Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "Pacific/Chatham"):
        conn.execute(f"SET TimeZone = '{zone}'")
        assert [row["c_tstz"] for row in decoded_rows(conn, codecs)] == utc, zone


def epoch_micros_of_iso(text: str) -> int:
    match = re.fullmatch(r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", text)
    assert match is not None, text
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = int((match.group(7) or "").ljust(6, "0"))
    days = days_from_civil(year, month, day)
    return ((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + fraction


EDGES = """
CREATE TABLE edges (
    id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz, n numeric, n2 numeric(6,2)
);
INSERT INTO edges VALUES
  (1, '0044-03-15 BC', '0044-03-15 10:00:00.5 BC', '0044-03-15 10:00:00.25+00 BC', 'NaN', 1),
  (2, '12000-01-01', '12000-01-01 00:00:00', '12000-01-01 00:00:00+00', 'Infinity', 2),
  (3, '4714-11-24 BC', '4714-11-24 00:00:00 BC', '0001-01-01 00:00:00+00', '-Infinity', 'NaN'),
  (4, 'infinity', 'infinity', 'infinity', 1, 3),
  (5, '-infinity', '-infinity', '-infinity', 2, 4);
"""


def test_dates_and_timestamps_beyond_pythons_calendar_match_the_servers_arithmetic(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(EDGES)
    options = TypeOptions(temporal_logical_types=False)
    codecs = build_codecs(conn, "edges", options)
    rows = output_texts(
        conn,
        "SELECT d, ts, tstz,"
        " CASE WHEN isfinite(d) THEN d - date '1970-01-01' END,"
        " CASE WHEN isfinite(ts) THEN (extract(epoch FROM ts) * 1000000)::int8 END,"
        " CASE WHEN isfinite(tstz) THEN (extract(epoch FROM tstz) * 1000000)::int8 END"
        " FROM edges ORDER BY id",
    )
    for d_text, ts_text, tstz_text, days, ts_micros, tstz_micros in rows:
        d, ts, tstz = (
            codecs["d"].decode(str(d_text)),
            codecs["ts"].decode(str(ts_text)),
            codecs["tstz"].decode(str(tstz_text)),
        )
        if days is None:
            assert d == (
                POSITIVE_INFINITY_DATE_DAYS if d_text == "infinity" else NEGATIVE_INFINITY_DATE_DAYS
            )
        else:
            assert d == int(days)
        if ts_micros is None:
            assert (ts == POSITIVE_INFINITY_TIMESTAMP_MICROS) == (ts_text == "infinity")
        else:
            assert ts == int(ts_micros)
        if tstz_micros is None:
            assert tstz == tstz_text
        else:
            assert epoch_micros_of_iso(tstz) == int(tstz_micros)
        row = {"id": 1, "d": d, "ts": ts, "tstz": tstz, "n": None, "n2": None}
        assert write_row(codecs, row) == row


def test_special_numerics_are_null_in_precise_mode_and_pass_in_double_mode(
    conn: psycopg.Connection[Any],
) -> None:
    conn.execute(EDGES)
    texts = [str(row[0]) for row in output_texts(conn, "SELECT n FROM edges ORDER BY id")]
    precise = build_codecs(conn, "edges", TypeOptions())
    assert [precise["n"].decode(text) for text in texts[:3]] == [None, None, None]
    assert precise["n2"].decode("NaN") is None
    as_double = build_codecs(conn, "edges", TypeOptions(decimal_handling=DecimalHandling.DOUBLE))[
        "n"
    ]
    values = [as_double.decode(text) for text in texts]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, 1.0, 2.0]
