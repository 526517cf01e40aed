"""The capture runtime: prepares the source, runs capture sessions, restarts them after failures.

``Capture.run`` checks and sets up the source (publication, slot), then runs one
``CaptureSession`` (``cdc.capture.session``: replication stream -> decoded changes -> Avro
events -> Kafka, with the invariants of the confirmed LSN stated there) until stopped.

Invariants:
- Transient failures (source, broker, registry unreachable; a failed delivery) tear the
  session down and start a new one from the slot: committed transactions not yet
  confirmed are re-sent with the same (commit LSN, total_order) identity.
- Fatal errors stop capture; the restart pauses follow ``cdc.core.supervision``.
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


def type_options(config: Config) -> TypeOptions:
    """How capture encodes values, from the ``source`` settings (Debezium's modes)."""
    src = config.source
    return TypeOptions(
        decimal_handling=DecimalHandling(src.decimal_handling_mode),
        interval_handling=IntervalHandling(src.interval_handling_mode),
        binary_handling=BinaryHandling(src.binary_handling_mode),
        time_precision=TimePrecision(src.time_precision_mode),
        hstore_handling=HstoreHandling(src.hstore_handling_mode),
        unavailable_value=src.unavailable_value_placeholder,
        temporal_logical_types=src.temporal_logical_types,
    )


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
        self.type_options = type_options(config)

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
