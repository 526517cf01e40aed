"""PostgreSQL text forms -> Avro values: every mapping, its edge cases, and Avro round trips."""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import re
from decimal import Decimal
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.encoding.pg_text import (
    civil_from_days,
    days_from_civil,
    format_utc_timestamp,
    parse_timestamptz,
    timestamptz_to_utc_iso,
)
from cdc.capture.encoding.type_mapping import (
    NEGATIVE_INFINITY_TIMESTAMP_MICROS,
    POSITIVE_INFINITY_DATE_DAYS,
    POSITIVE_INFINITY_TIMESTAMP_MICROS,
    BinaryHandling,
    ColumnCodec,
    DecimalHandling,
    HstoreHandling,
    IntervalHandling,
    PgType,
    TimePrecision,
    TypeOptions,
    codec_for,
    needs_catalog,
    pg_types_from_rows,
    share_named_types,
)
from cdc.core.errors import DecodeError, SchemaError

DEFAULTS = TypeOptions()
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NO_LOGICAL = TypeOptions(temporal_logical_types=False)

# OIDs of the built-in types used below
BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID, JSON, XML = 16, 17, 20, 21, 23, 25, 26, 114, 142
FLOAT4, FLOAT8, MONEY, BPCHAR, VARCHAR, DATE, TIME = 700, 701, 790, 1042, 1043, 1082, 1083
TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ, NUMERIC, UUID, JSONB = (
    1114,
    1184,
    1186,
    1266,
    1700,
    2950,
    3802,
)
INT4_ARRAY, TEXT_ARRAY, NUMERIC_ARRAY, BOX_ARRAY, BYTEA_ARRAY, TSTZ_ARRAY = (
    1007,
    1009,
    1231,
    1020,
    1001,
    1185,
)
INET, POINT, INT4RANGE, TSVECTOR, BIT, VARBIT = 869, 600, 3904, 3614, 1560, 1562


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def codec(
    oid: int, typmod: int = -1, options: TypeOptions = DEFAULTS, **types: PgType
) -> ColumnCodec:
    return codec_for(oid, typmod, types={t.oid: t for t in types.values()}, options=options)


def round_trip(column: ColumnCodec, value: Any) -> Any:
    """Write ``value`` as field ``f`` of a record with the column's type, read it back."""
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Row",
            "fields": [{"name": "f", "type": ["null", column.avro_type]}],
        }
    )
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, {"f": value})
    buffer.seek(0)
    record: dict[str, Any] = fastavro.schemaless_reader(buffer, schema, None)  # type: ignore[assignment]
    return record["f"]


def schema_of(column: ColumnCodec) -> dict[str, Any]:
    assert isinstance(column.avro_type, dict)
    return column.avro_type


def through_avro(column: ColumnCodec, text: str) -> Any:
    return round_trip(column, column.decode(text))


def enum_type(oid: int = 50_000) -> PgType:
    return PgType(oid, "public", "mood", "e", "E", None, None, -1, ("sad", "ok", "happy"))


def array_type(oid: int, element: int, name: str) -> PgType:
    return PgType(oid, "public", name, "b", "A", element, None, -1, ())


def domain_type(oid: int, base: int, base_typmod: int, name: str = "price") -> PgType:
    return PgType(oid, "public", name, "d", "N", None, base, base_typmod, ())


# --- numbers ---------------------------------------------------------------------------------


def test_integers_map_to_avro_int_and_long_and_survive_avro() -> None:
    assert codec(INT2).avro_type == {"type": "int", "connect.type": "int16"}
    assert codec(INT4).avro_type == "int"
    assert codec(INT8).avro_type == "long"
    assert through_avro(codec(INT2), "-32768") == -32768
    assert through_avro(codec(INT4), "2147483647") == 2147483647
    assert through_avro(codec(INT8), "-9223372036854775808") == -9223372036854775808
    assert through_avro(codec(OID), "4294967295") == 4294967295


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_any_bigint_text_decodes_to_the_same_number(n: int) -> None:
    assert codec(INT8).decode(str(n)) == n


def test_booleans_read_postgres_t_and_f() -> None:
    assert [through_avro(codec(BOOL), text) for text in ("t", "f")] == [True, False]


def test_floats_keep_nan_and_infinities() -> None:
    real, double = codec(FLOAT4), codec(FLOAT8)
    assert real.avro_type == "float"
    assert double.avro_type == "double"
    assert math.isnan(through_avro(double, "NaN"))
    assert through_avro(double, "Infinity") == math.inf
    assert through_avro(real, "-Infinity") == -math.inf
    assert through_avro(double, "1.5e-07") == 1.5e-07
    assert through_avro(real, "0.5") == 0.5


def test_constrained_numeric_is_a_debezium_decimal_with_precision_and_scale() -> None:
    column = codec(NUMERIC, numeric_typmod(10, 2))
    assert column.pg_type_name == "numeric(10,2)"
    assert column.avro_type == {
        "type": "bytes",
        "scale": 2,
        "precision": 10,
        "connect.version": 1,
        "connect.parameters": {"scale": "2", "connect.decimal.precision": "10"},
        "connect.name": "org.apache.kafka.connect.data.Decimal",
        "logicalType": "decimal",
    }
    assert through_avro(column, "-12345678.90") == Decimal("-12345678.90")


