"""Decoding of PostgreSQL's ``pgoutput`` logical replication messages (pure, no I/O).

Role: turn the payload of one XLogData message into one typed, immutable
message value (``Begin``, ``Insert``, ``StreamCommit``...). The decoder never
touches a socket and never runs a query; the only state it keeps is what the
protocol itself requires to split the byte stream:

* whether it is inside a stream block (between ``StreamStart`` and
  ``StreamStop``), because there the data messages carry the xid of their
  (sub)transaction right after the type byte;
* the ``relations`` (and ``types``) announced so far, kept up to date for the
  caller's benefit. Tuple data is self-describing, so Insert/Update/Delete are
  decoded without looking a relation up: an unknown relation oid is not a
  decoding error, the caller resolves it.

Invariants:

* ``decode`` either returns a message or raises ``cdc.core.errors.DecodeError``
  whose text names the message type and the byte offset of the problem;
  malformed or truncated input never escapes as ``IndexError``,
  ``struct.error`` or ``UnicodeDecodeError``. Trailing bytes are an error too.
* Column values keep the wire's distinction: ``'t'`` -> ``str`` (text form,
  UTF-8), ``'b'`` -> ``bytes``, ``'n'`` -> ``None``, ``'u'`` -> ``UNCHANGED``.
  ``UNCHANGED`` (an unchanged TOASTed value) is a marker, never a value.
* Timestamps are microseconds since the Unix epoch (the wire counts from
  2000-01-01); LSNs are ``cdc.core.lsn.Lsn``.

Protocol versions 1 to 4 are understood (PostgreSQL 14-17 ``proto_version``):
streaming messages need version 2 or later. Version 4's Stream Abort carries
the abort LSN and timestamp only when the subscriber asked for
``streaming 'parallel'``; both forms are accepted and told apart by length.
Two-phase commit messages (Begin Prepare, Prepare, Commit Prepared, Rollback
Prepared, Stream Prepare) are not supported: they raise a ``DecodeError``
that says so. Do not enable ``two_phase`` on the slot.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import ClassVar, Final, TypeAlias

from cdc.core.errors import DecodeError
from cdc.core.lsn import Lsn

PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000
"""Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's timestamp epoch)."""


class Unchanged:
    """The type of ``UNCHANGED``: an unchanged TOASTed column the server did not send.

    It is not a value: a consumer must leave the column as it is rather than
    write anything. There is exactly one instance.
    """

    __slots__ = ()
    _instance: ClassVar[Unchanged | None] = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __reduce__(self) -> str:
        return "UNCHANGED"

    def __copy__(self) -> Unchanged:
        return self

    def __deepcopy__(self, memo: object) -> Unchanged:
        return self


UNCHANGED: Final[Unchanged] = Unchanged()

