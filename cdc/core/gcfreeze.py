"""Keep CPython's full garbage collections short in the long-running roles.

A running capture or sync process holds tens of thousands of objects made at start-up
(modules, schemas, clients, sinks) that live until it exits. A full (generation 2)
collection traverses all of them: in a sync process under load such a pause took up to
65 ms, which every event in flight at that moment waited through.

``freeze_when_ready`` waits until the roles are running, collects once, then moves every
object alive into the permanent generation (``gc.freeze``): later full collections only
traverse what was made after, so they stay short.

Invariants: it runs once per process; garbage is collected before the freeze, so only
live start-up state is frozen (a frozen object is still freed when its reference count
drops to zero; only cycles among frozen objects are never collected).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("cdcsync.gc")

_READY_POLL_S = 0.1


def freeze_now() -> int:
    """Collect, then freeze every object alive; returns how many are frozen now."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug(
        "froze %d start-up objects in %.0f ms", frozen, (time.perf_counter() - started) * 1000
    )
    return frozen


async def freeze_when_ready(
    ready: Callable[[], bool], stop: asyncio.Event, *, timeout_s: float = 60.0
) -> None:
    """``freeze_now`` once ``ready()`` holds (or after ``timeout_s``); nothing if stopped."""
    deadline = time.monotonic() + timeout_s
    while not ready() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(stop.wait(), _READY_POLL_S)
        except TimeoutError:
            continue
        return  # stopping: no point
    if not stop.is_set():
        freeze_now()
