"""The console's in-process history: fixed-size ring buffers of samples, and rates from them.

A ``Series`` keeps the last ``capacity`` samples of one subject (capture, or one
integration); each sample is a Unix time and a dict of figures. Counters (events,
applied, records) are stored as they are read and turned into rates per second between
neighbouring samples when a chart asks (``rates``); gauges (lag) are served as sampled.

Invariants: pure and synchronous (no I/O, no clock of its own: the sampler passes the
time in); memory is bounded by ``capacity`` whatever the uptime; a counter that went
backwards (a restarted worker starts again at 0) gives no negative rate (``None``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Sample", "Series", "rate"]


@dataclass(frozen=True, slots=True)
class Sample:
    """Figures of one subject at one time (``None``: not known then)."""

    at: float
    values: Mapping[str, float | None]


def rate(earlier: Sample, later: Sample, key: str) -> float | None:
    """Per-second change of counter ``key`` between two samples (None when unknown)."""
    a, b = earlier.values.get(key), later.values.get(key)
    span = later.at - earlier.at
    if a is None or b is None or span <= 0 or b < a:
        return None
    return (b - a) / span


class Series:
    """The last ``capacity`` samples of one subject, oldest first."""

    def __init__(self, capacity: int) -> None:
        self._samples: deque[Sample] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, at: float, values: Mapping[str, float | None]) -> None:
        self._samples.append(Sample(at, dict(values)))

    def latest(self) -> Sample | None:
        return self._samples[-1] if self._samples else None

    def latest_rate(self, key: str) -> float | None:
        """The rate of counter ``key`` over the two newest samples."""
        if len(self._samples) < 2:
            return None
        return rate(self._samples[-2], self._samples[-1], key)

    def columns(
        self, *, since: float, counters: Iterable[str] = (), gauges: Iterable[str] = ()
    ) -> dict[str, list[float | None]]:
        """Chart data from ``since`` on: ``t`` (Unix seconds), each counter as a rate per
        second (from the sample before), each gauge as sampled. Columns have equal length."""
        counters, gauges = list(counters), list(gauges)
        out: dict[str, list[float | None]] = {"t": []}
        for key in (*counters, *gauges):
            out[key] = []
        previous: Sample | None = None
        for sample in self._samples:
            if sample.at >= since and previous is not None:
                out["t"].append(sample.at)
                for key in counters:
                    out[key].append(rate(previous, sample, key))
                for key in gauges:
                    out[key].append(sample.values.get(key))
            previous = sample
        return out
