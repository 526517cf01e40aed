"""The circuit breaker that stops a sync worker hammering a failing target.

A pure state machine: no sleeping, no I/O; time comes from an injected clock, so tests
drive it with a fake one.

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
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["CircuitBreaker", "CircuitSettings", "CircuitState"]


class CircuitSettings(Protocol):
    """The breaker's settings (``integrations.*.circuit`` in the configuration)."""

    @property
    def failure_threshold(self) -> int: ...

    @property
    def reset_timeout_s(self) -> float: ...


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
        self, config: CircuitSettings, *, clock: Callable[[], float] = time.monotonic
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
