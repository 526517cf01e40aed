"""Capture's live counters, read by ``/status``, ``/metrics`` and the demo's view.

Invariant: counters only grow within a process; positions (``flushed_lsn``,
``received_lsn``) only move forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cdc.core.histogram import LatencyHistogram
from cdc.core.lsn import ZERO, Lsn

__all__ = ["CaptureStats"]


@dataclass
class CaptureStats:
    """Counters exposed to status and metrics."""

    events: int = 0
    transactions: int = 0
    # Exactly-once: transactions found already committed to Kafka on restart, and not re-sent.
    skipped_transactions: int = 0
    tombstones: int = 0
    restarts: int = 0
    last_error: str | None = None
    flushed_lsn: Lsn = ZERO
    received_lsn: Lsn = ZERO
    last_commit_ts_us: int = 0
    started_at: float = field(default_factory=time.time)
    connected: bool = False
    # Capture lag measured by the last heartbeat's round trip, and the slot's retained WAL.
    heartbeat_lag_ms: float | None = None
    retained_wal_bytes: int | None = None
    # Source commit to Kafka acknowledgement, per event (the /metrics histogram).
    delivery_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    # Commit-to-acknowledged latencies in microseconds, when recording is on.
    latencies_us: list[int] | None = None
