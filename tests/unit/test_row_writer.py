"""Generated row and key writers write exactly fastavro's bytes, for every column type.

The reference is fastavro writing ``RelationEncoder.row_record`` / ``key_record`` under the
relation's own schemas: the path every relation took before writers were generated, and
the one relations with non-primitive fields still take.
"""

from __future__ import annotations

import io
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cdc.capture.encoding.envelope import Change, ColumnFacts, RelationEncoder, TxContext
from cdc.capture.encoding.envelope_writer import EnvelopeWriter
from cdc.capture.encoding.row_writer import RowWriter
from cdc.capture.encoding.type_mapping import (
    BinaryHandling,
    DecimalHandling,
    IntervalHandling,
    PgType,
    TimePrecision,
    TypeOptions,
)
from cdc.capture.pgoutput import UNCHANGED, Column, Relation
from cdc.core.errors import DecodeError
from cdc.core.lsn import Lsn

ints = st.integers


def _moment(*, tz: bool) -> st.SearchStrategy[str]:
    def text(d: datetime, offset_min: int) -> str:
        body = f"{d.year:04d}-" + d.strftime("%m-%d %H:%M:%S")
        if d.microsecond:
            body += f".{d.microsecond:06d}".rstrip("0")
        if not tz:
            return body
        sign = "+" if offset_min >= 0 else "-"
        hh, mm = divmod(abs(offset_min), 60)
        return body + f"{sign}{hh:02d}" + (f":{mm:02d}" if mm else "")

    moments = st.builds(
        text,
        st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
        st.sampled_from([0, 0, 330, -480, 59]),
    )
    specials = ["infinity", "-infinity", "0044-03-15 12:00:00" + ("+00" if tz else "") + " BC"]
    return st.one_of(moments, st.sampled_from(specials))


def _decimal_text(places: int, digits: int) -> st.SearchStrategy[str]:
    bound = 10 ** (digits - places) - 1
    return st.one_of(
        st.decimals(-bound, bound, places=places, allow_nan=False).map(str),
        # forms PostgreSQL does not print for the type, read by the general path
        st.decimals(-bound, bound, places=max(places - 1, 0), allow_nan=False).map(str),
        st.sampled_from(["NaN", "0", "-0.00", "Infinity", "1E+3", "007.50", "+1.00", "٣.00"]),
    )


_TIME = st.builds(
    lambda h, m, s, us: f"{h:02d}:{m:02d}:{s:02d}" + (f".{us:06d}" if us else ""),
    ints(0, 23),
    ints(0, 59),
    ints(0, 59),
    ints(0, 999_999),
) | st.just("24:00:00")

# (type OID, typmod, values as pgoutput's text output forms)
COLUMN_TYPES: dict[str, tuple[int, int, st.SearchStrategy[str]]] = {
    "bool": (16, -1, st.sampled_from(["t", "f"])),
    "int2": (21, -1, ints(-(2**15), 2**15 - 1).map(str)),
    "int4": (23, -1, ints(-(2**31), 2**31 - 1).map(str)),
    "int8": (20, -1, ints(-(2**63), 2**63 - 1).map(str)),
    "oid": (26, -1, ints(0, 2**32 - 1).map(str)),
    "float4": (700, -1, st.floats(width=32).map(lambda f: repr(f).replace("inf", "Infinity"))),
    "float8": (701, -1, st.floats().map(lambda f: repr(f).replace("inf", "Infinity"))),
    "numeric(12,2)": (1700, ((12 << 16) | 2) + 4, _decimal_text(2, 12)),
    "numeric(40,10)": (1700, ((40 << 16) | 10) + 4, _decimal_text(10, 40)),
    "numeric(5,-2)": (
        1700,
        ((5 << 16) | (0x7FF & -2)) + 4,
        ints(-999, 999).map(lambda n: str(n * 100)),
    ),
    "numeric": (1700, -1, _decimal_text(3, 20)),
    "money": (
        790,
        -1,
        st.sampled_from(["$0.00", "$1,234.56", "-$92,233,720,368,547,758.08", "12.34"]),
    ),
    "text": (25, -1, st.text()),
    "varchar(10)": (1043, 14, st.text(max_size=10)),
    "bpchar(3)": (1042, 7, st.text(string.ascii_letters, min_size=3, max_size=3)),
    "name": (19, -1, st.text(string.ascii_lowercase, max_size=63)),
    "bytea": (17, -1, st.binary().map(lambda b: "\\x" + b.hex())),
    "uuid": (2950, -1, st.uuids().map(str)),
    "json": (114, -1, st.sampled_from(['{"a": 1}', "[]", "null", '"x"'])),
    "jsonb": (3802, -1, st.sampled_from(['{"a": 1}', '{"k": [1, 2]}'])),
    "xml": (142, -1, st.sampled_from(["<a/>", "<b>x</b>"])),
    "date": (
        1082,
        -1,
        _moment(tz=False).map(lambda t: t.split(" ")[0] + (" BC" if t.endswith("BC") else "")),
    ),
    "time": (1083, -1, _TIME),
    "time(3)": (1083, 3, _TIME),
    "timetz": (1266, -1, _TIME.map(lambda t: t + "+05:30")),
    "timestamp": (1114, -1, _moment(tz=False)),
    "timestamp(3)": (1114, 3, _moment(tz=False)),
    "timestamptz": (1184, -1, _moment(tz=True)),
    "timestamptz(2)": (1184, 2, _moment(tz=True)),
    "interval": (
        1186,
        -1,
        st.sampled_from(["00:00:00", "1 year 2 mons 3 days 04:05:06.7", "-1 days +02:03:00"]),
    ),
    "bit(1)": (1560, 1, st.sampled_from(["0", "1"])),
    "bit(10)": (1560, 10, st.text("01", min_size=10, max_size=10)),
    "varbit": (1562, -1, st.text("01", max_size=20)),
    "inet": (869, -1, st.sampled_from(["10.0.0.1", "::1/128"])),
    '"char"': (18, -1, st.sampled_from(["a", "Z"])),
    "macaddr": (829, -1, st.sampled_from(["08:00:2b:01:02:03"])),
    "cidr": (650, -1, st.sampled_from(["10.0.0.0/8"])),
    "tsvector": (3614, -1, st.sampled_from(["'a' 'b':2"])),
    "point": (600, -1, st.sampled_from(["(1,2)", "(-1.5,0)"])),
    "mood (enum)": (70001, -1, st.sampled_from(["happy", "so so"])),
    "positive (domain over int4)": (70002, -1, ints(1, 2**31 - 1).map(str)),
    "money4 (domain over numeric(6,4))": (70003, -1, _decimal_text(4, 6)),
    "int4[]": (1007, -1, st.sampled_from(["{1,2,NULL}", "{}"])),
    "text[]": (1009, -1, st.sampled_from(['{a,"b c",NULL}', "{}"])),
}

