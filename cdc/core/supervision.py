"""Run a long-lived worker (capture, a sync or inbound worker) and restart it after failures.

``run_restarting`` calls ``run_once`` until it returns or ``stop`` is set. A
``RetryableError`` (a lost connection, a broker outage, a fenced producer) is counted in
the worker's stats, logged as ``"{what} interrupted (...)"`` and followed by a pause
before the next attempt.

Invariants:
- The pause follows ``RESTART_BACKOFF`` (``cdc.core.backoff``): it starts at 0.5 s and
  doubles per failure in a row, up to 30 s, moved by up to +/- 25 % jitter so that
  workers failing together do not retry in lockstep.
- A run that stayed up for ``HEALTHY_RUN_S`` or longer before failing counts as a fresh
  failure: the pause starts over at 0.5 s, so one blip after days of service is retried
  at once and not after the 30 s reached by an outage long ago.
- ``stop`` ends the pause at once; nothing else is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from cdc.core.backoff import BackoffPolicy
from cdc.core.errors import RetryableError, first_line

RESTART_BACKOFF = BackoffPolicy(initial_s=0.5, max_s=30.0, jitter=0.25)
HEALTHY_RUN_S = 60.0


class Restartable(Protocol):
    restarts: int
    last_error: str | None


async def run_restarting(
    run_once: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    stats: Restartable,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    what: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    backoff: BackoffPolicy = RESTART_BACKOFF,
    rng: random.Random | None = None,
) -> None:
    """``run_once`` until it returns or ``stop``; a ``RetryableError`` restarts it with backoff."""
    failures = 0
    while not stop.is_set():
        started = clock()
        try:
            await run_once(stop)
            return
        except asyncio.CancelledError:
            if stop.is_set():
                return
            raise
        except RetryableError as exc:
            if clock() - started >= HEALTHY_RUN_S:
                failures = 0
            failures += 1
            stats.restarts += 1
            stats.last_error = first_line(exc)
            delay = backoff.delay(failures, rng=rng)
            logger.warning("%s interrupted (%s); restarting in %.1fs", what, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
