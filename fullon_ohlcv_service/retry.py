"""One retry primitive: capped exponential backoff arithmetic, and one async helper that retries transient failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fullon_ohlcv_service.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff: after ``n`` failures the wait is ``initial * factor**n``, at most ``maximum``."""

    initial: float
    maximum: float
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` earlier consecutive failures (0: ``initial``)."""
        try:
            grown = self.initial * self.factor ** max(0, failures)
        except OverflowError:
            return self.maximum
        return min(self.maximum, grown)

    def jittered(self, failures: int, jitter: float, r: float) -> float:
        """``delay(failures)`` times a factor in [1 - jitter, 1 + jitter] (``r`` uniform in [0, 1]), capped again."""
        return min(self.maximum, max(0.0, self.delay(failures) * (1.0 + jitter * (2.0 * r - 1.0))))


class Attempts:
    """Consecutive failures along one Backoff: ``next()`` is the wait after one more; ``reset()`` after a success."""

    __slots__ = ("backoff", "failures")

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0

    def next(self) -> float:
        wait = self.backoff.delay(self.failures)
        self.failures += 1
        return wait

    def reset(self) -> None:
        self.failures = 0


def _never() -> bool:
    return False


async def retry_transient(
    fn: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    stop: Callable[[], bool] = _never,
    on_error: Callable[[Exception, float], float | None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    retry_on: tuple[type[Exception], ...] = (TransientError,),
    healthy_after: float | None = None,
) -> T:
    """Await ``fn()`` until it returns, waiting along ``backoff`` after each failure of a ``retry_on`` type.

    Any other exception propagates at once (``CancelledError`` is never caught). ``stop()`` is asked
    after each failure and again after each wait: when true, that failure is raised instead of
    retried. ``on_error(exc, wait)`` sees every failure that will be retried with the wait planned
    for it, and may return another wait (a rate limit's floor). An attempt that ran longer than
    ``healthy_after`` seconds before failing starts the curve again. ``sleep`` may be interruptible.
    """
    attempts = Attempts(backoff)
    while True:
        started = time.monotonic()
        try:
            return await fn()
        except retry_on as exc:
            if stop():
                raise
            if healthy_after is not None and time.monotonic() - started > healthy_after:
                attempts.reset()
            wait = attempts.next()
            if on_error is not None:
                chosen = on_error(exc, wait)
                if chosen is not None:
                    wait = chosen
            await sleep(wait)
            if stop():
                raise
