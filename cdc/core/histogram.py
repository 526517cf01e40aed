"""A fixed-bucket latency histogram, cheap enough for the hot paths.

Capture's delivery callback and the sync workers call ``observe_us`` (a bisect and two
additions) per event; ``cdc.ops.metrics`` turns the counts into a Prometheus histogram at
scrape time and ``/status`` reads ``quantile_s``.

Invariants: counts only grow; ``buckets()`` is cumulative and ends with ``+Inf`` equal to
``total``; a negative latency (clock skew) counts as 0; ``quantile_s`` is a finite number
or ``None`` (JSON has no infinity): past the largest bucket it is the largest latency seen.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS_S", "LatencyHistogram"]

# Seconds; from a fast local broker to a struggling remote target.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """A cumulative latency histogram with fixed buckets, cheap to update."""

    __slots__ = ("_bounds_us", "counts", "max_us", "sum_s", "total")

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self._bounds_us = [round(b * 1_000_000) for b in buckets_s]
        self.counts = [0] * (len(buckets_s) + 1)  # the last one is +Inf
        self.sum_s = 0.0
        self.total = 0
        self.max_us = 0  # the largest latency observed

    def observe_us(self, micros: int) -> None:
        """Record one latency given in microseconds (negative clock skew counts as 0)."""
        micros = max(micros, 0)
        self.counts[bisect_left(self._bounds_us, micros)] += 1
        self.sum_s += micros / 1_000_000
        self.total += 1
        self.max_us = max(self.max_us, micros)

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (upper bound, count) pairs as Prometheus expects them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self._bounds_us, self.counts, strict=False):
            running += count
            out.append((repr(bound / 1_000_000), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    def quantile_s(self, q: float) -> float | None:
        """An upper estimate of the ``q`` quantile: the bound of its bucket, or past the
        largest bucket the largest latency observed (None if empty)."""
        if self.total == 0:
            return None
        wanted = q * self.total
        running = 0
        for bound, count in zip(self._bounds_us, self.counts, strict=False):
            running += count
            if running >= wanted:
                return bound / 1_000_000
        return self.max_us / 1_000_000
