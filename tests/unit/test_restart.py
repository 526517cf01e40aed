"""run_restarting: pauses double per failure in a row and start over after a healthy run."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest

from cdc.core import supervision as restart
from cdc.core.backoff import BackoffPolicy
from cdc.core.errors import BrokerUnavailable, DecodeError


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
    policy = BackoffPolicy(
        restart.RESTART_BACKOFF.initial_s, restart.RESTART_BACKOFF.max_s, jitter=jitter
    )
    asyncio.run(
        restart.run_restarting(
            script.run_once,
            asyncio.Event(),
            stats,
            logging.getLogger("test"),
            "capture",
            clock=script.clock,
            backoff=policy,
            rng=random.Random(3),
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


def test_jitter_moves_each_pause_by_at_most_its_fraction_and_spreads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = Script([0.1] * 6)
    run(script, monkeypatch, Stats(), jitter=restart.RESTART_BACKOFF.jitter)
    bases = [0.5, 1, 2, 4, 8, 16]
    assert all(0.75 * b <= p <= 1.25 * b for p, b in zip(script.pauses, bases, strict=True))
    assert script.pauses != bases


def test_an_error_that_is_not_retryable_ends_the_run() -> None:
    async def broken(_stop: asyncio.Event) -> None:
        raise DecodeError("bad message")

    with pytest.raises(DecodeError):
        asyncio.run(
            restart.run_restarting(broken, asyncio.Event(), Stats(), logging.getLogger("t"), "x")
        )
