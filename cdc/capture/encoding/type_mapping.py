"""PostgreSQL column types -> Avro schemas and values, with Debezium's defaults.

The capture runtime builds one ``ColumnCodec`` per column of a relation from the
column's type OID and typmod (from pgoutput's Relation message) and the catalog facts
loaded with ``TYPE_CATALOG_SQL``; then it calls ``codec.decode(text)`` on every value,
where ``text`` is the column's text output form (what ``SELECT col::text`` returns).
The table of mappings is in the README (Type mapping).

Invariants:

- ``codec.avro_type`` is the non-null Avro type of the column, carrying Debezium's
  ``connect.name`` / ``connect.parameters`` so that consumers written for Debezium work
  unchanged; nullability is the caller's business (``decode`` never sees None).
- ``codec.decode`` returns exactly what fastavro's writer accepts for ``avro_type`` and
  raises only ``cdc.core.errors.DecodeError`` (naming the type and the truncated text).
- ``codec.unavailable`` is a value valid for ``avro_type``, written in place of an
  unchanged TOAST value: Debezium's placeholder for strings, bytes and arrays of them;
  for ``int[]``, ``date[]`` and ``bigint[]`` the placeholder's bytes as numbers, for
  ``uuid[]`` its name-based UUID, for ``hstore`` a map of it to itself; None (null) for
  the other arrays and for ``bytea`` written as text (base64, hex), as Debezium writes
  them (the caller writes a required column's filler instead).
- ``codec.debezium_skips``: Debezium (``include.unknown.datatypes: false``) leaves columns
  of this type out of its events; cdcsync keeps them, as text, only as additive fields.
- ``codec.debezium_constant``: ``(value,)`` when Debezium writes that same value for
  every non-null value of the type (it loses them: ``name`` null, ``int2vector`` empty);
  cdcsync writes it only without additive fields, the real values otherwise.
- Values Debezium cannot represent are handled as Debezium does, never by stopping
  capture: numeric ``NaN``/``Infinity`` in ``precise`` mode decode to None (the caller
  writes null, or the column's default when it is NOT NULL) with a warning; intervals
  beyond a 64-bit count of microseconds saturate at its bounds.
- Unknown or unsupported types fall back to their text form as an Avro string; the only
  error at codec-building time is ``SchemaError`` for a user-defined OID whose catalog
  facts are missing.
- Codecs are built once per column: all type dispatch happens in ``codec_for``, never
  per value.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import functools
import hashlib
import json
import logging
import struct
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any
from uuid import UUID

from cdc.capture.encoding import pg_text as tp
from cdc.core.errors import DecodeError, SchemaError

__all__ = [
    "TYPE_CATALOG_SQL",
    "BinaryHandling",
    "ColumnCodec",
    "DecimalHandling",
    "HstoreHandling",
    "IntervalHandling",
    "PgType",
    "TimePrecision",
    "TypeOptions",
    "codec_for",
    "decode_failure",
    "keep_text",
    "needs_catalog",
    "parses_decimal_text",
    "pg_types_from_rows",
    "share_named_types",
]

log = logging.getLogger("cdcsync.capture")

# Debezium's timestamp sentinels for 'infinity' / '-infinity' (pgjdbc's DATE_POSITIVE_INFINITY
# and DATE_NEGATIVE_INFINITY read as microseconds) and the epoch days of the LocalDate values
# it uses for infinite dates.
POSITIVE_INFINITY_TIMESTAMP_MICROS = 9_223_372_036_825_200_000
NEGATIVE_INFINITY_TIMESTAMP_MICROS = -9_223_372_036_832_400_000
POSITIVE_INFINITY_DATE_DAYS = tp.days_from_civil(-5_877_611, 6, 21)
NEGATIVE_INFINITY_DATE_DAYS = tp.days_from_civil(-5_877_611, 6, 22)

# Confluent's AvroData precision for a Connect Decimal that declares none (money).
_DEFAULT_DECIMAL_PRECISION = 64
_FIRST_USER_OID = 10_000  # OIDs below this are assigned by initdb (built-in types)
_TRUNCATE_AT = 60


# --- catalog facts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PgType:
    """Catalog facts about one type, as loaded by TYPE_CATALOG_SQL."""

    oid: int
    namespace: str
    name: str
    # pg_type.typtype: b base, e enum, d domain, c composite, r range, m multirange, p pseudo
    kind: str
    category: str  # pg_type.typcategory
    element_oid: int | None  # array element type (typelem when typcategory = 'A')
    base_oid: int | None  # domain base type (typbasetype)
    base_typmod: int  # the domain's typtypmod, -1 if none
    enum_labels: tuple[str, ...]  # enum labels in sort order
    delimiter: str = ","  # pg_type.typdelim: the array element separator

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> PgType:
        """Build from one TYPE_CATALOG_SQL row (columns in the order of the SELECT list)."""
        oid, namespace, name, kind, category, element, base, base_typmod, labels, delim = row
        return cls(
            oid=int(oid),
            namespace=str(namespace),
            name=str(name),
            kind=str(kind),
            category=str(category),
            element_oid=int(element) if element else None,
            base_oid=int(base) if base else None,
            base_typmod=int(base_typmod) if base_typmod is not None else -1,
            enum_labels=tuple(str(label) for label in labels or ()),
            delimiter=str(delim or ","),
        )

    @property
    def qualified_name(self) -> str:
        return self.name if self.namespace == "pg_catalog" else f"{self.namespace}.{self.name}"


TYPE_CATALOG_SQL = """
WITH RECURSIVE wanted(oid) AS (
    SELECT unnest(%s::int8[])::oid
  UNION
    SELECT ref.oid
      FROM wanted
      JOIN pg_catalog.pg_type t ON t.oid = wanted.oid
     CROSS JOIN LATERAL (VALUES
            (CASE WHEN t.typcategory = 'A' THEN t.typelem END),
            (CASE WHEN t.typtype = 'd' THEN t.typbasetype END)) AS ref(oid)
     WHERE ref.oid IS NOT NULL AND ref.oid <> 0
)
SELECT t.oid::int8,
       n.nspname::text,
       t.typname::text,
       t.typtype::text,
       t.typcategory::text,
       CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem::int8 END,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype::int8 END,
       t.typtypmod,
       ARRAY(SELECT e.enumlabel::text FROM pg_catalog.pg_enum e
              WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder),
       t.typdelim::text
  FROM pg_catalog.pg_type t
  JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
 WHERE t.oid IN (SELECT oid FROM wanted)
