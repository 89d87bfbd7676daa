"""The one retry primitive: backoff arithmetic, and retry_transient's retrying, stopping, hooks and reset."""

from __future__ import annotations

import asyncio

import pytest

from fullon_ohlcv_service.errors import PermanentError, RateLimited, TransientError
from fullon_ohlcv_service.retry import Attempts, Backoff, retry_transient


def test_delay_doubles_from_initial_to_the_cap() -> None:
    b = Backoff(0.25, 10.0)
    assert [b.delay(n) for n in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert b.delay(-3) == 0.25
    assert b.delay(10**6) == 10.0  # no overflow
    assert Backoff(1.0, 100.0, factor=3.0).delay(2) == 9.0
    assert Backoff(1.0, 100.0, factor=3.0).delay(10**6) == 100.0


def test_jitter_is_bounded_and_capped() -> None:
    b = Backoff(1.0, 60.0)
    assert b.jittered(2, 0.2, 0.0) == pytest.approx(3.2)
    assert b.jittered(2, 0.2, 1.0) == pytest.approx(4.8)
    assert b.jittered(2, 0.2, 0.5) == pytest.approx(4.0)
    assert b.jittered(30, 0.2, 1.0) == 60.0


def test_attempts_walk_the_curve_and_reset() -> None:
    a = Attempts(Backoff(0.5, 2.0))
    assert [a.next() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    a.reset()
    assert a.next() == 0.5 and a.failures == 1


class Flaky:
    """Fails ``n`` times with ``exc``, then returns ``value``."""

    def __init__(self, n: int, exc: Exception, value: int = 7) -> None:
        self.n = n
        self.exc = exc
        self.value = value
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.n:
            raise self.exc
        return self.value


async def test_retries_transient_errors_along_the_curve() -> None:
    waits: list[float] = []
    seen: list[tuple[str, float]] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    def on_error(exc: Exception, wait: float) -> None:
        seen.append((str(exc), wait))

    fn = Flaky(5, TransientError("down"))
    assert await retry_transient(fn, backoff=Backoff(0.1, 0.5), sleep=sleep, on_error=on_error) == 7
    assert fn.calls == 6 and waits == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert seen == [("down", w) for w in waits]


async def test_other_errors_propagate_at_once() -> None:
    fn = Flaky(1, PermanentError("gone"))
    with pytest.raises(PermanentError):
        await retry_transient(fn, backoff=Backoff(0.001, 0.001))
    assert fn.calls == 1
    fn2 = Flaky(1, ValueError("bug"))
    with pytest.raises(ValueError):
        await retry_transient(fn2, backoff=Backoff(0.001, 0.001))
    # retry_on widens what is retried
    fn3 = Flaky(2, ValueError("bug"))
    assert await retry_transient(fn3, backoff=Backoff(0.001, 0.001), retry_on=(Exception,)) == 7


async def test_on_error_may_choose_the_wait() -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    def floor(exc: Exception, wait: float) -> float | None:
        return max(wait, 1.0) if isinstance(exc, RateLimited) else None

    fn = Flaky(2, RateLimited("429"))
    await retry_transient(fn, backoff=Backoff(0.1, 0.5), sleep=sleep, on_error=floor)
    assert waits == [1.0, 1.0]


async def test_stop_raises_the_last_failure_before_or_after_the_wait() -> None:
    fn = Flaky(10, TransientError("down"))
    with pytest.raises(TransientError):
        await retry_transient(fn, backoff=Backoff(0.001, 0.001), stop=lambda: True)
    assert fn.calls == 1  # asked at once: no wait, no retry
    stopping = asyncio.Event()

    async def sleep(s: float) -> None:
        stopping.set()  # the stop arrives while waiting

    fn2 = Flaky(10, TransientError("down"))
    with pytest.raises(TransientError):
        await retry_transient(fn2, backoff=Backoff(0.001, 0.001), stop=stopping.is_set, sleep=sleep)
    assert fn2.calls == 1  # not tried again after the wait


async def test_an_attempt_that_ran_long_starts_the_curve_again() -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    class Runs:
        calls = 0

        async def __call__(self) -> int:
            self.calls += 1
            if self.calls == 4:
                await asyncio.sleep(0.35)  # this one ran healthily for a while before failing
            if self.calls <= 5:
                raise TransientError("crash")
            return 1

    await retry_transient(Runs(), backoff=Backoff(1.0, 30.0), sleep=sleep, healthy_after=0.3)
    assert waits == [1.0, 2.0, 4.0, 1.0, 2.0]


async def test_cancellation_is_never_retried() -> None:
    started = asyncio.Event()

    async def hang() -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    task = asyncio.create_task(retry_transient(hang, backoff=Backoff(0.001, 0.001), retry_on=(Exception,)))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_worker_retry_caps_are_validated_settings() -> None:
    from fullon_ohlcv_service.errors import ConfigError
    from fullon_ohlcv_service.settings import settings_from_env

    env = {"OHLCV_HOME": "/nonexistent-ohlcv-home"}
    s = settings_from_env(env)
    assert (s.rest_backoff_max, s.stream_backoff_max, s.store_backoff_max, s.open_backoff_max,
            s.markets_backoff_max, s.task_backoff_max, s.poll_backoff_max) == (10.0, 10.0, 5.0, 10.0, 30.0, 30.0, 15.0)
    # the writer's cap is its own: the supervisor's restart cap no longer bounds it
    assert settings_from_env(env, backoff_max=2.0).store_backoff_max == 5.0
    with pytest.raises(ConfigError, match=r"^--store-backoff-max: must be > 0, got 0"):
        settings_from_env(env, store_backoff_max=0)
