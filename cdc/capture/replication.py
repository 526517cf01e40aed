"""Replication transport: the COPY_BOTH stream of a logical replication slot.

Owns the socket-level protocol around pgoutput payloads: XLogData ('w') and
primary keepalive ('k') frames in, Standby Status Updates ('r') out. It knows
nothing about what the payloads mean (see ``cdc.capture.pgoutput``).

Invariants:
- The flush position sent to the server only moves forward and is exactly
  what the caller passed to ``confirm`` (the checkpoint); this module never
  invents a position of its own.
- A confirmed position reaches the server within ``CONFIRM_INTERVAL_S`` of the
  first ``confirm`` or ``read`` after it (at once if none went out for that
  long), not once per transaction: under a stream of small transactions a
  status update per commit cost capture and the walsender more CPU than the
  changes themselves.
- A keepalive that requests a reply is answered before the next read returns,
  and a status update goes out at least every ``status_interval`` seconds, so
  the client is never the reason the walsender times out.
- Library errors are translated to ``SourceUnavailable`` (retryable) or
  ``SourceSetupError`` (fatal) at this edge.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg import sql

from cdc.core.errors import SourceSetupError, SourceUnavailable, first_line
from cdc.core.lsn import ZERO, Lsn
from cdc.core.secrets import redact_dsn

# Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000

_XLOGDATA_HEADER: Final = struct.Struct(">cQQq")
_KEEPALIVE: Final = struct.Struct(">cQqB")
_STATUS: Final = struct.Struct(">cQQQqB")

CONFIRM_INTERVAL_S: Final = 0.05
"""The least time between two status updates that only move the flush position."""


@dataclass(slots=True)  # not frozen: built once per change, and frozen costs 2x
class XLogData:
    """One WAL payload: ``wal_start`` is the LSN of the change; ``data`` a pgoutput message."""

    wal_start: Lsn
    wal_end: Lsn
    server_time_us: int
    data: memoryview


@dataclass(frozen=True, slots=True)
class Keepalive:
    """A primary keepalive: the server's current WAL end and whether it wants a reply."""

    wal_end: Lsn
    server_time_us: int
    reply_requested: bool


def parse_copy_data(buf: bytes | memoryview) -> XLogData | Keepalive:
    """Split one CopyData message of the replication stream (pure)."""
    view = memoryview(buf)
    if len(view) < 1:
        raise SourceUnavailable("empty CopyData message from the server")
    kind = view[0]
    if kind == 0x77:  # 'w'
        if len(view) < _XLOGDATA_HEADER.size:
            raise SourceUnavailable("truncated XLogData header")
        _, start, end, ts = _XLOGDATA_HEADER.unpack_from(view)
        return XLogData(
            Lsn(start), Lsn(end), ts + PG_EPOCH_OFFSET_US, view[_XLOGDATA_HEADER.size :]
        )
    if kind == 0x6B:  # 'k'
        if len(view) < _KEEPALIVE.size:
            raise SourceUnavailable("truncated keepalive message")
        _, end, ts, reply = _KEEPALIVE.unpack_from(view)
        return Keepalive(Lsn(end), ts + PG_EPOCH_OFFSET_US, bool(reply))
    raise SourceUnavailable(f"unexpected CopyData message type {bytes(view[:1])!r}")


def standby_status_update(
    *, write: Lsn, flush: Lsn, apply: Lsn, now_us: int, reply: bool = False
) -> bytes:
    """Build a Standby Status Update ('r') message (pure)."""
    return _STATUS.pack(b"r", write, flush, apply, now_us - PG_EPOCH_OFFSET_US, int(reply))


def now_us() -> int:
    return time.time_ns() // 1000