# User-defined types, as TYPE_CATALOG_SQL describes them.
CATALOG = {
    70001: PgType(70001, "public", "mood", "e", "E", None, None, -1, ("happy", "so so")),
    70002: PgType(70002, "public", "positive", "d", "N", None, 23, -1, ()),
    70003: PgType(70003, "public", "money4", "d", "N", None, 1700, ((6 << 16) | 4) + 4, ()),
}

OPTIONS = {
    "defaults": TypeOptions(),
    "strings": TypeOptions(
        decimal_handling=DecimalHandling.STRING,
        interval_handling=IntervalHandling.STRING,
        binary_handling=BinaryHandling.BASE64,
    ),
    "double": TypeOptions(
        decimal_handling=DecimalHandling.DOUBLE, binary_handling=BinaryHandling.HEX
    ),
    "connect": TypeOptions(time_precision=TimePrecision.CONNECT),
    "micro": TypeOptions(time_precision=TimePrecision.ADAPTIVE_TIME_MICROSECONDS),
    "logical": TypeOptions(temporal_logical_types=True),
}


def reference(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parse_schema(schema), record)
    return buf.getvalue()


@st.composite
def relations(draw: st.DrawFn) -> tuple[RelationEncoder, list[st.SearchStrategy[Any]]]:
    names = draw(st.lists(st.sampled_from(sorted(COLUMN_TYPES)), min_size=1, max_size=6))
    key_count = draw(st.integers(0, min(2, len(names))))
    columns, facts, values = [], {}, []
    for i, name in enumerate(names):
        oid, typmod, texts = COLUMN_TYPES[name]
        column = f"c{i}"
        columns.append(Column(i < key_count, column, oid, typmod))
        default = draw(st.one_of(st.none(), texts))
        facts[column] = ColumnFacts(not_null=draw(st.booleans()), default_text=default)
        values.append(
            st.one_of(
                texts,
                texts.map(str.encode),  # a value sent as bytes
                st.none(),
                st.just(UNCHANGED),
                st.sampled_from(["", "not a value"]),  # bad input for most types
            )
        )
    relation = Relation(16384, "public", "t", "d", tuple(columns))
    encoder = RelationEncoder(
        relation,
        prefix="app",
        database="db",
        types=CATALOG,
        options=OPTIONS[draw(st.sampled_from(sorted(OPTIONS)))],
        columns=facts,
        additive_fields=draw(st.booleans()),
        transaction_block=True,
    )
    return encoder, values


