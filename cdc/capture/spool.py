"""A disk spool for streamed (in-progress) transactions.

With pgoutput ``streaming 'on'`` PostgreSQL sends a large transaction in
pieces before it commits; it may still abort, wholly or by subtransaction.
Nothing of it may reach Kafka before its Stream Commit, and holding it in
memory would make memory grow with the transaction. So each streamed
transaction is appended to a temporary file and read back, in order, when it
commits; an abort deletes the file.

Invariants: memory use is independent of the transaction's size (records are
written through a small buffer and read back one at a time); replay yields
records in arrival order and skips the records of aborted subtransactions;
files are removed after replay, abort or ``close``.
"""

from __future__ import annotations

import pickle
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from cdc.core.lsn import Lsn

_LEN: Final = struct.Struct(">I")


@dataclass
class _Spooled:
    file: IO[bytes]
    records: int = 0
    aborted_subxacts: set[int] = field(default_factory=set)


class TransactionSpool:
    """Streamed transactions parked on disk until they commit or abort."""

    def __init__(self, directory: Path | None = None) -> None:
        self._dir = directory
        self._txs: dict[int, _Spooled] = {}

    def __contains__(self, xid: int) -> bool:
        return xid in self._txs

    @property
    def open_transactions(self) -> int:
        return len(self._txs)

    def append(self, xid: int, lsn: Lsn, message: Any) -> None:
        """Park ``message`` (received at ``lsn``) under top-level transaction ``xid``."""
        spooled = self._txs.get(xid)
        if spooled is None:
            f = tempfile.TemporaryFile(prefix=f"cdcsync-tx{xid}-", dir=self._dir)  # noqa: SIM115
            spooled = self._txs[xid] = _Spooled(f)
        blob = pickle.dumps((int(lsn), message), protocol=pickle.HIGHEST_PROTOCOL)
        spooled.file.write(_LEN.pack(len(blob)))
        spooled.file.write(blob)
        spooled.records += 1

    def abort(self, xid: int, subxid: int) -> None:
        """Stream Abort: the whole transaction (``subxid == xid``) or one subtransaction."""
        spooled = self._txs.get(xid)
        if spooled is None:
            return
        if subxid == xid:
            self.discard(xid)
        else:
            spooled.aborted_subxacts.add(subxid)

    def replay(self, xid: int) -> Iterator[tuple[Lsn, Any]]:
        """Yield the committed transaction's records in order, then forget it."""
        spooled = self._txs.pop(xid, None)
        if spooled is None:
            return
        f = spooled.file
        try:
            f.flush()
            f.seek(0)
            aborted = spooled.aborted_subxacts
            for _ in range(spooled.records):
                (size,) = _LEN.unpack(f.read(_LEN.size))
                lsn, message = pickle.loads(f.read(size))  # noqa: S301 - our own file
                if aborted and getattr(message, "xid", None) in aborted:
                    continue
                yield Lsn(lsn), message
        finally:
            f.close()

    def discard(self, xid: int) -> None:
        spooled = self._txs.pop(xid, None)
        if spooled is not None:
            spooled.file.close()

    def close(self) -> None:
        for xid in list(self._txs):
            self.discard(xid)
