"""Prometheus metrics of a cdcsync process, read from the live counters at scrape time.

The hot paths (capture's delivery callback, a sync worker's apply loop) only bump plain
integers in their stats objects and ``LatencyHistogram.observe`` (a bisect and two
additions); nothing there knows about Prometheus. ``RuntimeCollector`` turns those
counters into metric families when /metrics is scraped, so a process that is never
scraped pays nothing.

Invariants:
- Counter metrics only ever grow within a process (they are the stats' monotonic fields).
- Every per-integration family carries the label ``integration``; names are stable: the
  alert rules in deploy/ depend on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cdc.core.histogram import LatencyHistogram

if TYPE_CHECKING:
    from cdc.capture.runtime import Capture
    from cdc.ops.reconcile.schedule import ReconcileScheduler
    from cdc.sync.runtime import Sync

CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class RuntimeCollector(Collector):
    """Metric families of the capture and sync roles running in this process."""

    def __init__(
        self,
        *,
        capture: Capture | None,
        sync: Sync | None,
        reconcile: ReconcileScheduler | None = None,
    ) -> None:
        self.capture = capture
        self.sync = sync
        self.reconcile = reconcile
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cdcsync_process_start_time_seconds",
            "When this cdcsync process started (Unix time).",
            value=self.started,
        )
        if self.capture is not None:
            yield from _capture_metrics(self.capture)
        if self.sync is not None:
            yield from _sync_metrics(self.sync)
        if self.reconcile is not None:
            yield from _reconcile_metrics(self.reconcile)


def _capture_metrics(capture: Capture) -> Iterator[Metric]:
    stats = capture.stats
    slot = capture.config.source.slot

    def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["slot"])
        family.add_metric([slot], value)
        return family

    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["slot"])
        family.add_metric([slot], value)
        return family

    yield counter("cdcsync_captured_events", "Change events published to Kafka.", stats.events)
    yield counter(
        "cdcsync_captured_tombstones", "Kafka tombstones published after deletes.", stats.tombstones
    )
    yield counter(
        "cdcsync_captured_transactions", "Source transactions captured.", stats.transactions
    )
    yield counter("cdcsync_capture_restarts", "Capture restarts after a failure.", stats.restarts)
    yield counter(
        "cdcsync_capture_skipped_transactions",
        "Exactly-once: source transactions found already committed to Kafka and not re-sent.",
        stats.skipped_transactions,
    )
    yield gauge(
        "cdcsync_replication_connected",
        "1 while the replication connection streams.",
        1.0 if stats.connected else 0.0,
    )
    yield gauge(
        "cdcsync_replication_lag_bytes",
        "WAL received from the server but not yet confirmed (acknowledged by Kafka).",
        float(max(int(stats.received_lsn) - int(stats.flushed_lsn), 0)),
    )
    yield gauge(
        "cdcsync_confirmed_flush_lsn",
        "The position confirmed to the server, as a number.",
        float(int(stats.flushed_lsn)),
    )
    if stats.heartbeat_lag_ms is not None:
        yield gauge(
            "cdcsync_replication_lag_seconds",
            "End-to-end capture lag measured by the last heartbeat.",
            stats.heartbeat_lag_ms / 1000,
        )
    if stats.retained_wal_bytes is not None:
        yield gauge(
            "cdcsync_slot_retained_wal_bytes",
            "WAL the server keeps for the slot.",
            float(stats.retained_wal_bytes),
        )
    hist = stats.delivery_latency
    family = HistogramMetricFamily(
        "cdcsync_kafka_delivery_latency_seconds",
        "Source commit to Kafka acknowledgement, per record (events and tombstones).",
        labels=["slot"],
    )
    family.add_metric([slot], hist.buckets(), sum_value=hist.sum_s)
    yield family


def _sync_metrics(sync: Sync) -> Iterator[Metric]:
    labels = ["integration"]
    applied = CounterMetricFamily("cdcsync_applied", "Entity operations applied.", labels=labels)
    skipped = CounterMetricFamily(
        "cdcsync_skipped",
        "Entity operations skipped: older than the target's version, or duplicates.",
        labels=[*labels, "reason"],
    )
    retried = CounterMetricFamily("cdcsync_retried", "Failed sink calls retried.", labels=labels)
    dead = CounterMetricFamily(
        "cdcsync_dead_lettered", "Records sent to the dead-letter topic.", labels=labels
    )
    records = CounterMetricFamily("cdcsync_records", "Kafka records consumed.", labels=labels)
    failed_checks = CounterMetricFamily(
        "cdcsync_health_check_failures", "Failed sink health checks.", labels=labels
    )
    circuit = GaugeMetricFamily(
        "cdcsync_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=labels
    )
    paused = GaugeMetricFamily("cdcsync_integration_paused", "1 while paused.", labels=labels)
    latency = HistogramMetricFamily(
        "cdcsync_apply_latency_seconds",
        "Source commit to applied in the target, per applied operation.",
        labels=labels,
    )
    for name, worker in sync.workers.items():
        s = worker.stats
        applied.add_metric([name], s.applied)
        skipped.add_metric([name, "older"], s.older)
        skipped.add_metric([name, "duplicate"], s.duplicate)
        skipped.add_metric([name, "echo"], s.echo)
        retried.add_metric([name], s.retried)
        dead.add_metric([name], s.dead_lettered)
        records.add_metric([name], s.records)
        failed_checks.add_metric([name], s.failed_checks)
        circuit.add_metric([name], CIRCUIT_VALUES.get(s.circuit, 0))
        paused.add_metric([name], 1.0 if s.paused else 0.0)
        latency.add_metric([name], s.apply_latency.buckets(), sum_value=s.apply_latency.sum_s)
    yield from (applied, skipped, retried, dead, records, failed_checks, circuit, paused, latency)
    inbound = CounterMetricFamily(
        "cdcsync_inbound_changes",
        "Inbound changes by what became of them (applied, lost to a newer write, ...).",
        labels=[*labels, "outcome"],
    )
    for name, inbound_worker in sync.inbound_workers.items():
        i = inbound_worker.stats
        for outcome, value in (
            ("applied", i.applied),
            ("lost", i.lost),
            ("duplicate", i.duplicate),
            ("other", i.other),
            ("dead_lettered", i.dead_lettered),
        ):
            inbound.add_metric([name, outcome], value)
    yield inbound


__all__ = ["CIRCUIT_VALUES", "LatencyHistogram", "RuntimeCollector"]


RECONCILE_RESULTS = ("equal", "drift", "failed")


def _reconcile_metrics(scheduler: ReconcileScheduler) -> Iterator[Metric]:
    """The last scheduled reconcile run of each integration with a schedule."""
    labels = ["integration"]
    drift = GaugeMetricFamily(
        "cdcsync_reconcile_drift_rows",
        "Keys that differed (missing, extra, different) in the last reconcile run.",
        labels=labels,
    )
    last_run = GaugeMetricFamily(
        "cdcsync_reconcile_last_run_timestamp_seconds",
        "When the last reconcile run ended (Unix time).",
        labels=labels,
    )
    result = GaugeMetricFamily(
        "cdcsync_reconcile_last_result",
        "1 for the last reconcile run's result (equal, drift or failed), 0 for the others.",
        labels=["integration", "result"],
    )
    for name, report in scheduler.last.items():
        drift.add_metric([name], report.drift_rows)
        ended = report.ended_at or report.started_at
        last_run.add_metric([name], ended.timestamp())
        for value in RECONCILE_RESULTS:
            result.add_metric([name, value], 1.0 if report.result == value else 0.0)
    yield drift
    yield last_run
    yield result
