"""Trade pagination with a (ts, id) cursor: shared last millisecond, short pages, no progress, retries."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import pytest

from fullon_ohlcv_service.collectors.backfill import Cursor, PageResult, Retry, page_candles, page_trades
from fullon_ohlcv_service.collectors.sync import RecentIds
from fullon_ohlcv_service.collectors.trades import SilencePolicy
from fullon_ohlcv_service.errors import RateLimited
from fullon_ohlcv_service.models import Candle, Trade


class PagedExchange:
    """Serves a fixed trade list like an exchange: trades at or after ``since``, ``cap`` per page."""

    name = "fake"
    ohlcv_depth = None

    def __init__(self, trades: Sequence[Trade], cap: int, fail_first: int = 0) -> None:
        self.trades = sorted(trades, key=lambda t: (t.ts, int(t.id)))
        self.cap = cap
        self.calls: list[int] = []
        self.fail_first = fail_first

    async def fetch_trades(self, symbol: str, since: int, limit: int | None = None) -> list[Trade]:
        if self.fail_first:
            self.fail_first -= 1
            raise RateLimited("429")
        self.calls.append(since)
        return [t for t in self.trades if t.ts >= since][: self.cap]

    async def fetch_ohlcv(self, symbol: str, since: int, limit: int | None = None) -> list[Candle]:
        self.calls.append(since)
        rows = [Candle(m * 60_000, 1, 1, 1, 1, 1) for m in range(100)]
        return [c for c in rows if c.ts >= since][: self.cap]


def many_same_ms() -> list[Trade]:
    out = []
    tid = 0
    for ts in (1000, 2000, 2000, 2000, 2000, 3000, 3000, 4000, 9000):
        tid += 1
        out.append(Trade(ts, str(tid), 1.0, 1.0, "sell"))
    return out


async def collect(ex: PagedExchange, cursor: Cursor, target: int) -> tuple[list[Trade], PageResult, list[int]]:
    got: list[Trade] = []
    marks: list[int] = []

    async def on_page(trades: list[Trade], wm: int) -> None:
        got.extend(trades)
        marks.append(wm)

    res = await page_trades(ex, "X", cursor, lambda: target, on_page, retry=Retry(0.001, 0.002))  # type: ignore[arg-type]
    return got, res, marks


async def test_short_pages_and_shared_millisecond_lose_nothing() -> None:
    src = many_same_ms()
    ex = PagedExchange(src, cap=5)  # the first page ends inside the 2000 ms group
    got, res, marks = await collect(ex, Cursor(0), target=10_000)
    assert [t.id for t in got] == [t.id for t in src]
    assert not res.reached and res.pages == 4  # ended on no progress, never on a short page
    assert marks == sorted(marks)
    assert len(set(ex.calls)) == len(ex.calls) - 1 or ex.calls == sorted(ex.calls)


async def test_stops_when_a_page_passes_the_target() -> None:
    ex = PagedExchange(many_same_ms(), cap=5)
    got, res, _ = await collect(ex, Cursor(0), target=2500)
    assert res.reached and max(t.ts for t in got) > 2500
    assert all(t.ts <= 3000 for t in got)


async def test_resume_from_cursor_skips_taken_ids_at_that_ms() -> None:
    src = many_same_ms()
    ex = PagedExchange(src, cap=100)
    got, _, _ = await collect(ex, Cursor(2000, {"2", "3"}), target=10_000)
    assert [t.id for t in got] == ["4", "5", "6", "7", "8", "9"]


async def test_no_progress_watermark_is_request_time_minus_settle() -> None:
    ex = PagedExchange([], cap=10)
    got, res, _ = await collect(ex, Cursor(0), target=10_000)
    assert got == [] and res.watermark is not None and res.watermark > 1_000_000_000_000


async def test_crowded_millisecond_claims_no_completeness() -> None:
    src = [Trade(2000, str(i), 1.0, 1.0, "buy") for i in range(150)]
    ex = PagedExchange(src, cap=100)
    got, res, _ = await collect(ex, Cursor(0), target=10_000)
    assert len(got) == 100 and res.watermark == 2000


async def test_rate_limit_is_retried() -> None:
    ex = PagedExchange(many_same_ms(), cap=100, fail_first=3)
    retry = Retry(0.001, 0.002, rate_limit_floor=0.001)
    got: list[Trade] = []

    async def on_page(trades: list[Trade], wm: int) -> None:
        got.extend(trades)

    res = await page_trades(ex, "X", Cursor(0), lambda: 10_000, on_page, retry=retry)  # type: ignore[arg-type]
    assert retry.failures == 3 and len(got) == 9 and not res.reached


async def test_page_candles_advances_and_stops() -> None:
    ex = PagedExchange([], cap=30)
    seen: list[int] = []

    async def on_page(cs: list[Candle]) -> None:
        seen.extend(c.ts for c in cs)

    n = await page_candles(ex, "X", 0, 10**12, on_page, retry=Retry())  # type: ignore[arg-type]
    assert n == 100 and seen == [m * 60_000 for m in range(100)]


def test_cursor_take() -> None:
    c = Cursor(5, {"a"})
    t = functools.partial(Trade, price=1.0, amount=1.0, side="buy")
    assert not c.is_new(t(5, "a")) and c.is_new(t(5, "b")) and not c.is_new(t(4, "z"))
    c.take(t(5, "b"))
    c.take(t(7, "c"))
    assert c.ts == 7 and c.ids == {"c"}


def test_recent_ids_floor_rises_with_evictions() -> None:
    r = RecentIds(2, floor=0)
    for i, ts in enumerate((10, 30, 20)):
        r.add(Trade(ts, str(i), 1, 1, "buy"))
    assert "0" not in r and "1" in r and r.floor == 10
    r.add(Trade(40, "3", 1, 1, "buy"))
    assert r.floor == 30


@pytest.mark.parametrize(("gap", "expect"), [(None, 300.0), (0.01, 3.0), (2.0, 20.0), (100.0, 300.0)])
def test_silence_threshold(gap: float | None, expect: float) -> None:
    assert SilencePolicy().threshold(gap) == expect


async def test_rest_failures_are_counted_per_symbol_and_hold_it_back_while_retrying() -> None:
    """Each failed REST call is recorded on the symbol's RestHealth; while a catch-up's call is retrying
    the symbol is held back (degraded); a success clears that but keeps the count and the last error."""
    import asyncio

    from fullon_ohlcv_service.collectors.backfill import RestHealth
    from fullon_ohlcv_service.errors import TransientError

    health = RestHealth("X")
    gate = asyncio.Event()
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if not gate.is_set():
            raise TransientError("ExchangeNotAvailable: kraken GET https://x/0/public/Trades 503\nService Unavailable")
        return 42

    retry = Retry(0.001, 0.002)
    task = asyncio.create_task(retry.call(flaky, health=health))
    for _ in range(500):
        if health.errors >= 3:
            break
        await asyncio.sleep(0.001)
    assert health.holding_back and health.errors >= 3 and health.consecutive == health.errors
    assert health.last_error is not None and "\n" not in health.last_error
    assert health.last_error.startswith("TransientError: ExchangeNotAvailable") and health.last_error_ms
    gate.set()
    assert await task == 42
    assert not health.holding_back and health.consecutive == 0 and health.errors == calls - 1
    # a call that does not hold the symbol back (candle backfill, reconciliation) is counted only
    gate.clear()
    other = asyncio.create_task(retry.call(flaky, health=health, holds_back=False))
    for _ in range(500):
        if health.consecutive >= 2:
            break
        await asyncio.sleep(0.001)
    assert not health.holding_back and health.consecutive >= 2
    gate.set()
    await other
