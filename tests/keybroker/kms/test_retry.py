"""The KMS retry helper: which errors it retries, how long it waits, when it gives up."""

from __future__ import annotations

import random

import pytest

from keybroker.kms.base import KeyNotFoundError, KmsTransientError
from keybroker.kms.retry import Backoff, call_with_retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception, result: str = "done"):
    calls = []

    def operation() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return result

    return operation, calls


def run(operation, backoff: Backoff, clock: FakeClock, **kwargs):
    return call_with_retry(
        operation, backoff=backoff, description="test op", sleep=clock.sleep,
        rng=random.Random(11), clock=clock, **kwargs,
    )


def test_success_needs_no_sleep():
    clock = FakeClock()
    operation, calls = failing(0, KmsTransientError("x"))
    assert run(operation, Backoff(), clock) == "done"
    assert (len(calls), clock.sleeps) == (1, [])


def test_permanent_errors_pass_through_at_once():
    clock = FakeClock()
    operation, calls = failing(5, KeyNotFoundError("no such key"))
    with pytest.raises(KeyNotFoundError, match="no such key"):
        run(operation, Backoff(), clock)
    assert (len(calls), clock.sleeps) == (1, [])


def test_transient_errors_are_retried_with_capped_jittered_delays():
    clock = FakeClock()
    backoff = Backoff(attempts=6, initial_delay=0.5, max_delay=2.0, multiplier=2.0,
                      max_elapsed=None)
    operation, calls = failing(5, KmsTransientError("busy"))
    assert run(operation, backoff, clock) == "done"
    assert len(calls) == 6
    caps = [0.5, 1.0, 2.0, 2.0, 2.0]
    assert [backoff.delay_cap(n) for n in range(5)] == caps
    assert all(0 <= delay <= cap for delay, cap in zip(clock.sleeps, caps, strict=True))
    assert len(set(clock.sleeps)) == 5  # jittered, not lock-step


def test_the_last_transient_error_is_raised_when_attempts_run_out():
    clock = FakeClock()
    operation, calls = failing(10, KmsTransientError("still busy"))
    with pytest.raises(KmsTransientError, match="still busy"):
        run(operation, Backoff(attempts=3, max_elapsed=None), clock)
    assert (len(calls), len(clock.sleeps)) == (3, 2)


def test_the_time_budget_stops_retrying_early():
    clock = FakeClock()
    backoff = Backoff(attempts=20, initial_delay=1.0, max_delay=1.0, max_elapsed=2.5)
    operation, calls = failing(100, KmsTransientError("busy"))
    with pytest.raises(KmsTransientError):
        run(operation, backoff, clock)
    assert sum(clock.sleeps) <= 2.5
    assert len(calls) < 20


def test_retry_on_names_the_errors_to_retry():
    clock = FakeClock()
    operation, calls = failing(1, TimeoutError("slow"))
    assert run(operation, Backoff(), clock, retry_on=(TimeoutError,)) == "done"
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 21}, "attempts"),
        ({"initial_delay": 3.0, "max_delay": 1.0}, "initial_delay"),
        ({"initial_delay": -1.0}, "initial_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"max_elapsed": 0}, "max_elapsed"),
    ],
)
def test_backoff_refuses_nonsense(arguments, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**arguments)