def test_huge_numerics_keep_every_digit() -> None:
    digits = "9" * 990 + "." + "1234567890"
    column = codec(NUMERIC, numeric_typmod(1000, 10))
    assert through_avro(column, digits) == Decimal(digits)
    unconstrained = codec(NUMERIC).decode("-" + "7" * 5000 + ".5")
    unscaled = int.from_bytes(unconstrained["value"], "big", signed=True)
    assert unconstrained["scale"] == 1
    assert unscaled == -int(Decimal("7" * 5000 + "5"))


def test_negative_scale_numeric_travels_as_whole_numbers() -> None:
    column = codec(NUMERIC, numeric_typmod(5, -2))
    assert schema_of(column)["scale"] == 0
    assert schema_of(column)["precision"] == 7
    assert through_avro(column, "1234500") == Decimal(1234500)


def test_unconstrained_numeric_is_a_variable_scale_decimal_with_trailing_zeros_stripped() -> None:
    column = codec(NUMERIC)
    assert schema_of(column)["connect.name"] == "io.debezium.data.VariableScaleDecimal"
    assert through_avro(column, "-123.4500") == {
        "scale": 2,
        "value": (-12345).to_bytes(2, "big", signed=True),
    }
    assert column.decode("100") == {"scale": 0, "value": b"\x64"}
    assert column.decode("-128") == {"scale": 0, "value": b"\x80"}
    assert column.decode("0.000") == {"scale": 0, "value": b"\x00"}


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: abs(d.adjusted()) < 200
    )
)
def test_any_decimal_text_decodes_to_the_same_value(value: Decimal) -> None:
    text = format(value, "f")
    decoded = codec(NUMERIC).decode(text)
    unscaled = int.from_bytes(decoded["value"], "big", signed=True)
    assert Decimal(f"{unscaled}e-{decoded['scale']}") == value


def test_numeric_nan_and_infinity_follow_the_decimal_handling_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # precise: Debezium writes null with a warning; capture never stops on them.
    for typmod in (-1, numeric_typmod(10, 2)):
        for text in ("NaN", "Infinity", "-Infinity"):
            with caplog.at_level(logging.WARNING, logger="cdcsync.capture"):
                caplog.clear()
                assert codec(NUMERIC, typmod).decode(text) is None
            assert "written as null" in caplog.text
    as_double = codec(NUMERIC, options=TypeOptions(decimal_handling=DecimalHandling.DOUBLE))
    assert as_double.avro_type == "double"
    assert math.isnan(through_avro(as_double, "NaN"))
    assert through_avro(as_double, "-Infinity") == -math.inf
    assert through_avro(as_double, "12.25") == 12.25
    as_string = codec(
        NUMERIC, numeric_typmod(8, 3), TypeOptions(decimal_handling=DecimalHandling.STRING)
    )
    assert [as_string.decode(t) for t in ("NaN", "Infinity", "-Infinity", "1.500")] == [
        "NAN",
        "POSITIVE_INFINITY",
        "NEGATIVE_INFINITY",
        "1.500",
    ]


def test_money_is_a_decimal_with_two_fraction_digits() -> None:
    column = codec(MONEY)
    assert schema_of(column)["scale"] == 2
    assert schema_of(column)["connect.parameters"] == {"scale": "2"}
    assert through_avro(column, "-$1,234.56") == Decimal("-1234.56")
    assert through_avro(column, "$0.07") == Decimal("0.07")
    assert through_avro(column, "($92,233,720,368,547,758.07)") == Decimal("-92233720368547758.07")
    assert (
        codec(MONEY, options=TypeOptions(decimal_handling=DecimalHandling.STRING)).decode(
            "$1,000.50"
        )
        == "1000.50"
    )
    assert (
        codec(MONEY, options=TypeOptions(decimal_handling=DecimalHandling.DOUBLE)).decode("-$2.25")
        == -2.25
    )


# --- text and bytes ------------------------------------------------------------------------------


@given(st.text())
def test_any_text_passes_through_unchanged(text: str) -> None:
    for oid in (TEXT, VARCHAR, BPCHAR):
        assert codec(oid).decode(text) == text


def test_non_ascii_and_empty_text_survive_avro() -> None:
    for text in ("", "héllo wörld ✓ 日本語 🎉", " padded  "):
        assert through_avro(codec(TEXT), text) == text
    assert codec(VARCHAR, 24).pg_type_name == "varchar(20)"


def test_semantic_string_types_carry_debezium_names() -> None:
    names = {oid: schema_of(codec(oid))["connect.name"] for oid in (UUID, JSON, JSONB, XML)}
    assert names == {
        UUID: "io.debezium.data.Uuid",
        JSON: "io.debezium.data.Json",
        JSONB: "io.debezium.data.Json",
        XML: "io.debezium.data.Xml",
    }
    assert through_avro(codec(JSONB), '{"a": [1, "é"]}') == '{"a": [1, "é"]}'


def test_bytea_reads_hex_and_escape_output() -> None:
    column = codec(BYTEA)
    assert column.avro_type == "bytes"
    assert through_avro(column, "\\x00ff10") == b"\x00\xff\x10"
    assert column.decode("\\x") == b""
    assert column.decode("ab\\000\\\\c\\377") == b"ab\x00\\c\xff"


