"""Idle-slot safety for capture: heartbeats and the retained-WAL guard.

- Heartbeats: every ``heartbeat_interval_s`` capture writes a non-transactional logical
  message (``pg_logical_emit_message``, prefix ``cdcsync.heartbeat``, content = the
  sender's clock in microseconds). It comes back through the replication stream like
  any change, so its round trip is the end-to-end capture lag even on a quiet
  database, and its position lets an idle slot advance. Heartbeats are never
  published as events. No table is written.
- The guard reads the slot's retained WAL (``pg_current_wal_lsn() - restart_lsn``)
  every ``check_interval_s``: above ``warn_bytes`` it logs a warning (once per
  crossing), above ``stop_bytes`` it stops capture with a ``SlotLagError`` that says
  how much is held and what to do. It never drops a slot.

Invariant: nothing here advances the confirmed position by itself; the checkpoint
decides what is confirmed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import psycopg

from cdc.capture.pgoutput import LogicalMessage
from cdc.core.errors import FatalError, SourceUnavailable, first_line

log = logging.getLogger("cdcsync.capture")

HEARTBEAT_PREFIX: Final = "cdcsync.heartbeat"


class SlotLagError(FatalError):
    """The slot holds back more WAL than ``source.slot_lag_stop_bytes`` allows."""


def is_heartbeat(msg: LogicalMessage) -> bool:
    return msg.prefix == HEARTBEAT_PREFIX and not msg.transactional


class SlotWatch:
    """Sends heartbeats and checks the slot's retained WAL; see the module docstring."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        slot: str,
        heartbeat_interval_s: float,
        warn_bytes: int | None,
        stop_bytes: int | None,
        check_interval_s: float = 10.0,
    ) -> None:
        self._conn = conn
        self._slot = slot
        self._heartbeat_every = heartbeat_interval_s
        self._warn = warn_bytes
        self._stop = stop_bytes
        self._check_every = check_interval_s
        self._next_heartbeat = time.monotonic() + heartbeat_interval_s
        self._next_check = time.monotonic()
        self._warned = False
        self.retained_bytes: int | None = None
        self.heartbeat_lag_ms: float | None = None
        self.heartbeats = 0

    @property
    def enabled(self) -> bool:
        return self._heartbeat_every > 0 or self._warn is not None or self._stop is not None

    async def tick(self) -> None:
        """Do whatever is due now (cheap when nothing is)."""
        now = time.monotonic()
        try:
            if self._heartbeat_every > 0 and now >= self._next_heartbeat:
                self._next_heartbeat = now + self._heartbeat_every
                await self._conn.execute(
                    "SELECT pg_logical_emit_message(false, %s, %s)",
                    (HEARTBEAT_PREFIX, str(time.time_ns() // 1000)),
                )
            if (self._warn is not None or self._stop is not None) and now >= self._next_check:
                self._next_check = now + self._check_every
                await self._check()
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(f"slot watch: {first_line(exc)}") from exc

    async def _check(self) -> None:
        cur = await self._conn.execute(
            "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (self._slot,),
        )
        row = await cur.fetchone()
        if row is None or row[0] is None:
            return
        retained = int(row[0])
        self.retained_bytes = retained
        mib = retained / 2**20
        if self._stop is not None and retained > self._stop:
            raise SlotLagError(
                f"replication slot {self._slot!r} retains {mib:,.1f} MiB of WAL, above "
                f"source.slot_lag_stop_bytes ({self._stop:,} bytes): capture stops so that "
                "someone looks. Find why it falls behind (broker down? capture too slow?); "
                "raise the limit to go on, or drop the slot to release the WAL (changes "
                "would then be lost)"
            )
        if self._warn is not None and retained > self._warn:
            if not self._warned:
                log.warning(
                    "replication slot %r retains %.1f MiB of WAL (warning above %s bytes)",
                    self._slot,
                    mib,
                    f"{self._warn:,}",
                )
            self._warned = True
        else:
            self._warned = False

    def on_heartbeat(self, msg: LogicalMessage) -> None:
        """A heartbeat came back: its age is the capture lag right now."""
        try:
            sent_us = int(bytes(msg.content).decode())
        except ValueError:
            return
        self.heartbeats += 1
        self.heartbeat_lag_ms = max(0.0, (time.time_ns() // 1000 - sent_us) / 1000)
