"""The checkpoint: which LSN may be confirmed to PostgreSQL as flushed.

Capture keeps two positions that only move forward (like Debezium's
``lsn_proc``/``lsn_commit``): the newest transaction *received* and the newest
transaction *flushed*. A transaction is registered when capture starts
publishing it, counts its events as they are handed to Kafka, is *sealed* at
its commit, and is *acknowledged* when Kafka has confirmed every one of its
events (acks=all).

Invariant: ``flush_lsn`` is the commit end LSN of the newest transaction such
that it and every earlier transaction (in commit order) are sealed and fully
acknowledged. It never passes an event Kafka has not acknowledged. A failed
delivery poisons the checkpoint: ``flush_lsn`` stops moving for good and the
runtime must restart from the slot (which re-sends everything after it).

Pure: no I/O, no clocks; safe to call from delivery callbacks on the same
thread as the capture loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cdc.core.lsn import ZERO, Lsn


@dataclass(slots=True)
class TxProgress:
    """Delivery bookkeeping of one transaction."""

    commit_lsn: Lsn
    end_lsn: Lsn = ZERO
    pending: int = 0
    sealed: bool = False
    commit_ts_us: int = 0
    callback: Any = None


@dataclass
class Checkpoint:
    """Tracks in-flight transactions and derives the safe flush LSN."""

    flush_lsn: Lsn = ZERO
    _txs: deque[TxProgress] = field(default_factory=deque)
    failure: str | None = None

    def begin(self, commit_lsn: Lsn, *, commit_ts_us: int = 0) -> TxProgress:
        """Register a transaction (in commit order) whose commit record is at ``commit_lsn``."""
        if self._txs and commit_lsn < self._txs[-1].commit_lsn:
            raise ValueError(
                f"transactions out of commit order: {commit_lsn} after {self._txs[-1].commit_lsn}"
            )
        tx = TxProgress(commit_lsn, commit_ts_us=commit_ts_us)
        self._txs.append(tx)
        return tx

    @staticmethod
    def sent(tx: TxProgress, count: int = 1) -> None:
        """``count`` events of ``tx`` were handed to the producer."""
        tx.pending += count

    def seal(self, tx: TxProgress, end_lsn: Lsn) -> None:
        """Every event of ``tx`` has been handed over (its commit ends at ``end_lsn``)."""
        tx.end_lsn = end_lsn
        tx.sealed = True
        self._advance()

    def acked(self, tx: TxProgress) -> None:
        """Kafka acknowledged one event of ``tx``."""
        tx.pending -= 1
        if tx.pending == 0 and tx.sealed:
            self._advance()

    def failed(self, reason: str) -> None:
        """A delivery failed: never advance again; the runtime must restart."""
        if self.failure is None:
            self.failure = reason

    def idle_advance(self, lsn: Lsn) -> None:
        """Nothing is in flight: the server's position ``lsn`` can be confirmed.

        Used with keepalives so an idle slot (no published changes) advances.
        Callers must only do this when no transaction is open in the stream.
        """
        if self.failure is None and not self._txs and lsn > self.flush_lsn:
            self.flush_lsn = lsn

    @property
    def in_flight(self) -> int:
        """Transactions registered but not yet flushable."""
        return len(self._txs)

    def _advance(self) -> None:
        if self.failure is not None:
            return
        txs = self._txs
        while txs and txs[0].sealed and txs[0].pending == 0:
            tx = txs.popleft()
            self.flush_lsn = max(self.flush_lsn, tx.end_lsn)
            if tx.commit_ts_us:
                self.last_acked_commit_ts_us = tx.commit_ts_us