def test_bytea_follows_the_binary_handling_mode() -> None:
    def mode(m: BinaryHandling) -> Any:
        return codec(BYTEA, options=TypeOptions(binary_handling=m)).decode("\\xfbff01")

    assert mode(BinaryHandling.BASE64) == "+/8B"
    assert mode(BinaryHandling.BASE64_URL_SAFE) == "-_8B"
    assert mode(BinaryHandling.HEX) == "fbff01"


def test_network_and_range_types_stay_text() -> None:
    for oid, text in ((INET, "2001:db8::1/64"), (INT4RANGE, "[1,5)")):
        assert codec(oid).avro_type == "string"
        assert codec(oid).decode(text) == text


def test_tsvector_is_its_text_named_as_debezium() -> None:
    column = codec(TSVECTOR)
    assert column.avro_type == {
        "type": "string",
        "connect.version": 1,
        "connect.name": "io.debezium.data.Tsvector",
    }
    assert column.decode("'a':1 'cat':2") == "'a':1 'cat':2"


def test_bit_1_is_a_boolean_and_longer_bit_strings_are_debezium_bits_little_endian() -> None:
    assert codec(BIT, 1).avro_type == "boolean"
    assert codec(BIT, 1).decode("1") is True
    assert codec(BIT, 1).decode("0") is False
    bit3 = codec(BIT, 3)
    assert bit3.avro_type == {
        "type": "bytes",
        "connect.version": 1,
        "connect.parameters": {"length": "3"},
        "connect.name": "io.debezium.data.Bits",
    }
    assert bit3.decode("101") == b"\x05"
    assert bit3.decode("000") == b""  # as java.util.BitSet.toByteArray
    varbit = codec(VARBIT)
    assert varbit.avro_type["connect.parameters"] == {"length": "2147483647"}  # type: ignore[index]
    assert varbit.decode("1100110011") == b"3\x03"
    assert varbit.decode("") == b""
    assert codec(VARBIT, 9).decode("111111111") == b"\xff\x01"
    assert round_trip(varbit, varbit.decode("10000000")) == b"\x80"  # unsigned: no sign byte
    with pytest.raises(DecodeError):
        varbit.decode("12")


def test_types_debezium_leaves_out_are_text_marked_as_skipped() -> None:
    for oid in (601, 602, 603, 604, 628, 718, 3220, 3615):
        column = codec(oid)
        assert column.debezium_skips
        assert column.avro_type == "string"
    assert not codec(INET).debezium_skips
    assert not codec(POINT).debezium_skips


def test_unchanged_toast_placeholders_of_arrays_are_debeziums() -> None:
    raw = list(DEFAULTS.unavailable_value.encode())
    assert codec(INT4_ARRAY).unavailable == raw
    assert codec(1182).unavailable == raw  # date[]
    assert codec(1016).unavailable == raw  # bigint[]
    assert codec(TEXT_ARRAY).unavailable == [DEFAULTS.unavailable_value]
    assert codec(BYTEA_ARRAY).unavailable == [DEFAULTS.unavailable_value.encode()]
    # java.util.UUID.nameUUIDFromBytes of the placeholder, as Debezium 3.6 writes it
    assert codec(2951).unavailable == ["b68a35a7-17ad-35b3-af2a-ae46edb4545a"]
    # other arrays: null
    assert codec(NUMERIC_ARRAY).unavailable is None
    assert codec(1000).unavailable is None  # boolean[]
    # a non-ASCII placeholder: Java's signed bytes
    options = TypeOptions(unavailable_value="é")
    assert codec(INT4_ARRAY, options=options).unavailable == [-61, -87]


def test_unchanged_toast_placeholder_of_hstore_maps_the_placeholder_to_itself() -> None:
    hstore = PgType(16400, "public", "hstore", "b", "U", None, None, -1, ())
    p = DEFAULTS.unavailable_value
    assert codec(16400, hstore=hstore).unavailable == f'{{"{p}":"{p}"}}'
    as_map = codec(16400, options=TypeOptions(hstore_handling=HstoreHandling.MAP), hstore=hstore)
    assert as_map.unavailable == {p: p}


def test_arrays_debezium_leaves_out_or_writes_otherwise() -> None:
    for oid in (791, 1187, 143, 1017, 1020, 4451, 28, 2205):  # money[] ... regclass
        assert codec(oid).debezium_skips, oid
    assert not codec(INT4_ARRAY).debezium_skips
    price = domain_type(50_001, NUMERIC, numeric_typmod(8, 3))
    prices = codec(50_011, price=price, prices=array_type(50_011, 50_001, "_price"))
    assert prices.debezium_skips  # an array of a domain
    # bit(3)[]: Debezium 3.6 gives it the element's schema and no value
    bits = codec(1561, 3)
    assert schema_of(bits)["connect.name"] == "io.debezium.data.Bits"
    assert bits.decode("{101,010}") is None
    # tsvector[]: required elements
    tsvectors = codec(3643)
    assert schema_of(tsvectors)["items"]["connect.name"] == "io.debezium.data.Tsvector"
    assert tsvectors.decode("{'a',NULL}") is None
    # time[]: 24:00:00 is read as midnight
    assert codec(1183).decode("{12:00:00.5,24:00:00}") == [43_200_500_000, 0]
    # int2vector: an array of int16
    vector = codec(22)
    assert vector.avro_type == {"type": "array", "items": {"type": "int", "connect.type": "int16"}}
    assert through_avro(vector, "1 2 3") == [1, 2, 3]


