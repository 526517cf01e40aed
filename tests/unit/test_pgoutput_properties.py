"""Properties of the pgoutput decoder, checked with Hypothesis.

A test-side encoder writes any message value in the wire format described in
PostgreSQL's "Logical Replication Message Formats"; decoding must give the
value back, and any damaged input must raise ``DecodeError`` and nothing else.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.capture.pgoutput import (
    PG_EPOCH_OFFSET_US,
    UNCHANGED,
    Begin,
    Column,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputMessage,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleValues,
    TypeInfo,
    Update,
)
from cdc.core.errors import DecodeError
from cdc.core.lsn import Lsn

# --- the test-side encoder ----------------------------------------------------


def _s(text: str) -> bytes:
    return text.encode() + b"\x00"


def _ts(us: int) -> bytes:
    return struct.pack(">q", us - PG_EPOCH_OFFSET_US)


def _xid(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def _tuple(values: TupleValues) -> bytes:
    out = [struct.pack(">H", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        elif isinstance(value, str):
            raw = value.encode()
            out.append(b"t" + struct.pack(">i", len(raw)) + raw)
        else:
            assert isinstance(value, bytes)
            out.append(b"b" + struct.pack(">i", len(value)) + value)
    return b"".join(out)


def encode(msg: PgOutputMessage) -> bytes:
    """The wire form of ``msg`` (the xid of in-stream messages included when set)."""
    if isinstance(msg, Begin):
        return b"B" + struct.pack(">Q", msg.final_lsn) + _ts(msg.commit_ts_us) + _xid(msg.xid)
    if isinstance(msg, Commit):
        lsns = struct.pack(">BQQ", msg.flags, msg.commit_lsn, msg.end_lsn)
        return b"C" + lsns + _ts(msg.commit_ts_us)
    if isinstance(msg, Origin):
        return b"O" + struct.pack(">Q", msg.origin_lsn) + _s(msg.name)
    if isinstance(msg, Relation):
        cols = b"".join(
            struct.pack(">B", c.is_key)
            + _s(c.name)
            + struct.pack(">Ii", c.type_oid, c.type_modifier)
            for c in msg.columns
        )
        head = _xid(msg.xid) + struct.pack(">I", msg.oid) + _s(msg.namespace) + _s(msg.name)
        ident = msg.replica_identity.encode() + struct.pack(">H", len(msg.columns))
        return b"R" + head + ident + cols
    if isinstance(msg, TypeInfo):
        return b"Y" + _xid(msg.xid) + struct.pack(">I", msg.oid) + _s(msg.namespace) + _s(msg.name)
    if isinstance(msg, Insert):
        return b"I" + _xid(msg.xid) + struct.pack(">I", msg.relation_oid) + b"N" + _tuple(msg.new)
    if isinstance(msg, Update):
        old = b""
        if msg.old is not None:
            old = (b"K" if msg.old_is_key else b"O") + _tuple(msg.old)
        head = b"U" + _xid(msg.xid) + struct.pack(">I", msg.relation_oid)
        return head + old + b"N" + _tuple(msg.new)
    if isinstance(msg, Delete):
        kind = b"K" if msg.old_is_key else b"O"
        return b"D" + _xid(msg.xid) + struct.pack(">I", msg.relation_oid) + kind + _tuple(msg.old)
    if isinstance(msg, Truncate):
        options = msg.cascade | (msg.restart_identity << 1)
        oids = b"".join(struct.pack(">I", oid) for oid in msg.relation_oids)
        return b"T" + _xid(msg.xid) + struct.pack(">IB", len(msg.relation_oids), options) + oids
    if isinstance(msg, LogicalMessage):
        head = b"M" + _xid(msg.xid) + struct.pack(">BQ", msg.transactional, msg.lsn)
        return head + _s(msg.prefix) + struct.pack(">i", len(msg.content)) + msg.content
    if isinstance(msg, StreamStart):
        return b"S" + struct.pack(">IB", msg.xid, msg.first_segment)
    if isinstance(msg, StreamStop):
        return b"E"
    if isinstance(msg, StreamCommit):
        body = struct.pack(">IBQQ", msg.xid, msg.flags, msg.commit_lsn, msg.end_lsn)
        return b"c" + body + _ts(msg.commit_ts_us)
    assert isinstance(msg, StreamAbort)
    tail = b""
    if msg.abort_lsn is not None and msg.abort_ts_us is not None:
        tail = struct.pack(">Q", msg.abort_lsn) + _ts(msg.abort_ts_us)
    return b"A" + struct.pack(">II", msg.xid, msg.subxid) + tail


# --- strategies -------------------------------------------------------------------

u8 = st.integers(0, 255)
u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
lsns = st.integers(0, 2**64 - 1).map(Lsn)
timestamps = st.integers(-(2**63), 2**63 - 1).map(lambda wire: wire + PG_EPOCH_OFFSET_US)
names = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=12)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
values = st.one_of(st.none(), st.just(UNCHANGED), texts, st.binary(max_size=20))
tuples = st.lists(values, max_size=12).map(tuple)
columns = st.builds(Column, st.booleans(), names, u32, i32)


def row_messages(xids: st.SearchStrategy[int | None]) -> st.SearchStrategy[PgOutputMessage]:
    """The messages that carry an xid inside a stream block (``None`` outside)."""
    updates = st.one_of(
        st.builds(Update, u32, tuples, st.none(), st.just(False), xids),
        st.builds(Update, u32, tuples, tuples, st.booleans(), xids),
    )
    return st.one_of(
        st.builds(
            Relation,
            u32,
            names,
            names,
            st.sampled_from("dnfi"),
            st.lists(columns, max_size=6).map(tuple),
            xids,
        ),
        st.builds(TypeInfo, u32, names, names, xids),
        st.builds(Insert, u32, tuples, xids),
        updates,
        st.builds(Delete, u32, tuples, st.booleans(), xids),
        st.builds(
            Truncate, st.lists(u32, max_size=5).map(tuple), st.booleans(), st.booleans(), xids
        ),
        st.builds(LogicalMessage, st.booleans(), lsns, names, st.binary(max_size=30), xids),
    )


boundary_messages = st.one_of(
    st.builds(Begin, lsns, timestamps, u32),
    st.builds(Commit, u8, lsns, lsns, timestamps),
    st.builds(Origin, lsns, names),
    st.builds(StreamStart, u32, st.booleans()),
    st.builds(StreamCommit, u32, u8, lsns, lsns, timestamps),
    st.builds(StreamAbort, u32, u32),
    st.builds(StreamAbort, u32, u32, lsns, timestamps),
)


@st.composite
def positioned(draw: st.DrawFn) -> tuple[Decoder, PgOutputMessage]:
    """A message and a decoder in the state where that message may appear."""
    kind = draw(st.sampled_from(["outside", "stream", "boundary", "stop"]))
    if kind == "boundary":
        msg = draw(boundary_messages)
        version = 4 if isinstance(msg, StreamAbort) and msg.abort_lsn is not None else 2
        return Decoder(protocol_version=draw(st.integers(version, 4))), msg
    if kind == "outside":
        return Decoder(protocol_version=draw(st.integers(1, 4))), draw(row_messages(st.none()))
    decoder = Decoder(protocol_version=draw(st.integers(2, 4)))
    decoder.decode(encode(StreamStart(xid=draw(u32), first_segment=draw(st.booleans()))))
    if kind == "stop":
        return decoder, StreamStop()
    return decoder, draw(row_messages(u32))


def outcome(decoder: Decoder, wire: bytes) -> PgOutputMessage | DecodeError:
    """What decoding ``wire`` gives: a message or the ``DecodeError`` it raised."""
    try:
        return decoder.decode(wire)
    except DecodeError as exc:
        return exc


MESSAGE_TYPES: tuple[type, ...] = (Begin, Commit, Origin, Relation, TypeInfo, Insert, Update)
MESSAGE_TYPES += (Delete, Truncate, LogicalMessage, StreamStart, StreamStop, StreamCommit)
MESSAGE_TYPES += (StreamAbort,)


# --- properties -------------------------------------------------------------------


@given(positioned())
def test_decoding_an_encoded_message_gives_the_same_message_back(
    case: tuple[Decoder, PgOutputMessage],
) -> None:
    decoder, msg = case
    assert decoder.decode(encode(msg)) == msg


@given(positioned())
def test_a_relation_message_updates_the_decoders_relation_cache(
    case: tuple[Decoder, PgOutputMessage],
) -> None:
    decoder, msg = case
    decoded = decoder.decode(encode(msg))
    if isinstance(decoded, Relation):
        assert decoder.relations[decoded.oid] == decoded
    else:
        assert decoder.relations == {}


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(positioned(), st.data())
def test_every_truncated_message_raises_decode_error_and_nothing_else(
    case: tuple[Decoder, PgOutputMessage], data: st.DataObject
) -> None:
    decoder, msg = case
    wire = encode(msg)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    if isinstance(msg, StreamAbort) and cut == 9:
        # protocol 4 sends the abort LSN and time only with parallel streaming:
        # the 9-byte form is the other valid encoding, not a truncation
        assert decoder.decode(wire[:cut]) == StreamAbort(xid=msg.xid, subxid=msg.subxid)
        return
    with pytest.raises(DecodeError, match=r"at offset \d+"):
        decoder.decode(wire[:cut])


@given(positioned(), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_after_a_message_are_rejected(
    case: tuple[Decoder, PgOutputMessage], extra: bytes
) -> None:
    decoder, msg = case
    wire = encode(msg) + extra
    if isinstance(msg, StreamAbort) and msg.abort_lsn is None and len(extra) == 16:
        return  # that is the protocol 4 long form
    with pytest.raises(DecodeError, match=r"unexpected trailing bytes|offset"):
        decoder.decode(wire)


@settings(max_examples=300)
@given(positioned(), st.data())
def test_corrupted_messages_decode_or_raise_decode_error_but_never_crash(
    case: tuple[Decoder, PgOutputMessage], data: st.DataObject
) -> None:
    decoder, msg = case
    wire = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        at = data.draw(st.integers(0, len(wire) - 1), label="at")
        wire[at] = data.draw(u8, label="byte")
    result = outcome(decoder, bytes(wire))
    assert isinstance(result, (DecodeError, *MESSAGE_TYPES))
    assert not isinstance(result, DecodeError) or " at offset " in str(result)


@given(st.booleans(), st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_decode_error_but_never_crash(
    streaming: bool, wire: bytes
) -> None:
    decoder = Decoder(protocol_version=4)
    if streaming:
        decoder.decode(b"S" + struct.pack(">IB", 1, 1))
    result = outcome(decoder, wire)
    assert isinstance(result, (DecodeError, *MESSAGE_TYPES))
    assert not isinstance(result, DecodeError) or " at offset " in str(result)
