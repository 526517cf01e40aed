from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any, cast

import pytest

from cdc.capture.replication import (
    CONFIRM_INTERVAL_S,
    PG_EPOCH_OFFSET_US,
    Keepalive,
    ReplicationStream,
    XLogData,
    parse_copy_data,
    standby_status_update,
)
from cdc.core.errors import SourceUnavailable
from cdc.core.lsn import Lsn


def test_xlogdata_frame_is_split_into_positions_and_payload() -> None:
    frame = struct.pack(">cQQq", b"w", 100, 200, 5) + b"Bpayload"
    msg = parse_copy_data(frame)
    assert isinstance(msg, XLogData)
    assert (msg.wal_start, msg.wal_end) == (Lsn(100), Lsn(200))
    assert msg.server_time_us == 5 + PG_EPOCH_OFFSET_US
    assert bytes(msg.data) == b"Bpayload"


def test_keepalive_reports_whether_the_server_wants_a_reply() -> None:
    msg = parse_copy_data(struct.pack(">cQqB", b"k", 300, 0, 1))
    assert msg == Keepalive(Lsn(300), PG_EPOCH_OFFSET_US, True)


def test_status_update_carries_write_flush_and_apply_positions() -> None:
    raw = standby_status_update(
        write=Lsn(30), flush=Lsn(20), apply=Lsn(20), now_us=PG_EPOCH_OFFSET_US + 7
    )
    assert struct.unpack(">cQQQqB", raw) == (b"r", 30, 20, 20, 7, 0)


@pytest.mark.parametrize("frame", [b"", b"w123", b"k1", b"z" + bytes(30)])
def test_malformed_frames_raise_a_retryable_source_error(frame: bytes) -> None:
    with pytest.raises(SourceUnavailable):
        parse_copy_data(frame)


class FakePgConn:
    """The libpq side of a replication stream: a socket that never has data, and the
    status updates written to it."""

    def __init__(self) -> None:
        self._sock, self._peer = socket.socketpair()
        self.sent: list[tuple[int, int]] = []  # (write, flush) of each status update

    @property
    def socket(self) -> int:
        return self._sock.fileno()

    def get_copy_data(self, _async: int) -> tuple[int, bytes]:
        return 0, b""

    def consume_input(self) -> None:
        pass

    def put_copy_data(self, data: bytes) -> None:
        _, write, flush, _, _, _ = struct.unpack(">cQQQqB", data)
        self.sent.append((write, flush))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._sock.close()
        self._peer.close()


class FakeConnection:
    def __init__(self) -> None:
        self.pgconn = FakePgConn()


def fake_stream(status_interval: float = 10.0) -> tuple[ReplicationStream, FakePgConn]:
    conn = FakeConnection()
    stream = ReplicationStream(cast(Any, conn), status_interval=status_interval)
    return stream, conn.pgconn


def test_a_burst_of_confirmations_sends_one_status_update_then_the_newest_when_due() -> None:
    stream, pgconn = fake_stream()
    try:
        for lsn in range(100, 1100, 100):  # one commit after another
            stream.confirm(Lsn(lsn))
        assert pgconn.sent == [(100, 100)]
        # The read waits for data that never comes; the held position goes out meanwhile,
        # well before the read's timeout.
        asyncio.run(stream.read(timeout=CONFIRM_INTERVAL_S * 4))
        assert pgconn.sent == [(100, 100), (1000, 1000)]
    finally:
        pgconn.close()


def test_confirming_an_unchanged_position_sends_nothing_until_the_status_interval() -> None:
    stream, pgconn = fake_stream(status_interval=10.0)
    try:
        stream.confirm(Lsn(500))
        time.sleep(CONFIRM_INTERVAL_S * 2)
        stream.confirm(Lsn(500))
        stream.confirm(Lsn(400))  # never backwards
        assert pgconn.sent == [(500, 500)]
    finally:
        pgconn.close()
