"""Snapshot bookkeeping without I/O: watermarks, signals, progress records, chunk buffers.

The DBLog method (``cdc.capture.snapshot.runner``) reads a table in primary-key chunks between a low
and a high watermark written into the replication stream. This module holds the parts
that need no server, so that they are unit-tested on their own:

- ``Watermark`` and ``SnapshotSignal``: the JSON contents of our logical messages
  (prefixes ``cdcsync.watermark`` and ``cdcsync.signal``, distinct from heartbeats);
- ``ProgressKey``: what ``snapshot_progress.last_key`` holds (kind, request id, the
  primary-key text of the last row read);
- ``PgSnapshot``: a ``pg_current_snapshot()`` value and the visibility of a 32-bit xid
  from the stream in it;
- ``ChunkBuffer``: the rows of one chunk keyed by their primary-key text, from which
  keys changed in the stream are dropped;
- ``ChangeHistory``: the recent (xid, key) changes of the table being read.

Invariants:
- Keys are compared in their text form (PostgreSQL's output functions, the same in the
  stream and in the chunk reads since both sessions run with TimeZone UTC).
- A chunk row is published only if no transaction that changed its key is ordered
  before the high watermark and after (or invisible to) the chunk's read: the buffer
  drops every key the stream shows in that window (``ChangeHistory.conflicting``).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from cdc.capture.pgoutput import UNCHANGED, TupleValues, Value
from cdc.core.signals import RereadSignal, SignalError

WATERMARK_PREFIX: Final = "cdcsync.watermark"

SnapshotKind = Literal["initial", "incremental"]
Key = tuple[str | None, ...]

# source.snapshot values of op=r events, as Debezium writes them.
SOURCE_SNAPSHOT: Final[dict[str, str]] = {"initial": "true", "incremental": "incremental"}

_XID_SPAN: Final = 1 << 32


def wants_initial(mode: str, *, created_slot: bool, ever_started: bool) -> bool:
    """Whether capture starts an initial snapshot of a table at start-up.

    ``initial``: when capture created the slot (the stream starts now; the rows that exist
    must be read). ``when_needed``: that, or when the table was never snapshotted (no
    ``snapshot_progress`` row: e.g. added to ``source.tables`` later). ``never``: no.
    """
    if mode == "never":
        return False
    return created_slot or (mode == "when_needed" and not ever_started)


class SnapshotMessageError(ValueError):
    """A watermark or signal message whose content is not what we write."""


def _load(content: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        data = json.loads(bytes(content).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotMessageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SnapshotMessageError(f"{what} is not a JSON object")
    return data


@dataclass(frozen=True, slots=True)
class Watermark:
    """A low or high watermark of one chunk: ``chunk`` is unique per capture session."""

    chunk: str
    high: bool

    def encode(self) -> str:
        return json.dumps({"chunk": self.chunk, "mark": "high" if self.high else "low"})

    @classmethod
    def decode(cls, content: bytes | memoryview) -> Watermark:
        data = _load(content, "watermark")
        chunk, mark = data.get("chunk"), data.get("mark")
        if not isinstance(chunk, str) or mark not in ("low", "high"):
            raise SnapshotMessageError(f"watermark {data!r} lacks chunk or mark")
        return cls(chunk, mark == "high")


@dataclass(frozen=True, slots=True)
class SnapshotSignal:
    """``cdcsync snapshot``'s request: read ``tables`` (``schema.table``) under ``request``."""

    request: str
    tables: tuple[str, ...]

    def encode(self) -> str:
        return json.dumps({"type": "snapshot", "request": self.request, "tables": self.tables})

    @classmethod
    def decode(cls, content: bytes | memoryview) -> SnapshotSignal:
        data = _load(content, "signal")
        request, tables = data.get("request"), data.get("tables")
        if (
            data.get("type") != "snapshot"
            or not isinstance(request, str)
            or not isinstance(tables, list)
            or not all(isinstance(t, str) for t in tables)
        ):
            raise SnapshotMessageError(f"signal {data!r} is not a snapshot request")
        return cls(request, tuple(tables))


def decode_signal(content: bytes | memoryview) -> SnapshotSignal | RereadSignal:
    """A signal message: a snapshot request or a re-read request."""
    data = _load(content, "signal")
    if data.get("type") == "reread":
        try:
            return RereadSignal.decode(data)
        except SignalError as exc:
            raise SnapshotMessageError(str(exc)) from None
    return SnapshotSignal.decode(content)


