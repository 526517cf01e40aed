"""The capture runtime: replication stream -> decoded changes -> Avro events -> Kafka.

One loop, batch by batch: read the frames available on the replication
connection, decode them, turn row changes into envelopes, serialise them and
hand them to the producer; serve delivery reports; confirm the checkpoint's
flush LSN to PostgreSQL.

Invariants:
- The LSN confirmed to PostgreSQL is the checkpoint's (never ahead of Kafka).
- Streamed transactions go to the disk spool and are published only at their
  Stream Commit; aborted ones never reach Kafka.
- A new Relation message whose columns differ yields new schemas, registered
  before any event that uses them; if the registry rejects them, capture
  stops with an error naming the table and the column changes.
- Transient failures (source, broker, registry unreachable; a failed
  delivery) tear everything down and start again from the slot: committed
  transactions not yet confirmed are re-sent with the same
  (commit LSN, total_order) identity. Fatal errors stop capture.
- With ``kafka.exactly_once`` (cdc/capture/exactly_once.py) events are produced inside
  Kafka transactions together with the position; transactions already
  committed to Kafka are skipped, and the confirmed LSN never passes an open
  Kafka transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from cdc.capture import source_setup as source
from cdc.capture.encoding.type_mapping import (
    BinaryHandling,
    DecimalHandling,
    HstoreHandling,
    IntervalHandling,
    TimePrecision,
    TypeOptions,
)
from cdc.capture.session import CaptureSession
from cdc.capture.stats import CaptureStats
from cdc.config import Config
from cdc.core.supervision import run_restarting

__all__ = ["Capture"]

log = logging.getLogger("cdcsync.capture")


class Capture:
    """Runs capture for one slot until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        on_batch: Callable[[Capture], Awaitable[None] | None] | None = None,
        record_latency: bool = False,
    ) -> None:
        self.config = config
        self.stats = CaptureStats(latencies_us=[] if record_latency else None)
        self.on_batch = on_batch
        src = config.source
        self.type_options = TypeOptions(
            decimal_handling=DecimalHandling(src.decimal_handling_mode),
            interval_handling=IntervalHandling(src.interval_handling_mode),
            binary_handling=BinaryHandling(src.binary_handling_mode),
            time_precision=TimePrecision(src.time_precision_mode),
            hstore_handling=HstoreHandling(src.hstore_handling_mode),
            unavailable_value=src.unavailable_value_placeholder,
            temporal_logical_types=src.temporal_logical_types,
        )

    async def batch_done(self) -> None:
        """The session finished a batch: run the ``on_batch`` hook, if any."""
        if self.on_batch is not None:
            result = self.on_batch(self)
            if result is not None:
                await result

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Capture until ``stop`` is set; restart from the slot after transient failures."""
        await run_restarting(self._run_once, stop, self.stats, log, "capture")

    async def _run_once(self, stop: asyncio.Event) -> None:
        cfg = self.config
        src = cfg.source
        dsn = src.dsn.get_secret_value()
        report = await source.prepare(
            dsn,
            slot=src.slot,
            publication=src.publication,
            tables=list(src.tables),
            create_slot=src.create_slot,
            create_publication=src.create_publication,
        )
        for warning in report.warnings:
            log.warning("%s", warning)
        session = CaptureSession(self, report.database, created_slot=report.created_slot)
        try:
            await session.open()
            await session.loop(stop)
        finally:
            await session.close()