Value: TypeAlias = str | bytes | Unchanged | None
TupleValues: TypeAlias = tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a ``Relation``; ``is_key`` marks replica identity columns."""

    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Relation:
    """A table's shape ('R'); sent before its first change and after each DDL."""

    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Begin:
    """Start of a (non-streamed) transaction ('B')."""

    final_lsn: Lsn
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """End of a (non-streamed) transaction ('C')."""

    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Replication origin of the current transaction ('O')."""

    origin_lsn: Lsn
    name: str


@dataclass(frozen=True, slots=True)
class TypeInfo:
    """A non-builtin data type used by a following Relation ('Y')."""

    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(slots=True)  # not frozen: built once per change, and frozen costs 2x
class Insert:
    """A new row ('I')."""

    relation_oid: int
    new: TupleValues
    xid: int | None = None


@dataclass(slots=True)  # not frozen: built once per change, and frozen costs 2x
class Update:
    """A changed row ('U').

    ``old`` is the key tuple ('K': identity columns, other positions ``None``;
    ``old_is_key`` true) or the full old row ('O': REPLICA IDENTITY FULL), or
    ``None`` when the server sent no old tuple (the key did not change).
    """

    relation_oid: int
    new: TupleValues
    old: TupleValues | None
    old_is_key: bool
    xid: int | None = None


@dataclass(slots=True)  # not frozen: built once per change, and frozen costs 2x
class Delete:
    """A removed row ('D'); ``old`` as in ``Update`` ('K' or 'O')."""

    relation_oid: int
    old: TupleValues
    old_is_key: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    """TRUNCATE of one or more tables ('T')."""

    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` ('M')."""

    transactional: bool
    lsn: Lsn
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Start of a block of a large in-progress transaction ('S')."""

    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    """End of a stream block ('E')."""


@dataclass(frozen=True, slots=True)
class StreamCommit:
    """Commit of a streamed transaction ('c')."""

    xid: int
    flags: int
    commit_lsn: Lsn
    end_lsn: Lsn
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    """Abort of a streamed transaction or one of its subtransactions ('A').

    When ``subxid == xid`` the whole transaction is aborted, otherwise only
    the changes of that subtransaction. ``abort_lsn``/``abort_ts_us`` are
    sent by protocol 4 with parallel streaming only.
    """

    xid: int
    subxid: int
    abort_lsn: Lsn | None = None
    abort_ts_us: int | None = None


PgOutputMessage: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)

# --- wire helpers ---------------------------------------------------------

_U8 = Struct(">B")
_U16 = Struct(">H")
_I32 = Struct(">i")
_U32 = Struct(">I")
_I64 = Struct(">q")
_U64 = Struct(">Q")
_OID_TAG = Struct(">IB")  # relation oid + tuple marker byte
_XID_OID_TAG = Struct(">IIB")  # streamed: xid + relation oid + tuple marker byte

_T, _N, _U, _B = 116, 110, 117, 98  # 't' 'n' 'u' 'b'
_NEW, _KEY, _OLD = 78, 75, 79  # 'N' 'K' 'O'

_NAME_TEXT: Final = (
    "Begin|Commit|Origin|Relation|Type|Insert|Update|Delete|Truncate|Message|Stream Start"
    "|Stream Stop|Stream Commit|Stream Abort|Begin Prepare|Prepare|Commit Prepared"
    "|Rollback Prepared|Stream Prepare"
)
_NAMES: Final = dict(zip(b"BCORYIUDTMSEcAbPKrp", _NAME_TEXT.split("|"), strict=True))
_TWO_PHASE: Final = frozenset(b"bPKrp")
_REPLICA_IDENTITIES: Final = frozenset("dnfi")


def _what(data: bytes) -> str:
    code = data[0]
    return f"{_NAMES.get(code, 'unknown')} ({chr(code)!r})"


def _error(data: bytes, offset: int, problem: str) -> DecodeError:
    return DecodeError(
        f"pgoutput {_what(data)} message: {problem} at offset {offset}"
        f" (message is {len(data)} bytes)"
    )


class _Cursor:
    """Bounds-checked sequential reads for the less frequent message types."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def _unpack(self, fmt: Struct, what: str) -> int:
        pos = self.pos
        if pos + fmt.size > len(self.data):
            raise _error(self.data, pos, f"truncated {what}")
        self.pos = pos + fmt.size
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def u8(self, what: str) -> int:
        return self._unpack(_U8, what)

    def u16(self, what: str) -> int:
        return self._unpack(_U16, what)

    def i32(self, what: str) -> int:
        return self._unpack(_I32, what)

    def u32(self, what: str) -> int:
        return self._unpack(_U32, what)

    def lsn(self, what: str) -> Lsn:
        return Lsn(self._unpack(_U64, what))

    def timestamp(self, what: str) -> int:
        return self._unpack(_I64, what) + PG_EPOCH_OFFSET_US

    def take(self, size: int, what: str) -> bytes:
        pos = self.pos
        if size < 0:
            raise _error(self.data, pos, f"negative length {size} for {what}")
        end = pos + size
        if end > len(self.data):
            raise _error(self.data, pos, f"truncated {what}")
        self.pos = end
        return self.data[pos:end]

    def cstring(self, what: str) -> str:
        data, pos = self.data, self.pos
        end = data.find(b"\x00", pos)
        if end < 0:
            raise _error(data, pos, f"unterminated string for {what}")
        try:
            text = data[pos:end].decode()
        except UnicodeDecodeError as exc:
            raise _error(data, pos + exc.start, f"invalid UTF-8 in {what}") from None
        self.pos = end + 1
        return text

    def finish(self) -> None:
        if self.pos != len(self.data):
            extra = len(self.data) - self.pos
            raise _error(self.data, self.pos, f"{extra} unexpected trailing bytes")


