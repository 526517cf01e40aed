"""The one backoff policy: how long to wait after a failure before trying again.

Every retry loop in cdcsync waits by ``BackoffPolicy``: the sync worker between attempts
at a sink (``Backoff``, which adds the attempt budget), the supervisor between restarts
of a worker (``cdc.core.supervision``), a mapper waiting for a related entity, and the
registry client between requests (``schema_registry.client``).

``BackoffPolicy.delay(attempt)`` for the 1-based attempt that just failed is
``initial_s * 2**(attempt - 1)`` capped at ``max_s``, then moved by a uniform jitter of
+/- ``jitter`` (a fraction of the delay) and clamped to ``[0, max_s]``: the delay never
exceeds the cap and never goes negative, and workers failing together do not retry in
lockstep. A server's ``retry_after`` (HTTP ``Retry-After``) is honoured when it asks for
longer than the computed delay; it is not capped, since the target said when it will be
ready (a caller that must bound it caps it first).

``Backoff.exhausted(attempt)`` is true once ``attempts`` tries have been made; the sync
worker then dead-letters the message.

Pure: no sleeping, no I/O; randomness comes from an injectable ``random.Random``, so
callers decide when to sleep and tests use a seeded generator.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backoff", "BackoffPolicy", "RetrySettings"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with jitter; see the module docstring."""

    initial_s: float
    max_s: float
    jitter: float = 0.0

    def delay(
        self,
        attempt: int,
        *,
        rng: random.Random | None = None,
        retry_after: float | None = None,
    ) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next try."""
        if attempt < 1:
            raise ValueError(f"attempt must be 1 or more, not {attempt}")
        # 2**(attempt - 1) overflows floats for absurd attempt numbers; the cap is reached
        # long before, so stop doubling there.
        exponent = min(attempt - 1, 1000)
        base = min(self.initial_s * 2.0**exponent, self.max_s)
        spread = base * self.jitter
        if spread > 0:
            base += (rng if rng is not None else _RNG).uniform(-spread, spread)
        value = min(max(base, 0.0), self.max_s)
        if retry_after is not None and retry_after > value:
            return float(retry_after)
        return value


_RNG = random.Random()


class RetrySettings(Protocol):
    """A sink's retry settings (``integrations.*.retry`` in the configuration)."""

    @property
    def attempts(self) -> int: ...

    @property
    def initial_backoff_s(self) -> float: ...

    @property
    def max_backoff_s(self) -> float: ...

    @property
    def jitter(self) -> float: ...


class Backoff:
    """Delays between the attempts of one operation. See the module docstring."""

    __slots__ = ("_config", "_policy", "_rng")

    def __init__(self, config: RetrySettings, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._policy = BackoffPolicy(config.initial_backoff_s, config.max_backoff_s, config.jitter)
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
        return self._policy.delay(attempt, rng=self._rng, retry_after=retry_after)
