"""The demo's live latency window: recent values only, owner lists emptied."""

from __future__ import annotations

from cdc.demo.live_view import LatencyWindow, percentile


def test_the_window_forgets_values_older_than_its_span() -> None:
    window = LatencyWindow(seconds=10)
    startup = [3_000_000] * 50  # the first events waited for the group joins
    assert percentile(window.take(startup, now=100.0), 0.99) == 3_000_000
    steady = [5_000] * 100
    assert percentile(window.take(steady, now=105.0), 0.99) == 3_000_000
    assert window.take([6_000] * 100, now=111.0) == [5_000] * 100 + [6_000] * 100
    assert percentile(window.take(None, now=120.0), 0.99) == 6_000


def test_taking_values_empties_the_owners_list_so_memory_stays_bounded() -> None:
    window = LatencyWindow(seconds=10)
    owner = [1, 2, 3]
    assert window.take(owner, now=0.0) == [1, 2, 3]
    assert owner == []
    owner.append(4)
    assert window.take(owner, now=1.0) == [1, 2, 3, 4]
    assert window.take([], now=30.0) == []
