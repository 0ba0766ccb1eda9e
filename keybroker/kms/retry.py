"""Retrying a KMS call on transient failures, with capped exponential backoff and full jitter.

A backend maps its client's errors to the typed KMS errors first; this module then retries
the call while it raises ``KmsTransientError`` (or whatever ``retry_on`` names), sleeping
``uniform(0, min(max_delay, initial_delay * multiplier ** n))`` before retry ``n`` ("full
jitter", so that many brokers hitting a throttled KMS spread out instead of retrying in
step). The sleep function, the random source and the clock are injectable so tests run in
microseconds. When the attempts or the time budget run out, the last error is re-raised as
it was, so the caller still sees the typed error of the final attempt.

It does not decide which errors are transient: that is each backend's job.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from keybroker.kms.base import KmsTransientError

__all__ = ["Backoff", "call_with_retry"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Backoff:
    """How often and how patiently to retry.

    ``attempts`` counts every call including the first; ``max_elapsed`` (seconds, measured
    with the injected clock) stops retrying early when the next sleep would overrun it.
    """

    attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    max_elapsed: float | None = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts: expected 1..{MAX_ATTEMPTS}, got {self.attempts}")
        if not 0 <= self.initial_delay <= self.max_delay:
            raise ValueError("initial_delay: expected 0 <= initial_delay <= max_delay")
        if self.multiplier < 1:
            raise ValueError(f"multiplier: expected >= 1, got {self.multiplier}")
        if self.max_elapsed is not None and self.max_elapsed <= 0:
            raise ValueError(f"max_elapsed: expected > 0 or None, got {self.max_elapsed}")

    def delay_cap(self, retry_number: int) -> float:
        """The upper bound of the sleep before retry ``retry_number`` (0 for the first retry)."""
        return min(self.max_delay, self.initial_delay * self.multiplier**retry_number)


def call_with_retry(
    operation: Callable[[], T],
    *,
    backoff: Backoff,
    description: str,
    retry_on: tuple[type[BaseException], ...] = (KmsTransientError,),
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``operation``; on a ``retry_on`` error sleep with jitter and try again.

    ``description`` names the call in log lines (never key bytes or plaintext).
    """
    source = rng if rng is not None else random.Random()
    started = clock()
    for attempt in range(1, backoff.attempts + 1):
        try:
            return operation()
        except retry_on as error:
            if attempt == backoff.attempts:
                _log.warning("%s: giving up after %d attempts: %s", description, attempt, error)
                raise
            delay = source.uniform(0.0, backoff.delay_cap(attempt - 1))
            if backoff.max_elapsed is not None and clock() + delay - started > backoff.max_elapsed:
                _log.warning(
                    "%s: giving up after %d attempts (time budget %.1fs spent): %s",
                    description,
                    attempt,
                    backoff.max_elapsed,
                    error,
                )
                raise
            _log.info("%s: attempt %d failed (%s); retrying in %.3fs", description, attempt,
                      error, delay)
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
