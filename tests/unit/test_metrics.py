"""The latency histogram behind /metrics."""

from __future__ import annotations

import math

from cdc.core.histogram import LatencyHistogram


def test_buckets_are_cumulative_and_end_with_everything() -> None:
    hist = LatencyHistogram((0.001, 0.01, 0.1))
    for micros in (500, 1_000, 5_000, 50_000, 2_000_000):
        hist.observe_us(micros)
    assert hist.buckets() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert hist.total == 5
    assert math.isclose(hist.sum_s, 2.0565)


def test_a_negative_latency_from_clock_skew_counts_as_zero() -> None:
    hist = LatencyHistogram((0.001,))
    hist.observe_us(-40)
    assert hist.buckets() == [("0.001", 1), ("+Inf", 1)]
    assert hist.sum_s == 0


def test_quantiles_give_the_bound_of_their_bucket() -> None:
    hist = LatencyHistogram((0.001, 0.01, 0.1))
    assert hist.quantile_s(0.99) is None
    for _ in range(98):
        hist.observe_us(800)
    hist.observe_us(8_000)
    hist.observe_us(80_000)
    assert hist.quantile_s(0.5) == 0.001
    assert hist.quantile_s(0.99) == 0.01
    assert hist.quantile_s(1.0) == 0.1
    hist.observe_us(10_000_000)
    hist.observe_us(12_500_000)
    # Past the largest bucket: the largest latency seen, a finite upper bound.
    assert hist.quantile_s(1.0) == 12.5