def test_values_debezium_loses_are_marked_with_what_debezium_writes() -> None:
    assert codec(22).debezium_constant == ([],)  # int2vector: always empty
    assert codec(19).debezium_constant == (None,)  # name: always null
    assert codec(19).decode("nämé") == "nämé"  # the codec itself keeps the value
    assert codec(TEXT).debezium_constant is None


def test_a_numeric_array_holding_nan_is_null_in_every_decimal_mode() -> None:
    for mode in DecimalHandling:
        column = codec(NUMERIC_ARRAY, options=TypeOptions(decimal_handling=mode))
        assert column.decode("{1,NaN}") is None, mode
        assert column.decode("{1,Infinity}") is None, mode
    as_string = codec(NUMERIC_ARRAY, options=TypeOptions(decimal_handling=DecimalHandling.STRING))
    assert as_string.decode("{1.5,NULL}") == ["1.5", None]


def test_unchanged_toast_bytea_is_null_when_bytes_travel_as_text() -> None:
    base64 = TypeOptions(binary_handling=BinaryHandling.BASE64)
    assert codec(BYTEA, options=base64).unavailable is None
    assert codec(BYTEA_ARRAY, options=base64).unavailable is None
    assert codec(BYTEA).unavailable == DEFAULTS.unavailable_value.encode()


def test_a_numeric_array_holding_nan_is_null_as_debezium_writes_it() -> None:
    column = codec(NUMERIC_ARRAY)
    assert column.decode("{NaN}") is None
    assert column.decode("{1.5,NULL,-2}") == [
        {"scale": 1, "value": b"\x0f"},
        None,
        {"scale": 0, "value": b"\xfe"},
    ]


# --- dates and times -----------------------------------------------------------------------------


def test_date_is_days_since_epoch_named_as_debezium_without_an_avro_logical_type() -> None:
    column = codec(DATE)
    assert column.avro_type == {
        "type": "int",
        "connect.version": 1,
        "connect.name": "io.debezium.time.Date",
    }
    assert column.decode("1970-01-01") == 0
    assert column.decode("1969-12-31") == -1
    assert through_avro(column, "2024-02-29") == 19782
    # Opt-in for Python-native readers: the Avro logical type beside connect.name.
    with_logical = codec(DATE, options=TypeOptions(temporal_logical_types=True))
    assert schema_of(with_logical)["logicalType"] == "date"
    assert through_avro(with_logical, "2024-02-29") == dt.date(2024, 2, 29)


def test_bc_and_far_future_dates_are_counted_on_the_proleptic_calendar() -> None:
    column = codec(DATE)
    assert column.decode("0001-01-01") == (dt.date(1, 1, 1) - dt.date(1970, 1, 1)).days
    assert column.decode("0001-12-31 BC") == column.decode("0001-01-01") - 1  # year 0 is 1 BC
    assert column.decode("0044-03-15 BC") == days_from_civil(-43, 3, 15)
    assert column.decode("4714-11-24 BC") == -2440588  # Julian day 0
    assert column.decode("12000-01-01") == days_from_civil(12000, 1, 1)
    assert civil_from_days(column.decode("5874897-12-31")) == (5874897, 12, 31)


def test_infinite_dates_and_timestamps_become_debeziums_sentinels() -> None:
    assert codec(DATE).decode("infinity") == POSITIVE_INFINITY_DATE_DAYS == -2147472692
    assert codec(DATE).decode("-infinity") == -2147472691
    assert codec(TIMESTAMP).decode("infinity") == POSITIVE_INFINITY_TIMESTAMP_MICROS
    assert codec(TIMESTAMP).decode("-infinity") == NEGATIVE_INFINITY_TIMESTAMP_MICROS
    assert codec(TIMESTAMPTZ).decode("infinity") == "infinity"
    assert codec(TIMESTAMPTZ).decode("-infinity") == "-infinity"


def test_values_outside_pythons_calendar_round_trip_without_logical_types() -> None:
    for oid, text in (
        (DATE, "infinity"),
        (DATE, "0044-03-15 BC"),
        (TIMESTAMP, "infinity"),
        (TIME, "24:00:00"),
    ):
        column = codec(oid, options=NO_LOGICAL)
        assert "logicalType" not in column.avro_type
        assert through_avro(column, text) == column.decode(text)


@given(st.dates())
def test_any_date_decodes_to_its_day_number(day: dt.date) -> None:
    assert codec(DATE).decode(day.isoformat()) == (day - dt.date(1970, 1, 1)).days


def test_time_is_microseconds_since_midnight_including_2400() -> None:
    column = codec(TIME)
    assert "logicalType" not in schema_of(column)
    assert schema_of(column)["connect.name"] == "io.debezium.time.MicroTime"
    assert through_avro(column, "13:45:07.25") == 49_507_250_000
    assert column.decode("24:00:00") == 86_400_000_000
    assert column.decode("00:00:00") == 0


