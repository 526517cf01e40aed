"""Scheduled reconcile runs inside ``cdcsync run`` / ``sync``.

An integration with ``reconcile.every`` (``6h``) or ``reconcile.cron`` (five fields, UTC,
read by croniter) is reconciled on that schedule by the process that syncs it; with
``reconcile.repair: true`` the run also repairs what it found. The first ``every`` run is
one period after start; a cron run at the expression's next time. Runs go one at a time
(integrations take turns), each bounded by its ``rows_per_s``, so the source is never read
by two runs at once from one process.

Each run is recorded in the state store's history (``reconcile_runs``, by the runner); the
scheduler keeps the last report per integration for ``/status`` and ``/metrics``
(``cdcsync_reconcile_drift_rows``, ``cdcsync_reconcile_last_run_timestamp_seconds``,
``cdcsync_reconcile_last_result``). A run that fails (a target down, a configuration
problem) is recorded as failed with its reason and the schedule goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cdc.config import Config, ReconcileConfig
from cdc.core.errors import CdcsyncError, first_line
from cdc.ops.reconcile.report import Report
from cdc.ops.reconcile.runner import reconcile, sink_kind

__all__ = ["ReconcileScheduler", "next_run"]

log = logging.getLogger("cdcsync.reconcile")


def next_run(settings: ReconcileConfig, *, after: float) -> float | None:
    """When the next run after ``after`` (Unix time) is due; None: not scheduled."""
    every = settings.every_s
    if every is not None:
        return after + every
    if settings.cron is not None:
        from croniter import croniter  # noqa: PLC0415

        start = datetime.fromtimestamp(after, tz=UTC)
        return float(croniter(settings.cron, start).get_next(float))
    return None


class ReconcileScheduler:
    """Runs the scheduled reconciles of ``names``; see the module docstring."""

    def __init__(self, config: Config, names: Sequence[str]) -> None:
        self.config = config
        self.plans = {
            name: config.integrations[name].reconcile
            for name in names
            if next_run(config.integrations[name].reconcile, after=0.0) is not None
        }
        self.last: dict[str, Report] = {}
        self.running: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if not self.plans:
            return
        now = time.time()
        due: dict[str, float] = {}
        for name, settings in self.plans.items():
            at = next_run(settings, after=now)
            assert at is not None
            due[name] = at
        log.info("reconcile scheduled for %s", ", ".join(sorted(self.plans)))
        while not stop.is_set():
            name = min(due, key=due.__getitem__)
            delay = due[name] - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            await self.run_one(name)
            at = next_run(self.plans[name], after=time.time())
            assert at is not None
            due[name] = at

    async def run_one(self, name: str) -> Report:
        settings = self.plans.get(name) or self.config.integrations[name].reconcile
        self.running = name
        try:
            report = await reconcile(self.config, name, repair=settings.repair, scheduled=True)
        except Exception as exc:  # a configuration problem or a bug: this run fails, not sync
            if not isinstance(exc, CdcsyncError):
                log.exception("reconcile %s: the run failed", name)
            report = Report(name, sink_kind(self.config.integrations[name]))
            report.error = f"{type(exc).__name__}: {first_line(exc)}"
            report.ended_at = datetime.now(UTC)
        finally:
            self.running = None
        self.last[name] = report
        level = logging.WARNING if report.result != "equal" else logging.INFO
        log.log(
            level,
            "reconcile %s: %s (%d rows, %d missing, %d extra, %d different%s)",
            name,
            report.result,
            report.rows_checked,
            report.missing,
            report.extra,
            report.different,
            "" if report.error is None else f"; {report.error}",
        )
        return report

    def status(self) -> dict[str, Any]:
        """Per scheduled integration: its schedule and its last run's summary."""
        out: dict[str, Any] = {}
        for name, settings in self.plans.items():
            last = self.last.get(name)
            out[name] = {
                "every": settings.every,
                "cron": settings.cron,
                "running": self.running == name,
                "last": None if last is None else last.summary(),
            }
        return out
