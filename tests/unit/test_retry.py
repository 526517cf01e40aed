"""Backoff delays and circuit-breaker transitions, driven by a fake clock and a seeded rng."""

from __future__ import annotations

import random

import pytest

from cdc.config import CircuitConfig, RetryConfig
from cdc.core.backoff import Backoff
from cdc.core.circuit_breaker import CircuitBreaker, CircuitState


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def backoff(**settings: float) -> Backoff:
    return Backoff(RetryConfig.model_validate(settings), rng=random.Random(7))


def breaker(clock: FakeClock, *, threshold: int = 3, timeout: float = 10.0) -> CircuitBreaker:
    config = CircuitConfig(failure_threshold=threshold, reset_timeout_s=timeout)
    return CircuitBreaker(config, clock=clock)


# ------------------------------------------------------------------------- backoff


def test_without_jitter_the_delay_doubles_from_the_initial_value_up_to_the_cap() -> None:
    delays = [
        backoff(initial_backoff_s=0.5, max_backoff_s=5, jitter=0).delay(n) for n in range(1, 7)
    ]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_keeps_each_delay_within_its_fraction_of_the_nominal_delay() -> None:
    policy = backoff(initial_backoff_s=1, max_backoff_s=1000, jitter=0.25)
    for attempt in range(1, 9):
        nominal = 2.0 ** (attempt - 1)
        samples = [policy.delay(attempt) for _ in range(200)]
        assert all(nominal * 0.75 <= d <= nominal * 1.25 for d in samples)
        # The jitter really spreads the retries of many workers apart.
        assert max(samples) - min(samples) > nominal * 0.25


def test_a_jittered_delay_never_exceeds_the_cap_nor_goes_negative() -> None:
    policy = backoff(initial_backoff_s=2, max_backoff_s=3, jitter=1.0)
    samples = [policy.delay(attempt) for attempt in range(1, 6) for _ in range(100)]
    assert all(0.0 <= d <= 3.0 for d in samples)


def test_the_same_seed_gives_the_same_delays() -> None:
    config = RetryConfig(initial_backoff_s=0.1, max_backoff_s=10, jitter=0.5)
    first = Backoff(config, rng=random.Random(42))
    second = Backoff(config, rng=random.Random(42))
    assert [first.delay(n) for n in range(1, 10)] == [second.delay(n) for n in range(1, 10)]


def test_a_longer_retry_after_from_the_server_wins_over_the_computed_delay() -> None:
    policy = backoff(initial_backoff_s=1, max_backoff_s=10, jitter=0)
    assert policy.delay(1, retry_after=120.0) == 120.0


def test_a_shorter_retry_after_does_not_shorten_the_backoff() -> None:
    policy = backoff(initial_backoff_s=1, max_backoff_s=10, jitter=0)
    assert policy.delay(3, retry_after=0.5) == 4.0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert backoff(initial_backoff_s=1, max_backoff_s=30, jitter=0).delay(10_000) == 30.0


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff().delay(0)


def test_the_operation_is_exhausted_after_the_configured_number_of_attempts() -> None:
    policy = backoff(attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3)] == [False, False, True]
    assert policy.attempts == 3


# ------------------------------------------------------------------- circuit breaker


def test_a_new_circuit_is_closed_and_allows_calls() -> None:
    circuit = breaker(FakeClock())
    assert circuit.state is CircuitState.CLOSED
    assert circuit.allow()
    assert circuit.opened_at is None
    assert circuit.times_opened == 0


def test_the_circuit_opens_after_the_threshold_of_failures_in_a_row() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=3)
    circuit.record_failure()
    circuit.record_failure()
    assert circuit.allow() and circuit.times_opened == 0
    circuit.record_failure()
    assert circuit.state is CircuitState.OPEN
    assert circuit.opened_at == clock.now
    assert circuit.times_opened == 1
    assert not circuit.allow()


def test_a_success_between_failures_resets_the_count() -> None:
    circuit = breaker(FakeClock(), threshold=3)
    for _ in range(5):
        circuit.record_failure()
        circuit.record_failure()
        circuit.record_success()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.consecutive_failures == 0


def test_an_open_circuit_refuses_calls_until_the_reset_timeout_elapses() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=1, timeout=10)
    circuit.record_failure()
    clock.advance(9.9)
    assert not circuit.allow()
    assert circuit.retry_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert circuit.retry_in() == 0.0
    assert circuit.allow()
    assert circuit.state is CircuitState.HALF_OPEN


def test_a_half_open_circuit_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=1, timeout=5)
    circuit.record_failure()
    clock.advance(5)
    assert [circuit.allow() for _ in range(4)] == [True, False, False, False]


def test_a_successful_probe_closes_the_circuit() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=2, timeout=5)
    circuit.record_failure()
    circuit.record_failure()
    clock.advance(6)
    assert circuit.allow()
    circuit.record_success()
    assert circuit.state is CircuitState.CLOSED
    assert circuit.consecutive_failures == 0
    assert all(circuit.allow() for _ in range(3))


def test_a_failed_probe_reopens_the_circuit_for_a_full_timeout() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=2, timeout=5)
    circuit.record_failure()
    circuit.record_failure()
    clock.advance(7)
    assert circuit.allow()
    circuit.record_failure()
    assert circuit.state is CircuitState.OPEN
    assert circuit.opened_at == clock.now
    assert circuit.times_opened == 2
    clock.advance(4.9)
    assert not circuit.allow()
    clock.advance(0.1)
    assert circuit.allow()


def test_failures_reported_while_open_do_not_extend_the_timeout() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=1, timeout=10)
    circuit.record_failure()
    opened = circuit.opened_at
    clock.advance(8)
    circuit.record_failure()  # a call that was already in flight when the circuit opened
    assert circuit.opened_at == opened
    assert circuit.times_opened == 1
    clock.advance(2)
    assert circuit.allow()


def test_tripping_opens_a_closed_circuit_at_once_and_leaves_an_open_one_alone() -> None:
    clock = FakeClock()
    circuit = breaker(clock, threshold=5, timeout=10.0)
    circuit.trip()
    assert circuit.state is CircuitState.OPEN
    assert not circuit.allow()
    opened = circuit.opened_at
    clock.advance(4)
    circuit.trip()
    assert circuit.opened_at == opened  # the timeout is not extended
    assert circuit.times_opened == 1
    clock.advance(6)
    assert circuit.allow()  # the half-open probe, as after failures