def test_time_with_time_zone_is_normalised_to_utc() -> None:
    column = codec(TIMETZ)
    assert schema_of(column)["connect.name"] == "io.debezium.time.ZonedTime"
    assert column.decode("10:15:30.5+05:30") == "04:45:30.5Z"
    assert column.decode("22:00:00-03") == "01:00:00Z"
    assert column.decode("00:00:00+00") == "00:00:00Z"
    assert column.decode("24:00:00+00") == "00:00:00Z"  # java.time has no 24:00
    assert column.decode("24:00:00+05") == "19:00:00Z"
    assert column.decode("12:00:00+05:53:28") == "06:06:32Z"


def test_timestamp_is_microseconds_since_epoch() -> None:
    column = codec(TIMESTAMP, 6)
    assert "logicalType" not in schema_of(column)
    assert schema_of(column)["connect.name"] == "io.debezium.time.MicroTimestamp"
    assert column.decode("1970-01-01 00:00:00") == 0
    assert column.decode("1969-12-31 23:59:59.999999") == -1
    assert through_avro(column, "2024-01-01 10:00:00.123456") == 1_704_103_200_123_456
    bc = column.decode("0044-03-15 10:00:00.5 BC")
    assert bc == days_from_civil(-43, 3, 15) * 86_400_000_000 + 36_000_500_000


def pg_timestamp_text(value: dt.datetime) -> str:
    fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
    return value.strftime("%Y-%m-%d %H:%M:%S").rjust(19, "0") + fraction


@given(st.datetimes())
def test_any_timestamp_decodes_to_its_microseconds(value: dt.datetime) -> None:
    expected = (value.replace(tzinfo=dt.UTC) - EPOCH) // dt.timedelta(microseconds=1)
    assert codec(TIMESTAMP).decode(pg_timestamp_text(value)) == expected


def test_timestamptz_is_an_iso_string_in_utc_whatever_the_offset() -> None:
    column = codec(TIMESTAMPTZ)
    assert column.avro_type == {
        "type": "string",
        "connect.version": 1,
        "connect.name": "io.debezium.time.ZonedTimestamp",
    }
    assert column.decode("2024-01-01 10:00:00.123456+00") == "2024-01-01T10:00:00.123456Z"
    # Debezium always prints six fraction digits when no precision is declared.
    assert column.decode("2024-01-01 10:00:00+05:30") == "2024-01-01T04:30:00.000000Z"
    assert column.decode("2024-01-01 22:00:00.5-03") == "2024-01-02T01:00:00.500000Z"
    assert column.decode("1883-11-18 12:00:00-04:56:02") == "1883-11-18T16:56:02.000000Z"
    assert column.decode("0001-01-01 03:00:00+05 BC") == "-0001-12-31T22:00:00.000000Z"
    assert column.decode("12000-06-01 00:00:00+00") == "+12000-06-01T00:00:00.000000Z"


def test_timestamptz_with_declared_precision_prints_that_many_digits() -> None:
    assert codec(TIMESTAMPTZ, 3).decode("2024-01-01 10:00:00.1+00") == "2024-01-01T10:00:00.100Z"
    assert codec(TIMESTAMPTZ, 6).decode("2024-01-01 10:00:00+00") == "2024-01-01T10:00:00.000000Z"
    assert codec(TIMESTAMPTZ, 0).decode("2024-01-01 10:00:00+00") == "2024-01-01T10:00:00Z"


