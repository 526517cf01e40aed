"""``run_checks``: every check of ``cdcsync check``, run concurrently, in one report.

Invariants: nothing here writes anywhere (no slot, publication, topic, schema or table is
created); every group of checks is bounded in time; every secret of the configuration is
scrubbed from the report before it is returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from cdc.config import Config
from cdc.ops.check import services
from cdc.ops.check.report import CheckReport, Finding, bounded, scrub, secrets_of
from cdc.ops.check.source import check_source

__all__ = ["run_checks"]


async def run_checks(config: Config, *, timeout_s: float = 10.0) -> CheckReport:
    """Run every check (concurrently, each bounded by ``timeout_s``) and return the report."""
    groups: list[tuple[str, str, Awaitable[list[Finding]]]] = [
        ("source", "the source database", check_source(config, timeout_s=timeout_s)),
        ("kafka", "Kafka", services.check_kafka(config, timeout_s=timeout_s)),
        ("registry", "the registry", services.check_registry(config, timeout_s=timeout_s)),
        ("state store", "the state store", services.check_state(config, timeout_s=timeout_s)),
        ("sinks", "the sinks", services.check_sinks(config, timeout_s=timeout_s)),
        ("inbound", "inbound", services.check_inbound(config, timeout_s=timeout_s)),
    ]
    # Each group bounds its own calls; this outer limit is only a safety net.
    results = await asyncio.gather(
        *(bounded(s, what, call, timeout_s=3 * timeout_s + 5) for s, what, call in groups)
    )
    findings = [f for group in results for f in group]
    return CheckReport(tuple(scrub(findings, secrets_of(config))))