"""


def pg_types_from_rows(rows: Iterable[Sequence[Any]]) -> dict[int, PgType]:
    """Catalog facts by OID from the rows TYPE_CATALOG_SQL returned."""
    types = (PgType.from_row(row) for row in rows)
    return {pg_type.oid: pg_type for pg_type in types}


# --- options ----------------------------------------------------------------------------------


class DecimalHandling(StrEnum):
    """Debezium's decimal.handling.mode."""

    PRECISE = "precise"
    DOUBLE = "double"
    STRING = "string"


class IntervalHandling(StrEnum):
    """Debezium's interval.handling.mode."""

    NUMERIC = "numeric"  # io.debezium.time.MicroDuration (long microseconds)
    STRING = "string"  # io.debezium.time.Interval (ISO 8601 P..Y..M..DT..H..M..S)


class BinaryHandling(StrEnum):
    """Debezium's binary.handling.mode."""

    BYTES = "bytes"
    BASE64 = "base64"
    BASE64_URL_SAFE = "base64-url-safe"
    HEX = "hex"


class TimePrecision(StrEnum):
    """Debezium's time.precision.mode."""

    ADAPTIVE = "adaptive"  # time(0-3)/timestamp(0-3) in milliseconds, else microseconds
    ADAPTIVE_TIME_MICROSECONDS = "adaptive_time_microseconds"  # every time in microseconds
    CONNECT = "connect"  # Kafka Connect's Date, Time, Timestamp (milliseconds)


class HstoreHandling(StrEnum):
    """Debezium's hstore.handling.mode."""

    JSON = "json"  # io.debezium.data.Json text
    MAP = "map"  # an Avro map of string to nullable string


@dataclass(frozen=True, slots=True)
class TypeOptions:
    """How values are represented; every default is Debezium's default."""

    decimal_handling: DecimalHandling = DecimalHandling.PRECISE
    interval_handling: IntervalHandling = IntervalHandling.NUMERIC
    binary_handling: BinaryHandling = BinaryHandling.BYTES
    time_precision: TimePrecision = TimePrecision.ADAPTIVE
    hstore_handling: HstoreHandling = HstoreHandling.JSON
    money_fraction_digits: int = 2
    unavailable_value: str = "__debezium_unavailable_value"
    # Opt-in for Python-native readers: also mark date/time/timestamp columns with Avro
    # logical types (date, time-millis/micros, timestamp-millis/micros); the numbers are
    # the same either way. Off by default: Kafka Connect's AvroConverter rejects a
    # logicalType beside Debezium's connect.name.
    temporal_logical_types: bool = False


# --- codecs ----------------------------------------------------------------------------------


AvroType = dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class ColumnCodec:
    """How one column's values become Avro: its schema, its decoder, its placeholder."""

    avro_type: AvroType
    decode: Callable[[str], Any]
    unavailable: Any
    pg_type_name: str
    debezium_skips: bool = False
    debezium_constant: tuple[Any] | None = None


def decode_failure(text: str, pg_type_name: str, reason: str | None = None) -> DecodeError:
    """The DecodeError for text that cannot be read as the given type."""
    shown = text if len(text) <= _TRUNCATE_AT else text[:_TRUNCATE_AT] + "..."
    message = f"cannot read {shown!r} as {pg_type_name}"
    if not reason:
        return DecodeError(message)
    if len(reason) > 2 * _TRUNCATE_AT:
        reason = reason[: 2 * _TRUNCATE_AT] + "..."
    return DecodeError(f"{message}: {reason}")