def _read_tuple(data: bytes, pos: int) -> tuple[TupleValues, int]:
    """Decode one TupleData starting at ``pos``; return it and the offset after it.

    This is the hot path: one ``unpack_from`` per text/binary column, slices
    of ``bytes`` and ``bytes.decode`` for text values, no per-column calls.
    """
    size = len(data)
    if pos + 2 > size:
        raise _error(data, pos, "truncated tuple column count")
    ncols = (data[pos] << 8) | data[pos + 1]
    pos += 2
    values: list[Value] = [None] * ncols
    unpack = _I32.unpack_from
    index = 0
    try:
        while index < ncols:
            tag = data[pos]
            if tag == _T:
                start = pos + 5
                pos = start + unpack(data, pos + 1)[0]
                if pos > size or pos < start:
                    pos = start - 5
                    raise _error(data, pos, f"column {index}: bad text value length")
                values[index] = data[start:pos].decode()
            elif tag == _N:
                pos += 1
            elif tag == _U:
                values[index] = UNCHANGED
                pos += 1
            elif tag == _B:
                start = pos + 5
                pos = start + unpack(data, pos + 1)[0]
                if pos > size or pos < start:
                    pos = start - 5
                    raise _error(data, pos, f"column {index}: bad binary value length")
                values[index] = data[start:pos]
            else:
                raise _error(data, pos, f"column {index}: unknown tuple value kind {tag:#04x}")
            index += 1
    except IndexError:
        raise _error(data, pos, f"column {index}: truncated tuple data") from None
    except struct.error:
        raise _error(data, pos, f"column {index}: truncated value length") from None
    except UnicodeDecodeError as exc:
        raise _error(data, start + exc.start, f"column {index}: invalid UTF-8 text") from None
    return tuple(values), pos


