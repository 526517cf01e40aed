"""Snapshot bookkeeping without a server: watermarks, visibility, chunk buffers, batches."""

from __future__ import annotations

import io

import pytest
from fastavro import schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.capture.encoding.envelope import OP_READ, Change, TxContext
from cdc.capture.encoding.envelope_writer import EnvelopeWriter
from cdc.capture.pgoutput import UNCHANGED, Column, Relation
from cdc.capture.snapshot.plan import (
    ChangeHistory,
    ChunkBuffer,
    PgSnapshot,
    ProgressKey,
    SnapshotMessageError,
    SnapshotSignal,
    Watermark,
    key_of,
    wants_initial,
)
from cdc.capture.snapshot.request import resolve_tables
from cdc.capture.snapshot.runner import TableShape
from cdc.capture.source_setup import TableName
from cdc.config import parse_config
from cdc.core.errors import ConfigError
from cdc.core.lsn import Lsn
from tests.unit.test_envelope_writer import ENCODER, RELATION, SCHEMA, int8, optional, text

INT4, TEXT = 23, 25


def test_watermarks_and_signals_round_trip_and_reject_foreign_content() -> None:
    mark = Watermark("abc-3", high=True)
    assert Watermark.decode(mark.encode().encode()) == mark
    signal = SnapshotSignal("snapshot-1", ("public.a", "s.b"))
    assert SnapshotSignal.decode(signal.encode().encode()) == signal
    with pytest.raises(SnapshotMessageError):
        Watermark.decode(b"not json")
    with pytest.raises(SnapshotMessageError):
        SnapshotSignal.decode(b'{"type": "something else"}')


def test_progress_key_round_trips_and_ignores_rows_it_did_not_write() -> None:
    key = ProgressKey("incremental", "snapshot-9", ("42", "x"))
    assert ProgressKey.from_json(key.to_json()) == key
    assert ProgressKey.from_json({"id": 5}) is None
    assert ProgressKey.from_json(None) is None
    assert ProgressKey.from_json(ProgressKey("initial", "r", None).to_json()) == ProgressKey(
        "initial", "r", None
    )


def test_snapshot_visibility_follows_xmax_and_the_running_list() -> None:
    snap = PgSnapshot.parse("100:105:101,103")
    assert snap.visible(99)
    assert snap.visible(102)
    assert not snap.visible(101)
    assert not snap.visible(103)
    assert not snap.visible(105)
    assert not snap.visible(2**32 - 1) or snap.full_xid(2**32 - 1) < snap.xmax
    with pytest.raises(ValueError, match="pg_snapshot"):
        PgSnapshot.parse("1:2")


def test_stream_xids_are_placed_in_the_snapshot_epoch_across_wraparound() -> None:
    epoch = 3 << 32
    snap = PgSnapshot(epoch + 5, epoch + 10, frozenset({epoch + 7}))
    assert snap.full_xid(7) == epoch + 7
    assert not snap.visible(7)
    assert snap.visible(2**32 - 2)  # the previous epoch, committed long ago
    assert snap.full_xid(2**32 - 2) == epoch - 2


def test_chunk_buffer_keeps_key_order_and_the_last_key_read_even_when_dropped() -> None:
    rows = [("1", "a"), ("2", "b"), ("3", "c")]
    buf = ChunkBuffer(rows, (0,))
    buf.drop(("2",))
    buf.drop(("9",))  # not in the chunk: nothing happens
    buf.drop(("3",))
    assert list(buf) == [("1", "a")]
    assert buf.read == 3 and buf.dropped == 2
    assert buf.last_key == ("3",)


def test_key_text_is_the_same_for_stream_tuples_and_chunk_rows() -> None:
    assert key_of(("7", b"x", None), (1, 0)) == ("x", "7")
    assert key_of((UNCHANGED, "1"), (0,)) == (None,)


