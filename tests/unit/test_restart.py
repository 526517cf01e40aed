"""run_restarting: pauses double per failure in a row and start over after a healthy run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest

from cdc import restart
from cdc.errors import BrokerUnavailable, DecodeError


@dataclass
class Stats:
    restarts: int = 0
    last_error: str | None = None


class Script:
    """A worker that fails after running for scripted times, then returns; a fake clock."""

    def __init__(self, run_times: list[float]) -> None:
        self.run_times = run_times
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    async def run_once(self, _stop: asyncio.Event) -> None:
        if not self.run_times:
            return
        self.now += self.run_times.pop(0)
        raise BrokerUnavailable("broker gone\nsecond line")

    async def wait_for(self, aw: Awaitable[Any], timeout: float) -> None:
        self.pauses.append(timeout)
        self.now += timeout
        if asyncio.iscoroutine(aw):
            aw.close()
        raise TimeoutError


def run(
    script: Script, monkeypatch: pytest.MonkeyPatch, stats: Stats, *, jitter: float = 0.0
) -> None:
    monkeypatch.setattr(restart.asyncio, "wait_for", script.wait_for)
    monkeypatch.setattr(restart.random, "random", lambda: jitter)
    asyncio.run(
        restart.run_restarting(
            script.run_once,
            asyncio.Event(),
            stats,
            logging.getLogger("test"),
            "capture",
            clock=script.clock,
        )
    )


def test_pauses_double_per_failure_in_a_row_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([0.1] * 9)
    stats = Stats()
    run(script, monkeypatch, stats)
    assert script.pauses == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert stats.restarts == 9
    assert stats.last_error == "broker gone"


def test_a_failure_after_a_healthy_run_is_retried_after_the_first_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script([0.1, 0.1, 0.1, 0.1, restart.HEALTHY_RUN_S + 1, 0.1])
    run(script, monkeypatch, Stats())
    assert script.pauses == [0.5, 1, 2, 4, 0.5, 1]


def test_jitter_adds_at_most_half_the_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script([0.1, 0.1])
    run(script, monkeypatch, Stats(), jitter=0.999)
    assert script.pauses == pytest.approx([0.5 * 1.4995, 1.4995])


def test_an_error_that_is_not_retryable_ends_the_run() -> None:
    async def broken(_stop: asyncio.Event) -> None:
        raise DecodeError("bad message")

    with pytest.raises(DecodeError):
        asyncio.run(
            restart.run_restarting(broken, asyncio.Event(), Stats(), logging.getLogger("t"), "x")
        )