class Decoder:
    """Decodes one pgoutput message at a time, tracking stream blocks and relations.

    ``relations`` maps relation oid to the latest ``Relation`` seen, ``types``
    type oid to the latest ``TypeInfo``; both are public and read by the
    runtime. A Relation sent inside a stream block (``xid`` set) replaces the
    entry at once, even though its transaction may still abort; the server
    sends a fresh Relation before the next change that needs another shape.
    Call ``reset()`` when a new START_REPLICATION begins on the same decoder
    (the server re-sends Relation messages then).
    """

    __slots__ = ("_handlers", "_stream_xid", "protocol_version", "relations", "types")

    def __init__(self, *, protocol_version: int = 2) -> None:
        if not 1 <= protocol_version <= 4:
            raise ValueError(f"unsupported pgoutput protocol version {protocol_version} (1..4)")
        self.protocol_version = protocol_version
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, TypeInfo] = {}
        self._stream_xid: int | None = None
        self._handlers: dict[int, Callable[[bytes], PgOutputMessage]] = {
            ord("B"): self._begin,
            ord("C"): self._commit,
            ord("O"): self._origin,
            ord("R"): self._relation,
            ord("Y"): self._type,
            ord("I"): self._insert,
            ord("U"): self._update,
            ord("D"): self._delete,
            ord("T"): self._truncate,
            ord("M"): self._message,
        }
        streaming: list[Callable[[bytes], PgOutputMessage]] = [
            self._stream_start,
            self._stream_stop,
            self._stream_commit,
            self._stream_abort,
        ]
        if protocol_version < 2:
            streaming = [self._needs_streaming] * 4
        self._handlers.update(zip(b"SEcA", streaming, strict=True))

    @property
    def in_stream(self) -> bool:
        """True between a StreamStart and its StreamStop."""
        return self._stream_xid is not None

    def reset(self) -> None:
        """Forget stream state, relations and types (a new replication session)."""
        self._stream_xid = None
        self.relations.clear()
        self.types.clear()

    def decode(self, data: bytes | memoryview) -> PgOutputMessage:
        """Decode one pgoutput message (the payload of an XLogData message)."""
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            raise DecodeError("pgoutput message: empty message at offset 0")
        handler = self._handlers.get(data[0])
        if handler is None:
            code = data[0]
            if code in _TWO_PHASE:
                raise DecodeError(
                    f"pgoutput {_what(data)} message at offset 0: two-phase commit messages"
                    " are not supported; create the slot without two_phase"
                )
            raise DecodeError(f"pgoutput message: unknown message type {chr(code)!r} at offset 0")
        return handler(data)

    # --- transaction boundaries -------------------------------------------

    def _needs_streaming(self, data: bytes) -> PgOutputMessage:
        raise _error(data, 0, "streaming messages need protocol version 2 or later")

    def _not_in_stream(self, data: bytes) -> None:
        if self._stream_xid is not None:
            raise _error(data, 0, f"unexpected inside the stream block of xid {self._stream_xid}")

    def _begin(self, data: bytes) -> Begin:
        self._not_in_stream(data)
        cur = _Cursor(data, 1)
        msg = Begin(
            final_lsn=cur.lsn("final LSN"),
            commit_ts_us=cur.timestamp("commit timestamp"),
            xid=cur.u32("xid"),
        )
        cur.finish()
        return msg

    def _commit(self, data: bytes) -> Commit:
        self._not_in_stream(data)
        cur = _Cursor(data, 1)
        msg = Commit(
            flags=cur.u8("flags"),
            commit_lsn=cur.lsn("commit LSN"),
            end_lsn=cur.lsn("end LSN"),
            commit_ts_us=cur.timestamp("commit timestamp"),
        )
        cur.finish()
        return msg

    def _origin(self, data: bytes) -> Origin:
        cur = _Cursor(data, 1)
        msg = Origin(origin_lsn=cur.lsn("origin LSN"), name=cur.cstring("origin name"))
        cur.finish()
        return msg

    def _stream_start(self, data: bytes) -> StreamStart:
        self._not_in_stream(data)
        cur = _Cursor(data, 1)
        xid = cur.u32("xid")
        first = cur.u8("first-segment flag")
        cur.finish()
        if first > 1:
            raise _error(data, 5, f"first-segment flag is {first}, not 0 or 1")
        self._stream_xid = xid
        return StreamStart(xid=xid, first_segment=first == 1)

    def _stream_stop(self, data: bytes) -> StreamStop:
        if self._stream_xid is None:
            raise _error(data, 0, "Stream Stop outside a stream block")
        _Cursor(data, 1).finish()
        self._stream_xid = None
        return StreamStop()

    def _stream_commit(self, data: bytes) -> StreamCommit:
        self._not_in_stream(data)
        cur = _Cursor(data, 1)
        msg = StreamCommit(
            xid=cur.u32("xid"),
            flags=cur.u8("flags"),
            commit_lsn=cur.lsn("commit LSN"),
            end_lsn=cur.lsn("end LSN"),
            commit_ts_us=cur.timestamp("commit timestamp"),
        )
        cur.finish()
        return msg

    def _stream_abort(self, data: bytes) -> StreamAbort:
        self._not_in_stream(data)
        cur = _Cursor(data, 1)
        xid = cur.u32("xid")
        subxid = cur.u32("subtransaction xid")
        if self.protocol_version >= 4 and len(data) > cur.pos:
            msg = StreamAbort(
                xid=xid,
                subxid=subxid,
                abort_lsn=cur.lsn("abort LSN"),
                abort_ts_us=cur.timestamp("abort timestamp"),
            )
        else:
            msg = StreamAbort(xid=xid, subxid=subxid)
        cur.finish()
        return msg

    # --- catalog messages -------------------------------------------------

    def _xid(self, cur: _Cursor) -> int | None:
        return None if self._stream_xid is None else cur.u32("xid")

    def _relation(self, data: bytes) -> Relation:
        cur = _Cursor(data, 1)
        xid = self._xid(cur)
        oid = cur.u32("relation oid")
        namespace = cur.cstring("namespace")
        name = cur.cstring("relation name")
        identity_at = cur.pos
        identity = chr(cur.u8("replica identity"))
        if identity not in _REPLICA_IDENTITIES:
            raise _error(data, identity_at, f"unknown replica identity {identity!r}")
        ncols = cur.u16("column count")
        columns = []
        for index in range(ncols):
            flags = cur.u8(f"column {index} flags")
            columns.append(
                Column(
                    is_key=bool(flags & 1),
                    name=cur.cstring(f"column {index} name"),
                    type_oid=cur.u32(f"column {index} type oid"),
                    type_modifier=cur.i32(f"column {index} type modifier"),
                )
            )
        cur.finish()
        relation = Relation(
            oid=oid,
            namespace=namespace,
            name=name,
            replica_identity=identity,
            columns=tuple(columns),
            xid=xid,
        )
        self.relations[oid] = relation
        return relation

    def _type(self, data: bytes) -> TypeInfo:
        cur = _Cursor(data, 1)
        xid = self._xid(cur)
        info = TypeInfo(
            oid=cur.u32("type oid"),
            namespace=cur.cstring("namespace"),
            name=cur.cstring("type name"),
            xid=xid,
        )
        cur.finish()
        self.types[info.oid] = info
        return info

    # --- row changes (hot path) ---------------------------------------------

    def _head(self, data: bytes) -> tuple[int | None, int, int, int]:
        """Read [xid] + relation oid + the first tuple marker: (xid, oid, marker, offset)."""
        try:
            if self._stream_xid is None:
                oid, tag = _OID_TAG.unpack_from(data, 1)
                return None, oid, tag, 6
            xid, oid, tag = _XID_OID_TAG.unpack_from(data, 1)
        except struct.error:
            raise _error(data, 1, "truncated header") from None
        return xid, oid, tag, 10

    def _insert(self, data: bytes) -> Insert:
        xid, oid, tag, pos = self._head(data)
        if tag != _NEW:
            raise _error(data, pos - 1, f"expected 'N' before the new tuple, got {tag:#04x}")
        new, pos = _read_tuple(data, pos)
        if pos != len(data):
            raise _error(data, pos, f"{len(data) - pos} unexpected trailing bytes")
        return Insert(oid, new, xid)

    def _update(self, data: bytes) -> Update:
        xid, oid, tag, pos = self._head(data)
        old: TupleValues | None = None
        if tag in (_KEY, _OLD):
            old, pos = _read_tuple(data, pos)
            if pos >= len(data):
                raise _error(data, pos, "truncated: missing the new tuple")
            marker = data[pos]
            pos += 1
            if marker != _NEW:
                raise _error(data, pos - 1, f"expected 'N' before the new tuple, got {marker:#04x}")
        elif tag != _NEW:
            raise _error(data, pos - 1, f"expected 'K', 'O' or 'N', got {tag:#04x}")
        new, pos = _read_tuple(data, pos)
        if pos != len(data):
            raise _error(data, pos, f"{len(data) - pos} unexpected trailing bytes")
        return Update(oid, new, old, tag == _KEY, xid)

    def _delete(self, data: bytes) -> Delete:
        xid, oid, tag, pos = self._head(data)
        if tag not in (_KEY, _OLD):
            raise _error(data, pos - 1, f"expected 'K' or 'O' before the old tuple, got {tag:#04x}")
        old, pos = _read_tuple(data, pos)
        if pos != len(data):
            raise _error(data, pos, f"{len(data) - pos} unexpected trailing bytes")
        return Delete(oid, old, tag == _KEY, xid)

    def _truncate(self, data: bytes) -> Truncate:
        cur = _Cursor(data, 1)
        xid = self._xid(cur)
        count = cur.u32("relation count")
        options = cur.u8("options")
        if count * 4 > len(data) - cur.pos:
            raise _error(data, cur.pos, f"truncated list of {count} relation oids")
        oids = tuple(cur.u32("relation oid") for _ in range(count))
        cur.finish()
        return Truncate(
            relation_oids=oids,
            cascade=bool(options & 1),
            restart_identity=bool(options & 2),
            xid=xid,
        )

    def _message(self, data: bytes) -> LogicalMessage:
        cur = _Cursor(data, 1)
        xid = self._xid(cur)
        flags = cur.u8("flags")
        lsn = cur.lsn("message LSN")
        prefix = cur.cstring("prefix")
        size = cur.i32("content length")
        content = cur.take(size, "content")
        cur.finish()
        return LogicalMessage(
            transactional=bool(flags & 1), lsn=lsn, prefix=prefix, content=content, xid=xid
        )
