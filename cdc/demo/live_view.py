"""The live progress view of ``cdcsync demo``: a rich table on a terminal, plain lines elsewhere.

``DemoView.sample()`` reads the counters of the writer, capture and each sync worker and
turns them into one ``Snapshot`` (totals, rates since the previous sample, replication
lag, commit-to-applied latency percentiles); ``render_table`` and ``status_line`` present
a snapshot, ``print_summary`` the closing report. The view only reads the stats objects,
except for one duty: it takes the values out of the latency lists that capture and the
workers append to, so that a long demo keeps a bounded amount of memory. The percentiles
are over the values that arrived in the last ``LATENCY_WINDOW_S`` seconds, so the live view
shows today's latency, not the start-up's (the first events wait for group joins).

Invariants: rates are never negative (a counter that went backwards reads as 0/s); a
percentile of an empty window is ``None`` and shown as a dash; nothing here prints a
secret (the view shows only counters, states and the broker/registry addresses given).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cdc.capture.stats import CaptureStats
from cdc.sync.worker import IntegrationStats

LATENCY_WINDOW_S = 10.0
"""The live percentiles are over the latencies that arrived in this many last seconds."""


class LatencyWindow:
    """Latency values of one stage from the last ``seconds``, taken from its owner's list."""

    def __init__(self, seconds: float = LATENCY_WINDOW_S) -> None:
        self.seconds = seconds
        self._chunks: deque[tuple[float, list[int]]] = deque()

    def take(self, values: list[int] | None, now: float) -> list[int]:
        """Move the new ``values`` in (emptying the owner's list); the window's values."""
        if values:
            count = len(values)  # the owner may append meanwhile: take exactly these
            self._chunks.append((now, values[:count]))
            del values[:count]
        while self._chunks and self._chunks[0][0] < now - self.seconds:
            self._chunks.popleft()
        return [value for _, chunk in self._chunks for value in chunk]


def percentile(values: list[int] | None, fraction: float) -> int | None:
    """The ``fraction`` quantile (nearest rank) of ``values``, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[rank]


@dataclass(frozen=True, slots=True)
class IntegrationLine:
    """One integration's figures at one instant."""

    name: str
    applied: int
    skipped: int
    retried: int
    dead_lettered: int
    circuit: str
    paused: bool
    rate: float
    p50_us: int | None
    p99_us: int | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the view shows at one instant."""

    elapsed_s: float
    rows_written: int
    write_rate: float
    captured: int
    capture_rate: float
    connected: bool
    lag_bytes: int
    commit_age_s: float | None
    capture_p50_us: int | None
    capture_p99_us: int | None
    capture_error: str | None
    integrations: tuple[IntegrationLine, ...]


class DemoView:
    """Samples the running demo's counters; see the module docstring."""

    def __init__(
        self,
        capture: CaptureStats,
        workers: Callable[[], Mapping[str, IntegrationStats]],
        rows_written: Callable[[], int],
        *,
        names: tuple[str, ...],
    ) -> None:
        self._capture = capture
        self._workers = workers
        self._rows_written = rows_written
        self._names = names
        self._started = time.monotonic()
        self._last_t = self._started
        self._last: dict[str, int] = {}
        self._windows: dict[str, LatencyWindow] = {}

    def _latencies(self, key: str, values: list[int] | None, now: float) -> list[int]:
        window = self._windows.setdefault(key, LatencyWindow())
        return window.take(values, now)

    def _rate(self, key: str, value: int, dt: float) -> float:
        before = self._last.get(key, 0)
        self._last[key] = value
        return max(0.0, (value - before) / dt) if dt > 0 else 0.0

    def sample(self) -> Snapshot:
        now = time.monotonic()
        dt = now - self._last_t
        self._last_t = now
        cap = self._capture
        cap_latencies = self._latencies("capture", cap.latencies_us, now)
        written = self._rows_written()
        lag = max(0, int(cap.received_lsn) - int(cap.flushed_lsn))
        commit_age = None
        if cap.last_commit_ts_us:
            commit_age = max(0.0, time.time() - cap.last_commit_ts_us / 1_000_000)
        workers = self._workers()
        lines = []
        for name in self._names:
            stats = workers.get(name)
            if stats is None:
                stats = IntegrationStats()
            latencies = self._latencies(name, stats.latencies_us, now)
            lines.append(
                IntegrationLine(
                    name=name,
                    applied=stats.applied,
                    skipped=stats.older + stats.duplicate,
                    retried=stats.retried,
                    dead_lettered=stats.dead_lettered,
                    circuit=stats.circuit,
                    paused=stats.paused,
                    rate=self._rate(f"applied:{name}", stats.applied, dt),
                    p50_us=percentile(latencies, 0.50),
                    p99_us=percentile(latencies, 0.99),
                    last_error=stats.last_error,
                )
            )
        return Snapshot(
            elapsed_s=now - self._started,
            rows_written=written,
            write_rate=self._rate("written", written, dt),
            captured=cap.events,
            capture_rate=self._rate("captured", cap.events, dt),
            connected=cap.connected,
            lag_bytes=lag,
            commit_age_s=commit_age,
            capture_p50_us=percentile(cap_latencies, 0.50),
            capture_p99_us=percentile(cap_latencies, 0.99),
            capture_error=cap.last_error,
            integrations=tuple(lines),
        )


