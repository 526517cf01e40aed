"""The fast envelope writer produces exactly the bytes of the reference envelope encoding."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.capture.encoding.envelope import Change, ColumnFacts, RelationEncoder, TxContext
from cdc.capture.encoding.envelope_writer import EnvelopeWriter, long_bytes
from cdc.capture.encoding.type_mapping import TypeOptions
from cdc.capture.pgoutput import UNCHANGED, Column, Relation
from cdc.core.lsn import Lsn

INT8, INT4, BOOL, TEXT, NUMERIC, TIMESTAMPTZ, JSONB = 20, 23, 16, 25, 1700, 1184, 3802

RELATION = Relation(
    oid=16384,
    namespace="public",
    name="wide table",
    replica_identity="d",
    columns=(
        Column(True, "id", INT8, -1),
        Column(False, "n", INT4, -1),
        Column(False, "flag", BOOL, -1),
        Column(False, "note", TEXT, -1),
        Column(False, "amount", NUMERIC, ((12 << 16) | 2) + 4),
        Column(False, "at", TIMESTAMPTZ, -1),
        Column(False, "doc", JSONB, -1),
    ),
)

ENCODER = RelationEncoder(RELATION, prefix="app", database="shop", types={}, options=TypeOptions())
SCHEMA = parse_schema(ENCODER.value_schema)
# Strict drop-in: no additive fields; NOT NULL columns and constant defaults in the schema.
STRICT = RelationEncoder(
    RELATION,
    prefix="app",
    database="shop",
    types={},
    options=TypeOptions(),
    columns={
        "n": ColumnFacts(not_null=True, default_text="7"),
        "flag": ColumnFacts(not_null=True),
        "note": ColumnFacts(default_text="x"),
        "amount": ColumnFacts(not_null=True, default_text="1.50"),
    },
    additive_fields=False,
    transaction_block=False,
)

int8 = st.integers(-(2**63), 2**63 - 1).map(str)
int4 = st.integers(-(2**31), 2**31 - 1).map(str)
boolean = st.sampled_from(["t", "f"])
text = st.text(max_size=40)
amount = st.decimals(min_value=-(10**10) + 1, max_value=10**10 - 1, places=2, allow_nan=False).map(
    str
)
moment = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda d: f"{d.year:04d}-" + d.strftime("%m-%d %H:%M:%S.%f+00"))
doc = st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(
    lambda d: "{" + ", ".join(f'"{k}": {v}' for k, v in sorted(d.items()) if '"' not in k) + "}"
)


def optional(strategy: st.SearchStrategy[str], *, toast: bool = False) -> Any:
    choices = [st.none(), strategy]
    if toast:
        choices.append(st.just(UNCHANGED))
    return st.one_of(*choices)


rows = st.tuples(
    int8,
    optional(int4),
    optional(boolean),
    optional(text, toast=True),
    optional(amount),
    optional(moment),
    optional(doc, toast=True),
)


def key_only(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return (values[0], *([None] * (len(values) - 1)))


@st.composite
def changes(draw: st.DrawFn) -> Change:
    tx = TxContext(
        xid=draw(st.integers(0, 2**32 - 1)),
        commit_lsn=Lsn(draw(st.integers(0, 2**63 - 1))),
        commit_ts_us=draw(st.integers(0, 2**53)),
        last_commit_lsn=draw(st.one_of(st.none(), st.integers(0, 2**63 - 1).map(Lsn))),
        origin=draw(st.one_of(st.none(), text)),
        origin_lsn=draw(st.one_of(st.none(), st.integers(0, 2**63 - 1))),
    )
    lsn = Lsn(draw(st.integers(0, 2**63 - 1)))
    seq = draw(st.integers(1, 2**31))
    op = draw(st.sampled_from("cudt"))
    if op == "c":
        return Change(op, RELATION.oid, lsn, seq, tx, None, draw(rows))
    if op == "u":
        before = draw(st.one_of(st.none(), rows.map(key_only), rows))
        return Change(op, RELATION.oid, lsn, seq, tx, before, draw(rows))
    if op == "d":
        before = draw(st.one_of(rows.map(key_only), rows))
        return Change(op, RELATION.oid, lsn, seq, tx, before, None)
    return Change(op, RELATION.oid, lsn, seq, tx, None, None)


def reference(
    change: Change, *, table_seq: int, now_ms: int, encoder: RelationEncoder = ENCODER
) -> bytes:
    buf = io.BytesIO()
    schema = parse_schema(encoder.value_schema)
    schemaless_writer(buf, schema, encoder.envelope(change, table_seq=table_seq, now_ms=now_ms))
    return buf.getvalue()


@pytest.mark.parametrize("encoder", [ENCODER, STRICT], ids=["additive", "strict"])
@settings(max_examples=300, deadline=None)
@given(
    st.lists(changes(), min_size=1, max_size=4),
    st.integers(1, 2**31),
    st.integers(0, 2**43),  # ts_ns = now_ms * 10**6 must fit a long
)
def test_written_envelopes_equal_the_reference_encoding(
    encoder: RelationEncoder, batch: list[Change], table_seq: int, now_ms: int
) -> None:
    writer = EnvelopeWriter(encoder, header=b"\x00\x00\x00\x00\x07")
    for change in batch:
        written = writer.write(change, table_seq=table_seq, now_ms=now_ms)
        assert written[:5] == b"\x00\x00\x00\x00\x07"
        expected = reference(change, table_seq=table_seq, now_ms=now_ms, encoder=encoder)
        assert written[5:] == expected


def test_a_key_only_before_image_carries_the_column_defaults_as_debezium_does() -> None:
    tx = TxContext(xid=9, commit_lsn=Lsn(5000), commit_ts_us=1_700_000_000_000_000)
    before = ("1", None, None, None, None, None, None)
    change = Change("d", RELATION.oid, Lsn(4000), 1, tx, before, None, before_is_key=True)
    written = EnvelopeWriter(STRICT, header=b"").write(change, table_seq=1, now_ms=7)
    value = schemaless_reader(io.BytesIO(written), parse_schema(STRICT.value_schema), None)
    assert isinstance(value, dict)
    row = value["before"]
    assert (row["n"], row["flag"], row["note"], str(row["amount"])) == (7, False, "x", "1.50")
    assert row["at"] is None
    assert "unavailable_columns" not in value
    assert "commit_lsn" not in value["source"]
    assert value["transaction"] is None  # Debezium's without provide.transaction.metadata


def test_under_replica_identity_full_an_unchanged_toast_value_comes_from_the_old_row() -> None:
    tx = TxContext(xid=9, commit_lsn=Lsn(5000), commit_ts_us=1_700_000_000_000_000)
    before = ("1", "2", "t", "long text", "3.50", None, '{"a": 1}')
    after = ("1", "3", "t", UNCHANGED, "3.50", None, UNCHANGED)
    change = Change("u", RELATION.oid, Lsn(4000), 1, tx, before, after)
    written = EnvelopeWriter(ENCODER, header=b"").write(change, table_seq=1, now_ms=7)
    value = schemaless_reader(io.BytesIO(written), SCHEMA, None)
    assert isinstance(value, dict)
    assert value["after"]["note"] == "long text"
    assert value["after"]["doc"] == '{"a": 1}'
    assert value["unavailable_columns"] is None


def test_an_unchanged_toast_value_is_listed_and_decodes_as_unavailable() -> None:
    tx = TxContext(xid=9, commit_lsn=Lsn(5000), commit_ts_us=1_700_000_000_000_000)
    after = ("1", "2", "t", UNCHANGED, "3.50", None, UNCHANGED)
    change = Change("u", RELATION.oid, Lsn(4000), 1, tx, None, after)
    written = EnvelopeWriter(ENCODER, header=b"").write(change, table_seq=1, now_ms=7)
    value = schemaless_reader(io.BytesIO(written), SCHEMA, None)
    assert isinstance(value, dict)
    assert value["unavailable_columns"] == ["note", "doc"]
    assert value["source"]["commit_lsn"] == 5000
    assert value["source"]["table"] == "wide table"
    # Debezium's transaction.id is txId:lsn of the event; the commit LSN is source.commit_lsn.
    assert value["transaction"] == {"id": "9:4000", "total_order": 1, "data_collection_order": 1}
    assert value["source"]["sequence"] == '[null,"4000"]'
    assert value["source"]["ts_ns"] == 1_700_000_000_000_000_000


@given(st.integers(-(2**63), 2**63 - 1))
def test_longs_are_zigzag_varints(n: int) -> None:
    buf = io.BytesIO()
    schemaless_writer(buf, "long", n)
    assert long_bytes(n) == buf.getvalue()


ODD = Relation(
    oid=16390,
    namespace="public",
    name="odd",
    replica_identity="d",
    columns=(
        Column(True, "id", INT4, -1),
        Column(False, "area", 603, -1),  # box: Debezium leaves it out
        Column(False, "label", 19, -1),  # name: Debezium writes null
        Column(False, "note", TEXT, -1),
    ),
)


@pytest.mark.parametrize("additive", [False, True], ids=["strict", "additive"])
def test_types_debezium_loses_are_left_out_or_nulled_only_without_additive_fields(
    additive: bool,
) -> None:
    options = TypeOptions()
    encoder = RelationEncoder(
        ODD, prefix="app", database="shop", types={}, options=options, additive_fields=additive
    )
    names = [f["name"] for f in encoder.value_row_schema["fields"]]
    tx = TxContext(xid=9, commit_lsn=Lsn(5000), commit_ts_us=1_700_000_000_000_000)
    change = Change("c", ODD.oid, Lsn(4000), 1, tx, None, ("1", "(1,1),(0,0)", "nämé", "x"))
    written = EnvelopeWriter(encoder, header=b"\x00\x00\x00\x00\x07").write(
        change, table_seq=1, now_ms=1
    )
    after = schemaless_reader(io.BytesIO(written[5:]), parse_schema(encoder.value_schema), None)[
        "after"
    ]  # type: ignore[call-overload,index]
    if additive:
        assert names == ["id", "area", "label", "note"]
        assert after == {"id": 1, "area": "(1,1),(0,0)", "label": "nämé", "note": "x"}
    else:
        assert names == ["id", "label", "note"]
        assert after == {"id": 1, "label": None, "note": "x"}
