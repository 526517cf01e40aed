from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cdc.capture.checkpoint import Checkpoint
from cdc.core.lsn import Lsn


def test_flush_waits_for_every_event_of_the_transaction_to_be_acknowledged() -> None:
    cp = Checkpoint()
    tx = cp.begin(Lsn(100))
    Checkpoint.sent(tx, 3)
    cp.seal(tx, Lsn(110))
    cp.acked(tx)
    cp.acked(tx)
    assert cp.flush_lsn == 0
    cp.acked(tx)
    assert cp.flush_lsn == 110


def test_flush_never_passes_an_earlier_unacknowledged_transaction() -> None:
    cp = Checkpoint()
    first = cp.begin(Lsn(100))
    Checkpoint.sent(first)
    cp.seal(first, Lsn(110))
    second = cp.begin(Lsn(200))
    Checkpoint.sent(second)
    cp.seal(second, Lsn(210))
    cp.acked(second)
    assert cp.flush_lsn == 0
    cp.acked(first)
    assert cp.flush_lsn == 210


def test_an_unsealed_transaction_holds_the_flush_even_when_all_its_events_are_acked() -> None:
    cp = Checkpoint()
    tx = cp.begin(Lsn(100))
    Checkpoint.sent(tx)
    cp.acked(tx)
    assert cp.flush_lsn == 0
    cp.seal(tx, Lsn(120))
    assert cp.flush_lsn == 120


def test_a_failed_delivery_freezes_the_flush_position_for_good() -> None:
    cp = Checkpoint()
    tx = cp.begin(Lsn(100))
    Checkpoint.sent(tx, 2)
    cp.seal(tx, Lsn(110))
    cp.failed("broker down")
    cp.acked(tx)
    cp.acked(tx)
    assert cp.flush_lsn == 0
    assert cp.failure == "broker down"


def test_idle_advance_confirms_the_server_position_only_when_nothing_is_in_flight() -> None:
    cp = Checkpoint()
    tx = cp.begin(Lsn(100))
    Checkpoint.sent(tx)
    cp.idle_advance(Lsn(500))
    assert cp.flush_lsn == 0
    cp.seal(tx, Lsn(110))
    cp.acked(tx)
    cp.idle_advance(Lsn(500))
    assert cp.flush_lsn == 500


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=20), st.randoms())
def test_flush_is_always_the_end_of_the_longest_fully_acked_prefix(
    sizes: list[int], rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    cp = Checkpoint()
    txs = []
    for i, n in enumerate(sizes):
        tx = cp.begin(Lsn(1000 * (i + 1)))
        Checkpoint.sent(tx, n)
        cp.seal(tx, Lsn(1000 * (i + 1) + 10))
        txs.append(tx)
    acks = [i for i, n in enumerate(sizes) for _ in range(n)]
    rnd.shuffle(acks)
    remaining = list(sizes)
    last = 0
    for i in acks:
        cp.acked(txs[i])
        remaining[i] -= 1
        prefix = 0
        while prefix < len(remaining) and remaining[prefix] == 0:
            prefix += 1
        expected = 0 if prefix == 0 else 1000 * prefix + 10
        assert cp.flush_lsn == expected
        assert cp.flush_lsn >= last
        last = cp.flush_lsn