def _ms(value_us: int | None) -> str:
    return "-" if value_us is None else f"{value_us / 1000:.1f} ms"


def _age(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def render_table(snap: Snapshot, *, title: str) -> Table:
    """The live table: one row per stage (writer, capture, each integration)."""
    table = Table(title=title, caption=f"{snap.elapsed_s:.0f} s - Ctrl-C stops and checks")
    for column in ("stage", "total", "per second", "details"):
        table.add_column(column, justify="right" if column in ("total", "per second") else "left")
    table.add_column("p50 / p99 latency, last 10 s", justify="right")
    table.add_row(
        "writer (rows)", str(snap.rows_written), f"{snap.write_rate:.0f}", "source database", ""
    )
    state = "streaming" if snap.connected else "connecting"
    if snap.capture_error and not snap.connected:
        state = f"retrying: {snap.capture_error[:60]}"
    table.add_row(
        "capture (events)",
        str(snap.captured),
        f"{snap.capture_rate:.0f}",
        f"{state}; lag {snap.lag_bytes} B, last commit {_age(snap.commit_age_s)} ago",
        f"{_ms(snap.capture_p50_us)} / {_ms(snap.capture_p99_us)}",
    )
    for line in snap.integrations:
        details = (
            f"skipped {line.skipped}, retried {line.retried}, "
            f"dead letters {line.dead_lettered}, circuit {line.circuit}"
        )
        if line.paused:
            details += ", paused"
        table.add_row(
            f"{line.name} (applied)",
            str(line.applied),
            f"{line.rate:.0f}",
            details,
            f"{_ms(line.p50_us)} / {_ms(line.p99_us)}",
        )
    return table


def status_line(snap: Snapshot) -> str:
    """One plain line for a non-terminal output."""
    parts = [
        f"[{snap.elapsed_s:5.0f}s] written {snap.rows_written} ({snap.write_rate:.0f}/s)",
        f"captured {snap.captured} ({snap.capture_rate:.0f}/s, lag {snap.lag_bytes} B)",
    ]
    for line in snap.integrations:
        parts.append(
            f"{line.name} applied {line.applied} ({line.rate:.0f}/s, skipped {line.skipped},"
            f" retried {line.retried}, dead {line.dead_lettered}, circuit {line.circuit},"
            f" p99 {_ms(line.p99_us)})"
        )
    return "; ".join(parts)


def print_summary(
    console: Console,
    snap: Snapshot,
    *,
    check: str | None,
    failure: str | None,
    interrupted: bool,
    log_path: Path | None,
) -> None:
    """The closing summary: totals per stage, the consistency check, the log file (``None``:
    it is not kept)."""

    def say(text: str) -> None:
        console.print(text, highlight=False)

    say("")
    say("summary" + (" (stopped by signal)" if interrupted else ""))
    say(f"  rows written: {snap.rows_written}")
    say(f"  events captured: {snap.captured}")
    for line in snap.integrations:
        say(
            f"  {line.name}: applied {line.applied}, skipped {line.skipped},"
            f" retried {line.retried}, dead letters {line.dead_lettered}"
        )
    if failure is not None:
        say(f"  the demo stopped early: {failure}")
    say("  consistency check: NOT RUN" if check is None else f"  {check}")
    if log_path is not None:
        say(f"  log file: {log_path}")
