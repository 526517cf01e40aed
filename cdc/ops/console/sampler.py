"""Samples the running roles every few seconds into the console's ring buffers.

Each tick reads, at one instant, capture's counters and gauges (events, transactions, lag
bytes and seconds, retained WAL) and each running integration's counters (applied,
records, retried, dead-lettered); then, off the event loop, each integration's consumer
lag (``lag.GroupLag``); then the pending dead letters per integration (one query). One
hour of samples is kept (``HISTORY_S``); rates are derived when a page asks
(``series.Series``).

Invariants: the event loop never blocks on Kafka (lag is read in a worker thread, one read
at a time); a failing lag read or state store leaves that figure ``None`` for the tick and
its reason in ``errors``, the other figures are still sampled; nothing here changes
anything it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from cdc.config import Config
from cdc.core.errors import first_line
from cdc.ops.console.dead_letters import DeadLetterDesk
from cdc.ops.console.lag import GroupLag
from cdc.ops.console.series import Series

if TYPE_CHECKING:
    from cdc.capture.runtime import Capture
    from cdc.sync.runtime import Sync

__all__ = ["HISTORY_S", "INTERVAL_S", "Sampler"]

log = logging.getLogger("cdcsync.console")

INTERVAL_S = 3.0
HISTORY_S = 3600.0

CAPTURE_COUNTERS = ("events", "transactions")
CAPTURE_GAUGES = ("lag_bytes", "lag_seconds", "retained_wal_bytes")
SYNC_COUNTERS = ("applied", "records", "retried", "dead_lettered")
SYNC_GAUGES = ("lag", "dead_letters")


class Sampler:
    """The ring buffers of this process's roles and the loop that fills them."""

    def __init__(
        self,
        config: Config,
        *,
        capture: Capture | None,
        sync: Sync | None,
        desk: DeadLetterDesk,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.config = config
        self.capture = capture
        self.sync = sync
        self.desk = desk
        self.interval_s = interval_s
        self.capacity = int(HISTORY_S / interval_s) + 1
        self.capture_series = Series(self.capacity)
        self.integrations: dict[str, Series] = {}
        # Why the latest tick could not read a figure, by subject ("lag", "dead_letters").
        self.errors: dict[str, str] = {}
        self._lag = GroupLag(config)

    def series(self, name: str) -> Series:
        found = self.integrations.get(name)
        if found is None:
            found = self.integrations[name] = Series(self.capacity)
        return found

    async def run(self, stop: asyncio.Event) -> None:
        """Sample every ``interval_s`` until ``stop``."""
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self.tick()
                except Exception:  # a bug here must not take the admin listener down
                    log.exception("console: sampling failed")
                wait = max(self.interval_s - (time.monotonic() - started), 0.1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            self._lag.close()

    async def tick(self) -> None:
        at = time.time()
        if self.capture is not None:
            s = self.capture.stats
            self.capture_series.add(
                at,
                {
                    "events": s.events,
                    "transactions": s.transactions,
                    "lag_bytes": max(int(s.received_lsn) - int(s.flushed_lsn), 0),
                    "lag_seconds": None
                    if s.heartbeat_lag_ms is None
                    else s.heartbeat_lag_ms / 1000,
                    "retained_wal_bytes": s.retained_wal_bytes,
                },
            )
        workers = {} if self.sync is None else dict(self.sync.workers)
        if not workers:
            return
        counters = {
            name: {key: float(getattr(w.stats, key)) for key in SYNC_COUNTERS}
            for name, w in workers.items()
        }
        targets = {name: (w.group_id, tuple(w.integration.topics)) for name, w in workers.items()}
        lags = await asyncio.to_thread(self._read_lags, targets)
        pending, why = await self.desk.counts()
        if why is None:
            self.errors.pop("dead_letters", None)
        else:
            self.errors["dead_letters"] = why
        for name, values in counters.items():
            self.series(name).add(
                at,
                {
                    **values,
                    "lag": lags.get(name),
                    "dead_letters": None if why else float(pending.get(name, 0)),
                },
            )

    def _read_lags(self, targets: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (group_id, topics) in targets.items():
            try:
                lag = self._lag.read(name, group_id, topics)
            except Exception as exc:  # the broker's trouble is shown, not raised
                self.errors[f"lag:{name}"] = first_line(exc)
                continue
            self.errors.pop(f"lag:{name}", None)
            if lag is not None:
                out[name] = float(lag)
        return out