def pg_offset_text(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


@given(
    st.datetimes(min_value=dt.datetime(2, 1, 1), max_value=dt.datetime(9998, 12, 31)),
    st.integers(min_value=-15 * 3600, max_value=15 * 3600),
)
def test_any_timestamptz_with_any_offset_decodes_to_the_same_instant(
    value: dt.datetime, offset: int
) -> None:
    text = pg_timestamp_text(value) + pg_offset_text(offset)
    decoded = codec(TIMESTAMPTZ).decode(text)
    instant = value.replace(tzinfo=dt.timezone(dt.timedelta(seconds=offset)))
    assert dt.datetime.fromisoformat(decoded) == instant


@given(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
)
def test_a_utc_timestamptz_is_written_as_the_general_conversion_writes_it(
    value: dt.datetime, digits: int | None
) -> None:
    # Capture's session prints timestamptz in UTC: the shortcut for "+00" texts must
    # agree with the conversion through epoch microseconds for every precision.
    text = pg_timestamp_text(value) + "+00"
    expected = format_utc_timestamp(parse_timestamptz(text), fraction_digits=digits)
    assert timestamptz_to_utc_iso(text, fraction_digits=digits) == expected


def test_interval_is_microseconds_with_debeziums_average_month() -> None:
    column = codec(INTERVAL)
    assert schema_of(column)["connect.name"] == "io.debezium.time.MicroDuration"
    assert column.decode("1 mon") == int(30.4375 * 86400) * 1_000_000
    assert column.decode("1 year 2 mons 3 days 04:05:06.789") == (
        14 * 2_629_800_000_000 + 3 * 86_400_000_000 + 14_706_789_000
    )
    assert column.decode("-1 days +02:00:00") == -22 * 3_600_000_000
    assert column.decode("-00:00:01") == -1_000_000
    assert column.decode("00:00:00") == 0
    assert through_avro(column, "100:00:00") == 360_000_000_000


def test_interval_string_mode_writes_debeziums_iso_form() -> None:
    column = codec(INTERVAL, options=TypeOptions(interval_handling=IntervalHandling.STRING))
    assert schema_of(column)["connect.name"] == "io.debezium.time.Interval"
    assert column.decode("1 year 2 mons 3 days 04:05:06.789") == "P1Y2M3DT4H5M6.789S"
    assert column.decode("-1 years -2 mons +3 days -04:05:06") == "P-1Y-2M3DT-4H-5M-6S"
    assert column.decode("00:00:00") == "P0Y0M0DT0H0M0S"


# --- arrays ------------------------------------------------------------------------------------


def test_arrays_are_avro_arrays_of_nullable_elements() -> None:
    column = codec(INT4_ARRAY)
    assert column.avro_type == {"type": "array", "items": ["null", "int"]}
    assert through_avro(column, "{1,NULL,-3}") == [1, None, -3]
    assert through_avro(column, "{}") == []
    assert column.decode("[2:3]={7,8}") == [7, 8]


def test_text_arrays_unquote_and_unescape_elements() -> None:
    column = codec(TEXT_ARRAY)
    text = '{"a b",NULL,"NULL","","x\\"y","c\\\\d","{}",é," x "}'
    assert through_avro(column, text) == ["a b", None, "NULL", "", 'x"y', "c\\d", "{}", "é", " x "]


def test_multidimensional_arrays_are_one_null_per_sub_array_as_debezium_writes_them() -> None:
    assert codec(INT4_ARRAY).decode("{{1,2},{3,NULL}}") == [None, None]
    assert codec(INT4_ARRAY).decode("[0:1][1:1]={{5},{6}}") == [None, None]
    assert codec(TEXT_ARRAY).decode('{{"{a}","b"},{"c}","d"},{e,f}}') == [None, None, None]


def test_arrays_of_typed_elements_decode_each_element() -> None:
    numerics = codec(NUMERIC_ARRAY, numeric_typmod(6, 2))
    assert through_avro(numerics, "{1.50,NULL,-2.25}") == [Decimal("1.50"), None, Decimal("-2.25")]
    assert codec(BYTEA_ARRAY).decode('{"\\\\x00ff",NULL}') == [b"\x00\xff", None]
    assert codec(TSTZ_ARRAY).decode('{"2024-01-01 00:00:00+02"}') == ["2023-12-31T22:00:00.000000Z"]
    assert codec(BOX_ARRAY).decode("{(1,1),(0,0);(3,3),(2,2)}") == ["(1,1),(0,0)", "(3,3),(2,2)"]


def pg_array_text(items: list[str | None]) -> str:
    def quote(item: str | None) -> str:
        if item is None:
            return "NULL"
        return '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "{" + ",".join(quote(item) for item in items) + "}"


@given(st.lists(st.none() | st.text()))
def test_any_text_array_decodes_to_the_same_list(items: list[str | None]) -> None:
    assert codec(TEXT_ARRAY).decode(pg_array_text(items)) == items


@given(st.lists(st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1)))
def test_any_integer_array_survives_avro(items: list[int | None]) -> None:
    text = "{" + ",".join("NULL" if i is None else str(i) for i in items) + "}"
    assert through_avro(codec(INT4_ARRAY), text) == items


# --- catalog types -----------------------------------------------------------------------------


def test_enums_are_strings_listing_their_allowed_labels() -> None:
    column = codec(50_000, mood=enum_type())
    assert column.avro_type == {
        "type": "string",
        "connect.version": 1,
        "connect.name": "io.debezium.data.Enum",
        "connect.parameters": {"allowed": "sad,ok,happy"},
    }
    assert through_avro(column, "happy") == "happy"
    assert column.pg_type_name == "public.mood"


def test_domains_map_as_their_base_type_with_the_domains_typmod() -> None:
    price = domain_type(50_001, NUMERIC, numeric_typmod(8, 3))
    column = codec(50_001, price=price)
    assert schema_of(column)["precision"] == 8
    assert schema_of(column)["scale"] == 3
    assert through_avro(column, "12345.678") == Decimal("12345.678")
    assert column.pg_type_name == "public.price"
    nested = domain_type(50_002, 50_001, -1, "positive_price")
    assert codec(50_002, price=price, nested=nested).decode("1.000") == Decimal("1.000")


def test_arrays_of_enums_and_domains_use_the_catalog_element() -> None:
    moods = codec(50_010, mood=enum_type(), moods=array_type(50_010, 50_000, "_mood"))
    # Debezium's enum array elements are required: an array holding a NULL is null.
    assert schema_of(moods)["items"]["connect.name"] == "io.debezium.data.Enum"
    assert moods.decode("{sad,happy}") == ["sad", "happy"]
    assert moods.decode("{sad,NULL,happy}") is None
    price = domain_type(50_001, NUMERIC, numeric_typmod(8, 3))
    prices = codec(50_011, price=price, prices=array_type(50_011, 50_001, "_price"))
    assert through_avro(prices, "{1.500,2.000}") == [Decimal("1.500"), Decimal("2.000")]


