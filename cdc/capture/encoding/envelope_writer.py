"""The capture hot path's envelope encoder: Avro binary assembled without the dict.

``RelationEncoder.envelope`` builds the value as a dict, which a generic Avro writer
then walks, resolving every union branch by inspecting the datum: that is most of
capture's CPU. The envelope's shape is ours and fixed, so ``EnvelopeWriter`` writes its
binary form directly: union branch indexes and the ``source``/``transaction`` blocks
are assembled from bytes precomputed per table, per transaction and per batch; only
the row records (``before``/``after``) go through fastavro, with their own schema.

Invariant: for every change, ``EnvelopeWriter.write`` returns exactly the bytes that a
generic writer produces for ``RelationEncoder.envelope`` under the registered value
schema (the unit tests compare both on generated changes), so consumers cannot tell
the paths apart.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any, Final

from fastavro import parse_schema, schemaless_writer

from cdc import __version__
from cdc.capture.encoding.envelope import (
    OP_READ,
    Change,
    RelationEncoder,
    TxContext,
    sequence_text,
)
from cdc.capture.encoding.row_writer import RowWriter, long_bytes, string_bytes
from cdc.capture.pgoutput import TupleValues
from schema_registry.serde import RecordEncodeError

__all__ = ["EnvelopeWriter", "long_bytes", "string_bytes"]

_NULL: Final = b"\x00"
_BRANCH1: Final = b"\x02"  # union branch index 1, zigzag-encoded
# What a value that does not fit its schema raises in fastavro and in the generated writers.
_MISFITS: Final = (TypeError, ValueError, KeyError, AttributeError, OverflowError)


class EnvelopeWriter:
    """Writes one relation's envelopes (value side) as framed Avro bytes."""

    def __init__(self, encoder: RelationEncoder, *, header: bytes, snapshot: str = "false") -> None:
        """``snapshot``: the ``source.snapshot`` value of every envelope written (``"false"``
        for streamed changes; ``"true"``/``"incremental"`` for snapshot reads)."""
        self._encoder = encoder
        self._header = header
        self._row = parse_schema(encoder.value_row_schema)
        self._fast = RowWriter.build(encoder)
        self._buf = io.BytesIO()
        rel = encoder.relation
        self._head = (
            string_bytes(__version__) + string_bytes("postgresql") + string_bytes(encoder.prefix)
        )
        db = encoder.database
        # snapshot: branch 0 of [enum-string, null] holding its value; then db.
        self._after_ts = _NULL + string_bytes(snapshot) + string_bytes(db)
        self._table = string_bytes(rel.namespace) + string_bytes(rel.name)
        self._ops: dict[str, bytes] = {}
        self._tx: Any = None
        self._tx_head = b""
        self._tx_mid = b""
        self._tx_tail = b""
        self._tx_id = ""
        self._sequence_head = ""
        self._last_commit: int | None = None
        self._additive = encoder.additive_fields
        self._tx_block = encoder.transaction_block
        self._now_ms = -1
        self._now = b""

    @property
    def generated(self) -> bool:
        """Whether rows are written by the relation's generated writer (else fastavro)."""
        return self._fast is not None

    def _misfit(self, exc: Exception) -> RecordEncodeError:
        rel = self._encoder.relation
        return RecordEncodeError(
            f"a row of {rel.namespace}.{rel.name} does not fit its schema: {exc}"
        )

    def _row_bytes(self, record: dict[str, Any]) -> bytes:
        buf = self._buf
        buf.seek(0)
        buf.truncate()
        try:
            schemaless_writer(buf, self._row, record)
        except _MISFITS as exc:
            raise self._misfit(exc) from exc
        return buf.getvalue()

    def _row_value(
        self,
        values: TupleValues,
        *,
        old: TupleValues | None = None,
        unavailable: list[str] | None,
        key_only: bool = False,
    ) -> bytes:
        """One row record's bytes (``encoder.row_record``'s, written)."""
        fast = self._fast
        if fast is None:
            record = self._encoder.row_record(
                values, unavailable=unavailable, old=old, key_only=key_only
            )
            return self._row_bytes(record)
        try:
            return fast.row(values, old, unavailable, key_only)
        except _MISFITS as exc:
            raise self._misfit(exc) from exc

    def _rows(self, change: Change, unavailable: list[str]) -> tuple[bytes, bytes]:
        """The ``before`` and ``after`` union values of ``change``, as bytes (as
        ``encoder.rows`` builds them)."""
        prior = change.before
        before = _NULL
        if prior is not None:
            before = _BRANCH1 + self._row_value(
                prior, unavailable=None, key_only=change.before_is_key
            )
        if change.after is None:
            return before, _NULL
        old = None if prior is None or change.before_is_key else prior
        return before, _BRANCH1 + self._row_value(change.after, old=old, unavailable=unavailable)

    @property
    def writes_keys(self) -> bool:
        """Whether ``key_bytes`` writes keys (a generated key writer exists)."""
        return self._fast is not None and self._fast.key is not None

    def key_bytes(self, values: TupleValues) -> bytes:
        """The key record of ``values`` as Avro bytes (unframed); needs ``writes_keys``."""
        fast = self._fast
        assert fast is not None and fast.key is not None
        try:
            return fast.key(values)
        except _MISFITS as exc:
            raise self._misfit(exc) from exc

    def _set_tx(self, change: Change) -> None:
        tx = change.tx
        self._tx = tx
        commit = int(tx.commit_lsn)
        last = tx.last_commit_lsn
        self._last_commit = None if last is None else int(last)
        ts_us = tx.commit_ts_us
        # ts_ms, snapshot, db; then the union branch of source.sequence
        self._tx_head = self._head + long_bytes(ts_us // 1000) + self._after_ts + _BRANCH1
        self._sequence_head = sequence_text(self._last_commit, 0)[:-3]  # '[..,"' before the LSN
        # ts_us, ts_ns, schema, table, txId
        self._tx_mid = _BRANCH1 + long_bytes(ts_us) + _BRANCH1 + long_bytes(ts_us * 1000)
        self._tx_mid += self._table + _BRANCH1 + long_bytes(tx.xid) + _BRANCH1  # ..., lsn branch
        # xmin: null; origin, origin_lsn; then commit_lsn (additive)
        self._tx_tail = _NULL
        self._tx_tail += _NULL if tx.origin is None else _BRANCH1 + string_bytes(tx.origin)
        self._tx_tail += _NULL if tx.origin_lsn is None else _BRANCH1 + long_bytes(tx.origin_lsn)
        if self._additive:
            self._tx_tail += _BRANCH1 + long_bytes(commit)
        self._tx_id = f"{tx.xid}:"

    def _now_bytes(self, now_ms: int) -> bytes:
        return (
            _BRANCH1
            + long_bytes(now_ms)
            + _BRANCH1
            + long_bytes(now_ms * 1000)
            + _BRANCH1
            + long_bytes(now_ms * 1_000_000)
        )

    def _source_and_tx(self, lsn: int, total_order: int, table_seq: int) -> tuple[bytes, ...]:
        """``source`` and ``transaction`` for an event at ``lsn``."""
        lsn_text = str(lsn)
        # source.sequence ["<last commit>","<lsn>"]: ASCII, so its length in bytes is len().
        sequence = self._sequence_head + lsn_text + '"]'
        source = (
            self._tx_head,
            long_bytes(len(sequence)),
            sequence.encode(),
            self._tx_mid,
            long_bytes(lsn),
            self._tx_tail,
        )
        if not self._tx_block:
            return (*source, _NULL)
        tx_id = self._tx_id + lsn_text
        return (
            *source,
            _BRANCH1,
            long_bytes(len(tx_id)),
            tx_id.encode(),
            long_bytes(total_order),
            long_bytes(table_seq),
        )

    def write_reads(
        self, rows: Iterable[TupleValues], *, tx: TxContext, now_ms: int
    ) -> Iterator[bytes]:
        """Framed ``op=r`` values of ``rows``, all at ``tx.commit_lsn``, numbered from 1.

        The batch form of ``write`` for snapshot chunks: everything but the row and its
        position is the same for the whole chunk, so it is assembled once. Equal to
        ``write(Change(OP_READ, oid, tx.commit_lsn, n, tx, None, row), table_seq=n, ...)``.
        """
        enc = self._encoder
        lsn = tx.commit_lsn
        probe = Change(OP_READ, enc.relation.oid, lsn, 1, tx, None, ())
        self._set_tx(probe)
        self._now_ms = -1
        now = self._now_bytes(now_ms)
        head = self._header + _NULL + _BRANCH1
        middle = b"".join(self._source_and_tx(int(lsn), 0, 0)[: -2 if self._tx_block else None])
        op_now = string_bytes(OP_READ) + now + (_NULL if self._additive else b"")
        for n, row in enumerate(rows, 1):
            unavailable: list[str] = []
            after = self._row_value(row, unavailable=unavailable)
            if unavailable:
                raise RecordEncodeError("a snapshot row cannot hold unchanged TOAST values")
            seq = long_bytes(n) * 2 if self._tx_block else b""
            yield b"".join((head, after, middle, seq, op_now))

    def write(self, change: Change, *, table_seq: int, now_ms: int) -> bytes:
        """The framed value of ``change``; equal to encoding ``encoder.envelope(...)``."""
        if change.tx is not self._tx:
            self._set_tx(change)
        if now_ms != self._now_ms:
            self._now_ms = now_ms
            self._now = self._now_bytes(now_ms)
        unavailable: list[str] = []
        before, after = self._rows(change, unavailable)
        parts = [self._header, before, after]
        op = self._ops.get(change.op)
        if op is None:
            op = self._ops[change.op] = string_bytes(change.op)
        parts += self._source_and_tx(int(change.lsn), change.seq, table_seq)
        parts += (op, self._now)
        if not self._additive:
            pass
        elif unavailable:
            parts.append(_BRANCH1 + long_bytes(len(unavailable)))
            parts.extend(string_bytes(name) for name in unavailable)
            parts.append(_NULL)
        else:
            parts.append(_NULL)
        return b"".join(parts)