class ReplicationStream:
    """A started logical replication stream on a ``replication="database"`` connection."""

    def __init__(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]], *, status_interval: float
    ) -> None:
        self._conn = conn
        self._pgconn = conn.pgconn
        self._status_interval = status_interval
        self._received = Lsn(0)
        self._flushed = Lsn(0)
        self._server_wal_end = Lsn(0)
        self._sent_flush = Lsn(0)
        self._last_status = 0.0

    @property
    def received_lsn(self) -> Lsn:
        """The end of the newest WAL data received (``write`` in status updates)."""
        return self._received

    @property
    def flushed_lsn(self) -> Lsn:
        return self._flushed

    @property
    def server_wal_end(self) -> Lsn:
        """The newest WAL end the server reported (keepalive or XLogData)."""
        return self._server_wal_end

    @classmethod
    async def start(
        cls,
        dsn: str,
        *,
        slot: str,
        publication: str,
        start_lsn: Lsn = ZERO,
        protocol_version: int = 2,
        streaming: bool = True,
        messages: bool = True,
        status_interval: float = 10.0,
        application_name: str = "cdcsync",
    ) -> ReplicationStream:
        """Connect and run START_REPLICATION; errors name the slot, never the password."""
        try:
            conn = await psycopg.AsyncConnection.connect(
                dsn, replication="database", autocommit=True, application_name=application_name
            )
        except psycopg.OperationalError as exc:
            raise SourceUnavailable(
                f"cannot open a replication connection to {redact_dsn(dsn)}: {first_line(exc)}"
            ) from exc
        try:
            # Timestamps with time zone then arrive in UTC, the form events carry.
            await conn.execute("SET TimeZone TO 'UTC'")
        except psycopg.Error as exc:
            await conn.close()
            raise SourceUnavailable(f"cannot prepare the replication session: {exc}") from exc
        options: list[sql.Composable] = [
            sql.SQL("proto_version {}").format(sql.Literal(str(protocol_version))),
            sql.SQL("publication_names {}").format(sql.Literal(publication)),
        ]
        if streaming and protocol_version >= 2:
            options.append(sql.SQL("streaming 'on'"))
        if messages:
            options.append(sql.SQL("messages 'true'"))
        query = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(slot), sql.SQL(str(start_lsn)), sql.SQL(", ").join(options)
        )
        try:
            await conn.cursor().execute(query)
        except psycopg.errors.ObjectInUse as exc:
            await conn.close()
            raise SourceSetupError(
                f"replication slot {slot!r} is in use by another process: {first_line(exc)}"
            ) from exc
        except psycopg.errors.UndefinedObject as exc:
            await conn.close()
            raise SourceSetupError(f"replication slot {slot!r}: {first_line(exc)}") from exc
        except psycopg.OperationalError as exc:
            await conn.close()
            raise SourceUnavailable(f"START_REPLICATION failed: {first_line(exc)}") from exc
        except psycopg.Error as exc:
            await conn.close()
            raise SourceSetupError(f"START_REPLICATION failed: {first_line(exc)}") from exc
        stream = cls(conn, status_interval=status_interval)
        stream._flushed = stream._sent_flush = start_lsn
        return stream

    async def read(self, *, max_frames: int = 2000, timeout: float = 1.0) -> list[XLogData]:
        """Return the XLogData frames available now, waiting up to ``timeout`` for the first.

        Keepalives are consumed here; those that request a reply are answered
        at once with the current positions. Returns an empty list on timeout.
        """
        frames: list[XLogData] = []
        pgconn = self._pgconn
        deadline = time.monotonic() + timeout
        unpack_header, header_size, new_lsn = (
            _XLOGDATA_HEADER.unpack_from,
            _XLOGDATA_HEADER.size,
            int.__new__,
        )
        while len(frames) < max_frames:
            try:
                nbytes, buf = pgconn.get_copy_data(1)
            except psycopg.Error as exc:
                raise SourceUnavailable(f"replication stream failed: {first_line(exc)}") from exc
            if nbytes > 0:
                if buf[0] == 0x77 and nbytes >= header_size:  # 'w': XLogData, the hot path
                    _, start, end, ts = unpack_header(buf)
                    frames.append(
                        XLogData(
                            new_lsn(Lsn, start),  # 64-bit unsigned: always a valid Lsn
                            new_lsn(Lsn, end),
                            ts + PG_EPOCH_OFFSET_US,
                            buf[header_size:],
                        )
                    )
                    continue
                msg = parse_copy_data(buf)
                if isinstance(msg, XLogData):
                    frames.append(msg)
                else:
                    self._server_wal_end = max(self._server_wal_end, msg.wal_end)
                    if msg.reply_requested:
                        self._send_status(reply=False)
                continue
            if nbytes < 0:
                message = pgconn.error_message.decode(errors="replace").strip()
                raise SourceUnavailable(
                    f"replication stream ended by the server{': ' + message if message else ''}"
                )
            # Nothing buffered: return what we have, or wait for the socket.
            if frames:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.maybe_send_status()
            await self._wait_readable(min(remaining, max(0.001, self._status_due_in())))
            try:
                pgconn.consume_input()
            except psycopg.Error as exc:
                raise SourceUnavailable(f"replication connection lost: {first_line(exc)}") from exc
        if frames:
            last = frames[-1].wal_end  # wal_end only grows along the stream
            self._received = max(self._received, last)
            self._server_wal_end = max(self._server_wal_end, last)
        self.maybe_send_status()
        return frames

    async def _wait_readable(self, timeout: float) -> None:
        """Wait until the socket is readable or ``timeout`` passed (a timer, not wait_for:
        this runs once per read under a stream of small transactions)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self._pgconn.socket

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, wake)
        timer = loop.call_later(timeout, wake)
        try:
            await fut
        finally:
            timer.cancel()
            loop.remove_reader(fd)

    def confirm(self, flush: Lsn) -> None:
        """Record the checkpoint's flush position; sent when due (``CONFIRM_INTERVAL_S``)."""
        self._flushed = max(self._flushed, flush)
        self.maybe_send_status()

    def _status_due_in(self) -> float:
        """Seconds until a status update is due (<= 0: now): ``CONFIRM_INTERVAL_S`` after the
        last one while a flush position is unsent, else ``status_interval``."""
        interval = self._status_interval
        if self._flushed > self._sent_flush:
            interval = min(interval, CONFIRM_INTERVAL_S)
        return self._last_status + interval - time.monotonic()

    def maybe_send_status(self) -> None:
        """Send a status update if one is due (``_status_due_in``)."""
        if self._status_due_in() <= 0:
            self._send_status()

    def _send_status(self, *, reply: bool = False) -> None:
        write = max(self._received, self._flushed)
        msg = standby_status_update(
            write=write, flush=self._flushed, apply=self._flushed, now_us=now_us(), reply=reply
        )
        try:
            self._pgconn.put_copy_data(msg)
            self._pgconn.flush()
        except psycopg.Error as exc:
            raise SourceUnavailable(f"cannot send status update: {first_line(exc)}") from exc
        self._sent_flush = self._flushed
        self._last_status = time.monotonic()

    async def close(self) -> None:
        """Send a final status update (best effort) and close the connection."""
        try:
            if not self._conn.closed:
                self._send_status()
        except SourceUnavailable:
            pass
        await self._conn.close()