def test_composites_and_unknown_types_fall_back_to_their_text() -> None:
    composite = PgType(50_020, "public", "address", "c", "C", None, None, -1, ())
    assert (
        codec(50_020, address=composite).decode('("1 Main St",Springfield)')
        == '("1 Main St",Springfield)'
    )
    assert codec(50_020, address=composite).debezium_skips  # Debezium leaves them out
    assert codec(9_999).avro_type == "string"  # a built-in OID this module does not know
    assert codec(9_999).decode("whatever") == "whatever"


def test_a_user_type_without_catalog_facts_is_a_clear_schema_error() -> None:
    assert needs_catalog(50_000)
    assert not needs_catalog(INT4)
    assert not needs_catalog(POINT)
    with pytest.raises(SchemaError, match="50000"):
        codec(50_000)


def test_catalog_rows_become_pg_types() -> None:
    rows = [(50_000, "public", "mood", "e", "E", None, None, -1, ["sad", "ok"], ",")]
    assert pg_types_from_rows(rows) == {
        50_000: PgType(50_000, "public", "mood", "e", "E", None, None, -1, ("sad", "ok"))
    }


# --- errors, placeholders, schemas --------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "typmod", "text"),
    [
        (INT4, -1, "12x"),
        (BOOL, -1, "yes"),
        (NUMERIC, numeric_typmod(10, 2), "1.2.3"),
        (NUMERIC, -1, "abc"),
        (DATE, -1, "2024-02-30"),
        (TIME, -1, "25:00:00"),
        (TIMESTAMPTZ, -1, "2024-01-01 10:00:00"),
        (TIMESTAMP, -1, "2024-01-01 10:00:00+00"),
        (INTERVAL, -1, "P1D"),
        (BYTEA, -1, "\\xzz"),
        (MONEY, -1, "free"),
        (INT4_ARRAY, -1, "{1,2"),
        (INT4_ARRAY, -1, "{1,x}"),
    ],
)
def test_unreadable_text_raises_a_decode_error_naming_the_type(
    oid: int, typmod: int, text: str
) -> None:
    column = codec(oid, typmod)
    with pytest.raises(DecodeError) as caught:
        column.decode(text)
    assert column.pg_type_name in str(caught.value)
    assert repr(text) in str(caught.value)


def test_decode_errors_truncate_long_values() -> None:
    with pytest.raises(DecodeError) as caught:
        codec(INT4).decode("9" * 500 + "x")
    assert len(str(caught.value)) < 200


ALL_BUILT_INS = [
    BOOL, BYTEA, INT8, INT2, INT4, TEXT, OID, JSON, XML, FLOAT4, FLOAT8, MONEY, BPCHAR, VARCHAR,
    DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ, NUMERIC, UUID, JSONB, INT4_ARRAY,
    TEXT_ARRAY, NUMERIC_ARRAY, BOX_ARRAY, BYTEA_ARRAY, TSTZ_ARRAY, INET, POINT,
]  # fmt: skip


@pytest.mark.parametrize(
    "options", [DEFAULTS, NO_LOGICAL, TypeOptions(decimal_handling=DecimalHandling.STRING)]
)
def test_every_placeholder_is_valid_for_its_schema(options: TypeOptions) -> None:
    for oid in ALL_BUILT_INS:
        column = codec(oid, options=options)
        if column.avro_type == "string" or (
            isinstance(column.avro_type, dict) and schema_of(column)["type"] == "string"
        ):
            assert column.unavailable == options.unavailable_value
        round_trip(column, column.unavailable)


def test_all_column_types_fit_in_one_record_once_named_types_are_shared() -> None:
    columns = [codec(oid, numeric_typmod(8, 2) if oid == MONEY else -1) for oid in ALL_BUILT_INS]
    columns.append(codec(NUMERIC))  # a second VariableScaleDecimal
    fields = [
        {"name": f"c{i}", "type": ["null", avro_type]}
        for i, avro_type in enumerate(share_named_types(c.avro_type for c in columns))
    ]
    schema = fastavro.parse_schema({"type": "record", "name": "Row", "fields": fields})
    buffer = io.BytesIO()
    fastavro.schemaless_writer(
        buffer, schema, {f"c{i}": c.unavailable for i, c in enumerate(columns)}
    )
    assert buffer.getvalue()


def pg_date_text(days: int) -> str:
    year, month, day = civil_from_days(days)
    if year >= 1:
        return f"{year:04d}-{month:02d}-{day:02d}"
    return f"{1 - year:04d}-{month:02d}-{day:02d} BC"


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_dates_of_any_era_read_back_as_the_day_they_name(days: int) -> None:
    assert days_from_civil(*civil_from_days(days)) == days
    assert codec(DATE).decode(pg_date_text(days)) == days


@given(st.integers(min_value=-(10**17), max_value=10**17))
def test_timestamps_of_any_era_read_back_as_the_instant_they_name(micros: int) -> None:
    days, of_day = divmod(micros, 86_400_000_000)
    seconds, fraction = divmod(of_day, 1_000_000)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if fraction:
        clock += f".{fraction:06d}".rstrip("0")
    date_text = pg_date_text(days)
    era = " BC" if date_text.endswith(" BC") else ""
    naive = f"{date_text.removesuffix(' BC')} {clock}"
    assert codec(TIMESTAMP).decode(naive + era) == micros
    assert micros_of_iso(codec(TIMESTAMPTZ).decode(f"{naive}+00{era}")) == micros
    assert micros_of_iso(codec(TIMESTAMPTZ).decode(f"{naive}-01:30{era}")) == micros + 5_400_000_000