def _outcome(call: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args, **kwargs)
    except DecodeError as exc:
        return "decode error", str(exc)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        return "does not fit", None


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_rows_and_keys_are_the_reference_bytes_for_every_type(
    data: st.DataObject,
) -> None:
    encoder, strategies = data.draw(relations())
    writer = RowWriter.build(encoder)
    if writer is None:
        event("fastavro path kept")
        return  # covered by the envelope test below
    checked = 0
    for _ in range(4):
        values = tuple(data.draw(s) for s in strategies)
        old = data.draw(st.one_of(st.none(), st.tuples(*strategies)))
        key_only = old is None and data.draw(st.booleans())
        ours_unavailable: list[str] = []
        ref_unavailable: list[str] = []
        ours = _outcome(writer.row, values, old, ours_unavailable, key_only)
        ref = _outcome(
            _reference_row, encoder, values, old=old, key_only=key_only, unavailable=ref_unavailable
        )
        assert ours == ref
        assert ours_unavailable == ref_unavailable
        checked += ours[0] == "ok"
        if writer.key is not None and encoder.key_schema is not None:
            key = _outcome(writer.key, values)
            assert key == _outcome(_reference_key, encoder, values)
    event("rows written" if checked else "every row refused")


def _reference_row(encoder: RelationEncoder, values: Any, **kwargs: Any) -> bytes:
    return reference(encoder.value_row_schema, encoder.row_record(values, **kwargs))


def _reference_key(encoder: RelationEncoder, values: Any) -> bytes:
    assert encoder.key_schema is not None
    return reference(encoder.key_schema, encoder.key_record(values))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_envelopes_are_the_reference_bytes_whichever_row_path_the_relation_takes(
    data: st.DataObject,
) -> None:
    encoder, strategies = data.draw(relations())
    writer = EnvelopeWriter(encoder, header=b"\x00\x00\x00\x00\x01")
    tx = TxContext(7, Lsn(1 << 40), 1_700_000_000_000_000, None)
    good = [
        s.filter(lambda v: v not in ("", "not a value", b"", b"not a value")) for s in strategies
    ]
    row = tuple(data.draw(s) for s in good)
    op = data.draw(st.sampled_from("cud"))
    before = None if op == "c" else tuple(data.draw(s) for s in good)
    after = None if op == "d" else row
    change = Change(op, 16384, Lsn(1 << 40), 3, tx, before, after, False)
    ours = _outcome(writer.write, change, table_seq=3, now_ms=1_700_000_000_000)
    ref = _outcome(_reference_envelope, encoder, change)
    assert (ours[0], ours[1] if ours[0] == "ok" else None) == (
        ref[0],
        ref[1] if ref[0] == "ok" else None,
    )


def _reference_envelope(encoder: RelationEncoder, change: Change) -> bytes:
    record = encoder.envelope(change, table_seq=3, now_ms=1_700_000_000_000)
    return b"\x00\x00\x00\x00\x01" + reference(encoder.value_schema, record)


@pytest.mark.parametrize(
    ("name", "generated"),
    [
        ("int8", True),
        ("timestamptz", True),
        ("numeric(12,2)", True),
        ("mood (enum)", True),
        ("positive (domain over int4)", True),
        ("numeric", False),
        ("point", False),
        ("text[]", False),
    ],
)
def test_only_relations_of_primitive_fields_get_a_generated_writer(
    name: str, generated: bool
) -> None:
    oid, typmod, _ = COLUMN_TYPES[name]
    relation = Relation(
        1, "public", "t", "d", (Column(True, "id", 20, -1), Column(False, "v", oid, typmod))
    )
    encoder = RelationEncoder(
        relation, prefix="app", database="db", types=CATALOG, options=TypeOptions()
    )
    assert (RowWriter.build(encoder) is not None) is generated
    assert EnvelopeWriter(encoder, header=b"").generated is generated


def test_a_timestamp_with_an_offset_is_written_as_its_utc_instant() -> None:
    relation = Relation(1, "public", "t", "d", (Column(True, "at", 1184, -1),))
    encoder = RelationEncoder(
        relation, prefix="app", database="db", types={}, options=TypeOptions()
    )
    writer = RowWriter.build(encoder)
    assert writer is not None and writer.key is not None
    moment = datetime(2026, 12, 6, 6, 55, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    text = "2026-12-06 06:55:00+05:30"
    expected = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z").encode()
    assert writer.key((text,)) == bytes([len(expected) * 2]) + expected


def test_a_decimal_longer_than_pythons_default_precision_is_written_exactly() -> None:
    oid, typmod, _ = COLUMN_TYPES["numeric(40,10)"]
    relation = Relation(1, "public", "t", "d", (Column(True, "v", oid, typmod),))
    encoder = RelationEncoder(
        relation, prefix="app", database="db", types={}, options=TypeOptions()
    )
    writer = RowWriter.build(encoder)
    assert writer is not None and writer.key is not None
    text = "-999999999999999999999999999999.0000000001"  # 40 digits; Decimal's context has 28
    assert writer.row((text,), None, [], False) == _reference_row(encoder, (text,), unavailable=[])
    assert writer.key((text,)) == _reference_key(encoder, (text,))
