from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cdc.capture.spool import TransactionSpool
from cdc.core.lsn import Lsn


@dataclass(frozen=True)
class Row:
    xid: int
    n: int


def test_spooled_transaction_replays_in_arrival_order_and_is_forgotten(tmp_path: Path) -> None:
    spool = TransactionSpool(tmp_path)
    for n in range(100):
        spool.append(7, Lsn(n), Row(7, n))
    assert 7 in spool
    replayed = list(spool.replay(7))
    assert [r.n for _, r in replayed] == list(range(100))
    assert [int(lsn) for lsn, _ in replayed] == list(range(100))
    assert 7 not in spool
    assert list(spool.replay(7)) == []


def test_aborted_subtransaction_records_are_skipped(tmp_path: Path) -> None:
    spool = TransactionSpool(tmp_path)
    spool.append(7, Lsn(1), Row(7, 1))
    spool.append(7, Lsn(2), Row(8, 2))
    spool.append(7, Lsn(3), Row(7, 3))
    spool.abort(7, 8)
    assert [r.n for _, r in spool.replay(7)] == [1, 3]


def test_aborted_transaction_is_discarded_without_a_trace_on_disk(tmp_path: Path) -> None:
    spool = TransactionSpool(tmp_path)
    spool.append(9, Lsn(1), Row(9, 1))
    spool.abort(9, 9)
    assert 9 not in spool
    assert list(spool.replay(9)) == []
    assert os.listdir(tmp_path) == []


def test_spooling_a_large_transaction_does_not_hold_it_in_memory(tmp_path: Path) -> None:
    import tracemalloc

    spool = TransactionSpool(tmp_path)
    tracemalloc.start()
    for n in range(50_000):
        spool.append(3, Lsn(n), Row(3, n))
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current < 2_000_000
    assert sum(1 for _ in spool.replay(3)) == 50_000