def test_history_conflicts_are_changes_after_the_low_watermark_or_invisible_to_the_read() -> None:
    history = ChangeHistory()
    history.add(101, ("a",))  # before low; still running when the chunk was read
    history.add(99, ("b",))  # before low, visible: the read has its result
    low = history.seq
    history.add(102, ("c",))  # after low, visible: dropped all the same
    snap = PgSnapshot.parse("100:105:101")
    assert set(history.conflicting(after_seq=low, snapshot=snap)) == {("a",), ("c",)}


def test_history_forgets_old_changes() -> None:
    history = ChangeHistory(keep_s=5, cap=2)
    history.add(1, ("a",), now=0.0)
    history.add(2, ("b",), now=10.0)
    history.add(3, ("c",), now=11.0)
    history.add(4, ("d",), now=12.0)
    snap = PgSnapshot.parse("1:1:")  # nothing visible
    assert set(history.conflicting(after_seq=0, snapshot=snap)) == {("c",), ("d",)}


def test_chunk_query_orders_by_the_table_columns_not_their_text_output() -> None:
    rel = Relation(
        1,
        "public",
        "t",
        "d",
        (Column(False, "name", TEXT, -1), Column(True, "id", INT4, -1)),
    )
    shape = TableShape(TableName("public", "t"), rel, (1,), ("integer",))
    query, params = shape.chunk_query(after=("40",), limit=10)
    text = query.as_string(None)
    assert 'ORDER BY "t"."id"' in text
    assert 'WHERE ("t"."id") > (CAST(%s AS integer))' in text
    assert params == ["40"]
    first, none = shape.chunk_query(after=None, limit=5)
    assert "WHERE" not in first.as_string(None) and none == []


snapshot_rows = st.tuples(
    int8,
    optional(st.integers(-(2**31), 2**31 - 1).map(str)),
    optional(st.sampled_from(["t", "f"])),
    optional(text),
    st.none(),
    st.none(),
    st.none(),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(snapshot_rows, min_size=1, max_size=5), st.integers(0, 2**43))  # ts_ns fits
def test_batched_snapshot_values_equal_the_reference_encoding_with_their_snapshot_tag(
    rows: list[tuple[str | None, ...]], now_ms: int
) -> None:
    tx = TxContext(0, Lsn(123_456), 1_700_000_000_000_000)
    writer = EnvelopeWriter(ENCODER, header=b"\x00\x00\x00\x00\x07", snapshot="incremental")
    written = list(writer.write_reads(rows, tx=tx, now_ms=now_ms))
    for n, (row, value) in enumerate(zip(rows, written, strict=True), 1):
        change = Change(OP_READ, RELATION.oid, tx.commit_lsn, n, tx, None, row)
        record = ENCODER.envelope(change, table_seq=n, now_ms=now_ms)
        record["source"]["snapshot"] = "incremental"
        buf = io.BytesIO()
        schemaless_writer(buf, SCHEMA, record)
        assert value == b"\x00\x00\x00\x00\x07" + buf.getvalue()
        assert writer.write(change, table_seq=n, now_ms=now_ms) == value


def test_snapshot_request_names_tables_outside_source_tables() -> None:
    config = parse_config(
        {
            "source": {"dsn": "postgresql://x@h/db", "tables": ["public.a", "public.b"]},
            "kafka": {"bootstrap_servers": "k:9092", "topic_prefix": "p"},
            "registry": {"url": "http://r:8081"},
        }
    )
    assert resolve_tables(config, ("a", "public.b", "public.a")) == ["public.a", "public.b"]
    with pytest.raises(ConfigError, match=r"public\.c: it is not in source\.tables"):
        resolve_tables(config, ("c",))


def test_initial_snapshots_start_with_a_new_slot_or_when_needed_for_tables_never_read() -> None:
    assert wants_initial("initial", created_slot=True, ever_started=True)
    assert not wants_initial("initial", created_slot=False, ever_started=False)
    assert wants_initial("when_needed", created_slot=False, ever_started=False)
    assert not wants_initial("when_needed", created_slot=False, ever_started=True)
    assert not wants_initial("never", created_slot=True, ever_started=False)
