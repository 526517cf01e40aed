"""The console's ring buffers: bounded history, rates from counters, no negative rates."""

from __future__ import annotations

from cdc.ops.console.series import Series


def test_a_series_keeps_only_its_capacity_of_newest_samples() -> None:
    series = Series(3)
    for i in range(10):
        series.add(float(i), {"applied": float(i)})
    assert len(series) == 3
    latest = series.latest()
    assert latest is not None and latest.at == 9.0


def test_counters_become_rates_per_second_and_gauges_stay_as_sampled() -> None:
    series = Series(10)
    series.add(100.0, {"applied": 0.0, "lag": 5.0})
    series.add(103.0, {"applied": 30.0, "lag": 2.0})
    series.add(106.0, {"applied": 30.0, "lag": None})
    columns = series.columns(since=0, counters=["applied"], gauges=["lag"])
    assert columns == {"t": [103.0, 106.0], "applied": [10.0, 0.0], "lag": [2.0, None]}
    assert series.latest_rate("applied") == 0.0


def test_a_counter_that_restarted_at_zero_gives_no_rate_rather_than_a_negative_one() -> None:
    series = Series(10)
    series.add(0.0, {"applied": 50.0})
    series.add(3.0, {"applied": 2.0})
    assert series.latest_rate("applied") is None


def test_columns_start_at_since_but_rate_from_the_sample_before_it() -> None:
    series = Series(10)
    for at in (0.0, 3.0, 6.0, 9.0):
        series.add(at, {"records": at * 2})
    columns = series.columns(since=5.0, counters=["records"])
    assert columns == {"t": [6.0, 9.0], "records": [2.0, 2.0]}