def micros_of_iso(text: str) -> int:
    """Epoch microseconds of an ISO UTC string such as -0043-03-15T10:00:00.5Z."""
    match = re.fullmatch(r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?Z", text)
    assert match is not None, text
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction = int((match.group(7) or "").ljust(6, "0"))
    seconds = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second
    return seconds * 1_000_000 + fraction


@given(
    st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from([0, 1, 2, 5, 6]),
)
def test_utc_timestamptz_text_takes_the_same_form_as_the_general_parser(
    moment: dt.datetime, digits: int
) -> None:
    fraction = f"{moment.microsecond:06d}"[:digits].rstrip("0")
    text = moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + "+00"
    expected = format_utc_timestamp(parse_timestamptz(text))
    assert timestamptz_to_utc_iso(text) == expected


# --- as Debezium writes them ---------------------------------------------------------------------


def test_time_precision_adaptive_writes_precisions_up_to_3_in_milliseconds() -> None:
    time3 = codec(TIME, 3)
    assert time3.avro_type == {
        "type": "int",
        "connect.version": 1,
        "connect.name": "io.debezium.time.Time",
    }
    assert time3.decode("12:34:56.789") == 45_296_789
    ts3 = codec(TIMESTAMP, 3)
    assert schema_of(ts3)["connect.name"] == "io.debezium.time.Timestamp"
    assert ts3.decode("2020-01-02 03:04:05.123") == 1_577_934_245_123
    assert schema_of(codec(TIMESTAMP))["connect.name"] == "io.debezium.time.MicroTimestamp"
    micro = TypeOptions(time_precision=TimePrecision.ADAPTIVE_TIME_MICROSECONDS)
    assert codec(TIME, 3, micro).decode("12:34:56.789") == 45_296_789_000
    # ... which changes time columns only: timestamp(0-3) stay in milliseconds.
    assert schema_of(codec(TIMESTAMP, 3, micro))["connect.name"] == "io.debezium.time.Timestamp"
    assert codec(TIMESTAMP, 3, micro).decode("2020-01-02 03:04:05.123") == 1_577_934_245_123


def test_time_precision_connect_uses_kafka_connects_logical_types_in_milliseconds() -> None:
    connect = TypeOptions(time_precision=TimePrecision.CONNECT)
    assert codec(DATE, options=connect).avro_type == {
        "type": "int",
        "connect.version": 1,
        "connect.name": "org.apache.kafka.connect.data.Date",
        "logicalType": "date",
    }
    assert schema_of(codec(TIME, options=connect))["logicalType"] == "time-millis"
    stamp = codec(TIMESTAMP, options=connect)
    assert schema_of(stamp)["connect.name"] == "org.apache.kafka.connect.data.Timestamp"
    assert stamp.decode("2020-01-02 03:04:05.5") == 1_577_934_245_500


def test_timestamptz_prints_its_declared_precision_as_debezium_does() -> None:
    assert codec(TIMESTAMPTZ, 2).decode("2020-01-02 03:04:05.1+00") == "2020-01-02T03:04:05.10Z"
    assert codec(TIMESTAMPTZ).decode("2020-01-02 03:04:05+02") == "2020-01-02T01:04:05.000000Z"


def test_an_interval_beyond_a_long_of_microseconds_saturates_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    column = codec(INTERVAL)
    with caplog.at_level(logging.WARNING, logger="cdcsync.capture"):
        assert column.decode("300000 years") == 2**63 - 1
        assert column.decode("-300000 years") == -(2**63)
    assert "saturated" in caplog.text
    assert column.decode("1 year 2 mons 3 days 04:05:06.7") == 37_091_106_700_000


def test_a_point_is_debeziums_geometry_point_with_its_wkb() -> None:
    column = codec(POINT)
    assert schema_of(column)["connect.name"] == "io.debezium.data.geometry.Point"
    value = through_avro(column, "(1.5,2)")
    assert value == {
        "x": 1.5,
        "y": 2.0,
        "wkb": bytes.fromhex("0101000000000000000000f83f0000000000000040"),
        "srid": None,
    }


def hstore_type(oid: int = 60_000) -> PgType:
    return PgType(oid, "public", "hstore", "b", "U", None, None, -1, ())


def test_hstore_is_json_text_in_the_order_debezium_writes_it() -> None:
    column = codec(60_000, hstore=hstore_type())
    assert column.avro_type == {
        "type": "string",
        "connect.version": 1,
        "connect.name": "io.debezium.data.Json",
    }
    assert column.decode('"a"=>"1", "b"=>NULL') == '{"a":"1","b":null}'
    # java.util.HashMap order (bucket of String.hashCode), not PostgreSQL's printed order.
    assert column.decode('"k"=>"v", "aa"=>"x\\"y", "zz"=>"é"') == '{"aa":"x\\"y","zz":"é","k":"v"}'
    as_map = codec(
        60_000, options=TypeOptions(hstore_handling=HstoreHandling.MAP), hstore=hstore_type()
    )
    assert through_avro(as_map, '"a"=>"1", "b"=>NULL') == {"a": "1", "b": None}