@dataclass(frozen=True, slots=True)
class ProgressKey:
    """The ``last_key`` column of ``snapshot_progress``: which request, how far."""

    kind: SnapshotKind
    request: str
    key: Key | None  # primary-key text of the last row read; None: not started

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "request": self.request,
            "key": None if self.key is None else list(self.key),
        }

    @classmethod
    def from_json(cls, data: Any) -> ProgressKey | None:
        """The record, or None when ``data`` is not one of ours (never started, foreign)."""
        if not isinstance(data, dict):
            return None
        kind, request, key = data.get("kind"), data.get("request"), data.get("key")
        if kind not in ("initial", "incremental") or not isinstance(request, str):
            return None
        if key is not None and not isinstance(key, list):
            return None
        return cls(kind, request, None if key is None else tuple(key))


@dataclass(frozen=True, slots=True)
class PgSnapshot:
    """A ``pg_current_snapshot()``: transactions at or above ``xmax`` or in ``xip`` are
    invisible (still running when it was taken); the values are 64-bit xids."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        """Parse PostgreSQL's ``"xmin:xmax:xip1,xip2"`` text form."""
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"not a pg_snapshot: {text!r}")
        try:
            xip = frozenset(int(x) for x in parts[2].split(",") if x)
            return cls(int(parts[0]), int(parts[1]), xip)
        except ValueError:
            raise ValueError(f"not a pg_snapshot: {text!r}") from None

    def full_xid(self, xid: int) -> int:
        """The 64-bit xid of the stream's 32-bit ``xid``, the one nearest ``xmax``."""
        epoch_base = self.xmax & ~(_XID_SPAN - 1)
        full = epoch_base | (xid & (_XID_SPAN - 1))
        if full > self.xmax + _XID_SPAN // 2:
            full -= _XID_SPAN
        elif full < self.xmax - _XID_SPAN // 2:
            full += _XID_SPAN
        return full

    def visible(self, xid: int) -> bool:
        """Whether the committed transaction ``xid`` (32-bit) is visible in this snapshot."""
        full = self.full_xid(xid)
        return full < self.xmax and full not in self.xip


def key_of(values: TupleValues, positions: tuple[int, ...]) -> Key:
    """The primary-key text of a tuple (a stream tuple or a chunk row)."""
    out: list[str | None] = []
    for i in positions:
        v: Value = values[i]
        if v is None or v is UNCHANGED:
            out.append(None)
        elif isinstance(v, str):
            out.append(v)
        else:
            out.append(bytes(v).decode())  # type: ignore[arg-type]
    return tuple(out)


class ChunkBuffer:
    """One chunk's rows in primary-key order; ``drop`` removes a key changed meanwhile."""

    def __init__(self, rows: Iterable[TupleValues], positions: tuple[int, ...]) -> None:
        self._rows: dict[Key, TupleValues] = {}
        last: Key | None = None
        count = 0
        for row in rows:
            last = key_of(row, positions)
            self._rows[last] = row
            count += 1
        self.read = count
        self.last_key = last
        self.dropped = 0

    def drop(self, key: Key) -> bool:
        """Remove ``key``'s row; whether the chunk held it."""
        if self._rows.pop(key, None) is not None:
            self.dropped += 1
            return True
        return False

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[TupleValues]:
        return iter(self._rows.values())


@dataclass(frozen=True, slots=True)
class _Seen:
    seq: int
    at: float
    xid: int
    key: Key
    toast: bool  # the change left an unchanged TOAST value out (a placeholder downstream)


class ChangeHistory:
    """The recent changes of the table being read, for the chunk's conflict check.

    Kept for ``keep_s`` seconds (at most ``cap`` entries): a transaction whose commit
    record precedes the low watermark can still be invisible to the chunk's snapshot when
    its backend has not yet marked it committed; its key must be dropped too.
    """

    def __init__(self, *, keep_s: float = 10.0, cap: int = 500_000) -> None:
        self._items: deque[_Seen] = deque()
        self._keep_s = keep_s
        self._cap = cap
        self.seq = 0

    def add(self, xid: int, key: Key, *, toast: bool = False, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        self.seq += 1
        items = self._items
        items.append(_Seen(self.seq, at, xid, key, toast))
        while items and (len(items) > self._cap or items[0].at < at - self._keep_s):
            items.popleft()

    def conflicting(self, *, after_seq: int, snapshot: PgSnapshot) -> dict[Key, bool]:
        """Keys changed after the low watermark (``seq > after_seq``), or by a transaction
        the chunk's snapshot did not see; each with whether one of its changes left a TOAST
        value out."""
        out: dict[Key, bool] = {}
        for s in self._items:
            if s.seq > after_seq or not snapshot.visible(s.xid):
                out[s.key] = out.get(s.key, False) or s.toast
        return out

    def clear(self) -> None:
        self._items.clear()
