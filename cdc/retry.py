"""Retry timing and the circuit breaker that guard every sink call.

Both are pure state machines: no sleeping, no I/O. Time comes from an injected clock and
randomness from an injected ``random.Random``, so the sync worker decides when to sleep
and tests drive them with a fake clock and a seeded generator.

``Backoff`` (exponential backoff with jitter):

- ``delay(attempt)`` for the 1-based attempt that just failed is
  ``initial_backoff_s * 2**(attempt - 1)`` capped at ``max_backoff_s``, then moved by a
  uniform jitter of +/- ``jitter`` (a fraction of the delay) and clamped to
  ``[0, max_backoff_s]``: the delay never exceeds the cap and never goes negative.
- A server's ``retry_after`` (HTTP ``Retry-After``) is honoured when it asks for longer
  than the computed delay; it is not capped, since the target said when it will be ready.
- ``exhausted(attempt)`` is true once ``attempts`` tries have been made; the message then
  goes to the dead-letter topic.

``CircuitBreaker`` (stop hammering a failing target):

- CLOSED: every call is allowed; ``failure_threshold`` failures in a row open the circuit.
- OPEN: no call is allowed until ``reset_timeout_s`` has elapsed since it opened; then the
  next ``allow()`` moves to HALF_OPEN and lets exactly one probe through.
- HALF_OPEN: further calls are refused while the probe is out; its success closes the
  circuit (failure count reset), its failure opens it again for a full timeout.

Invariants: ``consecutive_failures`` is reset only by a success; ``times_opened`` counts
every transition into OPEN; ``opened_at`` is the clock reading of the latest opening
(None before the first one).
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable

from cdc.config import CircuitConfig, RetryConfig

__all__ = ["Backoff", "CircuitBreaker", "CircuitState"]


class Backoff:
    """Delays between the attempts of one operation. See the module docstring."""

    __slots__ = ("_config", "_rng")

    def __init__(self, config: RetryConfig, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng if rng is not None else random.Random()

    @property
    def attempts(self) -> int:
        """How many times an operation is tried in all before it is dead-lettered."""
        return self._config.attempts

    def exhausted(self, attempt: int) -> bool:
        """True when ``attempt`` (1-based, just failed) was the last one allowed."""
        return attempt >= self._config.attempts

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next try."""
        if attempt < 1:
            raise ValueError(f"attempt must be 1 or more, not {attempt}")
        cfg = self._config
        # 2**(attempt - 1) overflows floats for absurd attempt numbers; the cap is reached
        # long before, so stop doubling there.
        exponent = min(attempt - 1, 1000)
        base = min(cfg.initial_backoff_s * 2.0**exponent, cfg.max_backoff_s)
        spread = base * cfg.jitter
        jittered = base + self._rng.uniform(-spread, spread) if spread > 0 else base
        value = min(max(jittered, 0.0), cfg.max_backoff_s)
        if retry_after is not None and retry_after > value:
            return float(retry_after)
        return value


class CircuitState(enum.Enum):
    """Where a circuit breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Refuses calls to a target that keeps failing. See the module docstring."""

    __slots__ = (
        "_clock",
        "_config",
        "_opened_at",
        "_state",
        "consecutive_failures",
        "times_opened",
    )

    def __init__(
        self, config: CircuitConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._opened_at: float | None = None
        self.consecutive_failures = 0
        self.times_opened = 0

    @property
    def state(self) -> CircuitState:
        """The current state (an OPEN circuit whose timeout elapsed still reads OPEN
        until ``allow()`` lets the probe through)."""
        return self._state

    @property
    def opened_at(self) -> float | None:
        """The clock reading when the circuit last opened, or None if it never did."""
        return self._opened_at

    def retry_in(self) -> float:
        """Seconds until ``allow()`` may say yes again (0 when it would now)."""
        if self._state is CircuitState.CLOSED:
            return 0.0
        if self._state is CircuitState.HALF_OPEN:
            # The probe is out and its outcome decides; ask again after a timeout at most.
            return self._config.reset_timeout_s
        assert self._opened_at is not None
        return max(0.0, self._opened_at + self._config.reset_timeout_s - self._clock())

    def allow(self) -> bool:
        """Whether a call may go to the target now (HALF_OPEN: only the single probe)."""
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.OPEN:
            assert self._opened_at is not None
            if self._clock() - self._opened_at < self._config.reset_timeout_s:
                return False
            self._state = CircuitState.HALF_OPEN
            return True
        return False  # HALF_OPEN: the one probe is already out

    def record_success(self) -> None:
        """A call succeeded: close the circuit and forget the failures."""
        self._state = CircuitState.CLOSED
        self.consecutive_failures = 0

    def record_failure(self) -> None:
        """A call failed (a retryable failure of the target, not a rejected entity)."""
        self.consecutive_failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED
            and self.consecutive_failures >= self._config.failure_threshold
        ):
            self._open()

    def trip(self) -> None:
        """Open the circuit now (a failed health check: the target is known to be down)."""
        if self._state is not CircuitState.OPEN:
            self._open()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self.times_opened += 1
