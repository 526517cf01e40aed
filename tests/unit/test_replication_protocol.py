from __future__ import annotations

import struct

import pytest

from cdc.errors import SourceUnavailable
from cdc.lsn import Lsn
from cdc.replication import (
    PG_EPOCH_OFFSET_US,
    Keepalive,
    XLogData,
    parse_copy_data,
    standby_status_update,
)


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