def _guarded(
    parse: Callable[[str], Any], pg_type_name: str, *, explain: bool = True
) -> Callable[[str], Any]:
    """Wrap a parser so that its ValueError becomes a DecodeError naming the type.

    ``explain=False`` leaves out the parser's own message (Python's int() and float()
    repeat the whole value in theirs).
    """

    @functools.wraps(parse)  # ``decode.__wrapped__`` is the parser (for generated writers)
    def decode(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise decode_failure(text, pg_type_name, str(exc) if explain else None) from exc

    return decode


def keep_text(text: str) -> str:
    """The decoder of types whose Avro value is their text form."""
    return text


def _semantic(base: str, name: str, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": base, "connect.version": 1, "connect.name": name}
    schema.update(extra)
    return schema


def _placeholder_for(avro_type: AvroType, options: TypeOptions) -> Any:
    base = avro_type if isinstance(avro_type, str) else avro_type["type"]
    if base == "string":
        return options.unavailable_value
    if base == "bytes":
        return options.unavailable_value.encode("utf-8")
    if base in ("int", "long"):
        return 0
    if base in ("float", "double"):
        return 0.0
    if base == "boolean":
        return False
    if base == "record":  # VariableScaleDecimal
        return {"scale": 0, "value": options.unavailable_value.encode("utf-8")}
    raise AssertionError(f"no placeholder for {avro_type!r}")  # arrays are built separately


def _codec(
    avro_type: AvroType, decode: Callable[[str], Any], name: str, options: TypeOptions
) -> ColumnCodec:
    return ColumnCodec(
        avro_type=avro_type,
        decode=decode,
        unavailable=_placeholder_for(avro_type, options),
        pg_type_name=name,
    )


def _text_codec(name: str, options: TypeOptions, avro_type: AvroType = "string") -> ColumnCodec:
    return _codec(avro_type, keep_text, name, options)


# numeric --------------------------------------------------------------------------------


_SPECIAL_NUMERIC = {"NaN": "NAN", "Infinity": "POSITIVE_INFINITY", "-Infinity": "NEGATIVE_INFINITY"}
_VARIABLE_SCALE_DECIMAL: dict[str, Any] = {
    "type": "record",
    "name": "VariableScaleDecimal",
    "namespace": "io.debezium.data",
    "fields": [{"name": "scale", "type": "int"}, {"name": "value", "type": "bytes"}],
    "connect.doc": "Variable scaled decimal",
    "connect.version": 1,
    "connect.name": "io.debezium.data.VariableScaleDecimal",
}


def _decimal_schema(precision: int, scale: int, *, declare_precision: bool) -> dict[str, Any]:
    parameters = {"scale": str(scale)}
    if declare_precision:
        parameters["connect.decimal.precision"] = str(precision)
    return {
        "type": "bytes",
        "scale": scale,
        "precision": max(precision, scale, 1),
        "connect.version": 1,
        "connect.parameters": parameters,
        "connect.name": "org.apache.kafka.connect.data.Decimal",
        "logicalType": "decimal",
    }


def _special_numeric(text: str, name: str) -> None:
    """Debezium's answer to NaN/Infinity in a decimal: null, with a warning."""
    log.warning(
        "a %s value %s cannot be an Avro decimal: written as null (set "
        "decimal_handling_mode to 'double' or 'string' to keep it)",
        name,
        text,
    )


# Parsers that are exactly ``Decimal(text)`` for finite values (fixed-scale numerics).
_DECIMAL_TEXT_PARSERS: weakref.WeakSet[Callable[[str], Any]] = weakref.WeakSet()


def parses_decimal_text(decode: Callable[[str], Any]) -> bool:
    """Whether ``decode`` (or the parser it guards) is ``Decimal(text)`` for finite values:
    a generated writer may then read plain digits itself (money's text is not plain)."""
    return getattr(decode, "__wrapped__", decode) in _DECIMAL_TEXT_PARSERS


def _numeric_codec(typmod: int, name: str, options: TypeOptions) -> ColumnCodec:
    mode = options.decimal_handling
    if mode is DecimalHandling.DOUBLE:
        return _codec("double", _guarded(float, name, explain=False), name, options)
    if mode is DecimalHandling.STRING:

        def as_string(text: str) -> str:
            return _SPECIAL_NUMERIC.get(text, text)

        return _codec("string", as_string, name, options)
    constraint = tp.numeric_typmod(typmod)
    if constraint is None:

        def variable_scale(text: str) -> dict[str, Any] | None:
            try:
                unscaled, scale = tp.parse_numeric_unscaled(text)
            except ValueError as exc:
                if text in _SPECIAL_NUMERIC:
                    _special_numeric(text, name)
                    return None
                raise decode_failure(text, name) from exc
            return {"scale": scale, "value": tp.twos_complement_bytes(unscaled)}

        return _codec(copy.deepcopy(_VARIABLE_SCALE_DECIMAL), variable_scale, name, options)
    precision, scale = constraint
    # A negative scale (numeric(5,-2)) stores whole numbers: they travel with scale 0.
    avro_scale = max(scale, 0)
    avro_precision = precision - min(scale, 0)

    def fixed_scale(text: str) -> Decimal | None:
        try:
            value = Decimal(text)
        except InvalidOperation as exc:
            raise decode_failure(text, name) from exc
        if not value.is_finite():
            _special_numeric(text, name)
            return None
        return value

    _DECIMAL_TEXT_PARSERS.add(fixed_scale)

    return _codec(
        _decimal_schema(avro_precision, avro_scale, declare_precision=True),
        fixed_scale,
        name,
        options,
    )


def _money_codec(options: TypeOptions) -> ColumnCodec:
    name, digits = "money", options.money_fraction_digits

    def plain(text: str) -> str:
        return tp.parse_money(text, fraction_digits=digits)

    mode = options.decimal_handling
    if mode is DecimalHandling.DOUBLE:
        return _codec("double", _guarded(lambda text: float(plain(text)), name), name, options)
    if mode is DecimalHandling.STRING:
        return _codec("string", _guarded(plain, name), name, options)
    schema = _decimal_schema(_DEFAULT_DECIMAL_PRECISION, digits, declare_precision=False)
    return _codec(schema, _guarded(lambda text: Decimal(plain(text)), name), name, options)


# temporal --------------------------------------------------------------------------------


_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_CONNECT_DATE = "org.apache.kafka.connect.data.Date"
_CONNECT_TIME = "org.apache.kafka.connect.data.Time"
_CONNECT_TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"


def _temporal(base: str, name: str, logical: str, options: TypeOptions) -> dict[str, Any]:
    """A temporal schema: Debezium's connect.name; the Avro logicalType only where Connect
    itself puts one (time_precision_mode=connect) or when asked for (opt-in)."""
    if name.startswith("org.apache.kafka.connect.data.") or options.temporal_logical_types:
        return _semantic(base, name, logicalType=logical)
    return _semantic(base, name)


def _date_codec(options: TypeOptions) -> ColumnCodec:
    sentinels = {"infinity": POSITIVE_INFINITY_DATE_DAYS, "-infinity": NEGATIVE_INFINITY_DATE_DAYS}

    def parse(text: str) -> int:
        special = sentinels.get(text)
        return tp.parse_date(text) if special is None else special

    connect = options.time_precision is TimePrecision.CONNECT
    name = _CONNECT_DATE if connect else "io.debezium.time.Date"
    schema = _temporal("int", name, "date", options)
    return _codec(schema, _guarded(parse, "date"), "date", options)


def _millis_precision(typmod: int, options: TypeOptions) -> bool:
    """Debezium's adaptive mode: a declared precision of 0 to 3 travels in milliseconds."""
    return options.time_precision is TimePrecision.ADAPTIVE and 0 <= typmod <= 3


def _time_codec(typmod: int, options: TypeOptions) -> ColumnCodec:
    name = _with_precision("time", typmod)
    if options.time_precision is TimePrecision.CONNECT:
        schema = _temporal("int", _CONNECT_TIME, "time-millis", options)
        return _codec(schema, _guarded(lambda t: tp.parse_time(t) // 1000, name), name, options)
    if _millis_precision(typmod, options):
        schema = _temporal("int", "io.debezium.time.Time", "time-millis", options)
        return _codec(schema, _guarded(lambda t: tp.parse_time(t) // 1000, name), name, options)
    schema = _temporal("long", "io.debezium.time.MicroTime", "time-micros", options)
    return _codec(schema, _guarded(tp.parse_time, name), name, options)


def _timetz_codec(typmod: int, options: TypeOptions) -> ColumnCodec:
    name = _with_precision("timetz", typmod)

    def parse(text: str) -> str:
        # java.time's OffsetTime has no 24:00: Debezium writes the end of the day as 00:00:00Z.
        return tp.format_utc_time(tp.parse_timetz(text) % tp.MICROS_PER_DAY)

    return _codec(
        _semantic("string", "io.debezium.time.ZonedTime"), _guarded(parse, name), name, options
    )


def _timestamp_codec(typmod: int, options: TypeOptions) -> ColumnCodec:
    name = _with_precision("timestamp", typmod)
    # adaptive_time_microseconds changes time columns only: timestamp(0-3) stay in ms.
    adaptive = options.time_precision is not TimePrecision.CONNECT
    millis = not adaptive or 0 <= typmod <= 3
    divisor = 1000 if millis else 1
    sentinels = {
        "infinity": POSITIVE_INFINITY_TIMESTAMP_MICROS // divisor,
        "-infinity": NEGATIVE_INFINITY_TIMESTAMP_MICROS // divisor,
    }

    def parse(text: str) -> int:
        special = sentinels.get(text)
        return tp.parse_timestamp(text) // divisor if special is None else special

    if options.time_precision is TimePrecision.CONNECT:
        schema = _temporal("long", _CONNECT_TIMESTAMP, "timestamp-millis", options)
    elif millis:
        schema = _temporal("long", "io.debezium.time.Timestamp", "timestamp-millis", options)
    else:
        schema = _temporal("long", "io.debezium.time.MicroTimestamp", "timestamp-micros", options)
    return _codec(schema, _guarded(parse, name), name, options)


def _timestamptz_codec(typmod: int, options: TypeOptions) -> ColumnCodec:
    name = _with_precision("timestamptz", typmod)
    # Debezium prints the declared number of fraction digits, six when none is declared.
    digits = typmod if 0 <= typmod <= 6 else 6

    def parse(text: str) -> str:
        if text in ("infinity", "-infinity"):
            return text
        return tp.timestamptz_to_utc_iso(text, fraction_digits=digits)

    schema = _semantic("string", "io.debezium.time.ZonedTimestamp")
    return _codec(schema, _guarded(parse, name), name, options)


def _saturated_micros(text: str) -> int:
    """Debezium's MicroDuration: a long, saturating beyond about 292,000 years."""
    micros = tp.parse_interval(text).approximate_micros()
    if micros > _LONG_MAX or micros < _LONG_MIN:
        log.warning("interval %s exceeds a 64-bit count of microseconds: saturated", text[:60])
        return _LONG_MAX if micros > 0 else _LONG_MIN
    return micros


def _interval_codec(options: TypeOptions) -> ColumnCodec:
    if options.interval_handling is IntervalHandling.STRING:
        schema = _semantic("string", "io.debezium.time.Interval")
        parse = _guarded(lambda t: tp.parse_interval(t).iso_string(), "interval")
    else:
        schema = _semantic("long", "io.debezium.time.MicroDuration")
        parse = _guarded(_saturated_micros, "interval")
    return _codec(schema, parse, "interval", options)


_Builder = Callable[[int, TypeOptions], ColumnCodec]


def _with_precision(name: str, typmod: int) -> str:
    return f"{name}({typmod})" if typmod >= 0 else name


# bytes -------------------------------------------------------------------------------------


def _bytea_codec(options: TypeOptions) -> ColumnCodec:
    mode = options.binary_handling
    encode: Callable[[bytes], Any]
    if mode is BinaryHandling.BYTES:
        return _codec("bytes", _guarded(tp.parse_bytea, "bytea"), "bytea", options)
    # Debezium's placeholder (a string) does not convert to these modes: an unchanged
    # TOAST value is null (measured with base64).
    if mode is BinaryHandling.BASE64:
        encode = lambda raw: base64.b64encode(raw).decode("ascii")  # noqa: E731
    elif mode is BinaryHandling.BASE64_URL_SAFE:
        encode = lambda raw: base64.urlsafe_b64encode(raw).decode("ascii")  # noqa: E731
    else:
        encode = bytes.hex
    parse = _guarded(lambda text: encode(tp.parse_bytea(text)), "bytea")
    return ColumnCodec("string", parse, None, "bytea")


# geometry and hstore --------------------------------------------------------------------------


_POINT: dict[str, Any] = {
    "type": "record",
    "name": "Point",
    "namespace": "io.debezium.data.geometry",
    "fields": [
        {"name": "x", "type": "double"},
        {"name": "y", "type": "double"},
        {"name": "wkb", "type": ["null", "bytes"], "default": None},
        {"name": "srid", "type": ["null", "int"], "default": None},
    ],
    "connect.doc": "Geometry (POINT)",
    "connect.version": 1,
    "connect.name": "io.debezium.data.geometry.Point",
}


def _point_codec(options: TypeOptions) -> ColumnCodec:
    def parse(text: str) -> dict[str, Any]:
        x, y = tp.parse_point(text)
        # Debezium's Point: the coordinates and their little-endian WKB, no SRID.
        return {"x": x, "y": y, "wkb": struct.pack("<BIdd", 1, 1, x, y), "srid": None}

    schema = copy.deepcopy(_POINT)
    placeholder = {"x": 0.0, "y": 0.0, "wkb": None, "srid": None}
    return ColumnCodec(schema, _guarded(parse, "point"), placeholder, "point")


def _hstore_codec(name: str, options: TypeOptions) -> ColumnCodec:
    placeholder = {options.unavailable_value: options.unavailable_value}
    if options.hstore_handling is HstoreHandling.MAP:
        schema: dict[str, Any] = {"type": "map", "values": ["null", "string"]}
        parse = _guarded(lambda t: dict(tp.parse_hstore(t)), name)
        return ColumnCodec(schema, parse, placeholder, name)

    def as_json(text: str) -> str:
        pairs = dict(tp.parse_hstore(text))
        ordered = {key: pairs[key] for key in tp.java_hashmap_order(list(pairs))}
        return json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))

    return ColumnCodec(
        _semantic("string", "io.debezium.data.Json"),
        _guarded(as_json, name),
        json.dumps(placeholder, ensure_ascii=False, separators=(",", ":")),
        name,
    )


# bit strings and text search --------------------------------------------------------------------


def _bits_codec(typmod: int, name: str, options: TypeOptions) -> ColumnCodec:
    """``bit(1)`` (and ``varbit(1)``): boolean; longer ones ``io.debezium.data.Bits``: the
    bits as an unsigned number, little-endian, in as few bytes as it takes (0: none)."""
    length = typmod if typmod >= 0 else 2_147_483_647
    if length <= 1:
        return _codec("boolean", _guarded(lambda t: t == "1", name), name, options)

    def parse(text: str) -> bytes:
        if text.strip("01"):
            raise ValueError("not a bit string")
        number = int(text, 2) if text else 0
        return number.to_bytes((number.bit_length() + 7) // 8, "little")

    schema = {
        "type": "bytes",
        "connect.version": 1,
        "connect.parameters": {"length": str(length)},
        "connect.name": "io.debezium.data.Bits",
    }
    return _codec(schema, _guarded(parse, name), name, options)


def _skipped_by_debezium(name: str) -> _Builder:
    return lambda _m, o: dataclasses.replace(_text_codec(name, o), debezium_skips=True)


# --- the built-in type table -----------------------------------------------------------------


def _number(avro_type: AvroType, parse: Callable[[str], Any], name: str) -> _Builder:
    return lambda _m, o: _codec(avro_type, _guarded(parse, name, explain=False), name, o)


def _named_text(name: str, connect_name: str | None = None) -> _Builder:
    schema: AvroType = _semantic("string", connect_name) if connect_name else "string"
    return lambda _m, o: _text_codec(name, o, schema)


_BUILDERS: dict[int, _Builder] = {
    16: lambda _m, o: _codec("boolean", _guarded(tp.parse_bool, "boolean"), "boolean", o),
    17: lambda _m, o: _bytea_codec(o),
    18: _named_text('"char"'),
    19: lambda _m, o: dataclasses.replace(_text_codec("name", o), debezium_constant=(None,)),
    20: _number("long", int, "bigint"),
    21: _number({"type": "int", "connect.type": "int16"}, int, "smallint"),
    23: _number("int", int, "integer"),
    25: _named_text("text"),
    26: _number("long", int, "oid"),
    114: _named_text("json", "io.debezium.data.Json"),
    142: _named_text("xml", "io.debezium.data.Xml"),
    700: _number("float", float, "real"),
    701: _number("double", float, "double precision"),
    790: lambda _m, o: _money_codec(o),
    1042: lambda m, o: _text_codec(f"bpchar({m - 4})" if m >= 4 else "bpchar", o),
    1043: lambda m, o: _text_codec(f"varchar({m - 4})" if m >= 4 else "varchar", o),
    1082: lambda _m, o: _date_codec(o),
    1083: _time_codec,
    1114: _timestamp_codec,
    1184: _timestamptz_codec,
    1186: lambda _m, o: _interval_codec(o),
    1266: _timetz_codec,
    600: lambda _m, o: _point_codec(o),
    1700: lambda m, o: _numeric_codec(m, _numeric_name(m), o),
    2950: _named_text("uuid", "io.debezium.data.Uuid"),
    3802: _named_text("jsonb", "io.debezium.data.Json"),
    1560: lambda m, o: _bits_codec(m, "bit", o),
    1562: lambda m, o: _bits_codec(m, "varbit", o),
    3614: _named_text("tsvector", "io.debezium.data.Tsvector"),
    # Types Debezium leaves out of its events.
    601: _skipped_by_debezium("lseg"),
    602: _skipped_by_debezium("path"),
    603: _skipped_by_debezium("box"),
    604: _skipped_by_debezium("polygon"),
    628: _skipped_by_debezium("line"),
    718: _skipped_by_debezium("circle"),
    3220: _skipped_by_debezium("pg_lsn"),
    3615: _skipped_by_debezium("tsquery"),
    28: _skipped_by_debezium("xid"),
    2205: _skipped_by_debezium("regclass"),
    22: lambda _m, o: _int2vector_codec(o),
}

# Built-in types Debezium leaves out, met on the text path: the multiranges.
_SKIPPED_BY_DEBEZIUM = frozenset({4451, 4532, 4533, 4534, 4535, 4536})
# Built-in arrays Debezium leaves out: money[], interval[], xml[], the geometric ones.
_ARRAYS_SKIPPED_BY_DEBEZIUM = frozenset({791, 1187, 143, 1017, 1018, 1019, 1020, 1027, 629, 719})

# Built-in types whose text form is the value (inet, cidr, macaddr, macaddr8, tsvector, ...):
# listed for their names in messages; any other built-in OID gets the same treatment.
_TEXT_NAMES: dict[int, str] = {
    30: "oidvector", 650: "cidr", 869: "inet", 774: "macaddr8",
    829: "macaddr", 3904: "int4range", 3906: "numrange", 3908: "tsrange", 3910: "tstzrange",
    3912: "daterange", 3926: "int8range",
}  # fmt: skip

# Built-in array types -> their element type.
_ARRAYS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1009: 25, 1028: 26, 199: 114,
    143: 142, 1021: 700, 1022: 701, 791: 790, 1014: 1042, 1015: 1043, 1182: 1082, 1183: 1083,
    1115: 1114, 1185: 1184, 1187: 1186, 1270: 1266, 1231: 1700, 2951: 2950, 3807: 3802,
    1007: 23, 1017: 600, 1018: 601, 1019: 602, 1020: 603, 1027: 604, 629: 628, 719: 718,
    651: 650, 1041: 869, 775: 774, 1040: 829, 1561: 1560, 1563: 1562, 3643: 3614, 3645: 3615,
    3905: 3904, 3907: 3906, 3909: 3908, 3911: 3910, 3913: 3912, 3927: 3926,
}  # fmt: skip


def _numeric_name(typmod: int) -> str:
    constraint = tp.numeric_typmod(typmod)
    return f"numeric({constraint[0]},{constraint[1]})" if constraint else "numeric"


def needs_catalog(type_oid: int) -> bool:
    """True when codec_for needs catalog facts (TYPE_CATALOG_SQL) for this OID.

    Built-in types (OIDs assigned by initdb) are mapped from static tables; any other
    OID (enums, domains, composites, extension types, their arrays) needs the catalog.
    """
    return type_oid >= _FIRST_USER_OID and type_oid not in _BUILDERS and type_oid not in _ARRAYS


# --- arrays and catalog types -------------------------------------------------------------------


# Element types whose arrays Debezium gives a typed unchanged-TOAST placeholder (by the
# array's type name): text-like and bytea as [placeholder], int4 and date as the
# placeholder's bytes as ints, int8 as longs, uuid as [its name-based UUID].
_TEXT_LIKE_ELEMENTS = frozenset({25, 1043, 1042, 114, 3802, 17})
_BYTES_AS_NUMBERS_ELEMENTS = frozenset({23, 1082, 20})


def _array_placeholder(element_oid: int | None, element: ColumnCodec, options: TypeOptions) -> Any:
    """Debezium's placeholder for an unchanged TOAST array; None (null) when it has none."""
    raw = options.unavailable_value.encode("utf-8")
    if element_oid in _TEXT_LIKE_ELEMENTS:
        return None if element.unavailable is None else [element.unavailable]
    if element_oid in _BYTES_AS_NUMBERS_ELEMENTS:
        return [b - 256 if b > 127 else b for b in raw]  # Java's signed bytes
    if element_oid == 2950:  # java.util.UUID.nameUUIDFromBytes
        return [str(UUID(bytes=hashlib.md5(raw).digest(), version=3))]  # noqa: S324
    return None


def _array_codec(
    element: ColumnCodec,
    *,
    delimiter: str,
    element_oid: int | None,
    options: TypeOptions,
    nullable_items: bool = True,
    null_when: frozenset[str] = frozenset(),
) -> ColumnCodec:
    """``nullable_items=False``: Debezium's required elements (enum and tsvector arrays);
    an array holding a NULL element is then null. ``null_when``: element texts that make
    the whole array null (numeric NaN and infinities, which Debezium cannot read into an
    array in any decimal mode)."""
    name = f"{element.pg_type_name}[]"
    decode_element = element.decode
    if element_oid == 1083:  # Debezium reads 24:00:00 inside a time[] as midnight
        decode_time = decode_element

        def decode_element(text: str) -> Any:
            return 0 if text.startswith("24:") else decode_time(text)

    passthrough = decode_element is keep_text and nullable_items

    def decode(text: str) -> list[Any] | None:
        outer = tp.array_outer_length(text)
        if outer is not None:
            # Debezium reads a multidimensional array as arrays of arrays, which its
            # element converter cannot take: every top-level element becomes null.
            return [None] * outer
        try:
            items = tp.parse_array(text, delimiter=delimiter)
        except ValueError as exc:
            raise decode_failure(text, name, str(exc)) from exc
        if null_when and any(item in null_when for item in items):
            return None
        if passthrough:
            return items
        try:
            values = [None if item is None else decode_element(item) for item in items]
        except DecodeError as exc:
            raise decode_failure(text, name, str(exc)) from exc
        # An element Debezium cannot represent (numeric NaN) makes the whole array null.
        if any(
            v is None and (item is not None or not nullable_items)
            for v, item in zip(values, items, strict=True)
        ):
            return None
        return values

    items_type: Any = ["null", element.avro_type] if nullable_items else element.avro_type
    return ColumnCodec(
        avro_type={"type": "array", "items": items_type},
        decode=decode,
        unavailable=_array_placeholder(element_oid, element, options),
        pg_type_name=name,
        debezium_skips=element.debezium_skips,
    )


def _bits_array_codec(element: ColumnCodec) -> ColumnCodec:
    """A bit-string array: Debezium 3.6 gives it its element's schema and writes it null."""
    return ColumnCodec(element.avro_type, lambda _text: None, None, f"{element.pg_type_name}[]")


def _int2vector_codec(options: TypeOptions) -> ColumnCodec:
    """``int2vector`` (``1 2 3``): an array of int16, as Debezium's schema has it."""

    def parse(text: str) -> list[int]:
        return [int(part) for part in text.split()]

    schema = {"type": "array", "items": {"type": "int", "connect.type": "int16"}}
    return ColumnCodec(
        schema, _guarded(parse, "int2vector"), [], "int2vector", debezium_constant=([],)
    )


def _enum_codec(pg_type: PgType, options: TypeOptions) -> ColumnCodec:
    schema = _semantic(
        "string",
        "io.debezium.data.Enum",
        **{"connect.parameters": {"allowed": ",".join(pg_type.enum_labels)}},
    )
    return _text_codec(pg_type.qualified_name, options, schema)


def _renamed(codec: ColumnCodec, name: str) -> ColumnCodec:
    return ColumnCodec(
        avro_type=codec.avro_type,
        decode=codec.decode,
        unavailable=codec.unavailable,
        pg_type_name=name,
    )


def codec_for(
    type_oid: int, typmod: int, *, types: Mapping[int, PgType], options: TypeOptions
) -> ColumnCodec:
    """The codec of a column of type ``type_oid`` with modifier ``typmod`` (-1 if none).

    ``types`` holds catalog facts for non-built-in OIDs (see needs_catalog); a type
    this module does not map falls back to its text form as an Avro string.
    """
    return _codec_for(type_oid, typmod, types, options, depth=0)


def _codec_for(
    type_oid: int, typmod: int, types: Mapping[int, PgType], options: TypeOptions, *, depth: int
) -> ColumnCodec:
    if depth > 32:
        raise SchemaError(f"type {type_oid}: domain or array nesting too deep")
    builder = _BUILDERS.get(type_oid)
    if builder is not None:
        return builder(typmod, options)
    element_oid = _ARRAYS.get(type_oid)
    if element_oid is not None:
        element = _codec_for(element_oid, typmod, types, options, depth=depth + 1)
        if element_oid in (1560, 1562):
            return _bits_array_codec(element)
        codec = _array_codec(
            element,
            delimiter=";" if element_oid == 603 else ",",
            element_oid=element_oid,
            options=options,
            nullable_items=element_oid != 3614,
            null_when=frozenset(_SPECIAL_NUMERIC) if element_oid == 1700 else frozenset(),
        )
        if type_oid in _ARRAYS_SKIPPED_BY_DEBEZIUM:
            codec = dataclasses.replace(codec, debezium_skips=True)
        return codec
    pg_type = types.get(type_oid)
    if pg_type is None:
        if needs_catalog(type_oid):
            raise SchemaError(
                f"no catalog facts for type OID {type_oid}: load them with TYPE_CATALOG_SQL first"
            )
        codec = _text_codec(_TEXT_NAMES.get(type_oid, f"type {type_oid}"), options)
        if type_oid in _SKIPPED_BY_DEBEZIUM:
            codec = dataclasses.replace(codec, debezium_skips=True)
        return codec
    if pg_type.kind == "d" and pg_type.base_oid is not None:
        base_typmod = pg_type.base_typmod if pg_type.base_typmod >= 0 else typmod
        base = _codec_for(pg_type.base_oid, base_typmod, types, options, depth=depth + 1)
        return _renamed(base, pg_type.qualified_name)
    if pg_type.kind == "e":
        return _enum_codec(pg_type, options)
    if pg_type.name == "hstore" and pg_type.kind == "b":
        return _hstore_codec(pg_type.qualified_name, options)
    if pg_type.category == "A" and pg_type.element_oid is not None and pg_type.name.startswith("_"):
        element_type = types.get(pg_type.element_oid)
        element = _codec_for(pg_type.element_oid, typmod, types, options, depth=depth + 1)
        delimiter = element_type.delimiter if element_type is not None else ","
        codec = _array_codec(
            element,
            delimiter=delimiter,
            element_oid=None,
            options=options,
            nullable_items=element_type is None or element_type.kind != "e",
        )
        if element_type is not None and element_type.kind == "d":
            codec = dataclasses.replace(codec, debezium_skips=True)  # Debezium skips these
        return codec
    # composites, ranges, multiranges, extension base types (citext, hstore, geometry...);
    # Debezium leaves composites and multiranges out.
    codec = _text_codec(pg_type.qualified_name, options)
    if pg_type.kind in ("c", "m"):
        codec = dataclasses.replace(codec, debezium_skips=True)
    return codec


# --- helpers for whoever assembles a record schema ----------------------------------------------


def share_named_types(avro_types: Iterable[AvroType]) -> list[AvroType]:
    """Column types ready to sit side by side in one Avro record.

    Avro forbids defining a named type (a record such as io.debezium.data.VariableScaleDecimal)
    twice in one schema: every definition after the first is replaced by its full name.
    """
    seen: set[str] = set()

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(item) for item in node]
        if not isinstance(node, dict):
            return node
        kind = node.get("type")
        if kind in ("record", "enum", "fixed"):
            namespace = node.get("namespace")
            full = f"{namespace}.{node['name']}" if namespace else str(node["name"])
            if full in seen:
                return full
            seen.add(full)
            if kind == "record":
                fields = [{**field, "type": walk(field["type"])} for field in node["fields"]]
                return {**node, "fields": fields}
            return node
        if kind == "array":
            return {**node, "items": walk(node["items"])}
        if kind == "map":
            return {**node, "values": walk(node["values"])}
        return node

    return [walk(avro_type) for avro_type in avro_types]
